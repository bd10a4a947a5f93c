package swarm

import (
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

// Origin slices.
//
// At the start of a deploy only the origin has the build, so its upload is
// the scarcest link: every byte it sends twice delays the whole fleet. The
// torrent engine serves queued requests in no particular order and every
// fetching host asks for the same rare pieces first, so left alone the
// origin sends much of the build several times.
//
// Instead the origin hands pieces out: a fetching host asks the origin's
// agent API for the next piece nobody has been given (POST .../next), pulls
// it over HTTP range requests, writes it into the engine's storage and has
// the engine verify it (which announces it to peers), and asks again until
// the origin has handed out every piece. It keeps the origin out of its
// torrent peers meanwhile and takes every other piece from the other hosts.
// The origin thus sends each piece once, faster hosts take more pieces, and
// hosts that do not fetch the build take none. (A first version split the
// pieces by each host's view of the membership; views that differ for a
// moment left pieces to two hosts or to none.) If the HTTP pull fails, or
// the fetch then receives nothing for max(stallToOrigin, twice the slowest
// slice piece) (a host died holding pieces it was given), the origin
// becomes a torrent peer again.

// stallToOrigin is how long a host avoiding the origin waits without progress
// before it asks the origin again.
const stallToOrigin = 5 * time.Second

// stallNothingYet is the same limit for a host that has no piece at all yet.
const stallNothingYet = 30 * time.Second

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
	if m.Origin == s.cfg.Node || s.originURL == nil {
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
	tick := time.NewTicker(250 * time.Millisecond)
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
		limit := max(stallToOrigin, 2*slowest)
		if x.verified() == 0 {
			limit = max(limit, stallNothingYet)
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
		for wait := 0; errors.Is(err, ErrNotReady) && wait < 50; wait++ {
			select { // the origin is still hashing its copy
			case <-ctx.Done():
				return slowest, ctx.Err()
			case <-time.After(200 * time.Millisecond):
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
		for attempt := 0; attempt < 3; attempt++ {
			if err = s.getParallel(ctx, url, off, buf[:n]); err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(time.Duration(attempt+1) * 300 * time.Millisecond)
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
		if _, err := x.t.Piece(i).Storage().WriteAt(buf[:n], 0); err != nil {
			x.onWriteError(err)
			return slowest, fmt.Errorf("piece %d: write: %w", i, err)
		}
		if err := x.verify(func() error { return x.t.Piece(i).VerifyDataContext(ctx) }); err != nil {
			return slowest, fmt.Errorf("piece %d: verify: %w", i, err)
		}
		if !x.waitPieceComplete(ctx, i) {
			if m, ok := s.Member(x.m.Origin); ok {
				s.countBad(m.Gossip, 1)
			}
			return slowest, fmt.Errorf("piece %d from the origin failed its hash check (state %+v)", i, x.t.PieceState(i))
		}
	}
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

// sliceStreams is how many HTTP connections fetch one slice piece at once.
// A host's download link also carries its peer connections; TCP shares a
// link per connection, so a single slice stream got ~1/9 of it at N = 5
// and the origin's upload sat half idle. Several streams for the same
// piece win the slice a fair share while the piece still completes (and
// can be forwarded) as early as possible.
const sliceStreams = 4

// getParallel fills dst from [off, off+len(dst)) with up to sliceStreams
// concurrent range requests.
func (s *Swarm) getParallel(ctx context.Context, url string, off int64, dst []byte) error {
	parts := sliceStreams
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
