package e2e

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// TestCommanderTimings measures, on a loopback fleet of $SHOAL_COMMANDER_BENCH
// hosts (skipped when unset; `make bench-commander` runs it with 40): a
// one-shot deploy against a staged rollout of the same size, and the time
// from a failed gate to the whole fleet back on the previous build. It
// logs figures and asserts none of them (docs/BENCHMARKS.md has them).
func TestCommanderTimings(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SHOAL_COMMANDER_BENCH"))
	if n < 3 {
		t.Skip("set SHOAL_COMMANDER_BENCH=<hosts> (make bench-commander) to measure the commander")
	}
	f := startFleet(t, n, 59, func(i int) []string {
		if i == 1 || i == 2 {
			return []string{"--service", "web", "--tag", "canary"}
		}
		return []string{"--service", "web"}
	})
	deployV1(t, f, 1<<20)
	build := func(name string) { publishBuild(t, f, name, 16<<20) }
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	build("v2")
	start := time.Now()
	shoal(t, f, "deploy", "web", "v2")
	if _, err := waitSettled(t, f, "web"); err != nil {
		t.Fatal(err)
	}
	oneShot := time.Since(start)

	build("v3")
	start = time.Now()
	if out, err := f.Shoal(ctx, "deploy", "web", "v3", "--stages", "canary,25%,all", "--bake", "0s", "--interval", "250ms"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	staged := time.Since(start)

	build("v4")
	start = time.Now()
	out, err := f.Shoal(ctx, "deploy", "web", "v4", "--stages", "canary,all", "--bake", "1m", "--interval", "250ms",
		"--check", `test "$SHOAL_STAGE" != canary || ! grep -q v4 `+filepath.Join(f.Agents[1].Spec.DataDir, "services", "web", "current", "bin", "app"))
	if err == nil {
		t.Fatalf("the gate did not fail:\n%s", out)
	}
	m := regexp.MustCompile(`fleet back on v3 ([0-9.]+) s after the gate failed`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no rollback time in the commander's output:\n%s", out)
	}
	t.Logf("N = %d, 16 MB builds, loopback: one-shot deploy %.1f s; staged canary,25%%,all (bake 0) %.1f s; failed gate → whole fleet back on v3 %s s (whole failed rollout %.1f s)",
		n, oneShot.Seconds(), staged.Seconds(), m[1], time.Since(start).Seconds())
}
