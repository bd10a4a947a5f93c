package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/fleet"
	"github.com/shoal-deploy/shoal/swap"
	"github.com/shoal-deploy/shoal/swarm"
)

// fullStatus asks one agent directly (the fleet's first agent may be down).
func fullStatus(t *testing.T, f *fleet.Fleet, a *fleet.Agent) agent.HostStatus {
	t.Helper()
	st, err := agent.NewClient(a.API, 5*time.Second).WithToken(f.Secrets.Token()).Status(context.Background())
	if err != nil {
		t.Fatalf("status of %s: %v", a.Spec.Node, err)
	}
	return st
}

// hostStatus is one agent's status of its (only) service.
func hostStatus(t *testing.T, f *fleet.Fleet, a *fleet.Agent) agent.ServiceStatus {
	t.Helper()
	st := fullStatus(t, f, a)
	if len(st.Services) == 0 {
		t.Fatalf("status of %s: no service", a.Spec.Node)
	}
	return st.Services[0]
}

// damage overwrites n bytes of a file at off with b, in place.
func damage(t *testing.T, path string, off, n int, b byte) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.WriteAt(bytes.Repeat([]byte{b}, n), int64(off)); err != nil {
		t.Fatal(err)
	}
}

// buildBytes lists what a host keeps of a build's bytes, relative to its
// data dir: the archive, or (fetched into its release) the framing file
// and the tree still being fetched. Empty: none of it.
func buildBytes(a *fleet.Agent, build string) []string {
	var out []string
	for _, p := range []string{"archives/web@" + build + ".tar", "archives/web@" + build + ".tar.framing", "services/web/fetching/" + build} {
		if _, err := os.Stat(filepath.Join(a.Spec.DataDir, p)); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// waitRepaired waits until the file at path holds want again.
func waitRepaired(t *testing.T, path string, want []byte, what string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if got, _ := os.ReadFile(path); bytes.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s was not repaired", what)
		}
	}
}

// restart starts a stopped or killed agent again with its spec.
func restart(t *testing.T, f *fleet.Fleet, a *fleet.Agent) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.Restart(ctx, shoalBin, f.Consul.Addr); err != nil {
		t.Fatal(err)
	}
}

// allActive waits for the fleet to settle and fails the test unless every
// agent is active on build with a tree identical to src.
func allActive(t *testing.T, f *fleet.Fleet, build, src string) map[string]*agent.ServiceStatus {
	t.Helper()
	st, err := waitSettled(t, f, "web")
	if err != nil {
		t.Fatalf("%s did not settle: %v", build, err)
	}
	for _, a := range f.Agents {
		if s := st[a.Spec.Node]; s == nil {
			t.Errorf("%s: no status (down?)", a.Spec.Node)
		} else if s.State != core.StateActive || s.Current != build {
			t.Errorf("%s: %s on %q (%s), want active %s", a.Spec.Node, s.State, s.Current, s.LastError, build)
		}
		sameTree(t, src, filepath.Join(a.Spec.DataDir, "services", "web", "current"))
	}
	return st
}

// waitHost polls one agent until cond holds, and fails the test naming
// what it waited for if that takes longer than limit.
func waitHost(t *testing.T, f *fleet.Fleet, a *fleet.Agent, limit time.Duration, what string, cond func(agent.ServiceStatus) bool) agent.ServiceStatus {
	t.Helper()
	for deadline := time.Now().Add(limit); ; time.Sleep(100 * time.Millisecond) {
		s := hostStatus(t, f, a)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: waited %s for %s: %s on %q, fetch %+v, last error %q", a.Spec.Node, limit, what, s.State, s.Current, s.Fetch, s.LastError)
		}
	}
}

// fetched holds once at least 1/part of the current fetch is verified.
func fetched(part int64) func(agent.ServiceStatus) bool {
	return func(s agent.ServiceStatus) bool {
		return s.Fetch != nil && s.Fetch.Total > 0 && s.Fetch.Have*part >= s.Fetch.Total
	}
}

// arriving holds once some of build has arrived.
func arriving(build string) func(agent.ServiceStatus) bool {
	return func(s agent.ServiceStatus) bool { return s.Fetch != nil && s.Fetch.Build == build && s.Fetch.Have > 0 }
}

// activeOn holds once the host is active on build.
func activeOn(build string) func(agent.ServiceStatus) bool {
	return func(s agent.ServiceStatus) bool { return s.State == core.StateActive && s.Current == build }
}

// smallDisk mounts a tmpfs of size (e.g. "16m") for a data dir, or skips
// the test when that is not allowed (not root).
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "small")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a %s tmpfs for a data dir (needs root): %v %s", size, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
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
	src := publishBuild(t, f, "v1", 12<<20)
	shoal(t, f, "deploy", "web", "v1")
	s := waitHost(t, f, watcher, time.Minute, "the fetch reaching 25%", fetched(4))
	t.Logf("killing the origin with %s at %d of %d bytes", watcher.Spec.Node, s.Fetch.Have, s.Fetch.Total)
	origin.Kill()
	var msg string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		s := hostStatus(t, f, watcher)
		if s.State == core.StateActive {
			t.Skip("the swarm already held every piece when the origin died (the origin was faster than planned); nothing to diagnose")
		}
		msg = s.LastError
		if strings.Contains(msg, "held by none of the") && strings.Contains(msg, "origin host-1 is not a member any more") {
			if s.Fetch == nil || s.Fetch.Stall != swarm.StallOriginGone {
				t.Errorf("status names no stall cause %q: fetch %+v", swarm.StallOriginGone, s.Fetch)
			}
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
	restart(t, f, origin)
	waitMembers(t, f, 3)
	allActive(t, f, "v1", src)
}

// The disk fills up during a fetch (another process takes the space): the
// host says it cannot write and how much is free, does not crash, leaves
// `current` alone, and finishes by itself once the space is back.
func TestDiskFullDuringFetch(t *testing.T) {
	small := smallDisk(t, "48m")
	f := startFleet(t, 2, 41, func(int) []string { return []string{"--service", "web"} })
	host := addAgent(t, f, "tight", "127.0.41.9", filepath.Join(small, "data"), "--download-rate", "2MB")
	src := filepath.Join(t.TempDir(), "v1")
	makeTree(t, src, 12<<20, "v1") // ~25 MB with the archive: fits, until someone else takes the space
	shoal(t, f, "publish", "--service", "web", "--build", "v1", src)
	shoal(t, f, "deploy", "web", "v1")
	waitHost(t, f, host, time.Minute, "the fetch reaching 20%", fetched(5))
	junk := filepath.Join(small, "junk")
	if out, err := exec.Command("dd", "if=/dev/zero", "of="+junk, "bs=1M", "count=64").CombinedOutput(); err == nil {
		t.Fatalf("filling the disk: dd did not hit ENOSPC: %s", out)
	}
	var s agent.ServiceStatus
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		s = hostStatus(t, f, host) // the agent answers: it did not crash
		if strings.Contains(s.LastError, "no space left on device") {
			if s.Fetch == nil || s.Fetch.Stall != swarm.StallWriteError {
				t.Errorf("status names no stall cause %q: fetch %+v", swarm.StallWriteError, s.Fetch)
			}
			break
		}
		if strings.Contains(s.LastError, "not enough free disk space") {
			break
		}
		if s.State == core.StateActive {
			t.Skip("the fetch finished before the disk filled up; nothing to test")
		}
		if time.Now().After(deadline) {
			t.Fatalf("no disk-full error in status: %s %q", s.State, s.LastError)
		}
	}
	t.Logf("with the disk full: %s: %s", s.State, s.LastError)
	if s.Current != "" {
		t.Errorf("current moved to %q while the disk was full", s.Current)
	}
	if err := os.Remove(junk); err != nil {
		t.Fatal(err)
	}
	waitHost(t, f, host, 2*time.Minute, "finishing v1 once space was back", activeOn("v1"))
	sameTree(t, src, filepath.Join(small, "data", "services", "web", "current"))
}

// A fetch superseded by a newer deploy stops, and once the newer build is
// live the abandoned one is let go: no torrent, archive or manifest copy
// is kept for a build that was never installed (they used to stay forever,
// and the engine went on downloading it).
func TestSupersededFetchIsLetGo(t *testing.T) {
	grace := filepath.Join(t.TempDir(), "grace.json")
	if err := os.WriteFile(grace, []byte(`{"build_grace":"1ms"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	f := startFleet(t, 2, 42, func(i int) []string {
		if i == 1 {
			return []string{"--service", "web", "--download-rate", "1MB", "--config", grace}
		}
		return []string{"--service", "web", "--config", grace}
	})
	host := f.Agents[1]
	dirs := map[string]string{}
	for b, size := range map[string]int{"v1": 256 << 10, "v2": 16 << 20, "v3": 256 << 10} {
		dirs[b] = filepath.Join(t.TempDir(), b)
		makeTree(t, dirs[b], size, b)
		shoal(t, f, "publish", "--service", "web", "--build", b, dirs[b])
	}
	shoal(t, f, "deploy", "web", "v1")
	if _, err := waitSettled(t, f, "web"); err != nil {
		t.Fatal(err)
	}
	shoal(t, f, "deploy", "web", "v2")
	waitHost(t, f, host, time.Minute, "v2 starting to arrive", arriving("v2"))
	shoal(t, f, "deploy", "web", "v3")
	st, err := waitSettled(t, f, "web")
	if err != nil {
		t.Fatal(err)
	}
	if s := st[host.Spec.Node]; s.Current != "v3" || s.Previous != "v1" {
		t.Fatalf("%s: current %q previous %q, want v3 and v1", host.Spec.Node, s.Current, s.Previous)
	}
	if _, err := os.Stat(filepath.Join(host.Spec.DataDir, "manifests/web@v2.json")); err == nil {
		t.Errorf("%s still has v2's manifest", host.Spec.Node)
	}
	if left := buildBytes(host, "v2"); len(left) > 0 {
		t.Errorf("%s still has %v", host.Spec.Node, left)
	}
	for _, b := range []string{"v1", "v3"} {
		if _, err := os.Stat(filepath.Join(host.Spec.DataDir, "manifests/web@"+b+".json")); err != nil || len(buildBytes(host, b)) == 0 {
			t.Errorf("%s lost %s's manifest or bytes, which it still needs (%v)", host.Spec.Node, b, err)
		}
	}
	for _, sd := range fullStatus(t, f, host).Seeds {
		if sd.Build == "v2" {
			t.Errorf("%s still shares v2: %+v", host.Spec.Node, sd)
		}
	}
	// The origin keeps seeding everything it published.
	if _, err := os.Stat(filepath.Join(f.Agents[0].Spec.DataDir, "archives", "web@v2.tar")); err != nil {
		t.Errorf("the origin dropped v2: %v", err)
	}
}

// Consul goes away during a deploy and comes back empty (a dev agent keeps
// its data in memory: this is both the outage and the data loss). The
// deploy in flight still completes (fail forward: hosts have its manifest),
// hosts keep their live release and say the release key is gone instead
// of removing anything, and the next publish and deploy to the new Consul
// is picked up at once.
func TestConsulOutageAndDataLoss(t *testing.T) {
	f := startFleet(t, 3, 44, func(i int) []string {
		if i == 0 {
			return []string{"--service", "web", "--upload-rate", "2MB"}
		}
		return []string{"--service", "web"}
	})
	deployV1(t, f, 256<<10)
	src2 := publishBuild(t, f, "v2", 8<<20)
	shoal(t, f, "deploy", "web", "v2")
	waitHost(t, f, f.Agents[1], time.Minute, "v2 starting to arrive", arriving("v2"))
	f.Consul.Stop()
	t.Log("Consul stopped mid-fetch")
	for _, a := range f.Agents {
		waitHost(t, f, a, time.Minute, "finishing v2 without Consul", activeOn("v2"))
	}
	time.Sleep(3 * time.Second) // agents back off against a dead Consul
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f.Consul.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Log("Consul back, empty")
	for _, a := range f.Agents {
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
			s := hostStatus(t, f, a)
			if s.Current != "v2" || s.State != core.StateActive {
				t.Fatalf("%s: %s on %q after Consul lost its data, want still active on v2", a.Spec.Node, s.State, s.Current)
			}
			if strings.Contains(s.Note, "release key is gone") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s does not say the release key is gone: %+v", a.Spec.Node, s)
			}
		}
		sameTree(t, src2, filepath.Join(a.Spec.DataDir, "services", "web", "current"))
	}
	publishBuild(t, f, "v3", 256<<10)
	shoal(t, f, "deploy", "web", "v3")
	st, err := waitSettled(t, f, "web")
	if err != nil {
		t.Fatalf("v3 after the data loss: %v", err)
	}
	for _, a := range f.Agents {
		if s := st[a.Spec.Node]; s == nil || s.State != core.StateActive || s.Current != "v3" || s.Note != "" {
			t.Errorf("%s: %s on %q note %q, want active v3 and no note", a.Spec.Node, s.State, s.Current, s.Note)
		}
	}
}

// kill -9 of 20 % of the fleet mid-fetch (one host of five), restarted:
// everyone converges on a byte-identical tree, and the restarted host
// fetches at most what it was missing plus one piece.
func TestKillFifthOfFleetMidFetch(t *testing.T) {
	f := startFleet(t, 5, 45, func(i int) []string {
		return []string{"--service", "web", "--download-rate", "4MiB"}
	})
	src := publishBuild(t, f, "v1", 24<<20)
	shoal(t, f, "deploy", "web", "v1")
	victim := f.Agents[4]
	var piece int64
	s0 := waitHost(t, f, victim, 2*time.Minute, "the fetch reaching 40%", func(s agent.ServiceStatus) bool {
		return s.Fetch != nil && s.Fetch.Total > 0 && s.Fetch.Have*100/s.Fetch.Total >= 40
	})
	have, total := s0.Fetch.Have, s0.Fetch.Total
	victim.Kill()
	t.Logf("killed %s at %d of %d bytes verified", victim.Spec.Node, have, total)
	restart(t, f, victim)
	st := allActive(t, f, "v1", src)
	m := readManifest(t, f, "v1")
	piece = m.PieceLength
	s := st[victim.Spec.Node]
	t.Logf("after restart: resumed %d, received %d (missing were %d, one piece is %d)", s.Fetch.Resumed, s.Fetch.Received, total-have, piece)
	if s.Fetch.Received > total-have+piece {
		t.Errorf("the restarted host received %d bytes; only %d were missing (+%d for one piece in flight)", s.Fetch.Received, total-have, piece)
	}
}

// A seed whose archive was damaged on disk while idle (host-2 fetches
// into archives): the scrub finds the bad pieces, stops serving them and
// fetches them again from peers, and status counts them. The live release
// (an unpacked tree) is not touched. A host that fetched into its release
// (host-3) seeds from the live release: damage there is found by the scrub
// and those pieces are no longer served, but nothing is ever written into
// the live release to repair it.
func TestScrubRepairsIdleCorruption(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "scrub.json")
	if err := os.WriteFile(cfg, []byte(`{"swarm":{"scrub_interval":"500ms"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	f := startFleet(t, 3, 46, func(i int) []string {
		if i == 1 {
			return []string{"--service", "web", "--config", cfg, "--fetch-into", "archive"}
		}
		return []string{"--service", "web", "--config", cfg}
	})
	src := deployV1(t, f, 4<<20)
	host := f.Agents[1]
	arch := filepath.Join(host.Spec.DataDir, "archives", "web@v1.tar")
	want, err := os.ReadFile(arch)
	if err != nil {
		t.Fatal(err)
	}
	damage(t, arch, 1<<20, 1<<20, 0) // a megabyte of zeros, mid-archive
	waitRepaired(t, arch, want, "the damaged archive")
	hs := fullStatus(t, f, host)
	var bad int64
	for _, sd := range hs.Seeds {
		if sd.Build == "v1" {
			bad = sd.BadOnDisk
		}
	}
	if bad == 0 {
		t.Errorf("status does not count the bad pieces: %+v", hs.Seeds)
	}
	t.Logf("%s re-fetched %d bad pieces", host.Spec.Node, bad)
	sameTree(t, src, filepath.Join(host.Spec.DataDir, "services", "web", "current"))

	tree := f.Agents[2]
	if len(buildBytes(tree, "v1")) != 1 || !strings.HasSuffix(buildBytes(tree, "v1")[0], ".framing") {
		t.Fatalf("%s did not fetch v1 into its release: %v", tree.Spec.Node, buildBytes(tree, "v1"))
	}
	blob := filepath.Join(tree.Spec.DataDir, "services", "web", "releases", "v1", "static", "blob.bin")
	damage(t, blob, 1<<20, 1<<20, 0)
	damaged, _ := os.ReadFile(blob)
	waitHost(t, f, tree, time.Minute, "the scrub to find the damaged live release", func(agent.ServiceStatus) bool {
		for _, sd := range fullStatus(t, f, tree).Seeds {
			if sd.Build == "v1" && sd.BadOnDisk > 0 {
				return true
			}
		}
		return false
	})
	time.Sleep(2 * time.Second) // scrubs and piece requests go on
	if got, _ := os.ReadFile(blob); !bytes.Equal(got, damaged) {
		t.Errorf("%s wrote into its live release to repair it", tree.Spec.Node)
	}
	if s := hostStatus(t, f, tree); s.State != core.StateActive || s.Current != "v1" {
		t.Errorf("%s: %s on %q after the damage was found", tree.Spec.Node, s.State, s.Current)
	}
	if b, _ := os.ReadFile(tree.Log); !strings.Contains(string(b), "changed on disk") {
		t.Errorf("%s's log does not say its release changed on disk", tree.Spec.Node)
	}
}

// A host that should run the service (registered in Consul's catalog) and
// is dead: `status --wait` does not count the hosts that are left and call
// it done; it waits until the dead host's check fails, then exits 2
// naming it. (It used to exit 0 with "2 hosts: 2 active".)
func TestStatusWaitNamesDeadHost(t *testing.T) {
	f := startFleet(t, 3, 47, func(int) []string { return []string{"--service", "web"} })
	deployV1(t, f, 256<<10)
	f.Agents[2].Kill()
	publishBuild(t, f, "v2", 256<<10)
	shoal(t, f, "deploy", "web", "v2")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := f.Shoal(ctx, "status", "web", "--wait", "--timeout", "2m")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(err.Error(), "host-3") || !strings.Contains(err.Error(), "down") {
		t.Fatalf("status --wait with host-3 dead: %v, want exit 2 naming host-3 as down\n%s", err, out)
	}
	t.Logf("status --wait: %v", err)
	for _, a := range f.Agents[:2] {
		if s := hostStatus(t, f, a); s.State != core.StateActive || s.Current != "v2" {
			t.Errorf("%s: %s on %q", a.Spec.Node, s.State, s.Current)
		}
	}
}

// The disk fills up between the fetch and the install (the agent pauses
// there for the test): the install fails saying so, the fetched tree is
// kept, `current` stays, the agent lives, and a deploy once space is back
// installs the build without fetching again. (Fetched as an archive, the
// partial unpack is removed instead: swap's tests.)
func TestDiskFullDuringUnpack(t *testing.T) {
	small := smallDisk(t, "40m")
	f := startFleet(t, 2, 48, func(int) []string { return []string{"--service", "web"} })
	host := addAgent(t, f, "tight", "127.0.48.9", filepath.Join(small, "data"))
	host.Stop()
	host.Spec.Env = []string{swap.PauseEnv + "=before-unpack"}
	restart(t, f, host)
	waitMembers(t, f, 3)
	src := publishBuild(t, f, "v1", 12<<20)
	shoal(t, f, "deploy", "web", "v1")
	waitHost(t, f, host, time.Minute, "verifying v1", func(s agent.ServiceStatus) bool { return s.State == core.StateVerifying })
	junk := filepath.Join(small, "junk")
	if out, err := exec.Command("dd", "if=/dev/zero", "of="+junk, "bs=1M", "count=64").CombinedOutput(); err == nil {
		t.Fatalf("filling the disk: dd did not hit ENOSPC: %s", out)
	}
	s := waitHost(t, f, host, time.Minute, "the unpack to fail", func(s agent.ServiceStatus) bool { return s.State == core.StateFailed })
	t.Logf("with the disk full: %s", s.LastError)
	if !strings.Contains(s.LastError, "not enough free disk space") || !strings.Contains(s.LastError, "kept in") {
		t.Errorf("last error %q does not say the disk is full and the fetched tree was kept", s.LastError)
	}
	if s.Current != "" {
		t.Errorf("current moved to %q", s.Current)
	}
	if ents, _ := os.ReadDir(filepath.Join(small, "data", "services", "web", "cold")); len(ents) != 0 {
		t.Errorf("cold/ not cleaned: %v", ents)
	}
	if err := os.Remove(junk); err != nil {
		t.Fatal(err)
	}
	received := s.BytesReceived
	shoal(t, f, "deploy", "web", "v1", "--reason", "space is back")
	s = waitHost(t, f, host, 2*time.Minute, "v1 once space was back", activeOn("v1"))
	if s.BytesReceived != received {
		t.Errorf("the second attempt fetched again: %d bytes received, %d before", s.BytesReceived, received)
	}
	sameTree(t, src, filepath.Join(small, "data", "services", "web", "current"))
}

// The origin is killed once the hosts hold every piece between them (it
// has sent the build once): they complete from each other.
func TestOriginKilledAfterHandingOut(t *testing.T) {
	f := startFleet(t, 4, 49, func(i int) []string {
		if i == 0 {
			return []string{"--service", "web"}
		}
		return []string{"--service", "web", "--download-rate", "3MB"}
	})
	src := publishBuild(t, f, "v1", 12<<20)
	shoal(t, f, "deploy", "web", "v1")
	origin := f.Agents[0]
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		st := fullStatus(t, f, origin)
		if len(st.Seeds) == 1 && st.Seeds[0].Uploaded >= st.Seeds[0].Total {
			t.Logf("origin has sent %d of %d bytes; killing it", st.Seeds[0].Uploaded, st.Seeds[0].Total)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the origin never sent the whole build: %+v", st.Seeds)
		}
	}
	origin.Kill()
	for _, a := range f.Agents[1:] {
		s := waitHost(t, f, a, 2*time.Minute, "v1 without the origin", activeOn("v1"))
		if s.Current != "v1" {
			t.Errorf("%s: %s", a.Spec.Node, s.State)
		}
		sameTree(t, src, filepath.Join(a.Spec.DataDir, "services", "web", "current"))
	}
}

// Members leaving and joining during a fetch (agents of another service,
// stopped and started again and again) do not stall it.
func TestMembershipChurnDuringFetch(t *testing.T) {
	f := startFleet(t, 6, 50, func(i int) []string {
		if i >= 4 {
			return []string{"--service", "api"}
		}
		return []string{"--service", "web", "--download-rate", "3MB"}
	})
	src := publishBuild(t, f, "v1", 12<<20)
	shoal(t, f, "deploy", "web", "v1")
	stop := make(chan struct{})
	churned := make(chan int)
	go func() {
		n := 0
		defer func() { churned <- n }()
		for {
			for _, a := range f.Agents[4:] {
				select {
				case <-stop:
					return
				default:
				}
				a.Stop()
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				err := a.Restart(ctx, shoalBin, f.Consul.Addr)
				cancel()
				if err != nil {
					return
				}
				n++
			}
		}
	}()
	for _, a := range f.Agents[:4] {
		waitHost(t, f, a, 3*time.Minute, "v1 during membership churn", activeOn("v1"))
		sameTree(t, src, filepath.Join(a.Spec.DataDir, "services", "web", "current"))
	}
	close(stop)
	t.Logf("%d restarts of other members during the deploy", <-churned)
}

// A host whose archive was damaged while it was down re-hashes what it had
// when it starts again, serves none of it meanwhile, and fetches the bad
// pieces again (its piece database said they were fine). (A host that
// fetched into its release finds the damage the same way, and then the
// release itself is damaged: TestPowerLossAfterInstall.)
func TestRestartedSeedChecksBeforeServing(t *testing.T) {
	f := startFleet(t, 3, 51, func(i int) []string {
		if i == 1 {
			return []string{"--service", "web", "--fetch-into", "archive"}
		}
		return []string{"--service", "web"}
	})
	src := deployV1(t, f, 4<<20)
	host := f.Agents[1]
	arch := filepath.Join(host.Spec.DataDir, "archives", "web@v1.tar")
	want, err := os.ReadFile(arch)
	if err != nil {
		t.Fatal(err)
	}
	host.Stop()
	damage(t, arch, 1<<20, 1<<20, 0)
	restart(t, f, host)
	waitRepaired(t, arch, want, "the archive damaged while the host was down, after its restart,")
	hs := fullStatus(t, f, host)
	if len(hs.Seeds) != 1 || hs.Seeds[0].BadOnDisk == 0 {
		t.Errorf("status does not count the bad pieces found after the restart: %+v", hs.Seeds)
	}
	sameTree(t, src, filepath.Join(host.Spec.DataDir, "services", "web", "current"))
}

// A junk value written into the release key by hand is shown in every
// host's status, changes nothing live, and `shoal deploy` replaces it.
func TestJunkReleaseShownAndReplaced(t *testing.T) {
	f := startFleet(t, 2, 52, func(int) []string { return []string{"--service", "web"} })
	deployV1(t, f, 256<<10)
	cc, err := api.NewClient(&api.Config{Address: f.Consul.Addr})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cc.KV().Put(&api.KVPair{Key: "shoal/web/release", Value: []byte(`{"build":"../../etc"}`)}, nil); err != nil {
		t.Fatal(err)
	}
	for _, a := range f.Agents {
		s := waitHost(t, f, a, time.Minute, "the junk release in status", func(s agent.ServiceStatus) bool { return strings.Contains(s.Note, "unreadable release") })
		if s.Current != "v1" || s.State != core.StateActive {
			t.Errorf("%s: %s on %q after the junk value", a.Spec.Node, s.State, s.Current)
		}
	}
	out := shoal(t, f, "deploy", "web", "v1", "--reason", "replace junk")
	if !strings.Contains(out, "deployed web v1") {
		t.Errorf("deploy over junk printed %q", out)
	}
	st, err := waitSettled(t, f, "web")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range f.Agents {
		if s := st[a.Spec.Node]; s.Note != "" || s.Current != "v1" {
			t.Errorf("%s: note %q current %q after the deploy", a.Spec.Node, s.Note, s.Current)
		}
	}
}

// The origin's own copy goes bad right after publish, before any other
// host has the build: it checks every piece before handing it out, keeps
// the bad ones back, repairs them by packing its publish directory again,
// and the deploy completes with the origin sending the build about once.
// (It used to seed the bad pieces: the hosts fetched the same 4 bad pieces
// without end, the origin sent 451 MB for a 42 MB build, and the deploy
// sat at 95 %.)
func TestCorruptOriginHeals(t *testing.T) {
	f := startFleet(t, 4, 53, func(int) []string { return []string{"--service", "web", "--upload-rate", "8MB"} })
	src := publishBuild(t, f, "v1", 12<<20)
	origin := f.Agents[0]
	arch := filepath.Join(origin.Spec.DataDir, "archives", "web@v1.tar")
	want, err := os.ReadFile(arch)
	if err != nil {
		t.Fatal(err)
	}
	m := readManifest(t, f, "v1")
	spots := []int64{1, 3, 5, 7}
	for _, p := range spots {
		damage(t, arch, int(p*m.PieceLength+100), 4096, 0xAA)
	}
	shoal(t, f, "deploy", "web", "v1")
	allActive(t, f, "v1", src)
	waitRepaired(t, arch, want, "the origin's damaged archive")

	hs := fullStatus(t, f, origin)
	var up, bad int64
	for _, sd := range hs.Seeds {
		if sd.Build == "v1" {
			up, bad = sd.Uploaded, sd.BadOnDisk
		}
	}
	limit := m.Size + m.Size/10 + int64(len(spots))*m.PieceLength
	t.Logf("origin sent %d bytes for a %d-byte build (limit %d); %d bad pieces found on its disk", up, m.Size, limit, bad)
	if up > limit {
		t.Errorf("the origin sent %d bytes, more than 1.1 × %d + the %d bad pieces", up, m.Size, len(spots))
	}
	if bad < int64(len(spots)) {
		t.Errorf("the origin counted %d bad pieces on disk, want at least %d", bad, len(spots))
	}
	for _, a := range f.Agents[1:] {
		if st := fullStatus(t, f, a); len(st.BadPieces) > 0 {
			t.Errorf("%s received pieces that failed their hash: %+v (the origin should have kept them back)", a.Spec.Node, st.BadPieces)
		}
	}
	if b, _ := os.ReadFile(origin.Log); !strings.Contains(string(b), "repaired this origin's copy from the publish directory") {
		t.Errorf("the origin's log does not say it repaired its copy")
	}
}

// A disk that cannot take the next build: the oldest release that is
// neither current nor previous is evicted (with its archive and manifest
// copy) to make room, and the deploy goes on; the live and previous
// releases stay. Without the eviction the build does not fit (it used to be
// refused until someone freed space by hand).
func TestDiskWatermarkEvictsOldest(t *testing.T) {
	small := smallDisk(t, "44m")
	keep := filepath.Join(t.TempDir(), "keep.json")
	if err := os.WriteFile(keep, []byte(`{"services":{"web":{"keep_releases":5}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	f := startFleet(t, 1, 55, func(int) []string { return []string{"--service", "web"} })
	host := addAgent(t, f, "tight", "127.0.55.9", filepath.Join(small, "data"), "--config", keep)
	var src string
	for i := 1; i <= 4; i++ {
		b := fmt.Sprintf("v%d", i)
		src = filepath.Join(t.TempDir(), b)
		makeTree(t, src, 6<<20, b)
		shoal(t, f, "publish", "--service", "web", "--build", b, src)
		if i == 4 {
			free, _ := swap.FreeBytes(small)
			m := readManifest(t, f, b)
			if need := m.Size + m.UnpackedSize; free >= need {
				t.Skipf("%d bytes free, %d needed: the disk is not full enough to need an eviction", free, need)
			}
		}
		shoal(t, f, "deploy", "web", b)
		waitHost(t, f, host, time.Minute, b+" active", activeOn(b))
	}
	sameTree(t, src, filepath.Join(small, "data", "services", "web", "current"))
	s := hostStatus(t, f, host)
	if s.Previous != "v3" || strings.Join(s.Installed, ",") != "v2,v3,v4" {
		t.Errorf("previous %q, installed %v; want v3 and v2,v3,v4 (v1 evicted)", s.Previous, s.Installed)
	}
	for _, p := range []string{"archives/web@v1.tar", "manifests/web@v1.json"} {
		if _, err := os.Stat(filepath.Join(small, "data", p)); err == nil {
			t.Errorf("%s was not evicted with its release", p)
		}
	}
	if b, _ := os.ReadFile(host.Log); !strings.Contains(string(b), "evicted to free disk space") {
		t.Error("the log does not say what was evicted")
	}
}
