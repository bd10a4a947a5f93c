package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
		"services":{"web":{"hooks":{"drain":"true","health_url":"http://127.0.0.2:8080/healthz","hook_timeout":"10s"}}}}`), 0o644)
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Finish(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	if c.API != "127.0.0.2:7070" || c.Services["web"].KeepReleases != 3 || c.Services["web"].Hooks.HookTimeout.D().Seconds() != 10 {
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
