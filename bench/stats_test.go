package bench

import (
	"math"
	"strings"
	"testing"
)

func TestPercentile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	for _, tc := range []struct{ p, want float64 }{{0, 1}, {50, 3}, {100, 5}, {25, 2}, {90, 4.6}, {99, 4.96}} {
		if got := Percentile(xs, tc.p); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("Percentile(%v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if !math.IsNaN(Percentile(nil, 50)) {
		t.Error("percentile of nothing should be NaN")
	}
	if got := Percentile([]float64{7}, 99); got != 7 {
		t.Errorf("single sample p99 = %v, want 7", got)
	}
	s := Summarize([]float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10})
	if s.P50 != 5.5 || s.Max != 10 || math.Abs(s.P90-9.1) > 1e-9 {
		t.Errorf("Summarize = %+v", s)
	}
}

func TestBound(t *testing.T) {
	const MB = 1e6
	peers := func(n int, u float64) []float64 {
		out := make([]float64, n)
		for i := range out {
			out[i] = u
		}
		return out
	}
	for _, tc := range []struct {
		name                  string
		size, up, down, peerU float64
		n                     int
		want                  float64
	}{
		// 100 MB, 10 MB/s everywhere: the origin's upload and each host's download bind: 10 s at any N.
		{"n5", 100 * MB, 10 * MB, 10 * MB, 10 * MB, 5, 10},
		{"n40", 100 * MB, 10 * MB, 10 * MB, 10 * MB, 40, 10},
		// Peers that cannot upload: the origin serves all n copies.
		{"no peer upload", 100 * MB, 10 * MB, 10 * MB, 0, 4, 40},
		// Fast downloads, slow uploads: the aggregate upload term binds.
		{"aggregate", 100 * MB, 10 * MB, 100 * MB, 5 * MB, 10, 1000.0 / 60},
	} {
		if got := Bound(tc.size, tc.up, tc.down, peers(tc.n, tc.peerU)); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("%s: Bound = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestResultsRoundTripAndPlots(t *testing.T) {
	dir := t.TempDir()
	rs := []Result{
		{Method: "p2p", N: 5, Run: 1, Size: 100, Verified: Summary{Max: 12}, HostVerified: []float64{10, 11, 12}, Bound: 10},
		{Method: "origin", N: 5, Run: 1, Size: 100, Verified: Summary{Max: 55}, HostVerified: []float64{50, 52, 55}, Bound: 10},
	}
	path := dir + "/results.jsonl"
	if err := AppendJSONLines(path, rs); err != nil {
		t.Fatal(err)
	}
	if err := AppendJSONLines(path, rs[:1]); err != nil {
		t.Fatal(err)
	}
	got, err := ReadJSONLines(path)
	if err != nil || len(got) != 3 || got[1].Method != "origin" || got[2].Verified.Max != 12 {
		t.Fatalf("ReadJSONLines = %+v, %v", got, err)
	}
	if err := WritePlots(dir, got); err != nil {
		t.Fatal(err)
	}
}

// The RSS-by-build line follows each (method, N) through its builds, says
// what each agent already held when a build began (Shoal's agents live
// across builds; aria2c is started per build), and skips a single run.
func TestRSSByBuild(t *testing.T) {
	rs := []Result{
		{Method: "p2p", N: 20, RSSMiB: Summary{Max: 50}, RSSStartMiB: Summary{Max: 30}},
		{Method: "p2p", N: 20, RSSMiB: Summary{Max: 55}, RSSStartMiB: Summary{Max: 35}},
		{Method: "bittorrent", N: 20, RSSMiB: Summary{Max: 30}},
		{Method: "bittorrent", N: 20, RSSMiB: Summary{Max: 33}},
		{Method: "p2p", N: 40, RSSMiB: Summary{Max: 60}},
	}
	got := rssByBuild(rs)
	want := []string{
		"p2p N=20: peak RSS per agent by build 50, 55 MiB (last/first 1.10; resident when each began 30, 35)",
		"bittorrent N=20: peak RSS per agent by build 30, 33 MiB (last/first 1.10)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("rssByBuild:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
