// Package swarm is how Shoal hosts find each other and share builds. A
// memberlist gossip cluster tells every host who else is up and where its
// chunk-transfer and API endpoints are; an anacrolix/torrent client then
// moves each build archive between them in verified pieces. Every host
// that has pieces serves them, so the more hosts fetch a build, the more
// hosts upload it. DHT, trackers, PEX and UPnP are off: peers come only
// from the membership, and are re-offered to every transfer as members
// join and periodically, so no peer waits forever.
package swarm

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/hashicorp/memberlist"
	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/shoal-deploy/shoal/trust"
)

// Sentinel errors; check with errors.Is.
var (
	// ErrClosed: the swarm is shut down.
	ErrClosed = errors.New("swarm closed")
	// ErrBadMetaInfo: a manifest's metainfo does not decode or does not match its info hash.
	ErrBadMetaInfo = errors.New("bad torrent metainfo")
)

// Swarm is one host's membership in the cluster and its chunk-transfer engine.
type Swarm struct {
	cfg Config
	log zerolog.Logger
	ml  *memberlist.Memberlist
	cl  *torrent.Client
	pc  *pieceDB
	ps  *placeStorage

	guard    *ipGuard        // only members' IPs reach the engine
	listener net.Listener    // the engine's peer listener (lowat.go)
	auth     *trust.PeerAuth // signs and checks peer API requests
	nudge    chan struct{}   // a member joined: offer peers now
	trimNow  chan struct{}   // a build was installed: give memory back (trim.go)
	up       *rate.Limiter   // nil: uploads unlimited
	down     *rate.Limiter   // nil: downloads unlimited
	http     *http.Client    // to members, from the bind address; 2 min limit
	httpLong *http.Client    // the same without a time limit (whole archives)
	dialer   *net.Dialer     // from the bind address
	// originURL locates a build's archive on its origin (see handout.go).
	originURL OriginURL
	repairSrc RepairSource // the origin's publish directories (see heal.go)
	logw      *io.PipeWriter

	ctx    context.Context // ends the per-transfer goroutines on Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.RWMutex // guards transfers and names
	transfers map[*torrent.Torrent]*Transfer
	names     map[torrent.PeerID]string // peer id -> node name, from membership

	badMu sync.Mutex
	badBy map[string]int64 // pieces that failed their hash, by sender IP

	count counters // see counters.go
	trim  idleTrim // touched only by Run's loop; see trim.go
}

// PeerIDFor is the BitTorrent peer id a node uses, derived from its name
// so every host can tell which member sent it a piece.
func PeerIDFor(node string) torrent.PeerID {
	var id torrent.PeerID
	sum := sha1.Sum([]byte(node))
	copy(id[:], "-SH0100-")
	copy(id[8:], hex.EncodeToString(sum[:])[:12])
	return id
}

// New starts listening for gossip and chunk transfers. Call Run to join
// the cluster and keep peers flowing, and Close when done.
func New(cfg Config, log zerolog.Logger) (*Swarm, error) {
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Swarm{cfg: cfg, log: log, nudge: make(chan struct{}, 1), trimNow: make(chan struct{}, 1), guard: newIPGuard(),
		auth:      trust.NewPeerAuth(cfg.SecretKeys, cfg.Node),
		transfers: map[*torrent.Torrent]*Transfer{}, names: map[torrent.PeerID]string{}, badBy: map[string]int64{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	// Every connection to a member leaves from the bind address: members
	// admit only each other's gossip IPs, and a host's default source
	// address (127.0.0.1 on loopback, the primary IP on a multi-homed host)
	// may not be it.
	bindIP := net.ParseIP(cfg.BindAddr)
	s.dialer = &net.Dialer{LocalAddr: &net.TCPAddr{IP: bindIP}, Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // members talk directly, never through $HTTP_PROXY
	tr.DialContext = s.dialer.DialContext
	s.http = &http.Client{Timeout: 2 * time.Minute, Transport: tr}
	s.httpLong = &http.Client{Transport: tr}
	archives := filepath.Join(cfg.DataDir, "archives")
	if err := os.MkdirAll(archives, 0o755); err != nil {
		return nil, fmt.Errorf("swarm: %w", err)
	}
	pc, err := openPieceDB(archives)
	if err != nil {
		return nil, fmt.Errorf("swarm: piece database in %s: %w (is another agent using this data dir?)", archives, err)
	}
	s.pc = pc
	tc := torrent.NewDefaultClientConfig()
	s.ps = &placeStorage{pc: pc, dir: archives, sent: &s.count.sendfile, at: map[metainfo.Hash]*placement{}}
	tc.DefaultStorage = s.ps
	tc.PublicIp4 = net.ParseIP(cfg.BindAddr).To4()
	tc.NoDHT, tc.DisableTrackers, tc.DisablePEX, tc.NoDefaultPortForwarding = true, true, true, true
	tc.DisableUTP, tc.DisableIPv6, tc.DisableWebtorrent, tc.DisableWebseeds = true, true, true, true
	tc.Seed = true
	tc.DialForPeerConns = false // the engine's own dialer leaves from any address; ours from the bind address (added below)
	tc.IPBlocklist = s.guard    // members only, both ways
	s.guard.set([]netip.Addr{netip.MustParseAddr(cfg.BindAddr)})
	// The engine considers pieces for requests in order (rarest first) and
	// stops once the pieces considered add up to MaxUnverifiedBytes (64 MiB
	// by default). Early in a deploy the rarest pieces are the ones no peer
	// has yet, so with a build larger than that window a host asked its
	// peers for nothing until the origin had sent the window's worth: peers
	// sat idle for the first 40 % of a 100 MB deploy. No limit: storage is
	// on disk and every piece is verified as it completes anyway.
	tc.MaxUnverifiedBytes = 0
	// Every fetching host dials every other, so most pairs end up with a
	// connection each way: twice the bookkeeping, and the engine moving
	// requests between the two duplicates chunks. Keep one (both sides
	// agree which, by peer ID).
	tc.DropDuplicatePeerIds = true
	pid := PeerIDFor(cfg.Node)
	tc.PeerID = string(pid[:])
	tc.HeaderObfuscationPolicy = torrent.HeaderObfuscationPolicy{} // plaintext: a private fleet, CPU matters
	tc.EstablishedConnsPerTorrent = cfg.MaxPeers
	tc.HalfOpenConnsPerTorrent = cfg.MaxPeers
	tc.TotalHalfOpenConns = 4 * cfg.MaxPeers
	tc.DialRateLimiter = rate.NewLimiter(200, 50)
	tc.MinDialTimeout = time.Second
	tc.NominalDialTimeout = 5 * time.Second
	tc.Slogger = newEngineLog(log) // bans and hash failures show as warnings
	// One limiter per direction, shared by the torrent engine and the HTTP
	// slice transfers, so the configured cap holds for the host as a whole.
	if cfg.UploadRate > 0 {
		s.up = rate.NewLimiter(rate.Limit(cfg.UploadRate), 1<<20)
		tc.UploadRateLimiter = s.up
	}
	if cfg.DownloadRate > 0 {
		s.down = rate.NewLimiter(rate.Limit(cfg.DownloadRate), 1<<20)
		tc.DownloadRateLimiter = s.down
	}
	tc.Callbacks.ReceivedUsefulData = append(tc.Callbacks.ReceivedUsefulData, s.onUseful)
	tc.Callbacks.PeerClosed = append(tc.Callbacks.PeerClosed, s.onPeerClosed)
	tc.Callbacks.ReadMessage = s.onRead
	tc.Callbacks.SentRequest = append(tc.Callbacks.SentRequest, s.onSentRequest)
	tc.Callbacks.PeerConnAdded = append(tc.Callbacks.PeerConnAdded, s.onConnAdded)
	// Shoal listens and dials itself, so that every peer connection's
	// receive mark follows its framing (lowat.go).
	tc.DisableTCP = true
	l, err := net.Listen("tcp4", net.JoinHostPort(cfg.BindAddr, strconv.Itoa(cfg.TorrentPort)))
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("swarm: chunk transfer listener on %s:%d: %w", cfg.BindAddr, cfg.TorrentPort, err)
	}
	s.cl, err = torrent.NewClient(tc)
	if err != nil {
		l.Close()
		pc.Close()
		return nil, fmt.Errorf("swarm: chunk transfer engine: %w", err)
	}
	s.listener = l
	s.cl.AddListener(markedListener{l})
	s.cl.AddDialer(markedDialer{s.dialer})
	if err := s.startGossip(); err != nil {
		s.cl.Close()
		l.Close()
		pc.Close()
		return nil, err
	}
	return s, nil
}

// TorrentAddr is where this host serves pieces.
func (s *Swarm) TorrentAddr() string {
	return net.JoinHostPort(s.cfg.BindAddr, strconv.Itoa(s.cl.LocalPort()))
}

// GossipAddr is this host's memberlist address.
func (s *Swarm) GossipAddr() string {
	n := s.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// Run joins the cluster (retrying until it has company) and re-offers
// members as peers to every transfer until ctx is done. It returns nil
// when ctx is cancelled, after leaving the cluster.
func (s *Swarm) Run(ctx context.Context) error {
	joinTick := time.NewTicker(s.cfg.JoinRetry.D())
	defer joinTick.Stop()
	peerTick := time.NewTicker(s.cfg.PeerRefresh.D())
	defer peerTick.Stop()
	var scrub <-chan time.Time
	if s.cfg.ScrubInterval > 0 {
		t := time.NewTicker(s.cfg.ScrubInterval.D())
		defer t.Stop()
		scrub = t.C
	}
	scrubbed := 0
	s.join()
	lastJoin := time.Now()
	s.refreshPeers()
	for {
		select {
		case <-ctx.Done():
			_ = s.ml.Leave(time.Second)
			return nil
		case <-joinTick.C:
			// Alone: keep trying. Otherwise re-join now and then, so a node
			// the others wrongly declared dead (a long pause, an overloaded
			// host) is merged back instead of staying in a split cluster.
			if s.ml.NumMembers() < 2 || time.Since(lastJoin) > rejoinEvery {
				s.join()
				lastJoin = time.Now()
			}
		case <-s.nudge:
			s.refreshPeers()
		case <-s.trimNow:
			s.trimMemory("a build was installed")
		case <-peerTick.C:
			s.refreshPeers()
			s.trimWhenIdle()
		case <-scrub:
			scrubbed = s.scrubOne(ctx, scrubbed)
		}
	}
}

func (s *Swarm) join() {
	if len(s.cfg.Join) == 0 {
		return
	}
	var addrs []string
	for _, a := range s.cfg.Join {
		if _, _, err := net.SplitHostPort(a); err != nil {
			a = net.JoinHostPort(a, "7946")
		}
		if a != s.GossipAddr() {
			addrs = append(addrs, a)
		}
	}
	n, err := s.ml.Join(addrs)
	if err != nil && n == 0 {
		s.log.Warn().Err(err).Strs("join", addrs).Msg("cannot join the cluster yet; will retry")
		return
	}
	s.log.Debug().Int("contacted", n).Int("members", s.ml.NumMembers()).Msg("joined cluster")
}

// refreshPeers tops up the peer set of every transfer this host is
// fetching, and closes connections of complete ones to peers that are
// complete too. Called from Run only, never from a memberlist callback.
func (s *Swarm) refreshPeers() {
	members := s.Members()
	names := make(map[torrent.PeerID]string, len(members))
	ips := []netip.Addr{netip.MustParseAddr(s.cfg.BindAddr)}
	var peers []torrent.PeerInfo
	for _, m := range members {
		names[PeerIDFor(m.Name)] = m.Name
		gp, err := netip.ParseAddrPort(m.Gossip)
		if err != nil || (m.State != "alive" && m.State != "suspect") {
			continue
		}
		ips = append(ips, gp.Addr())
		if m.Name == s.cfg.Node || m.Torrent == "" {
			continue
		}
		ap, err := netip.ParseAddrPort(m.Torrent)
		if err != nil || ap.Addr().Unmap() != gp.Addr().Unmap() {
			continue // a member's pieces come from its own address, nowhere else
		}
		// Not Trusted: a peer that sends a piece failing its hash is banned.
		peers = append(peers, torrent.PeerInfo{Id: PeerIDFor(m.Name), Addr: addrPort{ap}, Source: torrent.PeerSourceDirect})
	}
	s.guard.set(ips)
	s.mu.Lock()
	s.names = names
	xs := make([]*Transfer, 0, len(s.transfers))
	for _, x := range s.transfers {
		xs = append(xs, x)
	}
	s.mu.Unlock()
	for _, x := range xs {
		// A complete host, and the origin, only answer: the hosts still
		// fetching dial them (and the origin's first copies go by HTTP;
		// a host that dials the origin could be asked for pieces by it).
		// An origin dials only to repair pieces a re-hash found bad.
		switch {
		case x.t.Complete().Bool():
			s.closeSeedToSeed(x)
		case x.m.Origin == s.cfg.Node && !x.repairing.Load():
		case x.paused.Load() || x.WriteError() != nil:
		default:
			s.topUp(x, peers)
		}
	}
	s.count.refreshes.Add(1)
}

// topUp offers a fetching transfer enough members to bring its peer set
// back to the peer set (Config.peerSet): connected peers (whoever dialed) and offers still being
// dialed count. The origin comes first when the transfer may use it (it
// has every piece; while the origin hands out slices over HTTP it is kept
// out), then members drawn at random from those it is not connected to
// and has not been offered lately. A transfer that has verified nothing
// new for widenAfter gets a larger set, one peer set more per widenAfter,
// so a set whose peers lack what it needs (a piece whose only holder is
// elsewhere) grows until it reaches one that has it.
//
// Connections, and the HAVE, bitfield and request traffic each one
// brings, stay bounded by the peer set instead of growing with the fleet:
// with every member offered, a host at N = 40 received 3.7 k HAVE
// messages for a 100-piece build. Only members it is not connected to are
// offered: the engine cannot tell that a member who dialed us is the one
// at its listen address, so re-offering connected members meant a second
// connection, a handshake and a drop as a duplicate (853 connections
// closed for 55 kept per host at N = 40).
func (s *Swarm) topUp(x *Transfer, members []torrent.PeerInfo) {
	now := time.Now()
	connected := map[torrent.PeerID]bool{}
	for _, pc := range x.t.PeerConns() {
		connected[pc.PeerID] = true
	}
	have := x.verified()
	offer := x.pickPeers(s.cfg, members, connected, have, now)
	// Outside x.mu: the engine calls back into the transfer (onUseful takes
	// x.mu) with its own lock held, so holding x.mu while AddPeers waits for
	// that lock froze the agent (seen in the bench: one host of ten stopped
	// answering its status mid-deploy).
	x.t.AddPeers(offer)
	s.count.offered.Add(int64(len(offer)))
}

// pickPeers chooses the members topUp offers and records them as offered.
// members are the other members it may dial: with this host, the fleet.
func (x *Transfer) pickPeers(cfg Config, members []torrent.PeerInfo, connected map[torrent.PeerID]bool, have int64, now time.Time) []torrent.PeerInfo {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.offeredAt == nil {
		x.offeredAt = map[torrent.PeerID]time.Time{}
	}
	if have > x.lastHave || x.lastGain.IsZero() {
		x.lastHave, x.lastGain = have, now
	}
	pending := 0
	for id, at := range x.offeredAt {
		switch {
		case connected[id] || now.Sub(at) > reofferAfter:
			delete(x.offeredAt, id) // connected, or the dial failed: it may be offered again
		default:
			pending++
		}
	}
	set := cfg.peerSet(len(members)+1) * (1 + int(now.Sub(x.lastGain)/widenAfter))
	want := min(set, cfg.MaxPeers) - len(connected) - pending
	if want <= 0 {
		return nil
	}
	origin := PeerIDFor(x.m.Origin)
	var first, rest []torrent.PeerInfo
	for _, p := range members {
		switch {
		case connected[p.Id] || !x.offeredAt[p.Id].IsZero():
		case p.Id == origin:
			if !x.avoidOrigin.Load() {
				first = append(first, p)
			}
		default:
			rest = append(rest, p)
		}
	}
	rand.Shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
	offer := append(first, rest...)
	offer = offer[:min(want, len(offer))]
	for _, p := range offer {
		x.offeredAt[p.Id] = now
	}
	return offer
}

// reofferAfter is how long an offered member counts as part of the peer
// set without connecting: a dial that has failed by then (the member has
// not added the build yet, or is down) frees its place for another.
const reofferAfter = 3 * time.Second

// widenAfter is how long a transfer may go without verifying a piece
// before its peer set grows by another peer set of members.
const widenAfter = 5 * time.Second

// closeSeedToSeed closes a complete transfer's connections to peers that
// are complete too: neither side will ask the other for anything, yet the
// engine keeps each connection (two write buffers of up to a chunk and a
// 128 KiB read buffer) for as long as the build is shared. Kept, they
// made every agent's resident memory grow by the connections of each
// build still on disk: at N = 40, peak RSS rose 142 → 225 MiB over two
// consecutive builds on one fleet.
func (s *Swarm) closeSeedToSeed(x *Transfer) {
	n := x.t.NumPieces()
	for _, pc := range x.t.PeerConns() {
		if pc.Stats().RemotePieceCount >= n {
			pc.Close()
		}
	}
}

// scrubOne re-hashes the next complete build (in turn) and returns the
// position to start from next time. It runs on Run's goroutine: one build
// at a time, at most once per ScrubInterval.
func (s *Swarm) scrubOne(ctx context.Context, next int) int {
	s.mu.RLock()
	var xs []*Transfer
	for _, x := range s.transfers {
		if x.t.Complete().Bool() {
			xs = append(xs, x)
		}
	}
	s.mu.RUnlock()
	if len(xs) == 0 {
		return 0
	}
	sort.Slice(xs, func(i, j int) bool { return xs[i].pl.archive < xs[j].pl.archive })
	x := xs[next%len(xs)]
	if _, err := x.reverify(ctx); err != nil && ctx.Err() == nil {
		s.log.Warn().Err(err).Str("build", x.m.Build).Msg("scrub failed")
	}
	return next + 1
}

// rejoinEvery is how often a member contacts its join addresses again.
const rejoinEvery = 30 * time.Second

type addrPort struct{ netip.AddrPort }

func (a addrPort) Network() string { return "tcp" }

// Close stops transfers and gossip and releases the data dir.
func (s *Swarm) Close() error {
	s.cancel()
	s.wg.Wait()
	err := s.ml.Shutdown()
	s.logw.Close()
	s.listener.Close() // the engine does not close listeners added to it
	s.cl.Close()
	if cerr := s.pc.Close(); err == nil {
		err = cerr
	}
	return err
}

func (s *Swarm) onUseful(ev torrent.ReceivedUsefulDataEvent) {
	pc, ok := ev.Peer.TryAsPeerConn()
	if !ok {
		return
	}
	n := int64(len(ev.Message.Piece))
	s.mu.RLock()
	x := s.transfers[ev.Peer.Torrent()]
	name, known := s.names[pc.PeerID]
	s.mu.RUnlock()
	if x == nil {
		return
	}
	if !known {
		name = "?" + pc.RemoteAddr.String()
	}
	x.mu.Lock()
	x.from[name] += n
	x.mu.Unlock()
	if c := x.pl.check; c != nil {
		if ip, ok := peerIP(pc); ok {
			c.noteSent(int(ev.Message.Index), int64(ev.Message.Begin), n, ip)
		}
	}
}
