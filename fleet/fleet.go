// Package fleet starts real local fleets for tests, the demo and the bench:
// a `consul agent -dev` on free loopback ports and any number of `shoal
// agent` processes, each on its own loopback address (127.0.X.2, .3, …) so
// that per-IP bans in the torrent engine never cut one agent off from all
// others. Everything it starts it also stops, and it removes its temp dirs.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoal-deploy/shoal/trust"
)

// Consul is a running dev-mode Consul agent.
type Consul struct {
	// Addr is its HTTP address (host:port).
	Addr   string
	cmd    *exec.Cmd
	dir    string
	exited chan struct{} // closed once the process is reaped
	// how it was started, for Restart
	bin, ip string
	wrap    []string
	ports   []int
}

// Restart stops Consul and starts a new one on the same address. A dev
// agent keeps its data in memory, so it comes back empty: the fault suite's
// "Consul lost its data".
func (c *Consul) Restart(ctx context.Context) error {
	c.Stop()
	n, err := startConsul(ctx, c.bin, c.dir, c.ip, c.wrap, c.ports)
	if err != nil {
		return err
	}
	*c = *n
	return nil
}

// StartConsul runs `consul agent -dev` from bin with every port on free
// loopback ports and waits until it has a leader.
func StartConsul(ctx context.Context, bin, dir string) (*Consul, error) {
	return StartConsulOn(ctx, bin, dir, "127.0.0.1", nil)
}

// StartConsulOn runs Consul bound to ip, its command prefixed by wrap (for
// example `ip netns exec NS`). On 127.0.0.1 it picks free ports; elsewhere
// (a namespace of its own) it uses the standard ones.
func StartConsulOn(ctx context.Context, bin, dir, ip string, wrap []string) (*Consul, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// Free ports can be taken between our probe and Consul's bind (another
	// test package starting its own Consul): if Consul exits, try new ones.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		ports := []int{8500, 8300, 8301, 8302}
		if ip == "127.0.0.1" {
			var err error
			if ports, err = freePorts(4); err != nil {
				return nil, err
			}
		}
		c, err := startConsul(ctx, bin, dir, ip, wrap, ports)
		if err == nil {
			return c, nil
		}
		lastErr = err
		if ip != "127.0.0.1" || ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func startConsul(ctx context.Context, bin, dir, ip string, wrap []string, ports []int) (*Consul, error) {
	log, err := os.OpenFile(filepath.Join(dir, "consul.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	argv := append(append([]string{}, wrap...), bin, "agent", "-dev", "-bind", ip, "-client", ip,
		"-http-port", strconv.Itoa(ports[0]), "-server-port", strconv.Itoa(ports[1]),
		"-serf-lan-port", strconv.Itoa(ports[2]), "-serf-wan-port", strconv.Itoa(ports[3]),
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1", "-log-level", "warn")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("fleet: start consul %s: %w (run `make consul`)", bin, err)
	}
	c := &Consul{Addr: net.JoinHostPort(ip, strconv.Itoa(ports[0])), cmd: cmd, dir: dir, exited: make(chan struct{}),
		bin: bin, ip: ip, wrap: wrap, ports: ports}
	go func() { _ = cmd.Wait(); close(c.exited) }()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-c.exited: // died early (port taken?): stop waiting
			cancel()
		case <-wctx.Done():
		}
	}()
	if err := waitHTTP(wctx, "http://"+c.Addr+"/v1/status/leader", 60*time.Second, func(b string) bool {
		return strings.Contains(b, ":")
	}); err != nil {
		c.Stop()
		b, _ := os.ReadFile(log.Name())
		return nil, fmt.Errorf("fleet: consul did not elect a leader: %w; its log ends:\n%s", err, tail(string(b), 1500))
	}
	return c, nil
}

// Stop ends Consul.
func (c *Consul) Stop() {
	if c == nil || c.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.exited
	}
}

// AgentSpec describes one agent to start.
type AgentSpec struct {
	Node    string
	IP      string
	DataDir string
	Join    []string
	// Args are extra `shoal agent` flags (services, hooks, rates, …).
	Args []string
	// Env is extra environment.
	Env []string
	// Wrap prefixes the command, e.g. `ip netns exec NS`.
	Wrap []string
	// Gossip is the gossip profile, default "local" (fast failure detection).
	Gossip string
	// Secrets are the fleet's keys; nil runs the agent with --insecure-dev.
	Secrets *Secrets
}

// Secrets are the files of a fleet's keys, as `shoal keygen` writes them.
type Secrets struct {
	// SigningKey signs builds (for `shoal publish --key @…`); PublicKey is
	// what every agent trusts.
	SigningKey, PublicKey string
	// GossipKey encrypts gossip and keys the peer API's MAC.
	GossipKey string
	// APIToken guards control APIs that are not on loopback.
	APIToken string
}

// MakeSecrets writes a fresh signing key pair, gossip key and API token under dir.
func MakeSecrets(dir string) (*Secrets, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	k, err := trust.GenerateSigningKey()
	if err != nil {
		return nil, err
	}
	g, err := trust.GenerateGossipKey()
	if err != nil {
		return nil, err
	}
	tok, err := trust.GenerateToken()
	if err != nil {
		return nil, err
	}
	s := &Secrets{SigningKey: filepath.Join(dir, "signing.key"), PublicKey: filepath.Join(dir, "signing.pub"),
		GossipKey: filepath.Join(dir, "gossip.key"), APIToken: filepath.Join(dir, "api.token")}
	for path, v := range map[string]string{s.SigningKey: k.String(), s.PublicKey: k.Public().String(), s.GossipKey: g, s.APIToken: tok} {
		if err := trust.WriteSecret(path, v); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// agentArgs are the flags that give an agent the fleet's keys. Fleet
// agents want the API token even on loopback (where it is optional), so
// every test and bench run goes through the token check.
func (s *Secrets) agentArgs() []string {
	if s == nil {
		return []string{"--insecure-dev"}
	}
	return []string{"--gossip-key", "@" + s.GossipKey, "--trusted-key", "@" + s.PublicKey, "--api-token", "@" + s.APIToken}
}

// Token is the control API token ("" without secrets).
func (s *Secrets) Token() string {
	if s == nil {
		return ""
	}
	b, _ := os.ReadFile(s.APIToken)
	return strings.TrimSpace(string(b))
}

// Signer is the fleet's signing key (nil without secrets).
func (s *Secrets) Signer() (*trust.SigningKey, error) {
	if s == nil {
		return nil, nil
	}
	v, err := trust.ReadValue("@" + s.SigningKey)
	if err != nil {
		return nil, err
	}
	k, err := trust.ParseSigningKey(v)
	return &k, err
}

// Env is what a CLI run needs: the signing key and the API token.
func (s *Secrets) Env() []string {
	if s == nil {
		return nil
	}
	return []string{"SHOAL_SIGNING_KEY=@" + s.SigningKey, "SHOAL_API_TOKEN=@" + s.APIToken}
}

// Agent is a running `shoal agent` process.
type Agent struct {
	Spec AgentSpec
	// API is its HTTP API address.
	API string
	Log string
	cmd *exec.Cmd
	// exited is closed when the process has been reaped.
	exited chan struct{}
}

// StartAgent starts one agent process and waits for its API to answer.
func StartAgent(ctx context.Context, bin, consul string, spec AgentSpec) (*Agent, error) {
	if err := os.MkdirAll(spec.DataDir, 0o755); err != nil {
		return nil, err
	}
	a := &Agent{Spec: spec, API: net.JoinHostPort(spec.IP, "7070"), Log: filepath.Join(spec.DataDir, "agent.log")}
	if err := a.start(ctx, bin, consul); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Agent) start(ctx context.Context, bin, consul string) error {
	log, err := os.OpenFile(a.Log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	gossip := a.Spec.Gossip
	if gossip == "" {
		gossip = "local"
	}
	args := []string{"agent", "--node", a.Spec.Node, "--data-dir", a.Spec.DataDir, "--bind", a.Spec.IP, "--api", a.API,
		"--consul", consul, "--gossip-profile", gossip, "--log-format", "json"}
	if len(a.Spec.Join) > 0 {
		args = append(args, "--join", strings.Join(a.Spec.Join, ","))
	}
	args = append(args, a.Spec.Secrets.agentArgs()...)
	args = append(args, a.Spec.Args...)
	argv := append(append(append([]string{}, a.Spec.Wrap...), bin), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), a.Spec.Env...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("fleet: start agent %s: %w", a.Spec.Node, err)
	}
	a.cmd, a.exited = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(a.exited) }()
	if err := waitHTTP(ctx, "http://"+a.API+"/v1/health", 30*time.Second, nil); err != nil {
		a.Kill()
		b, _ := os.ReadFile(a.Log)
		return fmt.Errorf("fleet: agent %s did not come up: %w\n%s", a.Spec.Node, err, tail(string(b), 2000))
	}
	return nil
}

// Restart starts a stopped agent again with the same spec.
func (a *Agent) Restart(ctx context.Context, bin, consul string) error {
	return a.start(ctx, bin, consul)
}

// Kill sends SIGKILL and waits for the process to go.
func (a *Agent) Kill() { a.signal(syscall.SIGKILL) }

// Stop sends SIGTERM, waiting up to 10s before SIGKILL.
func (a *Agent) Stop() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(10 * time.Second):
		a.Kill()
	}
}

func (a *Agent) signal(sig syscall.Signal) {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-a.cmd.Process.Pid, sig)
	<-a.exited
}

// Exited is closed once the agent's process has ended (for whatever reason).
func (a *Agent) Exited() <-chan struct{} { return a.exited }

// Pid is the agent's process id.
func (a *Agent) Pid() int { return a.cmd.Process.Pid }

// Fleet is Consul plus agents.
type Fleet struct {
	Bin    string
	Dir    string
	Consul *Consul
	Agents []*Agent
	// Secrets are the fleet's keys (nil in insecure dev mode).
	Secrets *Secrets
	keep    bool
}

// Options for Start.
type Options struct {
	// ShoalBin and ConsulBin are the binaries (required).
	ShoalBin, ConsulBin string
	// N is the number of agents.
	N int
	// Net is the first three octets of the agents' addresses, e.g.
	// "127.0.20": agents get .2, .3, …. Use a distinct one per concurrent user.
	Net string
	// Dir is where data dirs and logs go; empty makes a temp dir that Stop removes.
	Dir string
	// Args returns extra agent flags for agent i (0-based); may be nil.
	Args func(i int) []string
	// InsecureDev runs the fleet without keys (agents get --insecure-dev).
	// Otherwise Start makes a signing key pair, a gossip key and an API
	// token under Dir/secrets and hands them to every agent and CLI run.
	InsecureDev bool
	// Env is extra environment for every agent.
	Env []string
	// IP, if set, gives agent i's address instead of Net.
	IP func(i int) string
	// Wrap, if set, prefixes agent i's command (e.g. `ip netns exec NS`).
	Wrap func(i int) []string
	// Gossip is the agents' gossip profile (default "local"; "lan" for
	// large or CPU-starved fleets, where local's short timeouts misfire).
	Gossip string
	// ConsulIP and ConsulWrap place Consul; default 127.0.0.1, no prefix.
	ConsulIP   string
	ConsulWrap []string
}

// Start runs Consul and N agents; agent 0 is the one others join.
func Start(ctx context.Context, o Options) (f *Fleet, err error) {
	if o.N < 1 || o.N > 250 {
		return nil, fmt.Errorf("fleet: N=%d: want 1..250", o.N)
	}
	f = &Fleet{Bin: o.ShoalBin, Dir: o.Dir, keep: o.Dir != ""}
	if f.Dir == "" {
		if f.Dir, err = os.MkdirTemp("", "shoal-fleet-"); err != nil {
			return nil, err
		}
	}
	defer func() {
		if err != nil {
			f.Stop()
		}
	}()
	if o.ConsulIP == "" {
		o.ConsulIP = "127.0.0.1"
	}
	if !o.InsecureDev {
		if f.Secrets, err = MakeSecrets(filepath.Join(f.Dir, "secrets")); err != nil {
			return f, fmt.Errorf("fleet: keys: %w", err)
		}
	}
	if f.Consul, err = StartConsulOn(ctx, o.ConsulBin, filepath.Join(f.Dir, "consul"), o.ConsulIP, o.ConsulWrap); err != nil {
		return f, err
	}
	ip := func(i int) string { return fmt.Sprintf("%s.%d", o.Net, i+2) }
	if o.IP != nil {
		ip = o.IP
	}
	specs := make([]AgentSpec, o.N)
	for i := range specs {
		spec := AgentSpec{Node: fmt.Sprintf("host-%d", i+1), IP: ip(i), Env: o.Env, Gossip: o.Gossip, Secrets: f.Secrets}
		spec.DataDir = filepath.Join(f.Dir, spec.Node)
		if i > 0 {
			spec.Join = []string{ip(0)}
		}
		if o.Args != nil {
			spec.Args = o.Args(i)
		}
		if o.Wrap != nil {
			spec.Wrap = o.Wrap(i)
		}
		specs[i] = spec
	}
	// The first agent starts alone (the others join it), the rest in parallel.
	f.Agents = make([]*Agent, o.N)
	errs := make([]error, o.N)
	f.Agents[0], errs[0] = StartAgent(ctx, o.ShoalBin, f.Consul.Addr, specs[0])
	if errs[0] != nil {
		f.Agents = nil
		return f, errs[0]
	}
	done := make(chan struct{})
	for i := 1; i < o.N; i++ {
		go func(i int) {
			f.Agents[i], errs[i] = StartAgent(ctx, o.ShoalBin, f.Consul.Addr, specs[i])
			done <- struct{}{}
		}(i)
	}
	for i := 1; i < o.N; i++ {
		<-done
	}
	started := f.Agents[:0]
	for _, a := range f.Agents {
		if a != nil {
			started = append(started, a)
		}
	}
	f.Agents = started
	return f, errors.Join(errs...)
}

// Stop ends every process and removes the temp dir (if Start made it).
func (f *Fleet) Stop() {
	done := make(chan struct{})
	for _, a := range f.Agents {
		go func(a *Agent) { a.Stop(); done <- struct{}{} }(a)
	}
	for range f.Agents {
		<-done
	}
	f.Consul.Stop()
	if !f.keep {
		_ = os.RemoveAll(f.Dir)
	}
}

// Shoal runs a shoal CLI command against this fleet (Consul address and
// agent 0's API in the environment) and returns its stdout.
func (f *Fleet) Shoal(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, f.Bin, args...)
	cmd.Env = append(append(os.Environ(), "CONSUL_HTTP_ADDR="+f.Consul.Addr, "SHOAL_API="+f.Agents[0].API), f.Secrets.Env()...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("shoal %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func waitHTTP(ctx context.Context, url string, limit time.Duration, ok func(body string) bool) error {
	deadline := time.Now().Add(limit)
	c := &http.Client{Timeout: 2 * time.Second}
	var last error
	for time.Now().Before(deadline) {
		resp, err := c.Get(url)
		if err == nil {
			b := make([]byte, 512)
			n, _ := resp.Body.Read(b)
			resp.Body.Close()
			if resp.StatusCode == 200 && (ok == nil || ok(string(b[:n]))) {
				return nil
			}
			last = fmt.Errorf("GET %s: %s %q", url, resp.Status, b[:n])
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if last == nil {
		last = errors.New("timed out")
	}
	return last
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// RunWithConsul is a TestMain body for packages whose tests need a real
// Consul: it starts a dev agent (binary $SHOAL_CONSUL_BIN or ../bin/consul,
// built by `make consul`), stores its HTTP address in *addr, runs the tests
// and stops it. It returns the exit code for os.Exit.
func RunWithConsul(m interface{ Run() int }, addr *string) int {
	bin, _ := filepath.Abs("../bin/consul")
	if v := os.Getenv("SHOAL_CONSUL_BIN"); v != "" {
		bin = v
	}
	dir, err := os.MkdirTemp("", "shoal-test-consul-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	c, err := StartConsul(context.Background(), bin, dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "these tests need a real Consul at %s (run `make consul`): %v\n", bin, err)
		return 1
	}
	defer c.Stop()
	*addr = c.Addr
	return m.Run()
}
