package swap

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fetchIntoTree does what the swarm does for a build fetched into its
// release: each file's contents written at its layout path under tree.
// It returns the layout, and a reader of the archive's bytes.
func fetchIntoTree(t *testing.T, archive []byte, tree string) ([]Region, *io.SectionReader) {
	t.Helper()
	regions, err := Layout(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(tree)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, r := range regions {
		if r.Path == "" {
			continue
		}
		name := filepath.FromSlash(r.Path)
		if err := root.MkdirAll(filepath.Dir(name), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := root.WriteFile(name, archive[r.Off:r.Off+r.Len], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return regions, io.NewSectionReader(bytes.NewReader(archive), 0, int64(len(archive)))
}

func sumOf(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// A build fetched into its tree installs to the same release as the same
// archive unpacked: contents, modes, symlinks, empty files and directories.
func TestInstallTreeMatchesUnpack(t *testing.T) {
	src := t.TempDir()
	mkTree(t, src, "v1")
	if err := os.WriteFile(filepath.Join(src, "empty", "zero"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "ünï côdé"), bytes.Repeat([]byte("é"), 5000), 0o644); err != nil {
		t.Fatal(err)
	}
	var a bytes.Buffer
	ps, err := Pack(src, &a)
	if err != nil {
		t.Fatal(err)
	}
	tree, unpacked := t.TempDir(), t.TempDir()
	if _, err := Unpack(bytes.NewReader(a.Bytes()), unpacked, NoLimits); err != nil {
		t.Fatal(err)
	}
	s, _ := newStore(t)
	regions, r := fetchIntoTree(t, a.Bytes(), tree)
	st, err := s.InstallTree(context.Background(), "v1", tree, r, regions, sumOf(a.Bytes()), false, Limits{MaxBytes: ps.Bytes, MaxEntries: ps.Entries})
	if err != nil {
		t.Fatal(err)
	}
	if st.Entries != ps.Entries || st.Bytes != ps.Bytes {
		t.Errorf("stats %+v, packed %+v", st, ps)
	}
	want, got := snapshot(t, unpacked, ""), snapshot(t, s.ReleaseDir("v1"), "")
	if len(want) != len(got) {
		t.Errorf("release has %d entries, unpacking %d", len(got), len(want))
	}
	for p, v := range want {
		rel, _ := filepath.Rel(unpacked, p)
		if g := got[filepath.Join(s.ReleaseDir("v1"), rel)]; noLinkTime(g) != noLinkTime(v) && p != unpacked {
			t.Errorf("%s: %q, unpacked %q", rel, g, v)
		}
	}
	if err := s.Intact("v1"); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(tree); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the fetched tree was not moved into releases/ (%v)", err)
	}
}

// Every archive Install refuses, InstallTree refuses too (or Layout does,
// and such a build is never fetched into a tree), and nothing outside the
// tree changes — also when the caller checked every piece already and the
// whole-archive hash is skipped (a hostile build can be signed).
func TestInstallTreeRefusesHostileArchives(t *testing.T) {
	base, outside, victim := victimTree(t)
	for _, checked := range []bool{false, true} {
		for i, c := range hostileArchives(t, outside, victim) {
			t.Run(fmt.Sprintf("%s/checked=%v", c.name, checked), func(t *testing.T) {
				b := c.archive()
				if _, err := Layout(bytes.NewReader(b)); err != nil {
					if !errors.Is(err, ErrUnsafeArchive) && !errors.Is(err, c.want) {
						t.Fatalf("layout: %v", err)
					}
					return // published as an archive only
				}
				s, err := Open(filepath.Join(base, fmt.Sprintf("svc%d-%v", i, checked), "web"), nopLog())
				if err != nil {
					t.Fatal(err)
				}
				tree := s.FetchDir("v1")
				if err := os.MkdirAll(tree, 0o700); err != nil {
					t.Fatal(err)
				}
				before := snapshot(t, outside, "")
				regions, r := fetchIntoTree(t, b, tree)
				if _, err := s.InstallTree(context.Background(), "v1", tree, r, regions, sumOf(b), checked, c.lim); !errors.Is(err, c.want) {
					t.Fatalf("got %v, want %v", err, c.want)
				}
				if s.Has("v1") {
					t.Error("hostile build was installed")
				}
				unchanged(t, before, snapshot(t, outside, ""))
			})
		}
	}
}

// The layout must place each file's contents under its own name and
// length, every placed file must be claimed by its header, and a tree
// that is not what the fetch made (a symlink where a directory goes) is
// refused.
func TestInstallTreeRefusesMisplacedContents(t *testing.T) {
	reg := func(name, data string) entry { return entry{h: tarReg(name), data: data} }
	arch := craft(t, []entry{{h: tarDir("d/")}, reg("d/a", "AAAA"), reg("d/b", "BBBB"), reg("c", "CC")})
	outside := t.TempDir()
	cases := map[string]func(tree string, regions []Region) []Region{
		"two files swapped": func(tree string, rs []Region) []Region {
			rs[1].Path, rs[3].Path = rs[3].Path, rs[1].Path
			return rs
		},
		"contents the layout calls framing": func(tree string, rs []Region) []Region {
			out := append([]Region{}, rs[:4]...)
			out[3] = Region{Off: rs[3].Off, Len: rs[3].Len + rs[4].Len + rs[5].Len + rs[6].Len}
			return out
		},
		"a placed file no header claims": func(tree string, rs []Region) []Region {
			last := rs[len(rs)-1]
			os.WriteFile(filepath.Join(tree, "extra"), []byte("x"), 0o600)
			return append(rs[:len(rs)-1], Region{Off: last.Off, Len: 1}, Region{Off: last.Off + 1, Len: 1, Path: "extra"}, Region{Off: last.Off + 2, Len: last.Len - 2})
		},
		"a symlink where a directory goes": func(tree string, rs []Region) []Region {
			os.RemoveAll(filepath.Join(tree, "d"))
			os.Symlink(outside, filepath.Join(tree, "d"))
			return rs
		},
	}
	for name, mangle := range cases {
		t.Run(name, func(t *testing.T) {
			s, _ := newStore(t)
			tree := s.FetchDir("v1")
			os.MkdirAll(tree, 0o700)
			regions, r := fetchIntoTree(t, arch, tree)
			regions = mangle(tree, regions)
			if _, err := s.InstallTree(context.Background(), "v1", tree, r, regions, sumOf(arch), false, NoLimits); !errors.Is(err, ErrUnsafeArchive) {
				t.Fatalf("got %v, want ErrUnsafeArchive", err)
			}
			if s.Has("v1") {
				t.Error("installed")
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("wrote outside the tree: %v", ents)
			}
		})
	}
}

// A wrong sum touches nothing (the tree is the swarm's copy; its files
// are not even chmodded), and applying the framing a second time, as a
// retried install does, works.
func TestInstallTreeVerifiesFirstAndRetries(t *testing.T) {
	src := t.TempDir()
	mkTree(t, src, "v1")
	var a bytes.Buffer
	if _, err := Pack(src, &a); err != nil {
		t.Fatal(err)
	}
	s, _ := newStore(t)
	tree := s.FetchDir("v1")
	os.MkdirAll(tree, 0o700)
	regions, r := fetchIntoTree(t, a.Bytes(), tree)
	before := snapshot(t, tree, "")
	if _, err := s.InstallTree(context.Background(), "v1", tree, r, regions, sumOf([]byte("other")), false, NoLimits); !errors.Is(err, ErrVerifyFailed) {
		t.Fatalf("wrong sum: %v, want ErrVerifyFailed", err)
	}
	unchanged(t, before, snapshot(t, tree, "")) // a failed verification touches nothing
	if _, err := applyFraming(io.NewSectionReader(r, 0, r.Size()), tree, regions, NoLimits); err != nil {
		t.Fatal(err)
	}
	if _, err := s.InstallTree(context.Background(), "v1", tree, r, regions, sumOf(a.Bytes()), false, NoLimits); err != nil {
		t.Fatalf("install after the framing was applied once: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(s.ReleaseDir("v1"), "bin/app")); string(got) != "#!/bin/sh\necho v1" {
		t.Errorf("bin/app = %q", got)
	}
}

func tarReg(name string) tar.Header {
	return tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: time.Now()}
}

func tarDir(name string) tar.Header {
	return tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755}
}

// noLinkTime drops a symlink's mtime from a snapshot value: neither
// Unpack nor InstallTree sets it (it is when the link was made).
func noLinkTime(v string) string {
	if f := strings.Fields(v); len(f) > 2 && strings.HasPrefix(v, "L") {
		return f[0] + " " + f[1] + " " + strings.Join(f[3:], " ")
	}
	return v
}
