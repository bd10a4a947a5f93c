package swarm

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"golang.org/x/time/rate"

	"github.com/shoal-deploy/shoal/core"
)

// The hand-out: how a build leaves its origin.
//
// At the start of a deploy only the origin has the build, so its upload is
// the scarcest link: every byte it sends twice delays the whole fleet. The
// torrent engine serves queued requests in no particular order and every
// fetching host asks for the same rare pieces first, so left alone the
// origin sends much of the build several times.
//
// Instead the origin hands pieces out. Each fetching host asks the
// origin's agent API for the next piece nobody has been given (POST
// .../next, answered by NextSlicePiece), pulls it with HTTP range requests
// (Handout.Streams at once), writes it into the engine's storage and has
// the engine verify it (which announces it to peers), and asks again until
// the origin has handed out every piece; the pieces a host pulled are its
// slice. It keeps the origin out of its torrent peers meanwhile and takes
// every other piece from the other hosts. The origin thus sends each piece
// once, faster hosts take more pieces, and hosts that do not fetch the
// build take none. The origin checks each piece against its hash before it
// hands it out; a bad one is kept back and repaired (heal.go). If the HTTP
// pull fails, or the fetch then receives nothing for max(Handout.Stall,
// twice the slowest slice piece) (a host died holding pieces it was
// given), the origin becomes a torrent peer again.
//
// In BitTorrent's terms the hand-out is super-seeding (BEP 16: a seed
// offers each peer a piece nobody else has, so it uploads each piece
// about once) with the handing out done centrally and the pieces sent
// over HTTP like a web seed (BEP 19). Neither is used as such: the engine
// implements no super-seeding, and its web-seed client cannot sign
// requests, so the origin's archive would have to be served to anyone who
// can reach it. docs/DESIGN.md compares them; Handout.Off measures the
// origin as a plain seed.

// Handout tunes the hand-out; zero values take the defaults.
type Handout struct {
	// Off makes the origin an ordinary torrent seed: every host asks it
	// for whatever it lacks. For measurement; the origin then sends
	// several copies of early pieces.
	Off bool `json:"off,omitempty"`
	// Streams is how many HTTP range requests fetch one slice piece at
	// once. Default 1: every fetching host pulls from the origin at once,
	// so the origin's upload is already split N ways; with 4 per host the
	// fleet spent 15-20 % more CPU for no gain in time (N = 20: 17.2-18.2
	// against 14.3-15.1 CPU-s; N = 5: 12.1 s with 4, 11.8 with 1;
	// docs/BENCHMARKS.md). More streams win a bigger share of a host's
	// download link against its peer connections; 4 was the default when
	// one stream got ~1/9 of it at N = 5, before peer sets.
	Streams int `json:"streams,omitempty"`
	// Retries is how many times a slice piece is requested before the
	// host gives up on the hand-out. Default 3.
	Retries int `json:"retries,omitempty"`
	// Stall is how long a host that keeps the origin out of its peers may
	// receive nothing before it takes the origin as a peer again (at least
	// twice the slowest slice piece). Default 5s.
	Stall core.Duration `json:"stall,omitempty"`
	// StallEmpty is the same limit while the host has no piece at all (a
	// host with an empty slice waits for the slice owners). Default 30s.
	StallEmpty core.Duration `json:"stall_empty,omitempty"`
	// OriginWait is how long a host waits for an origin still checking
	// its own copy before it stops asking for slices. Default 10s.
	OriginWait core.Duration `json:"origin_wait,omitempty"`
}

func (h *Handout) applyDefaults() {
	h.Streams = cmp.Or(h.Streams, 1)
	h.Retries = cmp.Or(h.Retries, 3)
	h.Stall = cmp.Or(h.Stall, core.Duration(5*time.Second))
	h.StallEmpty = cmp.Or(h.StallEmpty, core.Duration(30*time.Second))
	h.OriginWait = cmp.Or(h.OriginWait, core.Duration(10*time.Second))
}

func (h Handout) validate() error {
	var errs []error
	if h.Streams < 0 || h.Streams > 64 {
		errs = append(errs, fmt.Errorf("swarm: handout: streams %d: want 1 to 64", h.Streams))
	}
	if h.Retries < 0 {
		errs = append(errs, fmt.Errorf("swarm: handout: retries %d: want 1 or more", h.Retries))
	}
	if h.Stall < 0 || h.StallEmpty < 0 || h.OriginWait < 0 {
		errs = append(errs, fmt.Errorf("swarm: handout: stall %s, stall_empty %s, origin_wait %s: durations must not be negative", h.Stall.D(), h.StallEmpty.D(), h.OriginWait.D()))
	}
	return errors.Join(errs...)
}

// Polling intervals of the hand-out, short against any transfer.
const (
	stallCheckEvery = 250 * time.Millisecond // a host watching its progress after its slice
	notReadyEvery   = 200 * time.Millisecond // asking an origin still checking its copy
	retryBackoff    = 300 * time.Millisecond // × attempt, between requests for one slice piece
)

// OriginURL, if set, gives the HTTP URL of a build's archive on the origin
// ("" when unknown). The agent sets it; nil disables origin slices.
type OriginURL func(origin, service, build string) string

// SetOriginURL installs the origin locator. Call before adding transfers.
func (s *Swarm) SetOriginURL(f OriginURL) { s.originURL = f }

// UploadLimiter is the host's upload cap (nil: none), for other servers of
// build data on this host to share.
func (s *Swarm) UploadLimiter() *rate.Limiter { return s.up }

// sliceURL is where this host would pull a build's slice from ("" if it
// pulls none: it is the origin, or the origin is unknown).
func (s *Swarm) sliceURL(m *core.Manifest) string {
	if m.Origin == s.cfg.Node || s.originURL == nil || s.cfg.Handout.Off {
		return ""
	}
	return s.originURL(m.Origin, m.Service, m.Build)
}

// planSlice starts pulling x's slice from url. x was created avoiding the
// origin already, so the engine never fetched from it in between: chunks
// it had started on would be fetched again over HTTP. (The origin never
// dials: refreshPeers offers peers only to transfers still fetching.)
func (s *Swarm) planSlice(x *Transfer, url string) {
	if url == "" || x.t.Complete().Bool() {
		x.avoidOrigin.Store(false)
		return
	}
	s.log.Info().Str("build", x.m.Build).Str("origin", x.m.Origin).Msg("pulling pieces the origin hands out over HTTP; the rest from peers")
	s.wg.Add(1)
	go s.steer(x, url)
}

// ErrNotReady: the origin is still checking its own copy of the build.
var ErrNotReady = errors.New("origin not ready to hand out pieces yet")

// steer pulls the slice, then watches for stalls until the fetch completes.
func (s *Swarm) steer(x *Transfer, url string) {
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	go func() {
		select {
		case <-x.t.Closed():
			cancel()
		case <-ctx.Done():
		}
	}()
	fallback := func(why string, err error) {
		x.avoidOrigin.Store(false)
		s.log.Info().Err(err).Str("build", x.m.Build).Str("origin", x.m.Origin).Msg(why + "; fetching from the origin as a torrent peer too")
		select {
		case s.nudge <- struct{}{}:
		default:
		}
	}
	slowest, err := s.pullSlice(ctx, x, url)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		fallback("pulling this host's slice over HTTP failed", err)
		return
	}
	tick := time.NewTicker(stallCheckEvery)
	defer tick.Stop()
	// Progress is any useful byte received, not just a completed piece: on
	// slow links a piece that every host wants from the one host that has
	// it takes longer than the stall limit to complete while its bytes
	// keep arriving, and falling back then only loads the origin.
	last, lastGain := x.receivedBytes(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-x.t.Complete().On():
			return
		case <-tick.C:
		}
		// A host with an empty slice (more hosts than pieces) has nothing
		// until the slice owners finish theirs, which at a low origin rate
		// takes a while: give it longer before calling it a stall.
		// Nor is it a stall while the other hosts may still be pulling
		// pieces that took the origin as long as ours did: when many
		// hosts share a slow origin a slice piece takes N·piece/u, and
		// until those land there may be nothing new to trade.
		limit := max(s.cfg.Handout.Stall.D(), 2*slowest)
		if x.verified() == 0 {
			limit = max(limit, s.cfg.Handout.StallEmpty.D())
		}
		if have := x.receivedBytes(); have > last {
			last, lastGain = have, time.Now()
		} else if time.Since(lastGain) > limit {
			fallback(fmt.Sprintf("no progress from peers for %s", limit), nil)
			return
		}
	}
}

// pullSlice asks the origin for pieces until it has handed out all of them,
// fetching each with HTTP range requests, writing it through the engine's
// storage and having the engine verify it. It returns how long the slowest
// piece took to arrive.
func (s *Swarm) pullSlice(ctx context.Context, x *Transfer, url string) (slowest time.Duration, err error) {
	pl := x.m.PieceLength
	buf := make([]byte, pl)
	for {
		i, ok, err := s.askNext(ctx, url)
		for waited := time.Duration(0); errors.Is(err, ErrNotReady) && waited < s.cfg.Handout.OriginWait.D(); waited += notReadyEvery {
			select { // the origin is still hashing its copy
			case <-ctx.Done():
				return slowest, ctx.Err()
			case <-time.After(notReadyEvery):
			}
			i, ok, err = s.askNext(ctx, url)
		}
		if err != nil {
			return slowest, fmt.Errorf("asking the origin for a piece: %w", err)
		}
		if !ok {
			return slowest, nil
		}
		x.mu.Lock()
		x.slice = append(x.slice, i)
		x.mu.Unlock()
		off := int64(i) * pl
		n := min(pl, x.m.Size-off)
		began := time.Now()
		for attempt := 0; attempt < s.cfg.Handout.Retries; attempt++ {
			if err = s.getParallel(ctx, url, off, buf[:n]); err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(time.Duration(attempt+1) * retryBackoff)
		}
		if err != nil {
			return slowest, fmt.Errorf("piece %d: %w", i, err)
		}
		slowest = max(slowest, time.Since(began))
		// Count the bytes as received now: once verified, the piece may be
		// the last one, and the fetch's final progress is read at that moment.
		x.mu.Lock()
		x.from[x.m.Origin] += n
		x.mu.Unlock()
		if err := x.storePiece(ctx, i, buf[:n]); err != nil {
			return slowest, err
		}
		if !x.waitPieceComplete(ctx, i) {
			if m, ok := s.Member(x.m.Origin); ok {
				s.countBad(m.Gossip, 1)
			}
			return slowest, fmt.Errorf("piece %d from the origin failed its hash check (state %+v)", i, x.t.PieceState(i))
		}
	}
}

// storePiece writes piece i, pulled from the origin, through the engine's
// storage and has the engine verify it — unless the build was let go
// meanwhile: the write happens under the same guard as the verification,
// so it cannot land after Drop removed the archive (the storage opens the
// file with O_CREATE, and a superseded fetch's last slice piece recreated
// an archive of a build that was dropped).
func (x *Transfer) storePiece(ctx context.Context, i int, b []byte) error {
	return x.verify(func() error {
		if _, err := x.t.Piece(i).Storage().WriteAt(b, 0); err != nil {
			x.onWriteError(err)
			return fmt.Errorf("piece %d: write: %w", i, err)
		}
		if err := x.t.Piece(i).VerifyDataContext(ctx); err != nil {
			return fmt.Errorf("piece %d: verify: %w", i, err)
		}
		return nil
	})
}

// askNext asks the origin which piece to pull next.
func (s *Swarm) askNext(ctx context.Context, url string) (int, bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/next", nil)
	if err != nil {
		return 0, false, err
	}
	s.auth.Sign(req)
	resp, err := s.http.Do(req)
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNoContent:
		return 0, false, nil
	case http.StatusServiceUnavailable:
		return 0, false, ErrNotReady
	case http.StatusOK:
		var v struct {
			Piece int `json:"piece"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			return 0, false, err
		}
		return v.Piece, true, nil
	default:
		return 0, false, fmt.Errorf("POST %s/next: %s", url, resp.Status)
	}
}

// getParallel fills dst from [off, off+len(dst)) with up to
// Handout.Streams concurrent range requests.
func (s *Swarm) getParallel(ctx context.Context, url string, off int64, dst []byte) error {
	parts := s.cfg.Handout.Streams
	if len(dst) < parts*(64<<10) {
		parts = 1
	}
	errs := make(chan error, parts)
	step := (len(dst) + parts - 1) / parts
	for i := 0; i < parts; i++ {
		lo, hi := i*step, min((i+1)*step, len(dst))
		go func() { errs <- s.getRange(ctx, url, off+int64(lo), dst[lo:hi]) }()
	}
	var first error
	for i := 0; i < parts; i++ {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (s *Swarm) getRange(ctx context.Context, url string, off int64, dst []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+int64(len(dst))-1))
	s.auth.Sign(req) // after Range: the MAC covers it
	resp, err := s.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if got, err := io.ReadFull(s.PaceDownload(ctx, resp.Body), dst); err != nil {
		return fmt.Errorf("GET %s: short read at %d of %d: %w", url, got, len(dst), err)
	}
	return nil
}

// receivedBytes counts useful bytes received so far, from anyone.
func (x *Transfer) receivedBytes() int64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	var n int64
	for _, v := range x.from {
		n += v
	}
	return n
}

// waitPieceComplete waits briefly for a verified piece to be marked complete
// (the engine marks storage after hashing).
func (x *Transfer) waitPieceComplete(ctx context.Context, i int) bool {
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
		st := x.t.PieceState(i)
		if st.Complete {
			return true
		}
		if !st.Hashing && !st.QueuedForHash && !st.Marking && !st.Checking {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	return false
}

// NextSlicePiece hands the next piece of a build to a host fetching it
// from this origin, after checking the piece here: a piece that fails is
// kept back (and repaired) and handed out once it is good again. ok is
// false once every piece is out; ErrNotReady while the build is still
// being hashed, or only kept-back pieces remain.
func (s *Swarm) NextSlicePiece(service, build string) (int, bool, error) {
	x := s.Transfer(service, build)
	if x == nil || x.checking.Load() || (!x.t.Complete().Bool() && x.badOnDisk.Load() == 0) {
		return 0, false, ErrNotReady // still hashing its copy (a repair is not: it hands out the good pieces)
	}
	x.handMu.Lock()
	defer x.handMu.Unlock()
	if x.handBuf == nil {
		x.handBuf = make([]byte, x.m.PieceLength)
	}
	tried := map[int]bool{} // a kept-back piece is re-checked once per call
	for {
		i, again := -1, false
		for k, p := range x.keptBack {
			if !tried[p] && x.t.PieceState(p).Complete {
				tried[p] = true
				i, again = p, true
				x.keptBack = append(x.keptBack[:k], x.keptBack[k+1:]...)
				break
			}
		}
		if i < 0 {
			switch {
			case x.handedOut < x.t.NumPieces():
				i = x.handedOut
				x.handedOut++
			case len(x.keptBack) > 0:
				return 0, false, ErrNotReady
			default:
				return 0, false, nil
			}
		}
		complete, good := false, false
		err := x.verify(func() error {
			complete = x.t.PieceState(i).Complete
			if complete {
				good, _ = x.pieceGood(s.ctx, i, x.handBuf) // a failed re-check leaves it kept back
			}
			return nil
		})
		if err != nil {
			return 0, false, err
		}
		if good {
			return i, true, nil
		}
		x.keptBack = append(x.keptBack, i)
		if complete && !again { // found bad here (one kept back already is known bad, and being repaired)
			x.badOnDisk.Add(1)
			s.log.Error().Str("service", service).Str("build", build).Int("piece", i).
				Msg("a piece of this origin's copy failed its hash before it was handed out; kept back and repaired")
		}
		s.heal(x)
	}
}
