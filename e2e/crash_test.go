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

// Power loss right after a release was installed, before it went live:
// the writes the disk had not made durable are dropped (simulated by
// killing the agent at "installed", then truncating a file of the release
// and zeroing the first header of its framing file, as a file system that
// lost unflushed data shows them). On restart the host finds the release
// damaged, never activates it, fetches it again (the release was the
// build's copy on this host), installs it again and goes live on a tree
// identical to the published one.
func TestPowerLossAfterInstall(t *testing.T) {
	f := startFleet(t, 2, 54, func(int) []string { return hookArgs() })
	victim := f.Agents[1]
	deployV1(t, f, 256<<10)
	src := publishBuild(t, f, "v2", 2<<20)
	victim.Stop()
	victim.Spec.Env = []string{swap.FaultEnv + "=installed"}
	restart(t, f, victim)
	waitMembers(t, f, 2)
	shoal(t, f, "deploy", "web", "v2")
	select {
	case <-victim.Exited():
	case <-time.After(time.Minute):
		t.Fatal("the agent did not kill itself at \"installed\"")
	}
	svc := filepath.Join(victim.Spec.DataDir, "services", "web")
	if err := os.Truncate(filepath.Join(svc, "releases", "v2", "static", "blob.bin"), 4096); err != nil {
		t.Fatal(err)
	}
	// The build was fetched into its release: its side file of tar framing
	// loses its first header too.
	damage(t, filepath.Join(victim.Spec.DataDir, "archives", "web@v2.tar.framing"), 0, 512, 0)
	hooksLog := filepath.Join(svc, "hooks.log")
	before, _ := os.ReadFile(hooksLog)
	victim.Spec.Env = nil
	restart(t, f, victim)
	waitMembers(t, f, 2)
	allActive(t, f, "v2", src)
	after, _ := os.ReadFile(hooksLog)
	if n := strings.Count(strings.TrimPrefix(string(after), string(before)), "activate v2"); n != 1 {
		t.Errorf("v2 activated %d times after the restart, want once (on the repaired tree)", n)
	}
	b, _ := os.ReadFile(victim.Log)
	if !strings.Contains(string(b), "installed release is damaged; installing it again") {
		t.Errorf("the agent's log does not say it found the release damaged")
	}
}
