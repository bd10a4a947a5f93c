package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-deploy/shoal/core"
)

// hookArgs records, from the hooks themselves, each phase with the build
// being made live and where `current` points at that moment.
func hookArgs(extra ...string) []string {
	rec := func(phase string) string {
		return `echo "` + phase + ` $SHOAL_BUILD $(readlink current)" >> hooks.log`
	}
	return append([]string{"--service", "web", "--drain", rec("drain"), "--activate", rec("activate"),
		"--health-cmd", rec("health"), "--health-interval", "100ms"}, extra...)
}

// Tests 1-3 of the spine: a 64 MB build to 5 hosts peer to peer, a second
// build, a rollback that moves no bytes, and hook order on every host.
func TestDeployRollback(t *testing.T) {
	const n = 5
	// The last host runs on two cores; the others keep the default, one.
	f := startFleet(t, n, 31, func(i int) []string {
		if i == n-1 {
			return hookArgs("--max-procs", "2")
		}
		return hookArgs()
	})
	src1, src2 := filepath.Join(t.TempDir(), "v1"), filepath.Join(t.TempDir(), "v2")
	makeTree(t, src1, 64<<20, "v1")
	makeTree(t, src2, 8<<20, "v2")

	shoal(t, f, "publish", "--service", "web", "--build", "v1", src1)
	out := shoal(t, f, "deploy", "web", "v1", "--reason", "e2e")
	if !strings.Contains(out, "deployed web v1") {
		t.Errorf("deploy printed %q", out)
	}
	st, err := waitSettled(t, f, "web")
	if err != nil {
		t.Fatalf("v1 did not settle: %v", err)
	}
	origin := f.Agents[0].Spec.Node
	var size int64
	fromPeers := 0
	for _, a := range f.Agents {
		s := st[a.Spec.Node]
		if s.State != core.StateActive || s.Current != "v1" {
			t.Fatalf("%s: state %s current %q, want active v1 (error %q)", a.Spec.Node, s.State, s.Current, s.LastError)
		}
		sameTree(t, src1, filepath.Join(a.Spec.DataDir, "services", "web", "current"))
		if s.Fetch == nil {
			t.Fatalf("%s: no fetch record", a.Spec.Node)
		}
		size = s.Fetch.Total
		if a.Spec.Node == origin {
			continue
		}
		// Fetched into the release, every piece checked by SHA-256 against
		// the signed list: the install did not hash the build whole again.
		checked := false
		for _, tr := range s.History {
			checked = checked || (tr.To == core.StateReady && tr.Build == "v1" && tr.Note == "checked by each piece's SHA-256")
		}
		if !checked {
			t.Errorf("%s: no ready transition checked by each piece's SHA-256: %+v", a.Spec.Node, s.History)
		}
		t.Logf("%s: %d bytes from origin, %d from peers", a.Spec.Node, s.Fetch.FromOrigin, s.Fetch.FromPeers)
		if got := s.Fetch.FromOrigin + s.Fetch.FromPeers + s.Fetch.Resumed; got < s.Fetch.Total {
			t.Errorf("%s: origin+peers+resumed = %d, want >= %d", a.Spec.Node, got, s.Fetch.Total)
		}
		if s.Fetch.FromPeers > 0 {
			fromPeers++
		}
	}
	for i, a := range f.Agents {
		want := "1"
		if i == n-1 {
			want = "2"
		}
		if got := field(apiGet(t, f, a, "/metrics"), "go_sched_gomaxprocs_threads "); got != want {
			t.Errorf("%s: go_sched_gomaxprocs_threads %q, want %s", a.Spec.Node, got, want)
		}
	}
	if fromPeers < 3 {
		t.Errorf("%d of %d non-origin hosts received bytes from non-origin peers, want >= 3", fromPeers, n-1)
	}
	up := st[origin].Fetch.Uploaded
	t.Logf("origin uploaded %d bytes = %.2f x build size %d", up, float64(up)/float64(size), size)
	if up >= 4*size {
		t.Errorf("origin uploaded %d bytes, want < 4 x %d", up, size)
	}

	shoal(t, f, "publish", "--service", "web", "--build", "v2", "--api", f.Agents[2].API, src2)
	shoal(t, f, "deploy", "web", "v2")
	st, err = waitSettled(t, f, "web")
	if err != nil {
		t.Fatalf("v2 did not settle: %v", err)
	}
	received := map[string]int64{}
	for _, a := range f.Agents {
		s := st[a.Spec.Node]
		if s.State != core.StateActive || s.Current != "v2" || s.Previous != "v1" {
			t.Fatalf("%s: %s current %q previous %q, want active v2 previous v1", a.Spec.Node, s.State, s.Current, s.Previous)
		}
		sameTree(t, src2, filepath.Join(a.Spec.DataDir, "services", "web", "current"))
		received[a.Spec.Node] = s.BytesReceived
	}

	out = shoal(t, f, "rollback", "web")
	if !strings.Contains(out, "rolled back web v1") {
		t.Errorf("rollback printed %q", out)
	}
	st, err = waitSettled(t, f, "web")
	if err != nil {
		t.Fatalf("rollback did not settle: %v", err)
	}
	for _, a := range f.Agents {
		s := st[a.Spec.Node]
		if s.State != core.StateActive || s.Current != "v1" {
			t.Errorf("%s after rollback: %s on %q, want active v1", a.Spec.Node, s.State, s.Current)
		}
		if s.BytesReceived != received[a.Spec.Node] {
			t.Errorf("%s received %d bytes during the rollback, want 0", a.Spec.Node, s.BytesReceived-received[a.Spec.Node])
		}
		if s.Fetch != nil {
			t.Errorf("%s: rollback ran a fetch of %s", a.Spec.Node, s.Fetch.Build)
		}
		sameTree(t, src1, filepath.Join(a.Spec.DataDir, "services", "web", "current"))

		// Test 3: hook order, from the hooks' own records.
		b, err := os.ReadFile(filepath.Join(a.Spec.DataDir, "services", "web", "hooks.log"))
		if err != nil {
			t.Fatal(err)
		}
		want := strings.Join([]string{
			"drain v1 ", "activate v1 releases/v1", "health v1 releases/v1",
			"drain v2 releases/v1", "activate v2 releases/v2", "health v2 releases/v2",
			"drain v1 releases/v2", "activate v1 releases/v1", "health v1 releases/v1"}, "\n") + "\n"
		if got := string(b); got != want {
			t.Errorf("%s hook record:\n%s\nwant:\n%s", a.Spec.Node, got, want)
		}
	}
}
