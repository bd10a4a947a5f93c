package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/swap"
)

// The crash steps of a deploy, in order, at which the fault suite kills an
// agent (swap.FaultEnv): unpacked but not renamed into releases/, renamed,
// journal written, drained, between the `previous` and `current` renames,
// switched, activated, health-checked, and just before the state write.
var crashSteps = []string{"unpacked", "installed", "before-drain", "after-drain", "switch-between-links",
	"after-switch", "after-activate", "after-health", "before-active-state"}

// kill -9 at every step of a deploy: after a restart the host finishes on
// its own, `current` names a complete release of the deployed build, and
// activate and health ran for it after the crash (a crash after the switch
// used to skip both: the restarted agent called the build "already live").
// SHOAL_CRASH_ROUNDS (default 1; `make faults` runs 20) repeats the steps.
func TestKillAtEveryStep(t *testing.T) {
	rounds := 1
	if v, err := strconv.Atoi(os.Getenv("SHOAL_CRASH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	steps := []string{""}
	for r := 0; r < rounds; r++ {
		steps = append(steps, crashSteps...)
	}
	f := startFleet(t, 2, 39, func(int) []string { return hookArgs() })
	victim := f.Agents[1]
	hooksLog := filepath.Join(victim.Spec.DataDir, "services", "web", "hooks.log")
	restartWith := func(env []string) {
		t.Helper()
		victim.Stop()
		victim.Spec.Env = env
		restart(t, f, victim)
		waitMembers(t, f, 2)
	}
	for i, step := range steps {
		build := fmt.Sprintf("v%d", i)
		src := filepath.Join(t.TempDir(), build)
		makeTree(t, src, 256<<10, build)
		shoal(t, f, "publish", "--service", "web", "--build", build, src)
		if step != "" {
			restartWith([]string{swap.FaultEnv + "=" + step})
		}
		before, _ := os.ReadFile(hooksLog)
		shoal(t, f, "deploy", "web", build)
		if step != "" {
			select {
			case <-victim.Exited():
			case <-time.After(time.Minute):
				t.Fatalf("%s: the agent did not kill itself at %q", build, step)
			}
			restartWith(nil)
		}
		st, err := waitSettled(t, f, "web")
		if err != nil {
			t.Fatalf("kill at %q: did not settle: %v", step, err)
		}
		s := st[victim.Spec.Node]
		if s.State != core.StateActive || s.Current != build {
			t.Fatalf("kill at %q: %s on %q (%s), want active %s", step, s.State, s.Current, s.LastError, build)
		}
		sameTree(t, src, filepath.Join(victim.Spec.DataDir, "services", "web", "current"))
		after, _ := os.ReadFile(hooksLog)
		since := strings.TrimPrefix(string(after), string(before))
		lastActivate := strings.LastIndex(since, "activate "+build+" releases/"+build)
		if lastActivate < 0 || !strings.Contains(since[lastActivate:], "health "+build+" releases/"+build) {
			t.Errorf("kill at %q: activate and health did not both run for %s after the crash; hooks since the deploy:\n%s", step, build, since)
		}
		if _, err := os.Stat(filepath.Join(victim.Spec.DataDir, "services", "web", "activating.json")); err == nil {
			t.Errorf("kill at %q: the activation journal is still there", step)
		}
		if ents, _ := os.ReadDir(filepath.Join(victim.Spec.DataDir, "services", "web", "cold")); len(ents) != 0 {
			t.Errorf("kill at %q: cold/ not cleaned: %v", step, ents)
		}
		t.Logf("kill at %-22q → active %s; hooks after the crash: %q", step, build, strings.Join(strings.Fields(since), " "))
	}
}
