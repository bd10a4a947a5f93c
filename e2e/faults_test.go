package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/fleet"
)

// hostStatus asks one agent directly (the fleet's first agent may be down).
func hostStatus(t *testing.T, f *fleet.Fleet, a *fleet.Agent) agent.ServiceStatus {
	t.Helper()
	st, err := agent.NewClient(a.API, 5*time.Second).WithToken(f.Secrets.Token()).Status(context.Background())
	if err != nil || len(st.Services) == 0 {
		t.Fatalf("status of %s: %v", a.Spec.Node, err)
	}
	return st.Services[0]
}

// The origin dies before every piece has left it: the fetching hosts say,
// from facts, that some pieces are held by no peer and that the origin is
// gone (not "check the torrent ports"), and they complete once it is back.
func TestOriginDiesMidFetch(t *testing.T) {
	stall := filepath.Join(t.TempDir(), "stall.json")
	if err := os.WriteFile(stall, []byte(`{"fetch_stall":"2s"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	f := startFleet(t, 3, 40, func(i int) []string {
		if i == 0 {
			return []string{"--service", "web", "--upload-rate", "1MB"}
		}
		return []string{"--service", "web", "--config", stall}
	})
	origin, watcher := f.Agents[0], f.Agents[1]
	src := filepath.Join(t.TempDir(), "v1")
	makeTree(t, src, 12<<20, "v1")
	shoal(t, f, "publish", "--service", "web", "--build", "v1", src)
	shoal(t, f, "deploy", "web", "v1")
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		s := hostStatus(t, f, watcher)
		if s.Fetch != nil && s.Fetch.Total > 0 && s.Fetch.Have*4 >= s.Fetch.Total {
			t.Logf("killing the origin with %s at %d of %d bytes", watcher.Spec.Node, s.Fetch.Have, s.Fetch.Total)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fetch never reached 25%%: %+v", s.Fetch)
		}
	}
	origin.Kill()
	var msg string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		s := hostStatus(t, f, watcher)
		if s.State == core.StateActive {
			t.Skip("the swarm already held every piece when the origin died (the origin was faster than planned); nothing to diagnose")
		}
		msg = s.LastError
		if strings.Contains(msg, "held by none of the") && strings.Contains(msg, "origin host-1 is not a member any more") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no diagnosis naming the missing pieces and the dead origin; last error %q", msg)
		}
	}
	t.Logf("diagnosis: %s", msg)
	if strings.Contains(msg, "torrent ports") {
		t.Errorf("the diagnosis still blames the torrent ports: %q", msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := origin.Restart(ctx, shoalBin, f.Consul.Addr); err != nil {
		t.Fatal(err)
	}
	waitMembers(t, f, 3)
	st, err := waitSettled(t, f, "web")
	if err != nil {
		t.Fatalf("did not complete once the origin was back: %v", err)
	}
	for _, a := range f.Agents {
		if s := st[a.Spec.Node]; s.State != core.StateActive || s.Current != "v1" {
			t.Errorf("%s: %s on %q (%s)", a.Spec.Node, s.State, s.Current, s.LastError)
		}
	}
	sameTree(t, src, filepath.Join(watcher.Spec.DataDir, "services", "web", "current"))
}
