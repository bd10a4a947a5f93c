// Package agent is the Shoal daemon that runs on every host. It joins the
// swarm, watches each of its services' release key in Consul, and drives
// one deploy state machine per service:
//
//	idle → fetching → verifying → ready → draining → active
//	                                  ↘ failed (reason kept; live release untouched or restored)
//
// Each service's machine is owned by one goroutine: it is the only writer
// of that service's state, and publishes snapshots that the local HTTP API
// (GET /v1/status, /v1/health, /v1/fleet, /metrics, POST /v1/publish)
// reads. State is persisted under the data dir, so a restarted agent knows
// its releases, keeps seeding its archives and resumes interrupted fetches
// from the pieces it already verified.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/signal"
	"github.com/shoal-deploy/shoal/swap"
	"github.com/shoal-deploy/shoal/swarm"
)

// Version is set by the build (-ldflags -X).
var Version = "dev"

// Agent is one host's daemon.
type Agent struct {
	cfg   Config
	log   zerolog.Logger
	sig   *signal.Client
	swarm *swarm.Swarm
	ln    net.Listener

	mu       sync.RWMutex // guards services (the map; each service guards itself)
	services map[string]*service

	pubMu sync.Mutex // serialises publishes

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
	sig, err := signal.New(cfg.Consul, log.With().Str("component", "signal").Logger())
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.API)
	if err != nil {
		return nil, fmt.Errorf("agent: api listener on %s: %w", cfg.API, err)
	}
	sw, err := swarm.New(cfg.Swarm, log.With().Str("component", "swarm").Logger())
	if err != nil {
		ln.Close()
		return nil, err
	}
	a := &Agent{cfg: cfg, log: log, sig: sig, swarm: sw, ln: ln, services: map[string]*service{}}
	a.origin = newOriginServer(a)
	sw.SetOriginURL(a.originURL)
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

func (a *Agent) close() {
	a.ln.Close()
	a.swarm.Close()
}

// Run serves until ctx is done, then stops every goroutine it started and
// returns nil. Interrupted work resumes on the next start.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer a.close()
	srv := &http.Server{Handler: a.routes(), ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(a.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("agent: api: %w", err)
			cancel()
		}
	}()
	wg.Add(1)
	go func() { defer wg.Done(); _ = a.swarm.Run(ctx) }()
	a.reseed(ctx)
	a.mu.RLock()
	for _, s := range a.services {
		wg.Add(1)
		go func(s *service) { defer wg.Done(); s.run(ctx) }(s)
	}
	a.mu.RUnlock()
	a.log.Info().Str("node", a.cfg.Swarm.Node).Str("api", a.cfg.API).Str("gossip", a.swarm.GossipAddr()).
		Str("torrent", a.swarm.TorrentAddr()).Str("consul", a.sig.Address()).Str("version", Version).Msg("agent running")
	<-ctx.Done()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = srv.Shutdown(sctx)
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

// reseed offers every archive this host has (or had begun) to the swarm
// again, so a restarted host keeps serving its builds.
func (a *Agent) reseed(ctx context.Context) {
	for _, m := range a.knownManifests() {
		if _, err := os.Stat(a.swarm.ArchivePath(m.Service, m.Build)); err != nil {
			continue
		}
		if _, err := a.swarm.Add(ctx, m); err != nil {
			a.log.Warn().Err(err).Str("service", m.Service).Str("build", m.Build).Msg("cannot re-seed archive")
		}
	}
}

func (a *Agent) manifestPath(service, build string) string {
	return filepath.Join(a.cfg.DataDir, "manifests", service+"@"+build+".json")
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

// PublishRequest asks the agent to publish a directory as a build.
type PublishRequest struct {
	Service string `json:"service"`
	Build   string `json:"build"`
	// Dir is an absolute path on this host.
	Dir string `json:"dir"`
}

// Publish packs req.Dir into an archive in the swarm's store, hashes it,
// writes the manifest to Consul (never overwriting a different build of
// the same name) and seeds it. This host becomes the build's origin.
func (a *Agent) Publish(ctx context.Context, req PublishRequest) (*core.Manifest, error) {
	a.pubMu.Lock()
	defer a.pubMu.Unlock()
	if err := core.ValidName("service", req.Service); err != nil {
		return nil, err
	}
	if err := core.ValidName("build", req.Build); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(req.Dir) {
		return nil, fmt.Errorf("agent: publish: directory %q must be absolute", req.Dir)
	}
	if old, err := a.sig.Manifest(ctx, req.Service, req.Build); err == nil {
		if _, statErr := os.Stat(a.swarm.ArchivePath(old.Service, old.Build)); statErr == nil && old.Origin == a.cfg.Swarm.Node {
			return old, nil // already published from here
		}
		return nil, fmt.Errorf("agent: publish %s/%s: %w by %s at %s; pick a new build name", req.Service, req.Build,
			signal.ErrBuildExists, old.Origin, old.PublishedAt.Format(time.RFC3339))
	} else if !errors.Is(err, signal.ErrNotFound) {
		return nil, err
	}
	start := time.Now()
	path := a.swarm.ArchivePath(req.Service, req.Build)
	tmp, err := os.CreateTemp(filepath.Dir(path), ".pack-*")
	if err != nil {
		return nil, fmt.Errorf("agent: publish: %w", err)
	}
	defer os.Remove(tmp.Name())
	files, err := swap.Pack(req.Dir, tmp)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("agent: publish %s/%s: %w", req.Service, req.Build, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, fmt.Errorf("agent: publish: %w", err)
	}
	m := &core.Manifest{Service: req.Service, Build: req.Build, Origin: a.cfg.Swarm.Node, Files: files, PublishedAt: time.Now().UTC()}
	if err := a.swarm.Describe(m); err != nil {
		os.Remove(path)
		return nil, err
	}
	if err := a.saveManifest(m); err != nil {
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
	a.log.Info().Str("service", m.Service).Str("build", m.Build).Int64("bytes", m.Size).Int("files", files).
		Str("sha256", m.SHA256).Int64("piece_length", m.PieceLength).Dur("took", time.Since(start)).Msg("published")
	return m, nil
}

// Status is what GET /v1/status returns.
type Status struct {
	Node     string          `json:"node"`
	Version  string          `json:"version"`
	API      string          `json:"api"`
	Gossip   string          `json:"gossip"`
	Torrent  string          `json:"torrent"`
	Members  int             `json:"members"`
	Services []ServiceStatus `json:"services"`
}

// Status snapshots every service.
func (a *Agent) Status() Status {
	st := Status{Node: a.cfg.Swarm.Node, Version: Version, API: a.cfg.API, Gossip: a.swarm.GossipAddr(),
		Torrent: a.swarm.TorrentAddr(), Members: len(a.swarm.Members())}
	a.mu.RLock()
	for _, s := range a.services {
		st.Services = append(st.Services, s.snapshot())
	}
	a.mu.RUnlock()
	sort.Slice(st.Services, func(i, j int) bool { return st.Services[i].Service < st.Services[j].Service })
	return st
}

// writeFileAtomic replaces path with b via a temp file and rename, so
// readers and a restarted agent see the old or the new content, never a
// mix. With durable it also fsyncs, to survive a power loss; state that is
// cheap to rebuild skips that (an fsync per transition on 40 busy agents
// sharing a disk delayed the start of fetches by hundreds of milliseconds).
func writeFileAtomic(path string, b []byte, durable bool) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("agent: write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b)
	if err == nil && durable {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("agent: write %s: %w", path, err)
	}
	return nil
}
