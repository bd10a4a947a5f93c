package swap

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// snapshot records every entry under dir: type, mode, size, mtime (not of directories), content
// or link target. Two equal snapshots mean nothing under dir changed.
func snapshot(t *testing.T, dir string, skip string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return filepath.SkipDir
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		v := fmt.Sprintf("%v %d", fi.Mode(), fi.Size())
		if !fi.IsDir() { // a directory's mtime moves with cold/ coming and going; its entries are compared one by one
			v += fmt.Sprintf(" %d", fi.ModTime().UnixNano())
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			v += " -> " + l
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			v += " " + string(b)
		}
		out[p] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// unchanged fails for every entry of before that after lacks or has
// otherwise, and for every entry after has that before did not.
func unchanged(t *testing.T, before, after map[string]string) {
	t.Helper()
	for p, v := range before {
		if after[p] != v {
			t.Errorf("%s changed: %q -> %q", p, v, after[p])
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s appeared", p)
		}
	}
}

// entry is one tar entry to craft; data is written for regular files.
type entry struct {
	h    tar.Header
	data string
}

func craft(t *testing.T, es []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := e.h
		if h.Typeflag == tar.TypeReg && h.Size == 0 {
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("craft %s: %v", h.Name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// oldGNUSparseBomb is one 512-byte header that Go's tar reader expands to
// size bytes of zeros (GNU's old sparse format; Go's writer cannot make it).
func oldGNUSparseBomb(t *testing.T, name string, size int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeGNUSparse, Mode: 0o644, Format: tar.FormatGNU}); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	b := buf.Bytes()
	put := func(off int, v int64) { copy(b[off:off+12], fmt.Sprintf("%011o\x00", v)) }
	put(483, size) // real size
	put(386, size) // sparse[0].offset: all of it a hole
	put(398, 0)    // sparse[0].length
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b[:512] {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// Every hostile archive is refused, the build is not installed, cold/ is
// empty and nothing outside the service root changed — compared over the
// whole parent tree, which holds a victim directory and file.
func TestInstallRefusesHostileArchives(t *testing.T) {
	base, outside, victim := victimTree(t)
	cases := hostileArchives(t, outside, victim)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := filepath.Join(base, fmt.Sprintf("svc%d", i), "web")
			s, err := Open(root, nopLog())
			if err != nil {
				t.Fatal(err)
			}
			b := c.archive()
			arch := filepath.Join(base, fmt.Sprintf("svc%d", i), "a.tar")
			if err := os.WriteFile(arch, b, 0o644); err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(b)
			before := snapshot(t, base, filepath.Join(root, "cold"))
			_, err = s.Install(context.Background(), "v1", arch, hex.EncodeToString(sum[:]), c.lim)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if s.Has("v1") {
				t.Error("hostile build was installed")
			}
			if ents, _ := os.ReadDir(filepath.Join(root, "cold")); len(ents) != 0 {
				t.Errorf("cold dir not cleaned: %v", ents)
			}
			unchanged(t, before, snapshot(t, base, filepath.Join(root, "cold")))
		})
	}
}

// victimTree makes base/outside/victim (a file with an old mtime), for
// hostile archives to aim at; nothing under base but the service may change.
func victimTree(t *testing.T) (base, outside, victim string) {
	t.Helper()
	base = t.TempDir()
	outside = filepath.Join(base, "outside")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	victim = filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	_ = os.Chtimes(victim, old, old)
	return base, outside, victim
}

// hostileCase is an archive an install must refuse with want.
type hostileCase struct {
	name    string
	archive func() []byte
	lim     Limits
	want    error
}

// hostileArchives are archives aimed at outside (a directory) and victim
// (a file in it).
func hostileArchives(t *testing.T, outside, victim string) []hostileCase {
	reg := func(name, data string, mode int64) entry {
		return entry{h: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, ModTime: time.Now()}, data: data}
	}
	dir := func(name string, mode int64) entry {
		return entry{h: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: mode}}
	}
	link := func(name, target string) entry {
		return entry{h: tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target}}
	}
	return []hostileCase{
		{"escape by ..", func() []byte { return craft(t, []entry{reg("../../outside/evil", "x", 0o644)}) }, NoLimits, ErrUnsafeArchive},
		{"absolute path", func() []byte { return craft(t, []entry{reg(filepath.Join(outside, "evil"), "x", 0o644)}) }, NoLimits, ErrUnsafeArchive},
		{"symlink then entry", func() []byte { return craft(t, []entry{link("l", outside), reg("l/evil", "x", 0o644)}) }, NoLimits, ErrUnsafeArchive},
		{"relative symlink then entry", func() []byte {
			return craft(t, []entry{link("l", "../../../outside"), reg("l/evil", "x", 0o644)})
		}, NoLimits, ErrUnsafeArchive},
		{"symlink then overwrite", func() []byte { return craft(t, []entry{link("v", victim), reg("v", "pwned", 0o644)}) }, NoLimits, ErrUnsafeArchive},
		{"symlink then directory chmod", func() []byte { return craft(t, []entry{link("a", outside), dir("a/", 0o777)}) }, NoLimits, ErrUnsafeArchive},
		{"hardlink", func() []byte {
			return craft(t, []entry{{h: tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: victim}}})
		}, NoLimits, ErrUnsafeArchive},
		{"device", func() []byte {
			return craft(t, []entry{{h: tar.Header{Name: "null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}}})
		}, NoLimits, ErrUnsafeArchive},
		{"fifo", func() []byte {
			return craft(t, []entry{{h: tar.Header{Name: "p", Typeflag: tar.TypeFifo, Mode: 0o644}}})
		}, NoLimits, ErrUnsafeArchive},
		{"sparse bomb", func() []byte { return oldGNUSparseBomb(t, "bomb", 10<<30) }, NoLimits, ErrUnsafeArchive},
		{"more bytes than declared", func() []byte {
			return craft(t, []entry{reg("a", strings.Repeat("a", 600), 0o644), reg("b", strings.Repeat("b", 600), 0o644)})
		}, Limits{MaxBytes: 1000, MaxEntries: -1}, ErrArchiveLimit},
		{"more entries than declared", func() []byte {
			return craft(t, []entry{reg("a", "1", 0o644), reg("b", "2", 0o644), reg("c", "3", 0o644)})
		}, Limits{MaxBytes: -1, MaxEntries: 2}, ErrArchiveLimit},
		{"duplicate entry", func() []byte { return craft(t, []entry{reg("a", "1", 0o644), reg("a", "2", 0o644)}) }, NoLimits, ErrUnsafeArchive},
	}
}

// tar stores setuid/setgid/sticky as 04000/02000/01000. They are dropped
// unless allowed, and when allowed they arrive as the real bits (an
// earlier version masked tar's values with Go's mode bits, dropping real
// setuid bits and letting crafted values through).
func TestUnpackSpecialBits(t *testing.T) {
	b := craft(t, []entry{
		{h: tar.Header{Name: "suid", Typeflag: tar.TypeReg, Mode: 0o4755}, data: "x"},
		{h: tar.Header{Name: "sgid", Typeflag: tar.TypeReg, Mode: 0o2755}, data: "y"},
		{h: tar.Header{Name: "tmp", Typeflag: tar.TypeDir, Mode: 0o1777}},
	})
	for _, allow := range []bool{false, true} {
		dst := t.TempDir()
		st, err := Unpack(bytes.NewReader(b), dst, Limits{MaxBytes: -1, MaxEntries: -1, AllowSpecialBits: allow})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]fs.FileMode{"suid": 0o755, "sgid": 0o755, "tmp": fs.ModeDir | 0o777}
		wantDropped := 3
		if allow {
			want = map[string]fs.FileMode{"suid": fs.ModeSetuid | 0o755, "sgid": fs.ModeSetgid | 0o755, "tmp": fs.ModeDir | fs.ModeSticky | 0o777}
			wantDropped = 0
		}
		for name, w := range want {
			fi, err := os.Lstat(filepath.Join(dst, name))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != w {
				t.Errorf("allow=%v: %s mode %v, want %v", allow, name, fi.Mode(), w)
			}
		}
		if st.SpecialBitsDropped != wantDropped {
			t.Errorf("allow=%v: dropped %d, want %d", allow, st.SpecialBitsDropped, wantDropped)
		}
	}
}

// A symlink may point anywhere (apps link to /etc/ssl and the like); it is
// created, never followed.
func TestUnpackKeepsOutwardSymlinks(t *testing.T) {
	dst := t.TempDir()
	b := craft(t, []entry{{h: tar.Header{Name: "certs", Typeflag: tar.TypeSymlink, Linkname: "/etc/ssl/certs"}}})
	if _, err := Unpack(bytes.NewReader(b), dst, NoLimits); err != nil {
		t.Fatal(err)
	}
	if l, err := os.Readlink(filepath.Join(dst, "certs")); err != nil || l != "/etc/ssl/certs" {
		t.Errorf("certs -> %q (%v)", l, err)
	}
}

func nopLog() zerolog.Logger { return zerolog.Nop() }
