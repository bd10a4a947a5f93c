package swarm

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anacrolix/torrent"
	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/core"
)

func TestPieceLength(t *testing.T) {
	for _, tc := range []struct {
		size  int64
		hosts int
		want  int64
	}{
		{1, 1, 256 << 10}, {31 << 20, 5, 256 << 10}, {64 << 20, 16, 512 << 10}, {300 << 20, 6, 2 << 20}, {5 << 30, 2, 4 << 20},
		// more than 16 hosts: twice the size, never above 4 MiB, and only
		// while that leaves at least one piece per host
		{64 << 20, 17, 1 << 20}, {100e6, 41, 1 << 20}, {100e6, 81, 1 << 20}, {64 << 20, 41, 1 << 20},
		{64 << 20, 65, 512 << 10}, {64 << 20, 1000, 512 << 10},
		{10e6, 21, 256 << 10}, {300 << 20, 17, 4 << 20}, {5 << 30, 1000, 4 << 20},
	} {
		if got := PieceLength(tc.size, tc.hosts); got != tc.want {
			t.Errorf("PieceLength(%d, %d hosts) = %d, want %d", tc.size, tc.hosts, got, tc.want)
		}
	}
}

func TestPeerIDsAreStableAndDistinct(t *testing.T) {
	if PeerIDFor("a") != PeerIDFor("a") {
		t.Error("peer id not stable")
	}
	seen := map[[20]byte]string{}
	for i := 0; i < 1000; i++ {
		n := fmt.Sprintf("host-%d", i)
		id := PeerIDFor(n)
		if o, dup := seen[id]; dup {
			t.Fatalf("%s and %s share a peer id", o, n)
		}
		seen[id] = n
	}
}

func TestConfigValidate(t *testing.T) {
	c := Config{Node: "", BindAddr: "0.0.0.0", Gossip: "wan", PeerSet: -1, Handout: Handout{Streams: 100}}
	err := c.Validate()
	for _, want := range []string{"node name", "bind address", "data dir", "gossip profile", "peer_set", "handout: streams"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to mention %q", err, want)
		}
	}
}

// Three swarms in one process on their own loopback addresses: the origin
// seeds a build, the others fetch it from the origin and from each other.
func TestThreeNodeTransfer(t *testing.T) {
	ctx := context.Background()
	nodes := startSwarms(t, 3, 41, zerolog.Nop(), nil)
	for _, m := range nodes[1].Members() {
		if m.Torrent == "" || m.State != "alive" {
			t.Errorf("member %+v lacks a torrent address or is not alive", m)
		}
	}
	m, data := publish(t, nodes[0], 3<<20+12345)
	if m.Size != int64(len(data)) || m.PieceLength != 256<<10 {
		t.Errorf("described size %d piece %d", m.Size, m.PieceLength)
	}
	for _, s := range nodes {
		if _, err := s.Add(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range nodes {
		x, _ := s.Add(ctx, m) // same transfer again
		wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
		err := x.Wait(wctx)
		wcancel()
		if err != nil {
			t.Fatalf("node %d: %v (progress %+v)", i, err, x.Progress())
		}
		got, err := io.ReadAll(x.Archive())
		if err != nil || string(got) != string(data) {
			t.Fatalf("node %d: archive differs (%v)", i, err)
		}
		p := x.Progress()
		if p.Have != m.Size || !p.Complete {
			t.Errorf("node %d: have %d of %d, complete %v", i, p.Have, m.Size, p.Complete)
		}
		if i > 0 && p.Received+p.Resumed < m.Size {
			t.Errorf("node %d: received %d + resumed %d < size %d", i, p.Received, p.Resumed, m.Size)
		}
		if i > 0 && p.FromOrigin+p.FromPeers != p.Received {
			t.Errorf("node %d: origin %d + peers %d != received %d", i, p.FromOrigin, p.FromPeers, p.Received)
		}
	}
	if seeds := nodes[0].Seeds(); len(seeds) != 1 || seeds[0].Uploaded == 0 {
		t.Errorf("origin seeds = %+v, want one build with uploads", seeds)
	}

	bad := *m
	bad.InfoHash = "0000000000000000000000000000000000000000"
	if _, err := nodes[1].Add(ctx, &bad); err == nil {
		t.Error("a manifest whose info hash does not match its metainfo was accepted")
	}
	if err := nodes[1].Drop(m); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(nodes[1].ArchivePath("web", "v1")); !os.IsNotExist(err) {
		t.Errorf("archive still there after Drop: %v", err)
	}
}

// Four swarms; the fetching hosts pull their slices from the origin over
// HTTP (one range request per slice piece by default, Handout.Streams in
// parallel when set) and everything else from each other.
func TestOriginSlices(t *testing.T) {
	for _, streams := range []int{1, 4} {
		t.Run(fmt.Sprintf("streams=%d", streams), func(t *testing.T) { testOriginSlices(t, streams) })
	}
}

func testOriginSlices(t *testing.T, streams int) {
	var served, gets atomic.Int64
	var origin *Swarm
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost { // the agent's POST .../next
			i, ok, err := origin.NextSlicePiece("web", "v1")
			if err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			if !ok {
				w.WriteHeader(http.StatusNoContent)
				return
			}
			fmt.Fprintf(w, `{"piece":%d}`, i)
			return
		}
		gets.Add(1)
		time.Sleep(20 * time.Millisecond) // an origin's upload is what is scarce: one host cannot take every piece before the others ask
		http.ServeFile(&countingWriter{ResponseWriter: w, n: &served}, r, origin.ArchivePath("web", "v1"))
	}))
	defer srv.Close()
	nodes := startSwarms(t, 4, 42, zerolog.Nop(), func(s *Swarm) {
		s.SetOriginURL(func(origin, service, build string) string { return srv.URL })
		if streams > 1 {
			s.cfg.Handout.Streams = streams
		}
	})
	if got := nodes[1].cfg.Handout.Streams; got != streams {
		t.Fatalf("Handout.Streams = %d, want %d", got, streams)
	}
	origin = nodes[0]
	m, data := publish(t, origin, 6<<20+777)
	xs := fetchAll(t, nodes, m, data)
	sliced, pullers := 0, 0
	for _, x := range xs {
		x.mu.Lock()
		sliced += len(x.slice)
		if len(x.slice) > 0 {
			pullers++
		}
		x.mu.Unlock()
	}
	// Every piece was handed out once, to more than one host. (A host can
	// end up with none: under load it may start after the others took every
	// piece, and then gets all of them from its peers.)
	if sliced != xs[0].t.NumPieces() || pullers < 2 {
		t.Errorf("%d hosts pulled %d slices of %d pieces; want every piece handed out once, to 2 or more hosts", pullers, sliced, xs[0].t.NumPieces())
	}
	// Each slice piece took streams range requests (the last, short piece
	// one); none was retried.
	if want := int64(streams*(sliced-1) + 1); gets.Load() != want {
		t.Errorf("%d range requests for %d slice pieces with %d streams, want %d", gets.Load(), sliced, streams, want)
	}
	up := nodes[0].Seeds()[0].Uploaded
	t.Logf("origin: %d bytes over HTTP in %d requests, %d over the torrent, size %d", served.Load(), gets.Load(), up, m.Size)
	if served.Load() < m.Size/2 {
		t.Errorf("origin served only %d of %d bytes over HTTP: slices were not pulled", served.Load(), m.Size)
	}
	// The origin hands out each piece once: exactly one copy over HTTP,
	// nothing over the torrent.
	if served.Load() != m.Size || up != 0 {
		t.Errorf("origin sent %d bytes over HTTP and %d over the torrent, want exactly %d and 0", served.Load(), up, m.Size)
	}
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// startSwarms runs n swarms on 127.0.<octet>.2… that join the first one,
// waits until every one sees all n, and stops them when the test ends.
func startSwarms(t *testing.T, n, octet int, log zerolog.Logger, setup func(*Swarm)) []*Swarm {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var nodes []*Swarm
	t.Cleanup(func() {
		cancel()
		for range nodes {
			<-done
		}
		for _, s := range nodes {
			s.Close()
		}
	})
	for i := 0; i < n; i++ {
		cfg := Config{Node: fmt.Sprintf("n%d", i), BindAddr: fmt.Sprintf("127.0.%d.%d", octet, i+2), DataDir: t.TempDir(),
			Gossip: "local", PeerRefresh: core.Duration(200 * time.Millisecond), JoinRetry: core.Duration(200 * time.Millisecond)}
		if i > 0 {
			cfg.Join = []string{fmt.Sprintf("127.0.%d.2", octet)}
		}
		s, err := New(cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		if setup != nil {
			setup(s)
		}
		nodes = append(nodes, s)
		go func() { _ = s.Run(ctx); done <- struct{}{} }()
	}
	for deadline := time.Now().Add(20 * time.Second); len(nodes[n-1].Members()) < n; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("members = %v, want %d", nodes[n-1].Members(), n)
		}
	}
	return nodes
}

// publish writes a random archive of size bytes on nodes[0] and describes it.
func publish(t *testing.T, origin *Swarm, size int) (*core.Manifest, []byte) {
	return publishBuild(t, origin, "v1", size)
}

// publishBuild is publish for a build of another name.
func publishBuild(t *testing.T, origin *Swarm, build string, size int) (*core.Manifest, []byte) {
	t.Helper()
	m := &core.Manifest{Service: "web", Build: build, Origin: origin.cfg.Node}
	data := make([]byte, size)
	_, _ = rand.Read(data)
	if err := os.WriteFile(origin.ArchivePath(m.Service, m.Build), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := origin.Describe(m); err != nil {
		t.Fatal(err)
	}
	return m, data
}

// Work on a transfer that was just dropped (a slice pull or a scrub racing
// the drop of a build nobody wants) must not happen, nor leave the engine
// locked: in v1.61 Piece.VerifyDataContext on a dropped torrent returns
// with the engine's lock held, and the next status froze the agent; and a
// slice piece written after the drop created the archive again (the
// storage opens it with O_CREATE: e2e/TestSupersededFetchIsLetGo found a
// dropped build's archive back on disk).
func TestVerifyAfterDropDoesNotFreeze(t *testing.T) {
	ctx := context.Background()
	nodes := startSwarms(t, 1, 44, zerolog.Nop(), nil)
	s := nodes[0]
	m, data := publish(t, s, 1<<20)
	x, err := s.Add(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Drop(m); err != nil {
		t.Fatal(err)
	}
	if _, err := x.reverify(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("reverify after drop: %v, want ErrClosed", err)
	}
	if err := x.storePiece(ctx, 0, data[:m.PieceLength]); !errors.Is(err, ErrClosed) {
		t.Errorf("storing a slice piece after the drop: %v, want ErrClosed", err)
	}
	if _, err := os.Stat(s.ArchivePath(m.Service, m.Build)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the dropped build's archive is on disk again (%v)", err)
	}
	done := make(chan struct{})
	go func() { s.Seeds(); s.BannedPeers(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the engine stayed locked after verifying a dropped transfer")
	}
}

// An origin whose copy went bad after publish checks each piece before it
// hands it out: the bad one is kept back, repaired from the repair source
// (the agent packs the publish directory again), and handed out later.
func TestOriginKeepsBackAndRepairsBadPieces(t *testing.T) {
	var data []byte
	nodes := startSwarms(t, 1, 46, zerolog.Nop(), func(s *Swarm) { // 43 is the agent tests'
		s.SetRepairSource(func(*core.Manifest) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	})
	origin := nodes[0]
	m, d := publish(t, origin, 3<<20+99)
	data = d
	x, err := origin.Add(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(origin.ArchivePath("web", "v1"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xEE}, 100), m.PieceLength+10); err != nil { // piece 1
		t.Fatal(err)
	}
	f.Close()
	var order []int
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		i, ok, err := origin.NextSlicePiece("web", "v1")
		if errors.Is(err, ErrNotReady) {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		order = append(order, i)
	}
	n := int((m.Size + m.PieceLength - 1) / m.PieceLength)
	seen := map[int]bool{}
	for _, i := range order {
		seen[i] = true
	}
	if len(order) != n || len(seen) != n || order[1] == 1 {
		t.Errorf("hand-out order %v: want every one of %d pieces once, piece 1 (damaged) not in its turn", order, n)
	}
	if got, _ := os.ReadFile(origin.ArchivePath("web", "v1")); !bytes.Equal(got, data) {
		t.Error("the origin's copy was not repaired")
	}
	if s := origin.Seeds(); len(s) != 1 || s[0].BadOnDisk != 1 {
		t.Errorf("seeds %+v: want one bad piece counted", s)
	}
}

// With a peer set of 2, twelve hosts fetch a build through a sparse
// random graph instead of a full mesh: every host completes, yet the
// connections opened stay far below the 66 pairs a mesh of 12 has (before
// peer sets, every host dialed every member).
func TestPeerSetBoundsConnections(t *testing.T) {
	nodes := startSwarms(t, 12, 47, zerolog.Nop(), func(s *Swarm) { s.cfg.PeerSet = 2 })
	m, data := publish(t, nodes[0], 2<<20+333)
	fetchAll(t, nodes, m, data)
	opened, offered := int64(0), int64(0)
	for _, s := range nodes {
		c := s.Counters()
		opened += c["conns_opened"]
		offered += c["peers_offered"]
	}
	// Each connection is counted by both ends.
	t.Logf("12 hosts, peer set 2: %d connections opened, %d offers", opened/2, offered)
	if opened/2 >= 33 {
		t.Errorf("%d connections for 12 hosts with a peer set of 2; want well under a full mesh's 66", opened/2)
	}
}

// The default peer set follows the fleet: 5 up to 63 members, then one
// more per doubling; a configured set is kept as it is, and MaxPeers caps
// both. Checked where topUp decides it: how many members one call offers
// a fetch that has none connected.
func TestPeerSetFollowsTheFleet(t *testing.T) {
	for n, want := range map[int]int{0: 5, 2: 5, 20: 5, 63: 5, 64: 6, 127: 6, 1023: 9, 1024: 10, 10000: 13} {
		if got := PeerSetFor(n); got != want {
			t.Errorf("PeerSetFor(%d) = %d; want %d", n, got, want)
		}
	}
	members := func(n int) []torrent.PeerInfo {
		ps := make([]torrent.PeerInfo, n)
		for i := range ps {
			ps[i] = torrent.PeerInfo{Id: PeerIDFor(fmt.Sprintf("host-%d", i))}
		}
		return ps
	}
	for _, c := range []struct {
		peerSet, maxPeers, fleet, want int
	}{
		{0, 0, 40, 5},     // the default in a 40-host fleet
		{0, 0, 1024, 10},  // and in a 1,024-host one
		{0, 0, 10000, 13}, // and at 10,000
		{10, 0, 40, 10},   // a configured set is kept
		{0, 3, 40, 3},     // max_peers caps the default
		{0, 0, 3, 2},      // a small fleet: every other member
	} {
		cfg := Config{PeerSet: c.peerSet, MaxPeers: c.maxPeers}
		cfg.applyDefaults()
		x := &Transfer{m: &core.Manifest{Origin: "origin"}}
		offer := x.pickPeers(cfg, members(c.fleet-1), nil, 0, time.Now())
		if len(offer) != c.want {
			t.Errorf("peer_set %d, max_peers %d, %d-host fleet: %d members offered; want %d", c.peerSet, c.maxPeers, c.fleet, len(offer), c.want)
		}
	}
}

// With the hand-out off the origin is a plain seed: no host asks it for
// slices, every host takes pieces from it (and each other) as torrent
// peers, and the build still arrives whole.
func TestHandoutOff(t *testing.T) {
	var asked atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	nodes := startSwarms(t, 3, 48, zerolog.Nop(), func(s *Swarm) {
		s.cfg.Handout.Off = true
		s.SetOriginURL(func(origin, service, build string) string { return srv.URL })
	})
	m, data := publish(t, nodes[0], 2<<20+5)
	for i, x := range fetchAll(t, nodes, m, data) {
		if x.avoidOrigin.Load() || len(x.slice) > 0 {
			t.Errorf("node %d pulled a slice (%d pieces) or kept the origin out with the hand-out off", i, len(x.slice))
		}
	}
	if asked.Load() != 0 {
		t.Errorf("the origin's hand-out was asked %d times with it off", asked.Load())
	}
}

// fetchAll adds m on every node, waits for each to complete and checks
// each archive against data.
func fetchAll(t *testing.T, nodes []*Swarm, m *core.Manifest, data []byte) []*Transfer {
	t.Helper()
	ctx := context.Background()
	xs := make([]*Transfer, len(nodes))
	for i, s := range nodes {
		x, err := s.Add(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		xs[i] = x
	}
	for i, x := range xs {
		wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
		err := x.Wait(wctx)
		wcancel()
		if err != nil {
			t.Fatalf("node %d: %v (progress %+v)", i, err, x.Progress())
		}
		if got, _ := io.ReadAll(x.Archive()); string(got) != string(data) {
			t.Fatalf("node %d: archive differs", i)
		}
	}
	return xs
}
