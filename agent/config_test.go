package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-deploy/shoal/swarm"
)

func TestLoadConfigRejectsUnknownKeys(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(p, []byte(`{"data_dir":"/srv/shoal","swarm":{"node":"a","bind":"127.0.0.2"},"servces":{}}`), 0o644)
	_, err := LoadConfig(p)
	if err == nil || !strings.Contains(err.Error(), "servces") {
		t.Errorf("got %v, want an error naming the unknown key", err)
	}
}

func TestConfigDefaultsAndValidation(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(p, []byte(`{"data_dir":"/srv/shoal","swarm":{"node":"a","bind":"127.0.0.2"},
		"gossip_key":"`+testGossipKey+`","trusted_keys":["`+testPublicKey+`"],
		"services":{"web":{"hooks":{"drain":"true","health_url":"http://127.0.0.2:8080/healthz","hook_timeout":"10s"}}}}`), 0o644)
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Finish(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	if c.API != "127.0.0.2:7070" || c.PeerAPI != "127.0.0.2:7071" || c.Services["web"].KeepReleases != 3 || c.Services["web"].Hooks.HookTimeout.D().Seconds() != 10 {
		t.Errorf("defaults not applied: api %q keep %d timeout %v", c.API, c.Services["web"].KeepReleases, c.Services["web"].Hooks.HookTimeout.D())
	}
	bad := Config{DataDir: "relative", Services: map[string]ServiceConfig{"bad/name": {}}}
	err = bad.Finish()
	for _, want := range []string{"absolute", "node name", "bind address", "bad/name"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Finish() = %v, want it to mention %q", err, want)
		}
	}
}

// Keys for config tests only (the public key of a throwaway pair).
const (
	testGossipKey = "mkprwHpvVTsB0L/ON/A+feLvAaVDmrtI1VlWhn3DZZo="
	testPublicKey = "shoal-ed25519:PSu49dK2gi9ygEglAOsrfwUWd9kWfGaBSg/c0Y+GUqM="
)

// Outside dev mode an agent needs a gossip key and a trusted key; a
// control API off loopback needs a token; bad keys are named.
func TestConfigSecurityRequirements(t *testing.T) {
	base := func() Config {
		return Config{DataDir: "/srv/shoal", Swarm: swarm.Config{Node: "a", BindAddr: "10.0.0.5"},
			GossipKey: testGossipKey, TrustedKeys: []string{testPublicKey}}
	}
	c := base()
	if err := c.Finish(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	if c.API != "127.0.0.1:7070" || c.PeerAPI != "10.0.0.5:7071" {
		t.Errorf("a non-loopback bind got control api %q peer api %q; want the control API on 127.0.0.1", c.API, c.PeerAPI)
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no gossip key", func(c *Config) { c.GossipKey = "" }, "gossip key is required"},
		{"no trusted key", func(c *Config) { c.TrustedKeys = nil }, "trusted public key is required"},
		{"bad gossip key", func(c *Config) { c.GossipKey = "c2hvcnQ=" }, "gossip key must be base64"},
		{"bad public key", func(c *Config) { c.TrustedKeys = []string{"ssh-ed25519 AAAA"} }, "does not start with"},
		{"control api off loopback", func(c *Config) { c.API = "10.0.0.5:7070" }, "set an api token"},
		{"short token", func(c *Config) { c.API = "10.0.0.5:7070"; c.APIToken = "short" }, "at least 16"},
		{"relative publish root", func(c *Config) { c.PublishRoots = []string{"builds"} }, "publish root"},
	} {
		c := base()
		tc.edit(&c)
		if err := c.Finish(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Finish() = %v, want it to mention %q", tc.name, err, tc.want)
		}
	}
	dev := base()
	dev.GossipKey, dev.TrustedKeys, dev.InsecureDev = "", nil, true
	if err := dev.Finish(); err != nil {
		t.Errorf("dev mode without keys rejected: %v", err)
	}
	tok := base()
	tok.API, tok.APIToken = "10.0.0.5:7070", "0123456789abcdef0123"
	if err := tok.Finish(); err != nil {
		t.Errorf("control api off loopback with a token rejected: %v", err)
	}
}

// The agent runs on one core unless told otherwise: $GOMAXPROCS, then
// max_procs (0 = every core); a negative count is refused by name.
func TestConfigMaxProcs(t *testing.T) {
	base := func(extra string) Config {
		p := filepath.Join(t.TempDir(), "c.json")
		os.WriteFile(p, []byte(`{"data_dir":"/srv/shoal","swarm":{"node":"a","bind":"127.0.0.2"},"insecure_dev":true`+extra+`}`), 0o644)
		c, err := LoadConfig(p)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	t.Setenv("GOMAXPROCS", "")
	for _, tc := range []struct {
		extra, env string
		want       int
	}{
		{"", "", 1},
		{"", "3", 0}, // the runtime has applied $GOMAXPROCS
		{`,"max_procs":0`, "", 0},
		{`,"max_procs":4`, "3", 4},
	} {
		t.Setenv("GOMAXPROCS", tc.env)
		c := base(tc.extra)
		if err := c.Finish(); err != nil {
			t.Fatalf("%q: %v", tc.extra, err)
		}
		if got := c.Procs(); got != tc.want {
			t.Errorf("config %q, $GOMAXPROCS %q: Procs() = %d, want %d", tc.extra, tc.env, got, tc.want)
		}
	}
	c := base(`,"max_procs":-1`)
	if err := c.Finish(); err == nil || !strings.Contains(err.Error(), "max_procs (--max-procs) is -1") {
		t.Errorf("max_procs -1: Finish() = %v, want an error naming it", err)
	}
}
