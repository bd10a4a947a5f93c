package swap

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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
	h := sha256.New()
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
			n, err := io.Copy(h, f)
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
	return hex.EncodeToString(h.Sum(nil)), nil
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
	got, err := TreeDigest(s.ReleaseDir(build))
	if err != nil {
		return fmt.Errorf("swap: releases/%s: %w: %v", build, ErrDamagedRelease, err)
	}
	if got != want {
		return fmt.Errorf("swap: releases/%s: %w: its files differ from what was unpacked (tree digest %s…, recorded %s…)", build, ErrDamagedRelease, got[:12], want[:12])
	}
	s.checked[build] = true
	return nil
}
