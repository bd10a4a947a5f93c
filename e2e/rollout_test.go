package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/fleet"
	"github.com/shoal-deploy/shoal/signal"
)

// rolloutTags gives hosts 2 and 5 the canary tag, hosts 3 and 6 zone=b.
func rolloutTags(i int) []string {
	args := []string{"--service", "web"}
	switch i {
	case 1, 4:
		args = append(args, "--tag", "canary")
	case 2, 5:
		args = append(args, "--tag", "zone=b")
	}
	return args
}

// expectedStage is the stage index that first selects each agent.
func expectedStage(f *fleet.Fleet, stages []string) map[string]int {
	ro := &core.Rollout{Stages: stages}
	out := map[string]int{}
	for i, a := range f.Agents {
		var tags []string
		for j, v := range rolloutTags(i) {
			if v == "--tag" {
				tags = append(tags, rolloutTags(i)[j+1])
			}
		}
		out[a.Spec.Node] = ro.StageOf("web", a.Spec.Node, tags)
	}
	return out
}

func releaseOf(t *testing.T, f *fleet.Fleet) *core.Release {
	t.Helper()
	sig, err := signal.New(signal.Config{Address: f.Consul.Addr}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	r, err := sig.Release(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func historyOf(t *testing.T, f *fleet.Fleet) []signal.HistoryEntry {
	t.Helper()
	var hs []signal.HistoryEntry
	if err := json.Unmarshal([]byte(shoal(t, f, "history", "web", "--json")), &hs); err != nil {
		t.Fatal(err)
	}
	return hs
}

// commanderCmd starts `shoal deploy` as its own process (so it can be killed).
func commanderCmd(f *fleet.Fleet, args ...string) *exec.Cmd {
	cmd := exec.Command(f.Bin, append([]string{"deploy"}, args...)...)
	cmd.Env = append(append(os.Environ(), "CONSUL_HTTP_ADDR="+f.Consul.Addr, "SHOAL_API="+f.Agents[0].API), f.Secrets.Env()...)
	return cmd
}

// A staged rollout over 8 tagged hosts: at every stage exactly the hosts
// the stages so far select run v2, every other host runs v1 with v2
// prefetched; hosts reached by later stages receive no bytes when they
// switch; the history records the rollout, each promotion and the end.
func TestStagedRollout(t *testing.T) {
	f := startFleet(t, 8, 56, rolloutTags)
	deployV1(t, f, 256<<10)
	src := publishBuild(t, f, "v2", 4<<20)
	stages := []string{"canary", "zone=b", "50%", "all"}
	want := expectedStage(f, stages)
	plan := shoal(t, f, "deploy", "web", "v2", "--stages", strings.Join(stages, ","), "--plan")
	t.Logf("plan:\n%s", plan)

	cmd := commanderCmd(f, "web", "v2", "--stages", strings.Join(stages, ","), "--bake", "2s", "--interval", "300ms", "--json")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	checked := map[int]bool{}
	prefetchedBytes := map[string]int64{}
	deadline := time.Now().Add(3 * time.Minute)
	for len(checked) < len(stages) && time.Now().Before(deadline) {
		r := releaseOf(t, f)
		if r.Rollout == nil || r.Build != "v2" || checked[r.Rollout.Stage] {
			select {
			case err := <-done:
				if len(checked) < len(stages)-1 {
					t.Fatalf("the commander exited (%v) after checking stages %v:\n%s", err, checked, out.String())
				}
				done <- err
				goto finished
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		stage := r.Rollout.Stage
		sts := map[string]agent.ServiceStatus{}
		settledNow := true
		for _, a := range f.Agents {
			s := hostStatus(t, f, a)
			sts[a.Spec.Node] = s
			if s.Seq != r.Seq || s.Applying || s.Stage != stage || s.State != core.StateActive || (s.Held && s.Prefetched != "v2") {
				settledNow = false
			}
		}
		if !settledNow {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for node, s := range sts {
			reached := want[node] >= 0 && want[node] <= stage
			switch {
			case reached && s.Current != "v2":
				t.Errorf("stage %d (%s): %s should run v2, runs %s", stage, stages[stage], node, s.Current)
			case !reached && (s.Current != "v1" || s.Prefetched != "v2"):
				t.Errorf("stage %d (%s): %s should run v1 with v2 prefetched, runs %s (prefetched %q)", stage, stages[stage], node, s.Current, s.Prefetched)
			}
			if stage == 0 && !reached {
				prefetchedBytes[node] = s.BytesReceived
			}
		}
		t.Logf("stage %d (%s) checked", stage, stages[stage])
		checked[stage] = true
	}
finished:
	if err := <-done; err != nil {
		t.Fatalf("the commander failed: %v\n%s", err, out.String())
	}
	for _, s := range []int{0, 1, 2} {
		if !checked[s] {
			t.Errorf("stage %d (%s) was never observed settled", s, stages[s])
		}
	}
	allActive(t, f, "v2", src)
	final := map[string]*agent.ServiceStatus{}
	for _, a := range f.Agents {
		s := hostStatus(t, f, a)
		final[a.Spec.Node] = &s
	}
	for node, before := range prefetchedBytes {
		if after := final[node].BytesReceived; after != before {
			t.Errorf("%s received %d bytes when its stage came (had v2 prefetched at %d)", node, after-before, before)
		}
	}
	if r := releaseOf(t, f); r.Rollout != nil {
		t.Errorf("the rollout is still in the release record: %+v", r.Rollout)
	}
	var events []string
	for _, h := range historyOf(t, f) {
		events = append(events, h.Event)
	}
	if got := strings.Join(events, ","); !strings.Contains(got, "rollout,promote,promote,promote,completed") {
		t.Errorf("history %s, want rollout, 3 promotions, completed", got)
	}
}

// A check that fails on the canary stage rolls the whole fleet back to
// v1 (no transfer: it is on disk), the commander exits 1 naming the gate,
// its value and its limit, and the history records it.
func TestRolloutGateRollsBack(t *testing.T) {
	f := startFleet(t, 4, 57, rolloutTags)
	src1 := deployV1(t, f, 256<<10)
	publishBuild(t, f, "v2", 1<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := f.Shoal(ctx, "deploy", "web", "v2", "--stages", "canary,all", "--bake", "2s", "--interval", "300ms",
		"--check", `test "$SHOAL_STAGE" != canary || ! grep -q v2 `+filepath.Join(f.Agents[1].Spec.DataDir, "services", "web", "current", "bin", "app"))
	t.Logf("commander:\n%s\n%v", out, err)
	if err == nil || !strings.Contains(err.Error(), "gate check failed at stage 1/2 (canary)") || !strings.Contains(err.Error(), "exit 1 (limit exit 0)") {
		t.Fatalf("the commander did not fail on the check gate: %v", err)
	}
	r := releaseOf(t, f)
	if r.Build != "v1" || !r.Rollback || r.Rollout != nil {
		t.Errorf("release after the gate failed: %s rollback=%v rollout=%v", r.Build, r.Rollback, r.Rollout)
	}
	allActive(t, f, "v1", src1)
	var gate *signal.HistoryEntry
	for _, h := range historyOf(t, f) {
		if h.Event == "gate-failed" {
			gate = &h
		}
	}
	if gate == nil || gate.Gate != "check" || gate.Value != "exit 1" || gate.Outcome != "rollback" || gate.Stage != "canary" {
		t.Errorf("history does not record the gate failure: %+v", gate)
	}
}

// One commander per service: a second is refused naming the first; the
// first SIGKILLed mid-rollout leaves it where it was, and `--resume`
// (once the dead commander's lock expired) finishes it. A lock refuses
// deploys and allows a rollback.
func TestCommanderLockResumeAndServiceLock(t *testing.T) {
	f := startFleet(t, 3, 58, rolloutTags)
	deployV1(t, f, 256<<10)
	src := publishBuild(t, f, "v2", 512<<10)
	first := commanderCmd(f, "web", "v2", "--stages", "canary,all", "--bake", "1h", "--interval", "300ms")
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if r := releaseOf(t, f); r.Rollout != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first commander never started its rollout")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := f.Shoal(ctx, "deploy", "--resume", "web"); err == nil || !strings.Contains(err.Error(), "is driven by") {
		t.Fatalf("a second commander was not refused: %v", err)
	}
	_ = first.Process.Signal(syscall.SIGKILL)
	_ = first.Wait()
	// A host the rollout has not reached, restarted mid-rollout, comes
	// back on v1 with v2 prefetched, without fetching again.
	held := f.Agents[2] // not the first agent: the others join through it, and it joins no one
	s := waitHost(t, f, held, time.Minute, "v2 prefetched", func(s agent.ServiceStatus) bool {
		return s.Held && s.Prefetched == "v2" && s.State == core.StateActive
	})
	before := s.BytesReceived
	held.Stop()
	restart(t, f, held)
	waitMembers(t, f, 3)
	s = waitHost(t, f, held, time.Minute, "v2 prefetched after the restart", func(s agent.ServiceStatus) bool {
		return s.Held && s.Prefetched == "v2" && s.State == core.StateActive && s.Current == "v1"
	})
	if s.BytesReceived != before {
		t.Errorf("the restarted host received %d more bytes", s.BytesReceived-before)
	}
	var out string
	var err error
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		out, err = f.Shoal(ctx, "deploy", "--resume", "web", "--bake", "1s", "--reason", "the first commander died")
		if err == nil || !strings.Contains(err.Error(), "is driven by") || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	t.Logf("resumed:\n%s", out)
	allActive(t, f, "v2", src)

	shoal(t, f, "lock", "web", "--reason", "incident 42")
	if _, err := f.Shoal(ctx, "deploy", "web", "v1"); err == nil || !strings.Contains(err.Error(), "locked by") || !strings.Contains(err.Error(), "incident 42") {
		t.Errorf("a locked service took a deploy: %v", err)
	}
	shoal(t, f, "rollback", "web", "--reason", "allowed while locked")
	shoal(t, f, "unlock", "web")
	shoal(t, f, "deploy", "web", "v2")
	if _, err := waitSettled(t, f, "web"); err != nil {
		t.Fatal(err)
	}

	// A deploy window (clock injected): refused outside it, --force
	// overrides and is recorded; inside it, deploys go.
	shoal(t, f, "window", "web", "--days", "mon-fri", "--hours", "09:00-17:00", "--tz", "Europe/Berlin")
	t.Setenv("SHOAL_NOW", "2026-11-28T10:00:00Z") // a Saturday
	if _, err := f.Shoal(ctx, "deploy", "web", "v1"); err == nil || !strings.Contains(err.Error(), "outside its deploy window (mon,tue,wed,thu,fri 09:00-17:00 Europe/Berlin; now Sat 11:00 CET)") {
		t.Errorf("a deploy outside the window was not refused as expected: %v", err)
	}
	shoal(t, f, "rollback", "web", "--reason", "rollbacks ignore windows")
	shoal(t, f, "deploy", "web", "v2", "--force", "--reason", "incident 43")
	var override bool
	for _, h := range historyOf(t, f) {
		override = override || (h.Event == "override" && strings.Contains(h.Detail, "incident 43"))
	}
	if !override {
		t.Error("the history does not record the forced deploy")
	}
	t.Setenv("SHOAL_NOW", "2026-11-30T10:00:00Z") // Monday, 11:00 in Berlin
	shoal(t, f, "deploy", "web", "v1")
	if _, err := waitSettled(t, f, "web"); err != nil {
		t.Fatal(err)
	}
}

func nopLog() zerolog.Logger { return zerolog.Nop() }

// --step: after each stage bakes the commander stops and says how to go
// on; `--resume` promotes.
func TestCommanderStep(t *testing.T) {
	f := startFleet(t, 3, 62, rolloutTags)
	deployV1(t, f, 256<<10)
	src := publishBuild(t, f, "v2", 512<<10)
	out := shoal(t, f, "deploy", "web", "v2", "--stages", "canary,all", "--step", "--bake", "1s", "--interval", "200ms")
	if !strings.Contains(out, "stage 1/2 (canary) baked; `shoal deploy --resume web` promotes it to stage 2 (all)") {
		t.Fatalf("the commander did not stop after the first stage:\n%s", out)
	}
	r := releaseOf(t, f)
	if r.Rollout == nil || r.Rollout.Stage != 0 || r.Rollout.Params.Waiting != 1 {
		t.Fatalf("release after the first stage: %+v", r.Rollout)
	}
	for i, a := range f.Agents {
		s := hostStatus(t, f, a)
		if want := map[bool]string{true: "v2", false: "v1"}[i == 1]; s.Current != want {
			t.Errorf("%s runs %s while waiting at the canary stage, want %s", a.Spec.Node, s.Current, want)
		}
	}
	shoal(t, f, "deploy", "--resume", "web")
	allActive(t, f, "v2", src)
	if r := releaseOf(t, f); r.Rollout != nil {
		t.Errorf("the rollout did not finish: %+v", r.Rollout)
	}
}
