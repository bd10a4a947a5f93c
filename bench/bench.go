// Package bench measures what Shoal exists for: the time to get a build to
// every host of a fleet, as the fleet grows. It runs real fleets (a Consul
// dev agent, an origin agent and N `shoal agent` processes), publishes a
// random build from the origin, deploys it with one Consul write and reads
// each host's state history to time the signal, the verified copy and the
// switch. It compares Shoal's swarm ("p2p") with the pre-swarm baseline
// ("origin": every host pulls over HTTP from the origin) under the same
// per-host caps, and against the fluid lower bound T* (Kumar & Ross, 2006).
package bench

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/fleet"
	"github.com/shoal-deploy/shoal/signal"
	"github.com/shoal-deploy/shoal/swap"
	"github.com/shoal-deploy/shoal/swarm"
)

// Config is one bench invocation.
type Config struct {
	ShoalBin, ConsulBin string
	// Hosts lists the fleet sizes N to sweep (fetching hosts, origin not counted).
	Hosts []int
	// Size is the build size in bytes.
	Size int64
	// Up and Down cap every host's (and the origin's) upload and download, bytes/s.
	Up, Down int64
	// Runs per method and N.
	Runs int
	// Out is where JSON lines and plots go.
	Out string
	// Net is "loopback" (caps by Shoal's rate limiters) or "netns" (caps by tc; needs root).
	Net string
	// MTU of every link in netns mode (default 1500; 9000 is a jumbo-frame datacenter network).
	MTU int
	// Methods: "p2p" and/or "origin".
	Methods []string
	// Timeout bounds one run. Default 10m.
	Timeout time.Duration
	// Progress receives a progress line now and then; may be nil.
	Progress io.Writer
	// Keep leaves the work directory (agent logs and data dirs) in place.
	Keep bool
	// AgentArgs are added to every agent's command line (e.g.
	// "--handout=off", "--peer-set=20"), to measure a setting; recorded
	// in each result.
	AgentArgs []string
	// Profile, if set, records a CPU profile of the median fetching host
	// for this long from the Consul write, and its heap at the end of the
	// run, into Out (p2p and origin runs).
	Profile time.Duration
}

// Validate checks the config.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Hosts) == 0 {
		errs = append(errs, errors.New("bench: no fleet sizes (--hosts)"))
	}
	for _, n := range c.Hosts {
		if n < 1 || n > 200 {
			errs = append(errs, fmt.Errorf("bench: fleet size %d: want 1..200", n))
		}
	}
	if c.Size < 1<<10 {
		errs = append(errs, fmt.Errorf("bench: size %d: want at least 1 KiB", c.Size))
	}
	if c.Up < 0 || c.Down < 0 {
		errs = append(errs, errors.New("bench: rates must not be negative"))
	}
	if c.Runs < 1 {
		errs = append(errs, errors.New("bench: --runs must be at least 1"))
	}
	if c.Net != "loopback" && c.Net != "netns" {
		errs = append(errs, fmt.Errorf("bench: --net %q: use loopback or netns", c.Net))
	}
	for _, m := range c.Methods {
		if m != "p2p" && m != "origin" && m != "bittorrent" {
			errs = append(errs, fmt.Errorf("bench: method %q: use p2p, origin or bittorrent", m))
		}
	}
	if c.Out == "" {
		errs = append(errs, errors.New("bench: --out is required"))
	}
	return errors.Join(errs...)
}

// Result is one run: one JSON line in results.jsonl.
type Result struct {
	Time   time.Time `json:"time"`
	Commit string    `json:"commit,omitempty"`
	Method string    `json:"method"`
	Net    string    `json:"net"`
	N      int       `json:"n"`
	Run    int       `json:"run"`
	Size   int64     `json:"size"`
	Up     int64     `json:"up"`
	Down   int64     `json:"down"`
	MTU    int       `json:"mtu,omitempty"`
	// AgentArgs is what the run's agents were given beyond the defaults.
	AgentArgs []string `json:"agent_args,omitempty"`
	// Seconds from the Consul write until each fetching host had a
	// verified copy (Verified) and until it was active (Active).
	Verified Summary `json:"verified"`
	Active   Summary `json:"active"`
	// Signal is Consul write → agent starts fetching, over every host.
	Signal Summary `json:"signal"`
	// HostVerified are the per-host verified times, for the CDF.
	HostVerified []float64 `json:"host_verified"`
	OriginBytes  int64     `json:"origin_bytes"`
	OriginX      float64   `json:"origin_x"`
	PeerBytes    int64     `json:"peer_bytes"`
	// CPU is CPU seconds per agent during the run; RSS peak resident MiB
	// per agent, RSSStart what each was resident with when the run began
	// (an agent's peak cannot be below what it already holds).
	CPU         Summary `json:"cpu_s"`
	RSSMiB      Summary `json:"rss_mib"`
	RSSStartMiB Summary `json:"rss_start_mib"`
	// Machine is the whole machine's CPU during the run (Consul, the
	// kernel's packet work and the harness included); CPUPerGB is that per
	// GB delivered (N copies); HostCPUPerGB the median fetching host's
	// process CPU per GB it received.
	Machine      MachineCPU `json:"machine_cpu"`
	CPUPerGB     float64    `json:"cpu_s_per_gb"`
	HostCPUPerGB float64    `json:"host_cpu_s_per_gb"`
	// Counters is the median fetching host's swarm counters for the run
	// (messages received by type, requests sent, connections, offers).
	Counters map[string]float64 `json:"counters,omitempty"`
	// Bound is T* in seconds; Ratio is Verified.Max / Bound.
	Bound  float64 `json:"bound_s"`
	Ratio  float64 `json:"ratio"`
	Failed int     `json:"failed"`
	Error  string  `json:"error,omitempty"`
	// Timeline samples the run every timelineEvery (2 s), to see where time goes.
	Timeline []Sample `json:"timeline,omitempty"`
}

// Sample is the fleet at one moment of a run: seconds since the Consul
// write, bytes the origin has sent, verified bytes on each fetching host.
type Sample struct {
	T        float64 `json:"t"`
	Origin   int64   `json:"origin"`
	Verified []int64 `json:"verified"`
	// FromPeers is each host's bytes from hosts other than the origin;
	// Peers how many peers it is connected to.
	FromPeers []int64 `json:"from_peers"`
	Peers     []int   `json:"peers"`
}

// Run sweeps methods × N × runs and returns every result. Partial results
// are returned with the error if a run fails.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Minute
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "shoal-bench-")
	if err != nil {
		return nil, err
	}
	if cfg.Keep {
		cfg.progress("keeping agent logs and data in %s", work)
	} else {
		defer os.RemoveAll(work)
	}
	payload := filepath.Join(work, "payload.bin")
	if err := randomFile(payload, cfg.Size); err != nil {
		return nil, err
	}
	var results []Result
	for _, method := range cfg.Methods {
		for _, n := range cfg.Hosts {
			rs, err := runFleet(ctx, cfg, method, n, work, payload)
			results = append(results, rs...)
			if err != nil {
				return results, err
			}
		}
	}
	return results, nil
}

func randomFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	_, err = io.CopyN(f, rand.Reader, size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (c *Config) progress(format string, args ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, format+"\n", args...)
	}
}

const service = "bench"

// runFleet starts one fleet (origin + n agents) for a method and does every run on it.
func runFleet(ctx context.Context, cfg Config, method string, n int, work, payload string) ([]Result, error) {
	if method == "bittorrent" {
		return runBitTorrent(ctx, cfg, n, work, payload)
	}
	fetch := agent.FetchSwarm
	if method == "origin" {
		fetch = agent.FetchOrigin
	}
	level := "warn"
	if cfg.Keep {
		level = "info" // kept for a post-mortem: say what happened
	}
	opts := fleet.Options{ShoalBin: cfg.ShoalBin, ConsulBin: cfg.ConsulBin, N: n + 1, Net: "127.0.60", Gossip: "lan",
		Dir: filepath.Join(work, fmt.Sprintf("%s-%d", method, n)),
		Args: func(int) []string {
			a := []string{"--service", service, "--fetch", fetch, "--peer-refresh", "1s", "--log-level", level, "--keep", "2", "--pprof"}
			a = append(a, cfg.AgentArgs...)
			if cfg.Net == "loopback" {
				if cfg.Up > 0 {
					a = append(a, "--upload-rate", strconv.FormatInt(cfg.Up, 10))
				}
				if cfg.Down > 0 {
					a = append(a, "--download-rate", strconv.FormatInt(cfg.Down, 10))
				}
			}
			return a
		}}
	if !cfg.Keep {
		// Each fleet's data goes when it is done: a sweep kept every
		// fleet's until the end and filled a 252 GB disk at N = 80.
		defer os.RemoveAll(opts.Dir)
	}
	if err := checkRoom(work, n+1, cfg); err != nil {
		return nil, err
	}
	if cfg.Net == "netns" {
		topo, err := NewTopology(ctx, n+1, cfg.Up, cfg.Down, cfg.MTU)
		if err != nil {
			return nil, err
		}
		defer topo.Close()
		opts.IP, opts.Wrap = topo.HostIP, topo.HostWrap
		opts.ConsulIP, opts.ConsulWrap = topo.ConsulIP(), topo.ConsulWrap()
	}
	cfg.progress("[%s N=%d] starting consul and %d agents (%s)", method, n, n+1, cfg.Net)
	f, err := fleet.Start(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("bench: start fleet of %d: %w", n+1, err)
	}
	defer f.Stop()
	sig, err := signal.New(signal.Config{Address: f.Consul.Addr}, zerolog.Nop())
	if err != nil {
		return nil, err
	}
	if err := waitFleet(ctx, f, n+1); err != nil {
		return nil, err
	}
	var out []Result
	for run := 1; run <= cfg.Runs; run++ {
		r, err := runOnce(ctx, cfg, f, sig, method, n, run, work, payload)
		out = append(out, r)
		if err != nil {
			return out, err
		}
		cfg.progress("[%s N=%d run %d/%d] last host verified %.2fs (T* %.2fs, x%.2f), signal p99 %.3fs, origin sent %.2f x S",
			method, n, run, cfg.Runs, r.Verified.Max, r.Bound, r.Ratio, r.Signal.P99, r.OriginX)
	}
	return out, nil
}

func waitFleet(ctx context.Context, f *fleet.Fleet, want int) error {
	deadline := time.Now().Add(90 * time.Second)
	seen := ""
	for time.Now().Before(deadline) {
		hosts, err := fleetStatus(ctx, f)
		if err != nil {
			seen = err.Error()
		} else {
			ok := len(hosts) == want
			var views []string
			for _, h := range hosts {
				if h.Status == nil {
					ok = false
					views = append(views, h.Member.Name+": "+h.Error)
				} else if h.Status.Members != want {
					ok = false
					views = append(views, fmt.Sprintf("%s sees %d", h.Member.Name, h.Status.Members))
				}
			}
			if ok {
				return nil
			}
			seen = fmt.Sprintf("%d members listed; %s", len(hosts), strings.Join(views, ", "))
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("bench: fleet of %d did not converge in 90s (%s)", want, seen)
}

func runOnce(ctx context.Context, cfg Config, f *fleet.Fleet, sig *signal.Client, method string, n, run int, work, payload string) (Result, error) {
	res := Result{Time: time.Now().UTC(), Commit: agent.Version, Method: method, Net: cfg.Net, N: n, Run: run,
		Size: cfg.Size, Up: cfg.Up, Down: cfg.Down, AgentArgs: cfg.AgentArgs}
	if cfg.Net == "netns" {
		res.MTU = max(cfg.MTU, 1500)
	}
	build := fmt.Sprintf("%s-n%d-r%d-%d", method, n, run, time.Now().Unix())
	src := filepath.Join(work, "src-"+build)
	if err := os.MkdirAll(src, 0o755); err != nil {
		return res, err
	}
	defer os.RemoveAll(src)
	if err := os.Link(payload, filepath.Join(src, "payload.bin")); err != nil {
		return res, err
	}
	if err := os.WriteFile(filepath.Join(src, "BUILD"), []byte(build+"\n"), 0o644); err != nil {
		return res, err
	}
	quiesce()
	origin := f.Agents[0]
	key, err := f.Secrets.Signer()
	if err != nil {
		return res, err
	}
	m, _, err := api(f, origin).Publish(ctx, agent.PublishRequest{Service: service, Build: build, Dir: src}, key)
	if err != nil {
		return res, fmt.Errorf("bench: publish: %w", err)
	}
	var rssStart []float64
	for _, a := range f.Agents {
		resetPeakRSS(a.Pid()) // each run's peak is its own build's
		rssStart = append(rssStart, procStatusMiB(a.Pid(), "VmRSS:"))
	}
	res.RSSStartMiB = Summarize(rssStart)
	cpu0 := cpuSeconds(f)
	m0 := readMachineCPU()
	before, _ := fleetStatus(ctx, f)
	rel, err := sig.Deploy(ctx, service, build, "bench", "")
	if err != nil {
		return res, err
	}
	t0 := rel.At
	profiled := make(chan error, 1)
	if cfg.Profile > 0 {
		go func() { profiled <- profile(ctx, cfg, f, method, n, run) }()
	} else {
		profiled <- nil
	}
	deadline := time.Now().Add(cfg.Timeout)
	var lastLine, lastSample time.Time
	for {
		c := countStates(f, build)
		if time.Since(lastSample) >= timelineEvery {
			if hosts, err := fleetStatus(ctx, f); err == nil {
				res.Timeline = append(res.Timeline, sample(hosts, build, time.Since(t0)))
			}
			lastSample = time.Now()
		}
		if time.Since(lastLine) > 2*time.Second {
			cfg.progress("  [%s N=%d run %d] %d/%d verified, %d active, %d failed, %.1fs", method, n, run, c.verified, n+1, c.active, c.failed, time.Since(t0).Seconds())
			lastLine = time.Now()
		}
		if c.active+c.failed == n+1 {
			res.Failed = c.failed
			break
		}
		if time.Now().After(deadline) {
			hosts, _ := fleetStatus(ctx, f)
			res.Error = fmt.Sprintf("timed out after %s; not done: %s", cfg.Timeout, notDone(hosts, build))
			return res, fmt.Errorf("bench: %s N=%d run %d: %s", method, n, run, res.Error)
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(donePollEvery):
		}
	}
	cpu1 := cpuSeconds(f)
	m1 := readMachineCPU()
	if err := <-profiled; err != nil {
		cfg.progress("  [%s N=%d run %d] profile: %v", method, n, run, err)
	}
	// The histories, bytes and counters, once the CPU window is closed.
	hosts, err := fleetStatus(ctx, f)
	if err != nil {
		return res, fmt.Errorf("bench: %s N=%d run %d: fleet status after the deploy: %w", method, n, run, err)
	}
	var signalT, verifiedT, activeT, cpu, rss []float64
	for i, h := range hosts {
		s := serviceOf(h)
		if s == nil {
			continue
		}
		signalled := false
		for _, tr := range s.History {
			if tr.Build != build {
				continue
			}
			dt := tr.At.Sub(t0).Seconds()
			switch tr.To {
			case core.StateFetching:
				if !signalled { // a retried fetch transitions again; the signal is the first
					signalT = append(signalT, dt)
					signalled = true
				}
			case core.StateReady:
				if i > 0 {
					verifiedT = append(verifiedT, dt)
				}
			case core.StateActive:
				if i > 0 {
					activeT = append(activeT, dt)
				}
			}
		}
		if i == 0 {
			res.OriginBytes += uploaded(h, build)
		} else {
			res.PeerBytes += uploaded(h, build)
		}
	}
	for i, a := range f.Agents {
		cpu = append(cpu, cpu1[i]-cpu0[i])
		rss = append(rss, procStatusMiB(a.Pid(), "VmHWM:"))
	}
	res.Signal, res.Verified, res.Active = Summarize(signalT), Summarize(verifiedT), Summarize(activeT)
	res.HostVerified = verifiedT
	res.CPU, res.RSSMiB = Summarize(cpu), Summarize(rss)
	res.account(m1.sub(m0), cpu[1:])
	res.Counters = medianCounters(before, hosts)
	res.OriginX = float64(res.OriginBytes) / float64(m.Size)
	res.bound(cfg)
	return res, nil
}

// bound sets T* for the run's N, size and caps, and the last host's ratio to it.
func (r *Result) bound(cfg Config) {
	peerUp := make([]float64, r.N)
	for i := range peerUp {
		peerUp[i] = float64(cfg.Up)
	}
	r.Bound = Bound(float64(r.Size), float64(cfg.Up), float64(cfg.Down), peerUp)
	if r.Bound > 0 {
		r.Ratio = r.Verified.Max / r.Bound
	}
}

// checkRoom refuses a fleet whose hosts would not fit on the work
// directory's disk: each keeps up to three builds (the agents run with
// --keep 2, plus the one being fetched), an archive and a release each.
func checkRoom(work string, hosts int, cfg Config) error {
	free, err := swap.FreeBytes(work)
	if err != nil {
		return nil // cannot tell; the run will say
	}
	need := int64(hosts) * 2 * cfg.Size * int64(min(cfg.Runs, 3))
	if need > free {
		return fmt.Errorf("bench: a fleet of %d hosts needs about %d MB in %s for %d runs of %d MB (%d MB free): use fewer hosts or runs, or point TMPDIR at a larger disk",
			hosts, need>>20, work, cfg.Runs, cfg.Size>>20, free>>20)
	}
	return nil
}

// quiesce lets the machine settle before a run: every host of the last run
// wrote its archive and release to this one disk (8 GB at N = 40), and
// runs that started while the kernel was still writing that back were
// slower and had second-long signal latencies (ext4's journal stalls
// metadata updates meanwhile). Flushing it, and as root dropping the clean
// page cache, starts each run from the same state.
func quiesce() {
	syscall.Sync()
	if os.Geteuid() == 0 {
		_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0o644)
	}
}

// notDone describes the hosts that have not finished build, for a run
// that timed out: state, progress, peers and the last error.
func notDone(hosts []agent.FleetHost, build string) string {
	var out []string
	for _, h := range hosts {
		s := serviceOf(h)
		switch {
		case h.Status == nil:
			out = append(out, fmt.Sprintf("%s (no status: %s)", h.Member.Name, h.Error))
		case s == nil:
			out = append(out, h.Member.Name+" (service not configured)")
		case s.Current == build && s.State == core.StateActive, s.State == core.StateFailed:
		default:
			d := fmt.Sprintf("%s %s", h.Member.Name, s.State)
			if f := s.Fetch; f != nil && f.Build == build {
				d += fmt.Sprintf(" %d/%d bytes verified, %d peers", f.Have, f.Total, len(f.Peers))
			}
			if s.LastError != "" {
				d += ", last error: " + s.LastError
			}
			out = append(out, d)
		}
	}
	return strings.Join(out, "; ")
}

// How the bench watches a run. Completion is read from each host's state
// file every donePollEvery, as the BitTorrent reference reads aria2c's
// completion stamps: a file read per host. The fleet's status API, which
// costs every agent an HTTP request and the origin a fan-out to all of
// them, is asked only every timelineEvery, for the timeline. (It used to
// be asked twice a second for both, all of it counted as Shoal's CPU:
// under perf at N = 40 the agents' status handlers took 1,802 samples of
// a run, 804 with this, and the bench's own watching 1,206 and 1,628 at a
// 100 ms file poll — hence 250 ms. About 1 % of the run either way.)
const (
	donePollEvery = 250 * time.Millisecond
	timelineEvery = 2 * time.Second
)

// states counts the fleet's hosts by where they are with build.
type states struct{ verified, active, failed int }

// countStates reads every agent's state file (services/<service>/state.json
// in its data dir, written at each transition). A file that cannot be read
// yet counts as not done.
func countStates(f *fleet.Fleet, build string) states {
	var c states
	for _, a := range f.Agents {
		b, err := os.ReadFile(filepath.Join(a.Spec.DataDir, "services", service, "state.json"))
		if err != nil {
			continue
		}
		var s agent.ServiceStatus
		if json.Unmarshal(b, &s) != nil || s.Desired != build {
			continue
		}
		switch {
		case s.State == core.StateFailed:
			c.failed++
		case s.State == core.StateActive && s.Current == build:
			c.active++
			c.verified++
		case s.State == core.StateReady || s.State == core.StateDraining:
			c.verified++
		}
	}
	return c
}

func sample(hosts []agent.FleetHost, build string, at time.Duration) Sample {
	sm := Sample{T: at.Seconds(), Verified: make([]int64, 0, len(hosts))}
	for i, h := range hosts {
		if h.Status == nil {
			continue
		}
		if i == 0 {
			sm.Origin = uploaded(h, build)
			continue
		}
		var p swarm.Progress
		if s := serviceOf(h); s != nil && s.Fetch != nil && s.Fetch.Build == build {
			p = s.Fetch.Progress
		}
		sm.Verified = append(sm.Verified, p.Have)
		sm.FromPeers = append(sm.FromPeers, p.FromPeers)
		sm.Peers = append(sm.Peers, len(p.Peers))
	}
	return sm
}

// uploaded is what host h has sent of build so far.
func uploaded(h agent.FleetHost, build string) int64 {
	var n int64
	for _, sd := range h.Status.Seeds {
		if sd.Build == build {
			n += sd.Uploaded
		}
	}
	return n
}

func serviceOf(h agent.FleetHost) *agent.ServiceStatus {
	if h.Status == nil {
		return nil
	}
	for i := range h.Status.Services {
		if h.Status.Services[i].Service == service {
			return &h.Status.Services[i]
		}
	}
	return nil
}

// cpuSeconds reads user+system CPU of every agent from /proc.
func cpuSeconds(f *fleet.Fleet) []float64 {
	out := make([]float64, len(f.Agents))
	for i, a := range f.Agents {
		out[i] = procCPU(a.Pid())
	}
	return out
}

// resetPeakRSS sets a process's VmHWM back to its current resident set
// (proc(5), clear_refs value 5), so the peak read at the end of a run is
// that run's build's, not the largest since the agent started.
func resetPeakRSS(pid int) {
	_ = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// procStatusMiB reads a size from /proc/pid/status: VmHWM (peak resident
// set) or VmRSS (resident now).
func procStatusMiB(pid int, field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field) {
			kb, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// medianCounters is, per counter, the median over fetching hosts of what
// it grew by between two fleet snapshots.
func medianCounters(before, after []agent.FleetHost) map[string]float64 {
	was := map[string]map[string]int64{}
	for _, h := range before {
		if h.Status != nil {
			was[h.Member.Name] = h.Status.Counters
		}
	}
	per := map[string][]float64{}
	for i, h := range after {
		if i == 0 || h.Status == nil {
			continue // the origin
		}
		for k, v := range h.Status.Counters {
			per[k] = append(per[k], float64(v-was[h.Member.Name][k]))
		}
	}
	out := map[string]float64{}
	for k, xs := range per {
		out[k] = Percentile(xs, 50)
	}
	return out
}
