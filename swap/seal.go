package swap

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// ErrDamagedRelease: an installed release no longer holds what was
// unpacked into it (a power loss that dropped writes, a disk fault, a
// hand edit).
var ErrDamagedRelease = errors.New("installed release is damaged")

// TreeDigest hashes a release tree: every entry's path, type and
// permission bits, size, symlink target and content, in sorted path order.
// Times and owners are left out (unpacking sets them; they carry no code).
func TreeDigest(dir string) (string, error) {
	paths, err := treePaths(dir)
	if err != nil {
		return "", fmt.Errorf("swap: digest %s: %w", dir, err)
	}
	return digestTree(dir, paths, sha256.New(), "")
}

// sealDigest is the tree digest a release is sealed with at install and
// checked against before it goes live: the same walk as TreeDigest, with
// xxHash64 ("xxh64:" in front) instead of SHA-256. The seal detects
// damage (dropped writes, a disk fault, a hand edit), not an attacker —
// whoever can write releases/ is root on the host already — and the build
// was checked with SHA-256 as an archive before it was unpacked. A second
// SHA-256 pass over every build cost each host 56 ms of CPU per 100 MB;
// xxHash64 runs at 13.7 GB/s here (7 ms). Releases sealed with SHA-256
// by earlier versions are still checked with it. paths is the tree's
// treePaths (Install walks the tree once, to sync it and to seal it).
func sealDigest(dir string, paths []string) (string, error) {
	return digestTree(dir, paths, xxhash.New(), xxhPrefix)
}

const xxhPrefix = "xxh64:"

// digestTree hashes the entries paths lists under dir with h and returns
// the hex digest after prefix.
func digestTree(dir string, paths []string, h hash.Hash, prefix string) (string, error) {
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			return "", fmt.Errorf("swap: digest: %w", err)
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(h, "%q %o %d", filepath.ToSlash(rel), fi.Mode(), fi.Size())
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return "", fmt.Errorf("swap: digest: %w", err)
			}
			fmt.Fprintf(h, " -> %q", target)
		case fi.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return "", fmt.Errorf("swap: digest: %w", err)
			}
			n, err := hashFile(h, f, fi.Size())
			if now, serr := f.Stat(); err == nil && serr == nil && now.Size() != n {
				// A mapping reads no further than it was asked: a file that
				// grew while it was hashed is caught here.
				err = fmt.Errorf("its size changed from %d to %d while it was read", n, now.Size())
			}
			f.Close()
			if err != nil {
				return "", fmt.Errorf("swap: digest %s: %w", p, err)
			}
			if n != fi.Size() {
				return "", fmt.Errorf("swap: digest %s: read %d bytes of %d", p, n, fi.Size())
			}
		}
		h.Write([]byte{'\n'})
	}
	return prefix + hex.EncodeToString(h.Sum(nil)), nil
}

// sealLine is how the tree digest is recorded in a release's sum file,
// on the line after the archive's SHA-256.
const sealPrefix = "tree "

// Intact checks that releases/<build> still holds what was unpacked into
// it, against the tree digest recorded at install; nil if it does, or if
// no digest was recorded (a release installed by an older Shoal). Each
// release is hashed at most once per process: what this process installed
// or checked is trusted from then on (its writes were flushed before the
// rename; a power loss restarts the process, and everything is checked
// again before it goes live).
func (s *Store) Intact(build string) error {
	if s.checked[build] {
		return nil
	}
	b, err := os.ReadFile(s.sumPath(build))
	if err != nil {
		return nil // no sum file: Matches decides
	}
	var want string
	for _, line := range strings.Split(string(b), "\n") {
		if d, ok := strings.CutPrefix(line, sealPrefix); ok {
			want = strings.TrimSpace(d)
		}
	}
	if want == "" {
		s.checked[build] = true
		return nil
	}
	dir := s.ReleaseDir(build)
	paths, err := treePaths(dir)
	got := ""
	if err == nil {
		if strings.HasPrefix(want, xxhPrefix) {
			got, err = sealDigest(dir, paths)
		} else {
			got, err = digestTree(dir, paths, sha256.New(), "")
		}
	}
	if err != nil {
		return fmt.Errorf("swap: releases/%s: %w: %v", build, ErrDamagedRelease, err)
	}
	if got != want {
		return fmt.Errorf("swap: releases/%s: %w: its files differ from what was unpacked (tree digest %.18s…, recorded %.18s…)", build, ErrDamagedRelease, got, want)
	}
	s.checked[build] = true
	return nil
}
