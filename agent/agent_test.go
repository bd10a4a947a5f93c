package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/fleet"
	"github.com/shoal-deploy/shoal/signal"
	"github.com/shoal-deploy/shoal/swap"
	"github.com/shoal-deploy/shoal/swarm"
	"github.com/shoal-deploy/shoal/trust"
)

var consulAddr string

func TestMain(m *testing.M) {
	swarm.ExecWithClassicFileIO() // the file I/O the agent runs
	os.Exit(fleet.RunWithConsul(m, &consulAddr))
}

// Two agents in one process (so the race detector sees the state machine,
// the watch, the API and the swarm together): publish on one, deploy, both
// go active; an unpublished build is refused; status and metrics say so.
func TestTwoAgentsInProcess(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hooksLog := filepath.Join(t.TempDir(), "hooks.log")
	prefix := fmt.Sprintf("agent-test-%d", time.Now().UnixNano()) // fresh keys on every run
	var agents []*Agent
	done := make(chan error, 2)
	key, err := trust.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	gossipKey, _ := trust.GenerateGossipKey()
	for i, ip := range []string{"127.0.43.2", "127.0.43.3"} {
		cfg := Config{DataDir: t.TempDir(),
			GossipKey:   gossipKey,
			TrustedKeys: []string{key.Public().String()},
			Swarm:       swarmCfg(ip, i),
			Consul:      signal.Config{Address: consulAddr, Prefix: prefix},
			Services: map[string]ServiceConfig{"web": {Hooks: swap.Hooks{
				Activate: `echo "$SHOAL_PHASE $SHOAL_BUILD" >> ` + hooksLog}}}}
		a, err := New(cfg, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a)
		go func() { done <- a.Run(ctx) }()
	}
	defer func() {
		cancel()
		for range agents {
			if err := <-done; err != nil {
				t.Errorf("Run returned %v, want nil on cancel", err)
			}
		}
	}()
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "index.html"), []byte("hello v1"), 0o644)
	c0 := NewClient(agents[0].cfg.API, time.Minute)
	m, already, err := c0.Publish(ctx, PublishRequest{Service: "web", Build: "v1", Dir: src}, &key)
	if err != nil {
		t.Fatal(err)
	}
	if already || m.Origin != "a0" || m.Size == 0 || m.KeyID != key.Public().ID() {
		t.Errorf("manifest origin %q size %d key %q, already %v", m.Origin, m.Size, m.KeyID, already)
	}
	if _, already, err := c0.Publish(ctx, PublishRequest{Service: "web", Build: "v1", Dir: src}, &key); err != nil || !already {
		t.Errorf("republishing the same content: already=%v, %v; want a no-op", already, err)
	}
	os.WriteFile(filepath.Join(src, "index.html"), []byte("hello v1, changed"), 0o644)
	if _, _, err := c0.Publish(ctx, PublishRequest{Service: "web", Build: "v1", Dir: src}, &key); !errorContains(err, "already published") {
		t.Errorf("republishing v1 with other content: %v, want a refusal", err)
	}
	os.WriteFile(filepath.Join(src, "index.html"), []byte("hello v1"), 0o644)
	empty := t.TempDir()
	if _, _, err := c0.Publish(ctx, PublishRequest{Service: "web", Build: "e1", Dir: empty}, &key); !errorContains(err, "is empty") {
		t.Errorf("publishing an empty directory: %v, want a refusal", err)
	}
	if m, _, err := c0.Publish(ctx, PublishRequest{Service: "web", Build: "e1", Dir: empty, AllowEmpty: true}, &key); err != nil || m.Files != 0 {
		t.Errorf("publishing an empty directory with AllowEmpty: %+v, %v", m, err)
	}
	sig, _ := signal.New(signal.Config{Address: consulAddr, Prefix: prefix}, zerolog.Nop())
	if _, err := sig.Deploy(ctx, "web", "v1", "test", ""); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		active := 0
		for _, a := range agents {
			if s := a.Status().Services[0]; s.State == core.StateActive && s.Current == "v1" {
				active++
			}
		}
		if active == len(agents) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not active: %+v / %+v", agents[0].Status().Services, agents[1].Status().Services)
		}
	}
	b, err := os.ReadFile(filepath.Join(agents[1].cfg.DataDir, "services", "web", "current", "index.html"))
	if err != nil || string(b) != "hello v1" {
		t.Errorf("served file = %q, %v", b, err)
	}
	if _, err := sig.Deploy(ctx, "web", "nope", "test", ""); err == nil {
		t.Error("deploying an unpublished build was accepted")
	}
	resp, err := http.Get("http://" + agents[1].cfg.API + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`shoal_service_state{service="web",state="active"} 1`, `shoal_members 2`,
		"go_goroutines ", "process_open_fds ", "process_resident_memory_bytes "} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
	fleetView, err := NewClient(agents[1].cfg.API, 5*time.Second).Fleet(ctx)
	if err != nil || len(fleetView) != 2 || fleetView[0].Status == nil || fleetView[1].Status == nil {
		t.Errorf("fleet view = %+v, %v", fleetView, err)
	}
	hooks, _ := os.ReadFile(hooksLog)
	if strings.Count(string(hooks), "activate v1") != 2 {
		t.Errorf("activate hooks ran: %q, want once per agent", hooks)
	}
}

func errorContains(err error, s string) bool { return err != nil && strings.Contains(err.Error(), s) }

func swarmCfg(ip string, i int) swarm.Config {
	c := swarm.Config{Node: "a" + string(rune('0'+i)), BindAddr: ip, Gossip: "local",
		PeerRefresh: core.Duration(200 * time.Millisecond), JoinRetry: core.Duration(200 * time.Millisecond)}
	if i > 0 {
		c.Join = []string{"127.0.43.2"}
	}
	return c
}

// A state file written while the host was acting on a release (applying)
// loads as interrupted: applying cleared, the release to be handled again.
func TestInterruptedApplyLoadsAsUnhandled(t *testing.T) {
	st, err := swap.Open(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	saved := ServiceStatus{Service: "web", State: core.StateActive, Seq: 5, Applying: true, HandledIndex: 9, HandledRelease: "9/4/v1/1"}
	b, _ := json.Marshal(saved)
	if err := os.WriteFile(filepath.Join(st.Root(), "state.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	s := newService(&Agent{log: zerolog.Nop()}, "web", ServiceConfig{}, st)
	if got := s.snapshot(); got.Applying || got.HandledRelease != "" || got.HandledIndex != 0 {
		t.Errorf("loaded %+v: want applying cleared and the release unhandled", got)
	}
}
