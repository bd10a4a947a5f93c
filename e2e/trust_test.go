package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/fleet"
	"github.com/shoal-deploy/shoal/swarm"
	"github.com/shoal-deploy/shoal/trust"
)

// The threat table of docs/SECURITY.md, line by line, against real agents.

// httpFrom sends a request from a given local address (another "host").
func httpFrom(t *testing.T, from string, req *http.Request) (int, string) {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s from %s: %v", req.Method, req.URL, from, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

func newReq(t *testing.T, method, url, body string, hdr ...string) *http.Request {
	t.Helper()
	r, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	return r
}

func readManifest(t *testing.T, f *fleet.Fleet, build string) *core.Manifest {
	t.Helper()
	cc, err := api.NewClient(&api.Config{Address: f.Consul.Addr})
	if err != nil {
		t.Fatal(err)
	}
	p, _, err := cc.KV().Get("shoal/web/builds/"+build, nil)
	if err != nil || p == nil {
		t.Fatalf("read manifest %s: %v", build, err)
	}
	var m core.Manifest
	if err := json.Unmarshal(p.Value, &m); err != nil {
		t.Fatal(err)
	}
	return &m
}

func writeManifest(t *testing.T, f *fleet.Fleet, m *core.Manifest) {
	t.Helper()
	cc, _ := api.NewClient(&api.Config{Address: f.Consul.Addr})
	b, _ := json.Marshal(m)
	if _, err := cc.KV().Put(&api.KVPair{Key: "shoal/web/builds/" + m.Build, Value: b}, nil); err != nil {
		t.Fatal(err)
	}
}

// deployV1 publishes a tree of about size bytes as web/v1 and deploys it
// to every host of f; it returns the tree.
func deployV1(t *testing.T, f *fleet.Fleet, size int) string {
	t.Helper()
	src := publishBuild(t, f, "v1", size)
	shoal(t, f, "deploy", "web", "v1")
	if _, err := waitSettled(t, f, "web"); err != nil {
		t.Fatalf("v1: %v", err)
	}
	return src
}

// addAgent starts one more fleet member running web (it joins the first
// agent) and waits until every member sees it; f.Stop stops it.
func addAgent(t *testing.T, f *fleet.Fleet, node, ip, dataDir string, args ...string) *fleet.Agent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := fleet.StartAgent(ctx, shoalBin, f.Consul.Addr, fleet.AgentSpec{Node: node, IP: ip, DataDir: dataDir,
		Join: []string{f.Agents[0].Spec.IP}, Args: append([]string{"--service", "web"}, args...), Secrets: f.Secrets, Gossip: "local"})
	if err != nil {
		t.Fatal(err)
	}
	f.Agents = append(f.Agents, a)
	waitMembers(t, f, len(f.Agents))
	return a
}

// Network neighbour: the only API on the host's network address is the
// peer API, which answers members only and has no publish; the control
// API wants its token; a directory outside publish_roots is never packed;
// browsers are refused; a draft (packed, not yet signed) is never served,
// a published build is, to a member only.
func TestAPIsRefuseStrangers(t *testing.T) {
	root := t.TempDir()
	f := startFleet(t, 2, 34, func(i int) []string { return []string{"--service", "web", "--publish-root", root} })
	h1, h2 := f.Agents[0], f.Agents[1]
	ctl, peer := "http://"+h1.API, "http://127.0.34.2:7071"
	token := f.Secrets.Token()
	archives := filepath.Join(h1.Spec.DataDir, "archives")

	// The report that opened the issue: publish /etc and read it back.
	for _, base := range []string{peer, ctl} {
		code, body := httpFrom(t, "127.0.34.9", newReq(t, "POST", base+"/v1/publish",
			`{"service":"web","build":"leak","dir":"/etc"}`, "Content-Type", "application/json"))
		if code == http.StatusOK {
			t.Errorf("POST %s/v1/publish of /etc without credentials: %d %s", base, code, body)
		}
	}
	code, body := httpFrom(t, "127.0.34.9", newReq(t, "POST", ctl+"/v1/publish", `{"service":"web","build":"leak","dir":"/etc"}`,
		"Content-Type", "application/json", "Authorization", "Bearer "+token))
	if code != http.StatusUnprocessableEntity || !strings.Contains(body, "outside this agent's publish_roots") {
		t.Errorf("publish of /etc with the token: %d %s, want refused: outside publish_roots", code, body)
	}
	if ents, _ := filepath.Glob(filepath.Join(archives, "web@leak*")); len(ents) > 0 {
		t.Errorf("an archive of /etc was written: %v", ents)
	}
	if code, _ := httpFrom(t, "127.0.34.9", newReq(t, "GET", peer+"/v1/archive/web/leak", "")); code != http.StatusForbidden {
		t.Errorf("unauthenticated archive read on the peer API: %d, want 403", code)
	}

	// The control API: token, no browsers, JSON posts only.
	for _, tc := range []struct {
		req  *http.Request
		want int
	}{
		{newReq(t, "GET", ctl+"/v1/status", ""), http.StatusUnauthorized},
		{newReq(t, "GET", ctl+"/v1/status", "", "Authorization", "Bearer wrong-token-0123456789"), http.StatusUnauthorized},
		{newReq(t, "GET", ctl+"/v1/status", "", "Authorization", "Bearer "+token), http.StatusOK},
		{newReq(t, "GET", ctl+"/v1/health", ""), http.StatusOK},
		{newReq(t, "GET", ctl+"/v1/status", "", "Authorization", "Bearer "+token, "Origin", "http://evil.example"), http.StatusForbidden},
		{newReq(t, "POST", ctl+"/v1/publish", `{"service":"web","build":"x","dir":"`+root+`"}`,
			"Authorization", "Bearer "+token, "Content-Type", "text/plain"), http.StatusUnsupportedMediaType},
		{newReq(t, "GET", peer+"/v1/status", ""), http.StatusForbidden}, // the control routes are not on the peer API
	} {
		if code, body := httpFrom(t, "127.0.34.2", tc.req); code != tc.want {
			t.Errorf("%s %s %v: %d %s, want %d", tc.req.Method, tc.req.URL, tc.req.Header, code, body, tc.want)
		}
	}

	// A draft is not served; once published (signed) it is, to members only.
	src := filepath.Join(root, "v1")
	makeTree(t, src, 1<<20, "v1")
	code, body = httpFrom(t, "127.0.34.2", newReq(t, "POST", ctl+"/v1/publish", `{"service":"web","build":"v1","dir":"`+src+`"}`,
		"Content-Type", "application/json", "Authorization", "Bearer "+token))
	if code != http.StatusOK {
		t.Fatalf("pack v1: %d %s", code, body)
	}
	var draft struct {
		Manifest core.Manifest `json:"manifest"`
	}
	if err := json.Unmarshal([]byte(body), &draft); err != nil {
		t.Fatal(err)
	}
	dih, _ := hex.DecodeString(draft.Manifest.InfoHash)
	if btHandshake(t, "127.0.34.3", "127.0.34.2:6881", dih) {
		t.Error("a draft (packed, not signed) is seeded: its info hash got a torrent handshake")
	}
	key, _ := os.ReadFile(f.Secrets.GossipKey)
	gk, err := trust.ParseGossipKey(string(key))
	if err != nil {
		t.Fatal(err)
	}
	signed := func(from, node string, k []byte) (int, string) {
		r := newReq(t, "GET", peer+"/v1/archive/web/v1", "", "Range", "bytes=0-99")
		trust.NewPeerAuth([][]byte{k}, node).Sign(r)
		return httpFrom(t, from, r)
	}
	if code, body := signed("127.0.34.3", "host-2", gk); code != http.StatusNotFound {
		t.Errorf("a draft build was served to a member: %d %q", code, body)
	}
	shoal(t, f, "publish", "--service", "web", "--build", "v1", src)
	if code, body := signed("127.0.34.3", "host-2", gk); code != http.StatusPartialContent || len(body) != 100 {
		t.Errorf("member host-2 reading 100 bytes of published v1: %d, %d bytes", code, len(body))
	}
	if !btHandshake(t, "127.0.34.3", "127.0.34.2:6881", dih) {
		t.Error("published v1 is not seeded to a member (the draft check above proves nothing)")
	}
	other, _ := trust.GenerateGossipKey()
	ok, _ := trust.ParseGossipKey(other)
	for _, tc := range []struct {
		name, from, node string
		key              []byte
	}{
		{"another gossip key", "127.0.34.3", "host-2", ok},
		{"a member's name from another address", "127.0.34.9", "host-2", gk},
		{"a name that is no member", "127.0.34.9", "host-9", gk},
	} {
		if code, body := signed(tc.from, tc.node, tc.key); code != http.StatusForbidden {
			t.Errorf("%s: %d %q, want 403", tc.name, code, body)
		}
	}
	// The CLI, with the token from the environment, still sees everything.
	if st := status(t, f, "web"); len(st) != 2 {
		t.Errorf("status through the token: %d hosts, want 2", len(st))
	}
	_ = h2
}

// Consul writer without the signing key: an unsigned build, one signed by
// a key nobody trusts and one whose signed manifest was changed are all
// refused before a byte is fetched; the live release stays.
func TestForgedBuildsRefusedBeforeFetching(t *testing.T) {
	f := startFleet(t, 3, 35, func(int) []string { return []string{"--service", "web"} })
	src := deployV1(t, f, 2<<20)
	v1 := readManifest(t, f, "v1")
	stranger, _ := trust.GenerateSigningKey()
	fleetKey, err := f.Secrets.Signer()
	if err != nil {
		t.Fatal(err)
	}
	forge := func(build string, edit func(*core.Manifest)) *core.Manifest {
		m := *v1
		m.Build = build
		edit(&m)
		return &m
	}
	for _, tc := range []struct {
		m    *core.Manifest
		want string
	}{
		{forge("unsigned", func(m *core.Manifest) { m.KeyID, m.Signature = "", nil }), "build is not signed"},
		{forge("stranger", func(m *core.Manifest) { stranger.Sign(m) }), "does not trust (key " + stranger.Public().ID() + ")"},
		{forge("tampered", func(m *core.Manifest) { fleetKey.Sign(m); m.Origin = "host-3" }), "signature does not verify"},
		{forge("renamed", func(m *core.Manifest) {}), "signature does not verify"}, // v1's signature under another name
	} {
		writeManifest(t, f, tc.m)
		shoal(t, f, "deploy", "web", tc.m.Build)
		st, err := waitSettled(t, f, "web")
		if err == nil {
			t.Errorf("%s: status --wait exited 0", tc.m.Build)
		}
		for _, a := range f.Agents {
			s := st[a.Spec.Node]
			if s.State != core.StateFailed || !strings.Contains(s.LastError, tc.want) || !strings.Contains(s.LastError, "before fetching a byte") {
				t.Errorf("%s on %s: %s %q, want failed: %q before fetching", tc.m.Build, a.Spec.Node, s.State, s.LastError, tc.want)
			}
			if s.Current != "v1" {
				t.Errorf("%s on %s: current is %q, want v1", tc.m.Build, a.Spec.Node, s.Current)
			}
			if s.Fetch != nil && s.Fetch.Build == tc.m.Build {
				t.Errorf("%s on %s: a fetch was started", tc.m.Build, a.Spec.Node)
			}
			if got := buildBytes(a, tc.m.Build); len(got) > 0 {
				t.Errorf("%s on %s: fetched bytes exist: %v", tc.m.Build, a.Spec.Node, got)
			}
		}
	}
	for _, a := range f.Agents {
		sameTree(t, src, filepath.Join(a.Spec.DataDir, "services", "web", "current"))
	}
}

// btHandshake dials a torrent port from a local address and sends a
// BitTorrent handshake for ih; it reports whether the other side answered
// with its own handshake for the same torrent.
func btHandshake(t *testing.T, from, to string, ih []byte) bool {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 3 * time.Second}
	c, err := d.Dial("tcp", to)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := append([]byte{19}, "BitTorrent protocol"...)
	msg = append(msg, make([]byte, 8)...)
	msg = append(msg, ih...)
	msg = append(msg, []byte(fmt.Sprintf("-XX0000-%012d", time.Now().UnixNano()%1e12))...)
	if _, err := c.Write(msg); err != nil {
		return false
	}
	buf := make([]byte, 68)
	if _, err := io.ReadFull(c, buf); err != nil {
		return false
	}
	return bytes.Equal(buf[28:48], ih)
}

// Non-member process: without the gossip key an agent can neither join
// the cluster nor get a torrent connection to a member; a member's
// address gets one (the positive control).
func TestNonMemberCannotJoinOrFetch(t *testing.T) {
	f := startFleet(t, 2, 36, func(int) []string { return []string{"--service", "web"} })
	deployV1(t, f, 1<<20)
	own, err := fleet.MakeSecrets(filepath.Join(t.TempDir(), "secrets"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	outsider, err := fleet.StartAgent(ctx, shoalBin, f.Consul.Addr, fleet.AgentSpec{Node: "outsider", IP: "127.0.36.10",
		DataDir: filepath.Join(t.TempDir(), "outsider"), Join: []string{"127.0.36.2"}, Args: []string{"--service", "web"}, Secrets: own})
	if err != nil {
		t.Fatal(err)
	}
	defer outsider.Stop()
	time.Sleep(5 * time.Second) // several join attempts and gossip rounds
	var members []swarm.Member
	client := func(a *fleet.Agent, s *fleet.Secrets) *http.Request {
		r := newReq(t, "GET", "http://"+a.API+"/v1/members", "", "Authorization", "Bearer "+s.Token())
		return r
	}
	for _, c := range []struct {
		a    *fleet.Agent
		s    *fleet.Secrets
		want int
	}{{f.Agents[0], f.Secrets, 2}, {outsider, own, 1}} {
		code, body := httpFrom(t, c.a.Spec.IP, client(c.a, c.s))
		if code != 200 || json.Unmarshal([]byte(body), &members) != nil {
			t.Fatalf("members of %s: %d %s", c.a.Spec.Node, code, body)
		}
		if len(members) != c.want {
			t.Errorf("%s sees %d members %v, want %d", c.a.Spec.Node, len(members), members, c.want)
		}
	}
	ih, err := hex.DecodeString(readManifest(t, f, "v1").InfoHash)
	if err != nil {
		t.Fatal(err)
	}
	torrent := "127.0.36.2:6881"
	if btHandshake(t, "127.0.36.10", torrent, ih) {
		t.Error("a non-member address got a torrent handshake from a member")
	}
	if !btHandshake(t, "127.0.36.3", torrent, ih) {
		t.Error("a member's address got no torrent handshake (the check above proves nothing)")
	}
	b, _ := os.ReadFile(outsider.Log)
	if !strings.Contains(string(b), "cannot join the cluster") {
		t.Errorf("the outsider's log does not say it cannot join:\n%s", tailLines(string(b), 10))
	}
}

// Fleet member gone bad: a host whose release (which it seeds from) was
// corrupted after it completed keeps offering pieces; a host fetching from it bans it on the
// first bad piece, completes from the others (here the origin), and says
// so in status.
func TestCorruptPeerIsBanned(t *testing.T) {
	f := startFleet(t, 3, 37, func(int) []string { return []string{"--service", "web"} })
	src := deployV1(t, f, 8<<20)
	bad := f.Agents[1]
	// Its release is what it serves (fetched into it): someone writes into it.
	damage(t, filepath.Join(bad.Spec.DataDir, "services", "web", "releases", "v1", "static", "blob.bin"), 1<<20, 6<<20, 0xa5)
	// The good seed leaves (cleanly, so it is not expected any more), so
	// the new host has the bad seed and the origin: it must meet the bad
	// pieces. (With a good seed beside it, the new host sometimes took
	// every piece from that one and never connected to the bad one in
	// 15 s — 2 runs in 8; not explained, see the session note.)
	f.Agents[2].Stop()
	f.Agents = f.Agents[:2]
	late := addAgent(t, f, "host-4", "127.0.37.5", filepath.Join(f.Dir, "host-4"))
	st, err := waitSettled(t, f, "web")
	if err != nil {
		t.Fatalf("did not settle: %v", err)
	}
	s := st["host-4"]
	if s.State != core.StateActive || s.Current != "v1" {
		t.Fatalf("host-4: %s on %q (%s)", s.State, s.Current, s.LastError)
	}
	sameTree(t, src, filepath.Join(late.Spec.DataDir, "services", "web", "current"))
	var rows []struct {
		Node   string   `json:"node"`
		Banned []string `json:"banned_peers"`
	}
	if err := json.Unmarshal([]byte(shoal(t, f, "status", "web", "--json")), &rows); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range rows {
		if r.Node == "host-4" {
			found = len(r.Banned) == 1 && strings.HasPrefix(r.Banned[0], "host-2")
			t.Logf("host-4 banned %v", r.Banned)
		}
	}
	if !found {
		t.Errorf("host-4 does not report host-2 banned: %+v", rows)
	}
	if b, _ := os.ReadFile(late.Log); !strings.Contains(string(b), `"component":"torrent"`) || !strings.Contains(string(b), "banned peer") {
		t.Errorf("host-4's log does not show the engine's ban:\n%s", tailLines(string(b), 15))
	}
	t.Logf("host-4 took %d bytes from peers, %d from the origin, for a %d byte build", s.Fetch.FromPeers, s.Fetch.FromOrigin, s.Fetch.Total)
}

// A build larger than the free space of a host's data dir is refused
// there before fetching, with the sizes in the message; the other hosts
// deploy it.
func TestBuildLargerThanFreeSpace(t *testing.T) {
	small := smallDisk(t, "16m")
	f := startFleet(t, 2, 38, func(int) []string { return []string{"--service", "web"} })
	tiny := addAgent(t, f, "tiny", "127.0.38.9", filepath.Join(small, "data"))
	src := filepath.Join(t.TempDir(), "v1")
	makeTree(t, src, 20<<20, "v1") // 20 MB > 16 MB (fetched into the release, a build needs its size once)
	shoal(t, f, "publish", "--service", "web", "--build", "v1", src)
	shoal(t, f, "deploy", "web", "v1")
	st, _ := waitSettled(t, f, "web")
	s := st["tiny"]
	if s.State != core.StateFailed || !strings.Contains(s.LastError, "not enough free disk space") || !strings.Contains(s.LastError, "before fetching") {
		t.Errorf("tiny: %s %q, want failed: not enough free disk space, before fetching", s.State, s.LastError)
	}
	if s.Fetch != nil {
		t.Errorf("tiny started a fetch: %+v", s.Fetch)
	}
	if got := buildBytes(tiny, "v1"); len(got) > 0 {
		t.Errorf("tiny has fetched bytes of v1: %v", got)
	}
	for _, a := range f.Agents[:2] {
		if s := st[a.Spec.Node]; s.State != core.StateActive || s.Current != "v1" {
			t.Errorf("%s: %s on %q", a.Spec.Node, s.State, s.Current)
		}
	}
}
