package swarm

import (
	"context"
	"crypto/sha1"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"time"

	"github.com/anacrolix/torrent"

	"github.com/shoal-deploy/shoal/core"
)

// Healing.
//
// A host never serves pieces it knows to be bad: a re-hash (scrub, restart,
// a failed SHA-256 check of the whole archive) marks them missing and the
// engine fetches them again. The origin also checks every piece before it
// hands it out as a slice (it is about to read it anyway), so a copy that
// went bad after publish does not leave it. Its bad pieces come back from
// the swarm when another host has them, and otherwise from where it
// published the build: the agent packs the directory again (packing is
// deterministic) and each piece is taken only if it matches its hash.

// RepairSource streams a build's archive again from where this host
// published it. The stream need not match: every piece read from it is
// checked against its hash before it is written.
type RepairSource func(m *core.Manifest) (io.ReadCloser, error)

// SetRepairSource installs the origin's repair source. Call before adding transfers.
func (s *Swarm) SetRepairSource(f RepairSource) { s.repairSrc = f }

// pieceMatches reports whether data is piece i, by its SHA-256 when the
// metainfo lists them (pieces.go), else its SHA-1.
func (x *Transfer) pieceMatches(i int, data []byte) bool {
	if c := x.pl.check; c != nil {
		return c.matches(i, data)
	}
	h := x.t.Info().Piece(i).V1Hash()
	return h.Ok && sha1.Sum(data) == h.Value
}

// pieceGood hashes piece i as stored here. A piece that fails is handed
// to the engine to re-check, which marks it missing (the error is that
// re-check's). Call inside x.verify.
func (x *Transfer) pieceGood(ctx context.Context, i int, buf []byte) (bool, error) {
	n := int(x.t.Info().Piece(i).Length())
	got, err := x.t.Piece(i).Storage().ReadAt(buf[:n], 0)
	if err == nil && got == n && x.pieceMatches(i, buf[:n]) {
		if c := x.pl.check; c != nil {
			c.set(i, true)
		}
		return true, nil
	}
	return false, x.t.Piece(i).VerifyDataContext(ctx)
}

// heal starts repairing the pieces a re-hash or a handout check found bad
// here. The origin first packs its publish directory again (its peers are
// mid-fetch: dialing them would have them pull from it as a torrent peer,
// sending the build twice); anyone else, and the origin when that fails,
// asks its peers.
func (s *Swarm) heal(x *Transfer) {
	askPeers := func() {
		x.repairing.Store(true) // the origin dials peers too (see refreshPeers)
		select {
		case s.nudge <- struct{}{}:
		default:
		}
	}
	if s.repairSrc == nil || x.m.Origin != s.cfg.Node {
		askPeers()
		return
	}
	x.healAgain.Store(true)
	if !x.healing.CompareAndSwap(false, true) {
		return // running: it goes round again (its stream may be past this piece)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() {
			x.healing.Store(false)
			if x.healAgain.Load() && s.ctx.Err() == nil {
				s.heal(x) // asked for between the last pass and now
			}
		}()
		for x.healAgain.Swap(false) && s.ctx.Err() == nil {
			start := time.Now()
			fixed, err := x.repairFromSource()
			if err != nil {
				s.log.Error().Err(err).Str("service", x.m.Service).Str("build", x.m.Build).Int("pieces", fixed).
					Msg("cannot repair this origin's copy from the publish directory; asking peers")
				askPeers()
				return
			}
			s.log.Info().Str("service", x.m.Service).Str("build", x.m.Build).Int("pieces", fixed).Dur("took", time.Since(start)).
				Msg("repaired this origin's copy from the publish directory")
		}
	}()
}

// repairFromSource writes back every missing piece that the repair
// source's stream holds intact, and returns how many.
func (x *Transfer) repairFromSource() (int, error) {
	rc, err := x.s.repairSrc(x.m)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	fixed, differ := 0, 0
	err = x.verify(func() error {
		buf := make([]byte, x.m.PieceLength)
		for i := 0; i < x.t.NumPieces(); i++ {
			n := int(x.t.Info().Piece(i).Length())
			if _, err := io.ReadFull(rc, buf[:n]); err != nil {
				return fmt.Errorf("the publish directory now packs to fewer bytes than the build (%v)", err)
			}
			if x.t.PieceState(i).Complete {
				continue
			}
			if !x.pieceMatches(i, buf[:n]) {
				differ++
				continue
			}
			if _, err := x.t.Piece(i).Storage().WriteAt(buf[:n], 0); err != nil {
				return err
			}
			if err := x.t.Piece(i).VerifyDataContext(x.s.ctx); err != nil {
				return err
			}
			fixed++
		}
		return nil
	})
	if err == nil && differ > 0 {
		err = fmt.Errorf("%d missing pieces differ in the publish directory (it changed since publish): they can only come from peers", differ)
	}
	if err != nil {
		return fixed, fmt.Errorf("swarm: repair %s/%s: %w", x.m.Service, x.m.Build, err)
	}
	return fixed, nil
}

// onPeerClosed counts, per peer address, the pieces a closing connection
// contributed to that failed their hash (the engine bans a peer that sent
// a whole bad piece by itself, and smart-bans one whose blocks differed
// from a good copy; both close the connection). The callback runs under
// the engine's lock, which Peer.Stats takes: read it afterwards.
func (s *Swarm) onPeerClosed(p *torrent.Peer) {
	if _, ok := p.TryAsPeerConn(); ok {
		s.count.closed.Add(1)
	}
	if p.Torrent() == nil {
		return // closed before its handshake named a torrent: it sent nothing (and Stats would dereference nil)
	}
	go func() {
		st := p.Stats()
		n := st.PiecesDirtiedBad.Int64()
		if n == 0 {
			return
		}
		s.countBad(p.RemoteAddr.String(), n)
	}()
}

// countBad adds n bad pieces to what addr (ip or ip:port) has sent.
func (s *Swarm) countBad(addr string, n int64) {
	ip := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		ip = h
	}
	if a, err := netip.ParseAddr(ip); err == nil {
		ip = a.Unmap().String()
	}
	s.badMu.Lock()
	s.badBy[ip] += n
	s.badMu.Unlock()
	s.log.Warn().Str("peer", s.nameOf(ip)).Int64("pieces", n).Msg("a peer sent pieces that failed their hash")
}

// PeerCount is a number per peer (a member's name and address, or a bare address).
type PeerCount struct {
	Peer  string `json:"peer"`
	Count int64  `json:"count"`
}

// BadPieces lists, per peer, how many pieces it sent that failed their hash.
func (s *Swarm) BadPieces() []PeerCount {
	s.badMu.Lock()
	out := make([]PeerCount, 0, len(s.badBy))
	for ip, n := range s.badBy {
		out = append(out, PeerCount{Peer: ip, Count: n})
	}
	s.badMu.Unlock()
	names := s.namesByIP()
	for i := range out {
		if name, ok := names[out[i].Peer]; ok {
			out[i].Peer = name + " (" + out[i].Peer + ")"
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out
}

// namesByIP maps members' gossip IPs to their names.
func (s *Swarm) namesByIP() map[string]string {
	byIP := map[string]string{}
	for _, m := range s.Members() {
		if ap, err := netip.ParseAddrPort(m.Gossip); err == nil {
			byIP[ap.Addr().Unmap().String()] = m.Name
		}
	}
	return byIP
}

// nameOf is "name (ip)" for a member's IP, else the IP.
func (s *Swarm) nameOf(ip string) string {
	if name, ok := s.namesByIP()[ip]; ok {
		return name + " (" + ip + ")"
	}
	return ip
}
