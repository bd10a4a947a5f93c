package swarm

import (
	"context"
	"io"

	"golang.org/x/time/rate"
)

// PaceDownload returns r read through the host's download cap (the same
// limiter the torrent engine uses), or r itself when downloads are unlimited.
// Everything that brings build bytes onto this host reads through it.
func (s *Swarm) PaceDownload(ctx context.Context, r io.Reader) io.Reader {
	if s.down == nil {
		return r
	}
	return &pacedReader{ctx: ctx, r: r, l: s.down}
}

// pacedReader reads at most a burst at a time and waits for its tokens.
type pacedReader struct {
	ctx context.Context
	r   io.Reader
	l   *rate.Limiter
}

func (p *pacedReader) Read(b []byte) (int, error) {
	if len(b) > p.l.Burst() {
		b = b[:p.l.Burst()]
	}
	n, err := p.r.Read(b)
	if n > 0 {
		if werr := p.l.WaitN(p.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}
