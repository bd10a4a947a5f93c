package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/signal"
	"github.com/shoal-deploy/shoal/swap"
	"github.com/shoal-deploy/shoal/swarm"
)

// Config is everything one `shoal agent` needs. It nests the packages'
// own configs; unknown keys in a config file are an error.
type Config struct {
	// DataDir holds archives, releases and the agent's state. Required.
	DataDir string `json:"data_dir"`
	// API is the local HTTP API address. Default <bind>:7070.
	API string `json:"api,omitempty"`
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
	// Pprof serves Go's profiler under /debug/pprof/ on the API address.
	Pprof bool `json:"pprof,omitempty"`
	// FetchStall is how long a fetch may make no progress before the
	// service reports it as an error (the fetch keeps going). Default 60s.
	FetchStall core.Duration `json:"fetch_stall,omitempty"`
}

// ServiceConfig is one service on this host.
type ServiceConfig struct {
	// Hooks run around each switch: drain, activate, health.
	Hooks swap.Hooks `json:"hooks"`
	// KeepReleases is how many releases stay on disk (current and previous
	// always do). Default 3.
	KeepReleases int `json:"keep_releases,omitempty"`
}

func (c *Config) applyDefaults() {
	if c.API == "" && c.Swarm.BindAddr != "" {
		c.API = net.JoinHostPort(c.Swarm.BindAddr, "7070")
	}
	c.Swarm.DataDir = c.DataDir
	c.Swarm.APIAddr = c.API
	if c.Swarm.Gossip == "" {
		c.Swarm.Gossip = "lan"
	}
	if c.Fetch == "" {
		c.Fetch = FetchSwarm
	}
	if c.FetchStall == 0 {
		c.FetchStall = core.Duration(60e9)
	}
	for name, s := range c.Services {
		if s.KeepReleases == 0 {
			s.KeepReleases = 3
		}
		c.Services[name] = s
	}
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("agent: data dir is required (--data-dir)"))
	} else if !filepath.IsAbs(c.DataDir) {
		errs = append(errs, fmt.Errorf("agent: data dir %q must be an absolute path", c.DataDir))
	}
	if _, _, err := net.SplitHostPort(c.API); err != nil {
		errs = append(errs, fmt.Errorf("agent: api address %q: %w", c.API, err))
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
	for name, s := range c.Services {
		if err := core.ValidName("service", name); err != nil {
			errs = append(errs, fmt.Errorf("agent: %w", err))
		}
		if s.KeepReleases < 0 {
			errs = append(errs, fmt.Errorf("agent: service %s: keep_releases must be >= 2", name))
		}
	}
	return errors.Join(errs...)
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
