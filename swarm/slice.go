package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"time"

	"github.com/anacrolix/torrent"
	"golang.org/x/time/rate"
)

// Origin slices.
//
// At the start of a deploy only the origin has the build, so its upload is
// the scarcest link: every byte it sends twice delays the whole fleet. The
// torrent engine serves queued requests in no particular order and every
// fetching host asks for the same rare pieces first, so left alone the
// origin sends much of the build several times.
//
// Instead, host k of the n fetching hosts (the alive members other than the
// origin, sorted by name) pulls pieces i with i mod n = k — its slice —
// over HTTP from the origin's agent API, writes them into the engine's
// storage and has the engine verify them; it keeps the origin out of its
// torrent peers, and takes every other piece from the other hosts. The
// origin thus sends each piece about once. If the HTTP pull fails, or the
// fetch then makes no progress for stallToOrigin (a slice owner died, or a
// member does not fetch this build), the origin becomes a torrent peer again.

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

func (s *Swarm) planSlice(x *Transfer) {
	if x.m.Origin == s.cfg.Node || x.t.Complete().Bool() || s.originURL == nil {
		return
	}
	url := s.originURL(x.m.Origin, x.m.Service, x.m.Build)
	if url == "" {
		return
	}
	var names []string
	for _, m := range s.Members() {
		if m.Name != x.m.Origin && m.State == "alive" {
			names = append(names, m.Name)
		}
	}
	k := sort.SearchStrings(names, s.cfg.Node)
	n := len(names)
	if n < 2 || k >= n || names[k] != s.cfg.Node {
		return // alone with the origin: plain torrent from it
	}
	for i := k; i < x.t.NumPieces(); i += n {
		if !x.t.PieceState(i).Complete {
			x.slice = append(x.slice, i)
			// Not from the engine while HTTP brings it.
			x.t.Piece(i).SetPriority(torrent.PiecePriorityNone)
		}
	}
	s.log.Info().Str("build", x.m.Build).Int("host", k).Int("hosts", n).Int("pieces", len(x.slice)).
		Int("of", x.t.NumPieces()).Msg("pulling this host's slice from the origin over HTTP")
	x.avoidOrigin.Store(true)
	x.closeOriginConns()
	s.wg.Add(1)
	go s.steer(x, url)
}

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
		for _, i := range x.slice {
			if !x.t.PieceState(i).Complete {
				x.t.Piece(i).SetPriority(torrent.PiecePriorityNormal)
			}
		}
		x.avoidOrigin.Store(false)
		s.log.Info().Err(err).Str("build", x.m.Build).Str("origin", x.m.Origin).Msg(why + "; fetching from the origin as a torrent peer too")
		select {
		case s.nudge <- struct{}{}:
		default:
		}
	}
	// The origin may still dial us (it learnt our address before we had the
	// build): keep closing such connections while we avoid it.
	closer := time.NewTicker(100 * time.Millisecond)
	defer closer.Stop()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-closer.C:
				if !x.avoidOrigin.Load() {
					return
				}
				x.closeOriginConns()
			}
		}
	}()
	if err := s.pullSlice(ctx, x, url); err != nil {
		if ctx.Err() != nil {
			return
		}
		fallback("pulling this host's slice over HTTP failed", err)
		return
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	last, lastGain := x.verified(), time.Now()
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
		limit := stallToOrigin
		if last == 0 {
			limit = stallNothingYet
		}
		if have := x.verified(); have > last {
			last, lastGain = have, time.Now()
		} else if time.Since(lastGain) > limit {
			fallback(fmt.Sprintf("no progress from peers for %s", limit), nil)
			return
		}
	}
}

// pullSlice fetches each slice piece with an HTTP range request, writes it
// through the engine's storage and has the engine verify it.
func (s *Swarm) pullSlice(ctx context.Context, x *Transfer, url string) error {
	pl := x.m.PieceLength
	buf := make([]byte, pl)
	for _, i := range x.slice {
		if x.t.PieceState(i).Complete {
			continue
		}
		off := int64(i) * pl
		n := min(pl, x.m.Size-off)
		var err error
		for attempt := 0; attempt < 3; attempt++ {
			if err = s.getParallel(ctx, url, off, buf[:n]); err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(time.Duration(attempt+1) * 300 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("piece %d: %w", i, err)
		}
		if _, err := x.t.Piece(i).Storage().WriteAt(buf[:n], 0); err != nil {
			return fmt.Errorf("piece %d: write: %w", i, err)
		}
		if err := x.t.Piece(i).VerifyDataContext(ctx); err != nil {
			return fmt.Errorf("piece %d: verify: %w", i, err)
		}
		if !x.waitPieceComplete(ctx, i) {
			return fmt.Errorf("piece %d from the origin failed its hash check (state %+v)", i, x.t.PieceState(i))
		}
		x.mu.Lock()
		x.from[x.m.Origin] += n
		x.mu.Unlock()
	}
	return nil
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
	resp, err := s.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	got := 0
	for got < len(dst) {
		end := len(dst)
		if s.down != nil {
			end = min(end, got+s.down.Burst())
		}
		n, err := resp.Body.Read(dst[got:end])
		if n > 0 && s.down != nil {
			if err := s.down.WaitN(ctx, n); err != nil {
				return err
			}
		}
		got += n
		if err != nil {
			if errors.Is(err, io.EOF) && got == len(dst) {
				break
			}
			return fmt.Errorf("GET %s: short read at %d of %d: %w", url, got, len(dst), err)
		}
	}
	return nil
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

func (x *Transfer) closeOriginConns() {
	origin := PeerIDFor(x.m.Origin)
	for _, pc := range x.t.PeerConns() {
		if pc.PeerID == origin {
			pc.Close()
		}
	}
}
