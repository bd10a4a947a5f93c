package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/signal"
	"github.com/shoal-deploy/shoal/swap"
	"github.com/shoal-deploy/shoal/swarm"
	"github.com/shoal-deploy/shoal/trust"
)

// Config is everything one `shoal agent` needs. It nests the packages'
// own configs; unknown keys in a config file are an error.
type Config struct {
	// DataDir holds archives, releases and the agent's state. Required.
	DataDir string `json:"data_dir"`
	// API is the control API (publish, status, metrics, pprof): a loopback
	// host:port or "unix:/path/to.sock". Default <bind>:7070 when bind is a
	// loopback address (local test fleets), else 127.0.0.1:7070. Any other
	// address requires APIToken.
	API string `json:"api,omitempty"`
	// APIToken, if set, is required (Authorization: Bearer) on every
	// control API request but /v1/health: the token itself, or @file.
	// Default $SHOAL_API_TOKEN.
	APIToken string `json:"api_token,omitempty"`
	// PeerAPI is where other members fetch piece ranges, the origin's
	// hand-out and this host's status. It answers members only. Default <bind>:7071.
	PeerAPI string `json:"peer_api,omitempty"`
	// GossipKey encrypts gossip and authenticates peer API requests:
	// base64 of 32 bytes (`shoal keygen --gossip`), or @file. Several keys
	// (comma- or line-separated) rotate: the first is used, all accepted.
	// Required unless InsecureDev. Default $SHOAL_GOSSIP_KEY.
	GossipKey string `json:"gossip_key,omitempty"`
	// TrustedKeys are the public keys whose signed builds this host runs
	// (each the key, or @file). Several allow rotation. Required unless InsecureDev.
	TrustedKeys []string `json:"trusted_keys,omitempty"`
	// InsecureDev runs without gossip encryption and accepts unsigned
	// builds. For a laptop only; every log line at start and every status says so.
	InsecureDev bool `json:"insecure_dev,omitempty"`
	// PublishRoots, if set, are the only directories `shoal publish` may
	// pack from (and their subdirectories).
	PublishRoots []string `json:"publish_roots,omitempty"`
	// Tags place this host in staged rollouts (`shoal deploy --stages
	// canary,10%,all` selects the hosts tagged canary first), e.g.
	// "staging", "canary", "zone=us-east-1a". Shown in status and
	// registered in Consul's catalog.
	Tags []string `json:"tags,omitempty"`
	// MaxUnpackedBytes caps any build's unpacked size on this host,
	// whatever its manifest declares. Default 64 GB.
	MaxUnpackedBytes int64 `json:"max_unpacked_bytes,omitempty"`
	// MaxEntries caps the files, directories and links of any build. Default 1,000,000.
	MaxEntries int `json:"max_entries,omitempty"`
	// Swarm: node name, bind address, join list, ports, rate limits.
	Swarm swarm.Config `json:"swarm"`
	// Consul: address, token, key prefix, watch timings.
	Consul signal.Config `json:"consul"`
	// Services this host runs, by name. Each is watched in Consul and
	// deployed under <data_dir>/services/<name>.
	Services map[string]ServiceConfig `json:"services"`
	// Fetch is how builds are fetched: "swarm" (default: from every peer)
	// or "origin" (every host pulls over HTTP from the publishing host; the
	// baseline `shoal bench` compares against, not for production).
	Fetch string `json:"fetch,omitempty"`
	// FetchInto is where a fetched build's bytes are written: "release"
	// (the default: each file straight into the cold directory that
	// becomes its release, so every byte is written once; the tar framing
	// goes to a small side file) or "archive" (into the build's archive,
	// which the install then unpacks, writing every byte a second time).
	// Builds published with more files than fit a manifest's layout list
	// (about 2,000) are fetched as archives either way, as is any build
	// this host already has as an archive (the origin's, for one).
	FetchInto string `json:"fetch_into,omitempty"`
	// Pprof serves Go's profiler under /debug/pprof/ on the API address.
	Pprof bool `json:"pprof,omitempty"`
	// MaxProcs is how many cores the agent's Go code runs on at once
	// (Go's GOMAXPROCS): 0 is the Go runtime's default (every core the
	// process may use). Unset, it is $GOMAXPROCS if that is set, else 1:
	// the agent works in the background of a host that runs a service,
	// and one P cost less CPU per byte at the same speed, alone on a host
	// with an idle core and 20 to a two-core bench machine alike
	// (docs/BENCHMARKS.md, "One core per agent by default").
	MaxProcs *int `json:"max_procs,omitempty"`
	// FetchStall is how long a fetch may make no progress before the
	// service reports it as an error (the fetch keeps going). Default 60s.
	FetchStall core.Duration `json:"fetch_stall,omitempty"`
	// DiskLow and DiskHigh are the free-space watermarks of the data
	// dir's file system: a size ("2GB") or a percentage ("5%"). Below
	// DiskLow the agent evicts, oldest first, builds fetched but never
	// installed and releases beyond current and previous, until DiskHigh
	// is free; before a fetch it evicts likewise to fit the build.
	// Defaults 5% and 10%.
	DiskLow  string `json:"disk_low_watermark,omitempty"`
	DiskHigh string `json:"disk_high_watermark,omitempty"`
	// BuildGrace is how long a build fetched (or begun) here but never
	// installed stays, should it be asked for again; the origin keeps the
	// builds it published for as long, and at least keep_releases of
	// them. Default 1h.
	BuildGrace core.Duration `json:"build_grace,omitempty"`
}

// ServiceConfig is one service on this host.
type ServiceConfig struct {
	// Hooks run around each switch: drain, activate, health.
	Hooks swap.Hooks `json:"hooks"`
	// KeepReleases is how many releases stay on disk (current and previous
	// always do). Default 3.
	KeepReleases int `json:"keep_releases,omitempty"`
	// AllowSetuid keeps setuid, setgid and sticky bits from the build's
	// archive; by default they are dropped.
	AllowSetuid bool `json:"allow_setuid,omitempty"`
}

func (c *Config) applyDefaults() {
	if c.API == "" && c.Swarm.BindAddr != "" {
		c.API = "127.0.0.1:7070"
		if ip := net.ParseIP(c.Swarm.BindAddr); ip != nil && ip.IsLoopback() {
			c.API = net.JoinHostPort(c.Swarm.BindAddr, "7070")
		}
	}
	if c.PeerAPI == "" && c.Swarm.BindAddr != "" {
		c.PeerAPI = net.JoinHostPort(c.Swarm.BindAddr, "7071")
	}
	if c.APIToken == "" {
		c.APIToken = os.Getenv("SHOAL_API_TOKEN")
	}
	if c.GossipKey == "" {
		c.GossipKey = os.Getenv("SHOAL_GOSSIP_KEY")
	}
	if c.MaxUnpackedBytes == 0 {
		c.MaxUnpackedBytes = 64e9
	}
	if c.MaxEntries == 0 {
		c.MaxEntries = 1_000_000
	}
	c.Swarm.DataDir = c.DataDir
	c.Swarm.PeerAPIAddr = c.PeerAPI
	if c.Swarm.Gossip == "" {
		c.Swarm.Gossip = "lan"
	}
	if c.Fetch == "" {
		c.Fetch = FetchSwarm
	}
	if c.FetchInto == "" {
		c.FetchInto = FetchIntoRelease
	}
	if c.FetchStall == 0 {
		c.FetchStall = core.Duration(60e9)
	}
	if c.DiskLow == "" {
		c.DiskLow = "5%"
	}
	if c.DiskHigh == "" {
		c.DiskHigh = "10%"
	}
	if c.BuildGrace == 0 {
		c.BuildGrace = core.Duration(time.Hour)
	}
	for name, s := range c.Services {
		if s.KeepReleases == 0 {
			s.KeepReleases = 3
		}
		c.Services[name] = s
	}
}

// DefaultMaxProcs is the agent's GOMAXPROCS unless configured (MaxProcs).
const DefaultMaxProcs = 1

// Procs is the GOMAXPROCS the agent's process should run with: MaxProcs
// if set, else 0 when $GOMAXPROCS is set (the runtime has applied it),
// else DefaultMaxProcs. 0 leaves the Go runtime's default.
func (c Config) Procs() int {
	switch {
	case c.MaxProcs != nil:
		return *c.MaxProcs
	case os.Getenv("GOMAXPROCS") != "":
		return 0
	}
	return DefaultMaxProcs
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("agent: data dir is required (--data-dir)"))
	} else if !filepath.IsAbs(c.DataDir) {
		errs = append(errs, fmt.Errorf("agent: data dir %q must be an absolute path", c.DataDir))
	}
	if !strings.HasPrefix(c.API, "unix:") {
		if host, _, err := net.SplitHostPort(c.API); err != nil {
			errs = append(errs, fmt.Errorf("agent: api address %q: %w", c.API, err))
		} else if ip := net.ParseIP(host); (ip == nil || !ip.IsLoopback()) && c.APIToken == "" {
			errs = append(errs, fmt.Errorf("agent: control api %q is not loopback: set an api token (--api-token or $SHOAL_API_TOKEN), or bind it to 127.0.0.1 or a unix: socket", c.API))
		}
	}
	if c.APIToken != "" {
		if tok, err := trust.ReadValue(c.APIToken); err != nil {
			errs = append(errs, fmt.Errorf("agent: api token: %w", err))
		} else if len(tok) < 16 {
			errs = append(errs, errors.New("agent: api token must be at least 16 characters"))
		}
	}
	if _, _, err := net.SplitHostPort(c.PeerAPI); err != nil {
		errs = append(errs, fmt.Errorf("agent: peer api address %q: %w", c.PeerAPI, err))
	}
	if _, _, err := c.secrets(); err != nil {
		errs = append(errs, err)
	}
	for _, r := range c.PublishRoots {
		if !filepath.IsAbs(r) {
			errs = append(errs, fmt.Errorf("agent: publish root %q must be an absolute path", r))
		}
	}
	if err := c.Swarm.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Consul.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Fetch != FetchSwarm && c.Fetch != FetchOrigin {
		errs = append(errs, fmt.Errorf("agent: fetch method %q: use swarm or origin", c.Fetch))
	}
	if c.FetchInto != FetchIntoArchive && c.FetchInto != FetchIntoRelease {
		errs = append(errs, fmt.Errorf("agent: fetch_into %q: use archive or release", c.FetchInto))
	}
	if c.MaxProcs != nil && *c.MaxProcs < 0 {
		errs = append(errs, fmt.Errorf("agent: max_procs (--max-procs) is %d: use a number of cores, or 0 for every core", *c.MaxProcs))
	}
	for name, s := range c.Services {
		if err := core.ValidName("service", name); err != nil {
			errs = append(errs, fmt.Errorf("agent: %w", err))
		}
		if s.KeepReleases < 0 {
			errs = append(errs, fmt.Errorf("agent: service %s: keep_releases must be >= 2", name))
		}
	}
	for _, t := range c.Tags {
		if err := core.ValidStage(t); err != nil || strings.HasSuffix(t, "%") || t == "all" {
			errs = append(errs, fmt.Errorf("agent: tag %q: a tag is a word like canary or zone=us-east-1a (no spaces, commas or %%, not \"all\")", t))
		}
	}
	for _, w := range []struct{ name, v string }{{"disk_low_watermark", c.DiskLow}, {"disk_high_watermark", c.DiskHigh}} {
		if _, err := core.ParseFree(w.v, 100); w.v != "" && err != nil {
			errs = append(errs, fmt.Errorf("agent: %s: %w", w.name, err))
		}
	}
	return errors.Join(errs...)
}

// secrets parses the gossip key and the trusted keys. Outside dev mode
// both are required.
func (c Config) secrets() ([][]byte, *trust.Keyring, error) {
	var gossip [][]byte
	if c.GossipKey != "" {
		v, err := trust.ReadValue(c.GossipKey)
		if err == nil {
			gossip, err = trust.ParseGossipKeys(v)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("agent: gossip key: %w", err)
		}
	}
	kr, err := trust.NewKeyring(c.TrustedKeys)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: trusted keys: %w", err)
	}
	if c.InsecureDev {
		return gossip, kr, nil
	}
	var errs []error
	if gossip == nil {
		errs = append(errs, errors.New("agent: a gossip key is required (--gossip-key or $SHOAL_GOSSIP_KEY; make one with `shoal keygen --gossip`), or run with --insecure-dev on a laptop"))
	}
	if kr.Len() == 0 {
		errs = append(errs, errors.New("agent: at least one trusted public key is required (--trusted-key; make a pair with `shoal keygen`), or run with --insecure-dev on a laptop"))
	}
	return gossip, kr, errors.Join(errs...)
}

// LoadConfig reads a JSON config file strictly: unknown keys are an error.
func LoadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("agent: config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("agent: config %s: %w", path, err)
	}
	return c, nil
}

// Finish applies defaults and validates; call it after flags override a file.
func (c *Config) Finish() error {
	c.applyDefaults()
	return c.Validate()
}
