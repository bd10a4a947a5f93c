package swap

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func readLog(t *testing.T, path string) string {
	t.Helper()
	b, _ := os.ReadFile(path)
	return string(b)
}

// A release directory is tied to the archive it came from: the same build
// name with other content is installed afresh when it is not live, refused
// when it is; a release without its sum file (a crash before the sum was
// written, or an interrupted copy) is installed again, never trusted.
func TestInstallTiesReleaseToArchive(t *testing.T) {
	s, root := newStore(t)
	srcA, srcB := t.TempDir(), t.TempDir()
	mkTree(t, srcA, "A")
	mkTree(t, srcB, "B")
	archA, archB := filepath.Join(t.TempDir(), "a.tar"), filepath.Join(t.TempDir(), "b.tar")
	sumA, sumB := packFile(t, srcA, archA), packFile(t, srcB, archB)
	ctx := context.Background()
	if _, err := s.Install(ctx, "v1", archA, sumA, NoLimits); err != nil {
		t.Fatal(err)
	}
	if !s.Matches("v1", sumA) || s.Matches("v1", sumB) {
		t.Fatal("Matches does not follow the installed archive")
	}
	if _, err := s.Install(ctx, "v1", archB, sumB, NoLimits); err != nil {
		t.Fatalf("reinstall with other content: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(s.ReleaseDir("v1"), "etc", "conf")); string(b) != "tag=B" {
		t.Errorf("v1 holds %q after reinstall, want tag=B", b)
	}
	if err := s.Switch("v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Install(ctx, "v1", archA, sumA, NoLimits); !errors.Is(err, ErrStaleRelease) {
		t.Errorf("replacing the live release: %v, want ErrStaleRelease", err)
	}
	// A truncated release from before the sum existed (not live): reinstalled.
	trunc := s.ReleaseDir("v2")
	if err := os.MkdirAll(filepath.Join(trunc, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(trunc, "bin", "app"), []byte("#!/bin/s"), 0o755)
	if s.Matches("v2", sumA) {
		t.Fatal("a release without a sum file matches")
	}
	if _, err := s.Install(ctx, "v2", archA, sumA, NoLimits); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(trunc, "bin", "app")); string(b) != "#!/bin/sh\necho A" {
		t.Errorf("truncated release not replaced: %q", b)
	}
	if _, err := os.Stat(filepath.Join(root, "releases", ".v2.sha256")); err != nil {
		t.Errorf("no sum file: %v", err)
	}
}

// A crash between drain and health leaves the journal; Recover re-runs
// activate and health for what is live, and switches back if the new
// build is unhealthy.
func TestRecoverFinishesInterruptedActivation(t *testing.T) {
	for _, tc := range []struct {
		name      string
		current   string // where the crash left `current`
		healthy   bool
		wantLive  string
		wantErr   error
		wantInLog []string
		notInLog  []string
	}{
		{"crashed after the switch, healthy", "v2", true, "v2", nil, []string{"activate v2 releases/v2", "health v2 releases/v2"}, nil},
		{"crashed after the switch, unhealthy", "v2", false, "v1", ErrHealthFailed, []string{"activate v2 releases/v2", "activate v1 releases/v1"}, nil},
		{"crashed after the drain", "v1", true, "v1", nil, []string{"activate v1 releases/v1", "health v1 releases/v1"}, []string{"v2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newStore(t)
			install(t, s, "v1")
			install(t, s, "v2")
			if err := s.Switch("v1"); err != nil {
				t.Fatal(err)
			}
			if err := s.writeJournal(journal{Build: "v2", Previous: "v1"}); err != nil {
				t.Fatal(err)
			}
			if tc.current == "v2" {
				if err := s.Switch("v2"); err != nil {
					t.Fatal(err)
				}
			}
			if b, ok := s.Interrupted(); !ok || b != "v2" {
				t.Fatalf("Interrupted() = %q, %v", b, ok)
			}
			h, log := recorder(t)
			if !tc.healthy {
				h.HealthCmd = `test "$SHOAL_BUILD" != v2`
			}
			h.HealthInterval = 1
			err := s.Recover(context.Background(), "web", h, nil)
			if !errors.Is(err, tc.wantErr) && !(err == nil && tc.wantErr == nil) {
				t.Fatalf("Recover: %v, want %v", err, tc.wantErr)
			}
			if s.Current() != tc.wantLive {
				t.Errorf("live %q, want %q", s.Current(), tc.wantLive)
			}
			got := readLog(t, log)
			for _, w := range tc.wantInLog {
				if !strings.Contains(got, w) {
					t.Errorf("hooks %q lack %q", got, w)
				}
			}
			for _, w := range tc.notInLog {
				if strings.Contains(got, w) {
					t.Errorf("hooks %q mention %q", got, w)
				}
			}
			if _, ok := s.Interrupted(); ok {
				t.Error("journal still there after Recover")
			}
		})
	}
}

// An agent shutting down while a drain fails still undoes the drain: the
// old release's activate hook runs though the context is cancelled.
func TestDrainUndoneDuringShutdown(t *testing.T) {
	s, _ := newStore(t)
	install(t, s, "v1")
	install(t, s, "v2")
	if err := s.Switch("v1"); err != nil {
		t.Fatal(err)
	}
	h, log := recorder(t)
	h.Drain = "sleep 5"
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(300 * time.Millisecond); cancel() }()
	err := s.Activate(ctx, "web", "v2", h, nil)
	if !errors.Is(err, ErrDrainFailed) {
		t.Fatalf("Activate: %v, want ErrDrainFailed", err)
	}
	if got := readLog(t, log); !strings.Contains(got, "activate v1 releases/v1") {
		t.Errorf("the drain was not undone during shutdown: hooks %q", got)
	}
	if s.Current() != "v1" {
		t.Errorf("current %q, want v1", s.Current())
	}
}

// Power loss: writes the disk had not made durable are gone after the
// reboot. Simulated on an installed, not yet live release by truncating a
// file and emptying another (what a file system that dropped unflushed
// data shows), then a new Store (a new process): the release is found
// damaged, never taken as installed, and installing it again restores it.
// A damaged live release is reported, not replaced under the service.
func TestPowerLossDamagedReleaseIsInstalledAgain(t *testing.T) {
	s, root := newStore(t)
	src, arch, sum := packedTree(t, "A")
	ctx := context.Background()
	for _, b := range []string{"v1", "v2"} {
		if _, err := s.Install(ctx, b, arch, sum, NoLimits); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Intact("v2"); err != nil {
		t.Fatalf("a fresh install is not intact: %v", err)
	}
	rel := s.ReleaseDir("v2")
	if err := os.Truncate(filepath.Join(rel, "bin", "app"), 3); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(rel, "etc", "conf"), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Intact("v2"); err != nil {
		t.Fatalf("this process installed v2 and checks it once only, yet: %v", err)
	}
	s, err := Open(root, zerolog.Nop()) // after the reboot
	if err != nil {
		t.Fatal(err)
	}
	if !s.Matches("v2", sum) {
		t.Fatal("the sum file no longer matches")
	}
	if err := s.Intact("v2"); !errors.Is(err, ErrDamagedRelease) {
		t.Fatalf("Intact of a truncated release: %v, want ErrDamagedRelease", err)
	}
	if _, err := s.Install(ctx, "v2", arch, sum, NoLimits); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, src, rel)
	if err := s.Intact("v2"); err != nil {
		t.Fatal(err)
	}

	if err := s.Switch("v1"); err != nil {
		t.Fatal(err)
	}
	os.Truncate(filepath.Join(s.ReleaseDir("v1"), "bin", "app"), 0)
	s, _ = Open(root, zerolog.Nop())
	if _, err := s.Install(ctx, "v1", arch, sum, NoLimits); !errors.Is(err, ErrDamagedRelease) {
		t.Errorf("installing over a damaged live release: %v, want ErrDamagedRelease", err)
	}
	if s.Current() != "v1" {
		t.Errorf("current moved to %q", s.Current())
	}
}

// sameFiles compares two trees by TreeDigest.
func sameFiles(t *testing.T, a, b string) {
	t.Helper()
	da, err1 := TreeDigest(a)
	db, err2 := TreeDigest(b)
	if err1 != nil || err2 != nil || da != db {
		t.Errorf("%s and %s differ (%v %v)", a, b, err1, err2)
	}
}

// Releases sealed by earlier versions carry a SHA-256 tree digest; they
// are still checked with it (an upgrade must not call every release on
// disk damaged), and damage to them is still found.
func TestSHA256SealOfEarlierVersionsIsStillChecked(t *testing.T) {
	s, root := newStore(t)
	_, arch, sum := packedTree(t, "A")
	if _, err := s.Install(context.Background(), "v1", arch, sum, NoLimits); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(s.sumPath("v1"))
	if err != nil || !strings.Contains(string(b), sealPrefix+xxhPrefix) {
		t.Fatalf("a new seal is %q (%v), want an %s digest", b, err, xxhPrefix)
	}
	old, err := TreeDigest(s.ReleaseDir("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.sumPath("v1"), []byte(sum+"\n"+sealPrefix+old+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, _ = Open(root, zerolog.Nop())
	if err := s.Intact("v1"); err != nil {
		t.Fatalf("a release sealed with SHA-256 by an earlier version: %v", err)
	}
	if err := os.WriteFile(filepath.Join(s.ReleaseDir("v1"), "etc", "conf"), []byte("edited"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, _ = Open(root, zerolog.Nop())
	if err := s.Intact("v1"); !errors.Is(err, ErrDamagedRelease) {
		t.Fatalf("an edited release sealed with SHA-256: %v, want ErrDamagedRelease", err)
	}
}
