package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-deploy/shoal/bench"
)

// The smoke bench keeps the harness working: N = 3, 8 MB, loopback, both
// methods. It asserts what the results must say, never how fast they are.
func TestBenchSmoke(t *testing.T) {
	out := t.TempDir()
	cmd := exec.Command(shoalBin, "bench", "--hosts", "3", "--size", "8MB", "--runs", "1", "--up", "20MB", "--down", "20MB",
		"--net", "loopback", "--consul-bin", consulBin, "--out", out)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, b)
	}
	if !strings.Contains(string(b), "max/T*") || !strings.Contains(string(b), "[p2p N=3 run 1/1]") {
		t.Errorf("bench output lacks the table or progress lines:\n%s", b)
	}
	f, err := os.Open(filepath.Join(out, "results.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := map[string]bench.Result{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r bench.Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("bad JSON line %q: %v", sc.Text(), err)
		}
		got[r.Method] = r
	}
	for _, m := range []string{"p2p", "origin"} {
		r, ok := got[m]
		if !ok {
			t.Fatalf("no %s result", m)
		}
		if r.Failed != 0 || len(r.HostVerified) != 3 || r.Verified.Max <= 0 || r.Active.Max < r.Verified.Max {
			t.Errorf("%s: failed %d, %d host times, verified max %v, active max %v", m, r.Failed, len(r.HostVerified), r.Verified.Max, r.Active.Max)
		}
		if r.Bound <= 0 || r.Ratio <= 0 || r.CPU.Max <= 0 || r.RSSMiB.Max <= 0 {
			t.Errorf("%s: bound %v ratio %v cpu %v rss %v should all be positive", m, r.Bound, r.Ratio, r.CPU.Max, r.RSSMiB.Max)
		}
	}
	// Every host pulls the whole archive from the origin in the baseline...
	if x := got["origin"].OriginX; x < 2.99 || x > 3.01 {
		t.Errorf("origin method: origin sent %.3f x S, want 3 (one copy per host)", x)
	}
	// ...while in the swarm the hosts also serve each other.
	if got["p2p"].PeerBytes == 0 {
		t.Error("p2p: peers served nothing")
	}
	for _, p := range []string{"scaling.svg", "cdf.svg"} {
		if b, err := os.ReadFile(filepath.Join(out, p)); err != nil || !strings.Contains(string(b), "<polyline") {
			t.Errorf("%s missing or empty: %v", p, err)
		}
	}
}
