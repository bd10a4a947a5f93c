package swarm

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/iplist"
	"github.com/anacrolix/torrent/metainfo"

	"github.com/shoal-deploy/shoal/trust"
)

// Who may talk to this host's swarm endpoints.
//
// Gossip: with SecretKeys, memberlist encrypts and authenticates every
// packet, so only key holders are members. Pieces: the torrent engine
// accepts connections from, and dials, only the IP addresses of current
// members (ipGuard), and a peer that sends data failing its hash check is
// banned by IP (no peer is marked trusted). Peer API: every request
// carries a MAC keyed by the gossip key and must come from the gossip IP
// of the member it names (AuthenticatePeer).

// ipGuard plugs into the engine as its IP blocklist, turned inside out:
// every address that is not a current member's is blocked.
type ipGuard struct {
	mu     sync.Mutex // serialises writers; readers load ips without it
	ips    atomic.Pointer[map[netip.Addr]struct{}]
	banned atomic.Pointer[map[netip.Addr]struct{}] // members Shoal banned (pieces.go), blocked while the agent runs
}

func newIPGuard() *ipGuard {
	g := &ipGuard{}
	g.ips.Store(&map[netip.Addr]struct{}{})
	g.banned.Store(&map[netip.Addr]struct{}{})
	return g
}

// Lookup blocks ip unless it is a member's. The engine calls it for every
// connection it accepts or dials.
func (g *ipGuard) Lookup(ip net.IP) (iplist.Range, bool) {
	a, ok := netip.AddrFromSlice(ip)
	if ok {
		if _, banned := (*g.banned.Load())[a.Unmap()]; banned {
			return iplist.Range{First: ip, Last: ip, Description: "banned: sent chunks that failed their check"}, true
		}
		if _, member := (*g.ips.Load())[a.Unmap()]; member {
			return iplist.Range{}, false
		}
	}
	return iplist.Range{First: ip, Last: ip, Description: "not a fleet member"}, true
}

// NumRanges is part of iplist.Ranger.
func (g *ipGuard) NumRanges() int { return 1 }

// set replaces the allowed addresses.
func (g *ipGuard) set(addrs []netip.Addr) {
	m := make(map[netip.Addr]struct{}, len(addrs))
	for _, a := range addrs {
		m[a.Unmap()] = struct{}{}
	}
	g.mu.Lock()
	g.ips.Store(&m)
	g.mu.Unlock()
}

// add allows one more address (a member just joined).
func (g *ipGuard) add(a netip.Addr) { g.insert(&g.ips, a) }

// ban blocks a; it reports whether a was not banned before.
func (g *ipGuard) ban(a netip.Addr) bool { return g.insert(&g.banned, a) }

// insert adds a to the set set points at (a copy: readers load the set
// without the lock) and reports whether it was not there before.
func (g *ipGuard) insert(set *atomic.Pointer[map[netip.Addr]struct{}], a netip.Addr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	old := *set.Load()
	if _, ok := old[a.Unmap()]; ok {
		return false
	}
	m := make(map[netip.Addr]struct{}, len(old)+1)
	for k := range old {
		m[k] = struct{}{}
	}
	m[a.Unmap()] = struct{}{}
	set.Store(&m)
	return true
}

// peerIP is the IP address a peer connection comes from.
func peerIP(pc *torrent.PeerConn) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(pc.RemoteAddr.String())
	return ap.Addr().Unmap(), err == nil
}

// ban bans members whose chunks of a piece differed from its good copy
// (pieceCheck; the engine's own smart ban needs pieces it hashes itself):
// no connection to or from them, and the open ones closed. Safe to call
// from the storage (it returns at once).
func (s *Swarm) ban(ih metainfo.Hash, piece int, ips []netip.Addr) {
	go func() {
		drop := map[netip.Addr]bool{}
		for _, ip := range ips {
			if s.guard.ban(ip) {
				drop[ip.Unmap()] = true
				s.log.Warn().Str("peer", s.nameOf(ip.Unmap().String())).Int("piece", piece).Str("info_hash", ih.HexString()).
					Msg("banned peer: its chunks of a piece differ from the copy that passed the check")
			}
		}
		for _, t := range s.cl.Torrents() {
			for _, pc := range t.PeerConns() {
				if ip, ok := peerIP(pc); ok && drop[ip] {
					pc.Close()
				}
			}
		}
	}()
}

// allowIP lets a joining member in before the next peer refresh. Safe to
// call from a memberlist callback.
func (s *Swarm) allowIP(ip net.IP) {
	if a, ok := netip.AddrFromSlice(ip); ok {
		s.guard.add(a)
	}
}

// PeerDo sends a request to another member's peer API: signed with this
// host's credentials, from the bind address, with no time limit but
// req's context. Set any Range header before.
func (s *Swarm) PeerDo(req *http.Request) (*http.Response, error) {
	s.auth.Sign(req)
	return s.httpLong.Do(req)
}

// AuthenticatePeer accepts a peer API request only from a current member:
// its MAC must verify under the gossip key, the member it names must be
// alive or suspect, and it must come from that member's gossip IP.
func (s *Swarm) AuthenticatePeer(r *http.Request) (Member, error) {
	node, err := s.auth.Check(r, time.Now())
	if err != nil {
		return Member{}, err
	}
	m, ok := s.Member(node)
	if !ok || (m.State != "alive" && m.State != "suspect") {
		return Member{}, fmt.Errorf("%w: %q is not a current member", trust.ErrPeerAuth, node)
	}
	rh, _, _ := net.SplitHostPort(r.RemoteAddr)
	gh, _, _ := net.SplitHostPort(m.Gossip)
	ra, err1 := netip.ParseAddr(rh)
	ga, err2 := netip.ParseAddr(gh)
	if err1 != nil || err2 != nil || ra.Unmap() != ga.Unmap() {
		return Member{}, fmt.Errorf("%w: request for member %s came from %s, not its address %s", trust.ErrPeerAuth, node, rh, gh)
	}
	return m, nil
}

// BannedPeers lists the members (or bare IPs) banned for sending data
// that failed its check (by the engine, or by Shoal's blame), sorted.
func (s *Swarm) BannedPeers() []string {
	ips := s.cl.BadPeerIPs()
	for a := range *s.guard.banned.Load() {
		ips = append(ips, a.String())
	}
	if len(ips) == 0 {
		return nil
	}
	byIP := s.namesByIP()
	seen := map[string]bool{}
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip); err == nil {
			ip = a.Unmap().String() // the engine may hold one address in both forms
		}
		if seen[ip] {
			continue
		}
		seen[ip] = true
		if name, ok := byIP[ip]; ok {
			out = append(out, name+" ("+ip+")")
		} else {
			out = append(out, ip)
		}
	}
	sort.Strings(out)
	return out
}
