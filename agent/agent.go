// Package agent is the Shoal daemon that runs on every host. It joins the
// swarm, watches each of its services' release key in Consul, and drives
// one deploy state machine per service:
//
//	idle → fetching → verifying → ready → draining → active
//	                                  ↘ failed (reason kept; live release untouched or restored)
//
// Each service's machine is owned by one goroutine: it is the only writer
// of that service's state, and publishes snapshots that the two HTTP APIs
// read: the control API (loopback, a unix socket, or a token; see api.go)
// for the CLI and operators, and the peer API that only fleet members can
// reach (piece ranges, the origin's hand-out, fleet status).
//
// A build runs here only if its manifest is signed by a trusted key (see
// package trust); that is checked before a byte is fetched. State is persisted under the data dir, so a restarted agent knows
// its releases, keeps seeding its archives and resumes interrupted fetches
// from the pieces it already verified.
package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/signal"
	"github.com/shoal-deploy/shoal/swap"
	"github.com/shoal-deploy/shoal/swarm"
	"github.com/shoal-deploy/shoal/trust"
)

// Version is set by the build (-ldflags -X).
var Version = "dev"

// Agent is one host's daemon.
type Agent struct {
	cfg   Config
	log   zerolog.Logger
	sig   *signal.Client
	swarm *swarm.Swarm
	ln    net.Listener // control API
	pln   net.Listener // peer API
	keys  *trust.Keyring
	token string // control API token; "" if none

	mu       sync.RWMutex // guards services (the map; each service guards itself)
	services map[string]*service

	pubMu  sync.Mutex                // serialises publishes; guards drafts
	drafts map[string]*core.Manifest // packed, not yet signed and published, by service@build
	dirs   map[string]string         // the directory each draft was packed from

	trustedMu sync.RWMutex              // guards trusted
	trusted   map[string]*core.Manifest // manifests that passed checkTrust, by service@build

	origin *originServer
}

// New validates cfg, opens the data dir and starts listening (API, gossip,
// chunk transfer). Nothing runs until Run.
func New(cfg Config, log zerolog.Logger) (*Agent, error) {
	if err := cfg.Finish(); err != nil {
		return nil, err
	}
	for _, d := range []string{cfg.DataDir, filepath.Join(cfg.DataDir, "manifests")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("agent: data dir: %w", err)
		}
	}
	gossipKeys, keys, err := cfg.secrets()
	if err != nil {
		return nil, err
	}
	cfg.Swarm.SecretKeys = gossipKeys
	token := ""
	if cfg.APIToken != "" {
		if token, err = trust.ReadValue(cfg.APIToken); err != nil {
			return nil, err
		}
	}
	sig, err := signal.New(cfg.Consul, log.With().Str("component", "signal").Logger())
	if err != nil {
		return nil, err
	}
	ln, err := listen(cfg.API)
	if err != nil {
		return nil, fmt.Errorf("agent: control api listener on %s: %w", cfg.API, err)
	}
	pln, err := net.Listen("tcp", cfg.PeerAPI)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("agent: peer api listener on %s: %w", cfg.PeerAPI, err)
	}
	var a *Agent
	if cfg.FetchInto == FetchIntoRelease {
		cfg.Swarm.TreeDir = func(service, build string) (string, bool) { return a.treeDir(service, build) }
	}
	sw, err := swarm.New(cfg.Swarm, log.With().Str("component", "swarm").Logger())
	if err != nil {
		ln.Close()
		pln.Close()
		return nil, err
	}
	a = &Agent{cfg: cfg, log: log, sig: sig, swarm: sw, ln: ln, pln: pln, keys: keys, token: token,
		services: map[string]*service{}, drafts: map[string]*core.Manifest{}, dirs: map[string]string{}, trusted: map[string]*core.Manifest{}}
	a.origin = newOriginServer(a)
	sw.SetOriginURL(a.originURL)
	sw.SetRepairSource(a.repackSource)
	for name, sc := range cfg.Services {
		st, err := swap.Open(filepath.Join(cfg.DataDir, "services", name), log)
		if err != nil {
			a.close()
			return nil, err
		}
		a.services[name] = newService(a, name, sc, st)
	}
	return a, nil
}

// treeDir is where a build of a service this host runs is fetched with
// fetch_into release: its installed release (read only), or the store's
// fetch dir. A build of another service is fetched as an archive.
func (a *Agent) treeDir(service, build string) (string, bool) {
	s := a.services[service]
	if s == nil {
		return "", false
	}
	if s.store.Has(build) {
		return s.store.ReleaseDir(build), true
	}
	return s.store.FetchDir(build), false
}

func (a *Agent) close() {
	a.ln.Close()
	a.pln.Close()
	a.swarm.Close()
}

// listen opens the control API: "unix:/path" (mode 0600, a stale socket
// replaced) or a TCP host:port.
func listen(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		return net.Listen("tcp", addr)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Run serves until ctx is done, then stops every goroutine it started and
// returns nil. Interrupted work resumes on the next start.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer a.close()
	srv := &http.Server{Handler: a.controlRoutes(), ReadHeaderTimeout: 10 * time.Second}
	psrv := &http.Server{Handler: a.peerRoutes(), ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	serve := func(name string, srv *http.Server, ln net.Listener) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("agent: %s api: %w", name, err)
				cancel()
			}
		}()
	}
	serve("control", srv, a.ln)
	serve("peer", psrv, a.pln)
	wg.Add(1)
	go func() { defer wg.Done(); _ = a.swarm.Run(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); a.stayRegistered(ctx) }()
	a.reseed(ctx)
	a.mu.RLock()
	for _, s := range a.services {
		wg.Add(1)
		go func(s *service) { defer wg.Done(); s.run(ctx) }(s)
	}
	a.mu.RUnlock()
	a.log.Info().Str("node", a.cfg.Swarm.Node).Str("api", a.cfg.API).Str("peer_api", a.cfg.PeerAPI).Str("gossip", a.swarm.GossipAddr()).
		Str("torrent", a.swarm.TorrentAddr()).Str("consul", a.sig.Address()).Str("version", Version).
		Int("procs", runtime.GOMAXPROCS(0)).Strs("trusted_keys", a.keys.IDs()).Bool("gossip_encrypted", len(a.cfg.Swarm.SecretKeys) > 0).Msg("agent running")
	if a.cfg.InsecureDev {
		a.log.Warn().Msg(insecureWarning)
	}
	<-ctx.Done()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = srv.Shutdown(sctx)
	_ = psrv.Shutdown(sctx)
	scancel()
	wg.Wait()
	a.log.Info().Msg("agent stopped")
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// stayRegistered keeps this host in Consul's catalog as one that should
// run its services (see signal.Register), re-registering after Consul
// comes back or loses its data, and leaves the catalog on a clean stop. A
// host that dies stays registered with a failing check, so `shoal status
// --wait` names it instead of counting only the hosts that are left.
func (a *Agent) stayRegistered(ctx context.Context) {
	services := make([]string, 0, len(a.cfg.Services))
	for name := range a.cfg.Services {
		services = append(services, name)
	}
	sort.Strings(services)
	_, portStr, _ := net.SplitHostPort(a.cfg.PeerAPI)
	port, _ := strconv.Atoi(portStr)
	node := a.cfg.Swarm.Node
	registered := false
	tick := time.NewTicker(signal.HostTTL / 3)
	defer tick.Stop()
	for {
		var err error
		if registered {
			err = a.sig.Heartbeat(ctx, node)
		}
		if !registered || err != nil {
			if err = a.sig.Register(ctx, node, a.cfg.Swarm.BindAddr, port, services, a.cfg.Tags); err == nil {
				registered = true
			}
		}
		if err != nil && ctx.Err() == nil {
			registered = false
			a.log.Debug().Err(err).Msg("cannot register in Consul's catalog yet; will retry")
		}
		select {
		case <-ctx.Done():
			if registered {
				if err := a.sig.Deregister(context.WithoutCancel(ctx), node); err != nil {
					a.log.Warn().Err(err).Msg("cannot leave Consul's catalog; the host will show as down there")
				}
			}
			return
		case <-tick.C:
		}
	}
}

// insecureWarning is logged at start and shown in every status line of a dev-mode agent.
const insecureWarning = "INSECURE DEV MODE: unsigned builds are accepted and gossip is not encrypted; never run this on a real fleet"

// reseed offers every archive this host has (or had begun) to the swarm
// again, so a restarted host keeps serving its builds. A local manifest
// is re-checked first: a file changed on disk is not trusted.
func (a *Agent) reseed(ctx context.Context) {
	for _, m := range a.knownManifests() {
		if !a.swarm.Has(m.Service, m.Build) {
			continue
		}
		if err := a.checkTrust(m); err != nil {
			a.log.Warn().Err(err).Str("service", m.Service).Str("build", m.Build).Msg("not re-seeding an archive whose manifest is not trusted")
			continue
		}
		x, err := a.swarm.Add(ctx, m)
		if err != nil {
			a.log.Warn().Err(err).Str("service", m.Service).Str("build", m.Build).Msg("cannot re-seed archive")
			continue
		}
		a.swarm.CheckBeforeServing(x)
	}
}

func (a *Agent) manifestPath(service, build string) string {
	return filepath.Join(a.cfg.DataDir, "manifests", service+"@"+build+".json")
}

// sourcePath records the directory a build this host published came from.
func (a *Agent) sourcePath(service, build string) string {
	return filepath.Join(a.cfg.DataDir, "manifests", service+"@"+build+".source")
}

// repackSource packs again the directory this host published m from, for
// the swarm to repair a damaged origin copy (each piece is checked against
// its hash before it is used, so a directory changed since is harmless).
func (a *Agent) repackSource(m *core.Manifest) (io.ReadCloser, error) {
	b, err := os.ReadFile(a.sourcePath(m.Service, m.Build))
	if err != nil {
		return nil, fmt.Errorf("no record of where %s/%s was published from (%w): only peers can repair it", m.Service, m.Build, err)
	}
	dir, err := a.publishDir(string(b))
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := swap.Pack(dir, pw)
		pw.CloseWithError(err)
	}()
	return pr, nil
}

func (a *Agent) saveManifest(m *core.Manifest) error {
	b, err := core.MarshalManifest(m)
	if err != nil {
		return err
	}
	return writeFileAtomic(a.manifestPath(m.Service, m.Build), b, false) // a cache of Consul's copy
}

func (a *Agent) knownManifests() []*core.Manifest {
	files, _ := filepath.Glob(filepath.Join(a.cfg.DataDir, "manifests", "*.json"))
	var out []*core.Manifest
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if m, err := core.UnmarshalManifest(b); err == nil {
			out = append(out, m)
		}
	}
	return out
}

// PublishRequest asks the agent to pack a directory on this host as a build.
type PublishRequest struct {
	Service string `json:"service"`
	Build   string `json:"build"`
	// Dir is an absolute path on this host, inside publish_roots if set.
	Dir string `json:"dir"`
	// AllowEmpty publishes a directory with nothing in it (refused otherwise).
	AllowEmpty bool `json:"allow_empty,omitempty"`
}

// PublishResponse is the manifest of a packed build. Published is true if
// Consul already holds it (the same content was published before):
// nothing more to do. Otherwise it is a draft for the publisher to sign
// and hand back with Commit.
type PublishResponse struct {
	Manifest  *core.Manifest `json:"manifest"`
	Published bool           `json:"published"`
}

// Publish packs req.Dir into an archive in the swarm's store and hashes
// it; this host becomes the build's origin. The manifest it returns is a
// draft: nothing reaches Consul and nothing is seeded until Commit gets it
// back signed. Re-publishing the same content
// under the same name is a no-op; different content is ErrBuildExists.
func (a *Agent) Publish(ctx context.Context, req PublishRequest) (*PublishResponse, error) {
	a.pubMu.Lock()
	defer a.pubMu.Unlock()
	if err := core.ValidName("service", req.Service); err != nil {
		return nil, err
	}
	if err := core.ValidName("build", req.Build); err != nil {
		return nil, err
	}
	dir, err := a.publishDir(req.Dir)
	if err != nil {
		return nil, err
	}
	old, err := a.sig.Manifest(ctx, req.Service, req.Build)
	if err != nil && !errors.Is(err, signal.ErrNotFound) {
		return nil, err
	}
	start := time.Now()
	path := a.swarm.ArchivePath(req.Service, req.Build)
	tmp, err := os.CreateTemp(filepath.Dir(path), ".pack-*")
	if err != nil {
		return nil, fmt.Errorf("agent: publish: %w", err)
	}
	defer os.Remove(tmp.Name())
	// Hash while packing only to compare with a build already published
	// under this name; a new build is hashed once, by Describe.
	h := sha256.New()
	var w io.Writer = tmp
	if old != nil {
		w = io.MultiWriter(tmp, h)
	}
	ps, err := swap.Pack(dir, w)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("agent: publish %s/%s: %w", req.Service, req.Build, err)
	}
	if ps.Entries == 0 && !req.AllowEmpty {
		return nil, fmt.Errorf("agent: publish %s/%s: %s is empty; a build needs at least one file (or --allow-empty)", req.Service, req.Build, dir)
	}
	if old != nil {
		if sum := hex.EncodeToString(h.Sum(nil)); sum != old.SHA256 {
			return nil, fmt.Errorf("agent: publish %s/%s: %w by %s at %s (sha256 %s…, this directory packs to %s…); pick a new build name",
				req.Service, req.Build, signal.ErrBuildExists, old.Origin, old.PublishedAt.Format(time.RFC3339), old.SHA256[:12], sum[:12])
		}
		return &PublishResponse{Manifest: old, Published: true}, nil
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, fmt.Errorf("agent: publish: %w", err)
	}
	m := &core.Manifest{Service: req.Service, Build: req.Build, Origin: a.cfg.Swarm.Node, Files: ps.Entries,
		UnpackedSize: ps.Bytes, PublishedAt: time.Now().UTC()}
	if err := a.swarm.Describe(m); err != nil {
		os.Remove(path)
		return nil, err
	}
	// Not seeded yet: a draft is nobody's to fetch (whoever asked for it
	// learns its info hash, and the torrent port admits any process on a
	// member's address).
	a.drafts[m.Service+"@"+m.Build] = m
	a.dirs[m.Service+"@"+m.Build] = dir
	a.log.Info().Str("service", m.Service).Str("build", m.Build).Int64("bytes", m.Size).Int("files", ps.Entries).
		Int64("unpacked_bytes", ps.Bytes).Str("sha256", m.SHA256).Int64("piece_length", m.PieceLength).
		Dur("took", time.Since(start)).Msg("packed; waiting for the signed manifest")
	return &PublishResponse{Manifest: m}, nil
}

// publishDir resolves dir (absolute, a directory, inside publish_roots if set).
func (a *Agent) publishDir(dir string) (string, error) {
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("agent: publish: directory %q must be absolute", dir)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", fmt.Errorf("agent: publish: %w", err)
	}
	if fi, err := os.Stat(real); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("agent: publish: %s is not a directory", dir)
	}
	if len(a.cfg.PublishRoots) == 0 {
		return real, nil
	}
	for _, root := range a.cfg.PublishRoots {
		r, err := filepath.EvalSymlinks(root)
		if err != nil {
			continue
		}
		if rel, err := filepath.Rel(r, real); err == nil && filepath.IsLocal(rel) {
			return real, nil
		}
	}
	return "", fmt.Errorf("agent: publish: %s is outside this agent's publish_roots %v", dir, a.cfg.PublishRoots)
}

// Commit takes back a draft from Publish, signed by the publisher: the
// manifest must match the draft in every field but the signature, and the
// signature must verify under a trusted key (dev mode also takes it
// unsigned). Then this host seeds it, and it goes to Consul (create-only).
func (a *Agent) Commit(ctx context.Context, m *core.Manifest) (*core.Manifest, error) {
	a.pubMu.Lock()
	defer a.pubMu.Unlock()
	if err := m.Validate(); err != nil {
		return nil, err
	}
	key := m.Service + "@" + m.Build
	draft := a.drafts[key]
	if draft == nil {
		return nil, fmt.Errorf("agent: publish %s/%s: no packed draft on this agent (it restarted, or was never asked); run `shoal publish` again", m.Service, m.Build)
	}
	unsigned := *m
	unsigned.KeyID, unsigned.Signature = "", nil
	a1, _ := core.MarshalManifest(&unsigned)
	a2, _ := core.MarshalManifest(draft)
	if !bytes.Equal(a1, a2) {
		return nil, fmt.Errorf("agent: publish %s/%s: the signed manifest differs from what this agent packed; run `shoal publish` again", m.Service, m.Build)
	}
	if err := a.checkTrust(m); err != nil {
		return nil, fmt.Errorf("agent: publish %s/%s: %w", m.Service, m.Build, err)
	}
	if err := a.saveManifest(m); err != nil {
		return nil, err
	}
	// Where it came from, to repair this origin's copy should it go bad
	// before another host has it (see repackSource).
	if err := writeFileAtomic(a.sourcePath(m.Service, m.Build), []byte(a.dirs[key]), false); err != nil {
		return nil, err
	}
	x, err := a.swarm.Add(ctx, m)
	if err != nil {
		return nil, err
	}
	// The engine hashes the archive before it will serve it; wait, so a
	// deploy right after publish finds the origin ready.
	if err := x.Wait(ctx); err != nil {
		return nil, fmt.Errorf("agent: publish %s/%s: seeding: %w", m.Service, m.Build, err)
	}
	if err := a.sig.PublishManifest(ctx, m); err != nil {
		return nil, err
	}
	delete(a.drafts, key)
	delete(a.dirs, key)
	a.log.Info().Str("service", m.Service).Str("build", m.Build).Str("key", m.KeyID).Msg("published")
	return m, nil
}

// checkTrust accepts m if its signature verifies under a trusted key (or,
// in dev mode, if it is unsigned) and remembers it as servable to peers.
func (a *Agent) checkTrust(m *core.Manifest) error {
	if err := a.keys.Verify(m); err != nil {
		if !a.cfg.InsecureDev || !errors.Is(err, trust.ErrUnsigned) {
			return err
		}
		a.log.Warn().Str("service", m.Service).Str("build", m.Build).Msg("accepting an unsigned build: " + insecureWarning)
	}
	a.trustedMu.Lock()
	a.trusted[m.Service+"@"+m.Build] = m
	a.trustedMu.Unlock()
	return nil
}

// forgetTrusted stops serving a build to peers.
func (a *Agent) forgetTrusted(service, build string) {
	a.trustedMu.Lock()
	delete(a.trusted, service+"@"+build)
	a.trustedMu.Unlock()
}

// trustedManifest is m if it passed checkTrust on this host, else nil.
func (a *Agent) trustedManifest(service, build string) *core.Manifest {
	a.trustedMu.RLock()
	defer a.trustedMu.RUnlock()
	return a.trusted[service+"@"+build]
}

// Status is what GET /v1/status returns.
type Status struct {
	Node     string          `json:"node"`
	Version  string          `json:"version"`
	API      string          `json:"api"`
	Gossip   string          `json:"gossip"`
	Torrent  string          `json:"torrent"`
	Members  int             `json:"members"`
	Tags     []string        `json:"tags,omitempty"`
	Services []ServiceStatus `json:"services"`
}

// Status snapshots every service.
func (a *Agent) Status() Status {
	st := Status{Node: a.cfg.Swarm.Node, Version: Version, API: a.cfg.API, Gossip: a.swarm.GossipAddr(),
		Torrent: a.swarm.TorrentAddr(), Members: len(a.swarm.Members()), Tags: a.cfg.Tags}
	a.mu.RLock()
	for _, s := range a.services {
		st.Services = append(st.Services, s.snapshot())
	}
	a.mu.RUnlock()
	sort.Slice(st.Services, func(i, j int) bool { return st.Services[i].Service < st.Services[j].Service })
	return st
}

// writeFileAtomic replaces path with b atomically (swap.WriteFile),
// readable by the agent's user only.
func writeFileAtomic(path string, b []byte, durable bool) error {
	if err := swap.WriteFile(path, b, 0o600, durable); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}
