package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/shoal-deploy/shoal/core"
)

// Test 4: a health check that fails on one host rolls that host back to
// the previous release; it reports failed with the reason; others stay active.
// Test 6 runs on the same fleet: a signed manifest whose SHA-256 was changed
// in Consul afterwards is refused before any byte is fetched.
func TestHealthFailureAndBadManifest(t *testing.T) {
	f := startFleet(t, 3, 32, func(i int) []string {
		args := []string{"--service", "web", "--health-interval", "50ms", "--health-retries", "3"}
		if i == 2 { // host-3 cannot run build "v2"
			args = append(args, "--health-cmd", `test "$SHOAL_BUILD" != v2 || { echo "v2 answers 500 on /healthz" >&2; exit 1; }`)
		}
		return args
	})
	dirs := map[string]string{}
	for _, b := range []string{"v1", "v2", "v3"} {
		dirs[b] = filepath.Join(t.TempDir(), b)
		makeTree(t, dirs[b], 2<<20, b)
		shoal(t, f, "publish", "--service", "web", "--build", b, dirs[b])
	}
	shoal(t, f, "deploy", "web", "v1")
	if _, err := waitSettled(t, f, "web"); err != nil {
		t.Fatalf("v1: %v", err)
	}
	shoal(t, f, "deploy", "web", "v2")
	st, err := waitSettled(t, f, "web")
	if err == nil || !strings.Contains(err.Error(), "1 host(s) failed") {
		t.Errorf("status --wait error = %v, want one failed host", err)
	}
	for _, a := range f.Agents[:2] {
		if s := st[a.Spec.Node]; s.State != core.StateActive || s.Current != "v2" {
			t.Errorf("%s: %s on %q, want active v2", a.Spec.Node, s.State, s.Current)
		}
	}
	bad := st["host-3"]
	if bad.State != core.StateFailed || bad.Current != "v1" {
		t.Errorf("host-3: %s on %q, want failed and back on v1", bad.State, bad.Current)
	}
	for _, want := range []string{"health check failed", "v2 answers 500", "switched back to v1"} {
		if !strings.Contains(bad.LastError, want) {
			t.Errorf("host-3 last error %q lacks %q", bad.LastError, want)
		}
	}
	sameTree(t, dirs["v1"], filepath.Join(f.Agents[2].Spec.DataDir, "services", "web", "current"))

	// Test 6: tamper with v3's signed manifest in Consul (its SHA-256).
	cc, err := api.NewClient(&api.Config{Address: f.Consul.Addr})
	if err != nil {
		t.Fatal(err)
	}
	p, _, err := cc.KV().Get("shoal/web/builds/v3", nil)
	if err != nil || p == nil {
		t.Fatalf("read manifest: %v", err)
	}
	var m core.Manifest
	if err := json.Unmarshal(p.Value, &m); err != nil {
		t.Fatal(err)
	}
	m.SHA256 = strings.Repeat("ab", 32)
	p.Value, _ = json.Marshal(m)
	if _, err := cc.KV().Put(p, nil); err != nil {
		t.Fatal(err)
	}
	before := map[string]string{}
	for _, a := range f.Agents {
		before[a.Spec.Node], _ = os.Readlink(filepath.Join(a.Spec.DataDir, "services", "web", "current"))
	}
	shoal(t, f, "deploy", "web", "v3")
	st, _ = waitSettled(t, f, "web")
	for _, a := range f.Agents {
		s := st[a.Spec.Node]
		if s.State != core.StateFailed || !strings.Contains(s.LastError, "signature does not verify") || !strings.Contains(s.LastError, "before fetching a byte") {
			t.Errorf("%s: %s %q, want failed: signature does not verify, before fetching", a.Spec.Node, s.State, s.LastError)
		}
		if got := buildBytes(a, "v3"); len(got) > 0 && a != f.Agents[0] {
			t.Errorf("%s: fetched (part of) a build whose manifest was tampered with: %v", a.Spec.Node, got)
		}
		if now, _ := os.Readlink(filepath.Join(a.Spec.DataDir, "services", "web", "current")); now != before[a.Spec.Node] {
			t.Errorf("%s: current moved from %s to %s", a.Spec.Node, before[a.Spec.Node], now)
		}
		if _, err := os.Stat(filepath.Join(a.Spec.DataDir, "services", "web", "releases", "v3")); err == nil {
			t.Errorf("%s: unverified v3 was installed", a.Spec.Node)
		}
	}
}

// Test 5: an agent killed with SIGKILL halfway through a fetch resumes
// after a restart and re-fetches no piece it had verified.
func TestResumeAfterKill(t *testing.T) {
	f := startFleet(t, 2, 33, func(i int) []string {
		args := []string{"--service", "web"}
		if i == 1 {
			args = append(args, "--download-rate", "4MiB")
		}
		return args
	})
	src := publishBuild(t, f, "v1", 24<<20)
	shoal(t, f, "deploy", "web", "v1")
	slow := f.Agents[1]
	var have, total int64
	deadline := time.Now().Add(2 * time.Minute)
	for {
		s := status(t, f, "web")[slow.Spec.Node]
		if s.Fetch != nil && s.Fetch.Total > 0 {
			have, total = s.Fetch.Have, s.Fetch.Total
			if have*100/total >= 35 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("fetch never reached 35%%: %+v", s.Fetch)
		}
		time.Sleep(100 * time.Millisecond)
	}
	slow.Kill()
	t.Logf("killed %s at %d of %d bytes verified", slow.Spec.Node, have, total)
	restart(t, f, slow)
	st, err := waitSettled(t, f, "web")
	if err != nil {
		t.Fatalf("did not settle after restart: %v", err)
	}
	s := st[slow.Spec.Node]
	if s.State != core.StateActive || s.Current != "v1" {
		t.Fatalf("restarted host: %s on %q (%s)", s.State, s.Current, s.LastError)
	}
	t.Logf("after restart: resumed %d, received %d, total %d", s.Fetch.Resumed, s.Fetch.Received, s.Fetch.Total)
	if s.Fetch.Received > total-have {
		t.Errorf("restarted host received %d bytes, but only %d were missing: it re-fetched verified pieces", s.Fetch.Received, total-have)
	}
	if s.Fetch.Resumed < have {
		t.Errorf("restarted host resumed from %d bytes, want >= %d verified before the kill", s.Fetch.Resumed, have)
	}
	sameTree(t, src, filepath.Join(slow.Spec.DataDir, "services", "web", "current"))
}
