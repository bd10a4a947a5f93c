package swap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"archive/tar"

	"github.com/rs/zerolog"
)

func mkTree(t *testing.T, dir, tag string) {
	t.Helper()
	for _, d := range []string{"bin", "empty", "etc"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, s string, m fs.FileMode) {
		if err := os.WriteFile(filepath.Join(dir, p), []byte(s), m); err != nil {
			t.Fatal(err)
		}
	}
	write("bin/app", "#!/bin/sh\necho "+tag, 0o755)
	write("etc/conf", "tag="+tag, 0o640)
	if err := os.Symlink("bin/app", filepath.Join(dir, "run")); err != nil {
		t.Fatal(err)
	}
}

// packedTree makes a tree tagged tag, packs it into a temp archive and
// returns the tree, the archive and its SHA-256.
func packedTree(t *testing.T, tag string) (src, arch, sum string) {
	t.Helper()
	src = t.TempDir()
	mkTree(t, src, tag)
	arch = filepath.Join(t.TempDir(), tag+".tar")
	return src, arch, packFile(t, src, arch)
}

func packFile(t *testing.T, src, dst string) string {
	t.Helper()
	var buf bytes.Buffer
	if _, err := Pack(src, &buf); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	return hex.EncodeToString(sum[:])
}

func TestPackUnpackKeepsModesLinksEmptyDirs(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	mkTree(t, src, "v1")
	var a, b bytes.Buffer
	ps, err := Pack(src, &a)
	if err != nil {
		t.Fatal(err)
	}
	if ps.Entries != 6 {
		t.Errorf("packed %d entries, want 6", ps.Entries)
	}
	if _, err := Pack(src, &b); err != nil || !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Errorf("packing the same tree twice gave different bytes (err %v)", err)
	}
	us, err := Unpack(bytes.NewReader(a.Bytes()), dst, Limits{MaxBytes: ps.Bytes, MaxEntries: ps.Entries})
	if err != nil {
		t.Fatal(err)
	}
	if us != ps {
		t.Errorf("unpacked %+v, packed %+v", us, ps)
	}
	for p, want := range map[string]fs.FileMode{"bin/app": 0o755, "etc/conf": 0o640, "empty": fs.ModeDir | 0o755} {
		fi, err := os.Lstat(filepath.Join(dst, p))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode(); got != want {
			t.Errorf("%s: mode %v, want %v", p, got, want)
		}
	}
	if l, err := os.Readlink(filepath.Join(dst, "run")); err != nil || l != "bin/app" {
		t.Errorf("run -> %q (%v), want bin/app", l, err)
	}
}

func TestUnpackRefusesEscapes(t *testing.T) {
	for name, entries := range map[string][]*tar.Header{
		"dotdot":   {{Name: "../evil", Typeflag: tar.TypeReg, Mode: 0o644}},
		"absolute": {{Name: "/tmp/evil", Typeflag: tar.TypeReg, Mode: 0o644}},
		"via link": {{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/tmp"}, {Name: "l/evil", Typeflag: tar.TypeReg, Mode: 0o644}},
		"device":   {{Name: "dev", Typeflag: tar.TypeChar, Mode: 0o644}},
	} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range entries {
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
		}
		tw.Close()
		_, err := Unpack(&buf, t.TempDir(), NoLimits)
		if !errors.Is(err, ErrUnsafeArchive) {
			t.Errorf("%s: got %v, want ErrUnsafeArchive", name, err)
		}
	}
}

func newStore(t *testing.T) (*Store, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "web")
	s, err := Open(root, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return s, root
}

func install(t *testing.T, s *Store, build string) {
	t.Helper()
	src := t.TempDir()
	mkTree(t, src, build)
	arch := filepath.Join(t.TempDir(), build+".tar")
	sum := packFile(t, src, arch)
	if _, err := s.Install(context.Background(), build, arch, sum, NoLimits); err != nil {
		t.Fatalf("install %s: %v", build, err)
	}
}

func TestInstallVerifyFailureLeavesNothing(t *testing.T) {
	s, root := newStore(t)
	src := t.TempDir()
	mkTree(t, src, "v1")
	arch := filepath.Join(t.TempDir(), "v1.tar")
	packFile(t, src, arch)
	_, err := s.Install(context.Background(), "v1", arch, strings.Repeat("0", 64), NoLimits)
	if !errors.Is(err, ErrVerifyFailed) {
		t.Fatalf("got %v, want ErrVerifyFailed", err)
	}
	if s.Has("v1") {
		t.Error("unverified build was installed")
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "cold")); len(ents) != 0 {
		t.Errorf("cold dir not cleaned: %v", ents)
	}
}

// A damaged archive (bytes flipped in transit or on disk) is reported as a
// verification failure, even though unpacking it also fails, and leaves
// nothing behind.
func TestInstallCorruptArchiveFailsVerification(t *testing.T) {
	s, root := newStore(t)
	_, arch, sum := packedTree(t, "v1")
	b, err := os.ReadFile(arch)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 512; i++ { // the first tar header
		b[i] ^= 0xff
	}
	if err := os.WriteFile(arch, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = s.Install(context.Background(), "v1", arch, sum, NoLimits)
	if !errors.Is(err, ErrVerifyFailed) {
		t.Fatalf("got %v, want ErrVerifyFailed", err)
	}
	if s.Has("v1") {
		t.Error("corrupt build was installed")
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "cold")); len(ents) != 0 {
		t.Errorf("cold dir not cleaned: %v", ents)
	}
}

// recorder returns hooks that append "<phase> <build> <current target>" to a log.
func recorder(t *testing.T) (Hooks, string) {
	log := filepath.Join(t.TempDir(), "hooks.log")
	rec := func(p string) string { return `echo "` + p + ` $SHOAL_BUILD $(readlink current)" >> ` + log }
	return Hooks{Drain: rec("drain"), Activate: rec("activate"), HealthCmd: rec("health"), HealthRetries: 2}, log
}

func TestActivateOrderAndSwitch(t *testing.T) {
	s, _ := newStore(t)
	install(t, s, "v1")
	install(t, s, "v2")
	h, log := recorder(t)
	var phases []string
	on := func(p Phase) { phases = append(phases, string(p)) }
	ctx := context.Background()
	if err := s.Activate(ctx, "web", "v1", h, on); err != nil {
		t.Fatal(err)
	}
	if err := s.Activate(ctx, "web", "v2", h, on); err != nil {
		t.Fatal(err)
	}
	if s.Current() != "v2" || s.Previous() != "v1" {
		t.Errorf("current %q previous %q, want v2 v1", s.Current(), s.Previous())
	}
	b, _ := os.ReadFile(log)
	want := "drain v1 \nactivate v1 releases/v1\nhealth v1 releases/v1\ndrain v2 releases/v1\nactivate v2 releases/v2\nhealth v2 releases/v2\n"
	if string(b) != want {
		t.Errorf("hook log:\n%s\nwant:\n%s", b, want)
	}
	if got := strings.Join(phases, ","); got != "drain,switch,activate,health,drain,switch,activate,health" {
		t.Errorf("phases %s", got)
	}
}

// liveOnV1 is a store with v1 live and v2 installed.
func liveOnV1(t *testing.T) (*Store, context.Context) {
	t.Helper()
	s, _ := newStore(t)
	install(t, s, "v1")
	install(t, s, "v2")
	ctx := context.Background()
	if err := s.Activate(ctx, "web", "v1", Hooks{}, nil); err != nil {
		t.Fatal(err)
	}
	return s, ctx
}

func TestDrainFailureSwitchesNothing(t *testing.T) {
	s, ctx := liveOnV1(t)
	err := s.Activate(ctx, "web", "v2", Hooks{Drain: "echo busy >&2; exit 3"}, nil)
	if !errors.Is(err, ErrDrainFailed) || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("got %v, want ErrDrainFailed mentioning the hook output", err)
	}
	if s.Current() != "v1" {
		t.Errorf("current = %q after a failed drain, want v1", s.Current())
	}
}

func TestHealthFailureSwitchesBack(t *testing.T) {
	s, ctx := liveOnV1(t)
	h := Hooks{HealthCmd: `test "$SHOAL_BUILD" != v2`, HealthRetries: 2, HealthInterval: 1}
	err := s.Activate(ctx, "web", "v2", h, nil)
	if !errors.Is(err, ErrHealthFailed) || !strings.Contains(err.Error(), "switched back to v1") {
		t.Fatalf("got %v, want ErrHealthFailed and a switch back", err)
	}
	if s.Current() != "v1" {
		t.Errorf("current = %q, want v1", s.Current())
	}
	if !s.Has("v2") {
		t.Error("failed release was deleted; it should stay for inspection")
	}
}

func TestHookTimeout(t *testing.T) {
	s, _ := newStore(t)
	install(t, s, "v1")
	err := s.Activate(context.Background(), "web", "v1", Hooks{Drain: "sleep 5", HookTimeout: 1e8}, nil)
	if !errors.Is(err, ErrDrainFailed) || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("got %v, want a drain timeout", err)
	}
	if s.Current() != "" {
		t.Errorf("current = %q, want none", s.Current())
	}
}

func TestPruneKeepsCurrentAndPrevious(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	for _, b := range []string{"v1", "v2", "v3", "v4", "v5"} {
		install(t, s, b)
	}
	for _, b := range []string{"v1", "v2"} {
		if err := s.Activate(ctx, "web", b, Hooks{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	removed := s.Prune(2)
	if len(removed) != 3 {
		t.Errorf("removed %v, want 3 releases", removed)
	}
	if !s.Has("v1") || !s.Has("v2") {
		t.Errorf("prune removed current or previous: installed %v", s.Installed())
	}
}

// WriteFile replaces a file whole, with the mode asked for, and leaves no
// temp file behind, durable or not.
func TestWriteFileReplacesWhole(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	for i, c := range []struct {
		body    string
		perm    os.FileMode
		durable bool
	}{{"first", 0o600, false}, {"second, longer", 0o644, true}, {"3", 0o600, true}} {
		if err := WriteFile(p, []byte(c.body), c.perm, c.durable); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		fi, serr := os.Stat(p)
		if err != nil || serr != nil || string(b) != c.body || fi.Mode().Perm() != c.perm {
			t.Fatalf("write %d: read %q (%v), mode %v (%v); want %q, %v", i, b, err, fi.Mode(), serr, c.body, c.perm)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Fatalf("write %d left %d entries in the directory, want 1", i, len(ents))
		}
	}
	if err := WriteFile(filepath.Join(dir, "missing", "x"), []byte("y"), 0o644, true); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("writing into a missing directory: %v", err)
	}
}
