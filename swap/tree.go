package swap

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// FetchDir is where a build fetched straight into its release tree is
// written while it arrives (see InstallTree). It is on the store's file
// system, so installing it is a rename, and it is not under cold/, which
// opening the store empties: a fetch survives a restart.
func (s *Store) FetchDir(build string) string { return filepath.Join(s.root, "fetching", build) }

// InstallTree installs a build whose file contents were fetched straight
// into tree (FetchDir) at the paths its layout names, instead of into an
// archive. archive reads the build's archive bytes as they are placed (tar
// framing from a side file, contents from tree's files); regions is the
// layout they were placed by (swap.Layout of the archive).
//
// Like Install, nothing happens to the release store before the archive's
// SHA-256 is known to match: first it is checked, reading archive from
// start to end. Then the tar framing is applied in place, with every check
// Unpack makes (names, parents, kinds, limits): directories made, empty
// files and symlinks created, modes and times set. Each regular file's
// contents must be exactly where the layout put them, under its own name
// with its own length, and every file the layout placed must be claimed by
// its header. Then the tree is synced, sealed and renamed into releases/.
//
// checked says the caller has already checked every byte of archive, as
// placed, against SHA-256 hashes the signed manifest covers (each piece's,
// swarm/pieces.go): the whole-archive pass is skipped, every other check
// is made. sha256hex still goes into the release's sum file.
//
// On an error the tree stays where it is (it is the swarm's copy of the
// build, and what it seeds); applying the framing again is harmless, so a
// failed install can be retried.
func (s *Store) InstallTree(ctx context.Context, build, tree string, archive *io.SectionReader, regions []Region, sha256hex string, checked bool, lim Limits) (Stats, error) {
	var st Stats
	if done, err := s.prepare(build, sha256hex); done || err != nil {
		return st, err
	}
	if !checked {
		h := sha256.New()
		if _, err := copyLarge(h, io.NewSectionReader(archive, 0, archive.Size())); err != nil {
			return st, fmt.Errorf("swap: install %s: verify the fetched tree: %w", build, err)
		}
		if err := checkSum(tree, h, sha256hex); err != nil {
			return st, err
		}
	}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	fault("before-unpack")
	full := func(err error) error {
		return fmt.Errorf("swap: install %s: %w: the disk filled up while installing the fetched tree (%v); it was kept in %s, so the next attempt fetches nothing again: free space and deploy again",
			build, ErrNoSpace, err, tree)
	}
	st, err := applyFraming(io.NewSectionReader(archive, 0, archive.Size()), tree, regions, lim)
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return st, full(err)
		}
		return st, fmt.Errorf("swap: install %s: %w", build, err)
	}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	if err := os.Chmod(tree, 0o755); err != nil {
		return st, fmt.Errorf("swap: install %s: %w", build, err)
	}
	if err := s.finish(build, tree, sha256hex); err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return st, full(err)
		}
		return st, err
	}
	return st, nil
}

// applyFraming makes dest what Unpack would make of the tar stream r, given
// that the contents of r's regular files are already in dest where regions
// put them. r must be seekable: the tar reader skips the contents instead
// of reading them again.
func applyFraming(r io.ReadSeeker, dest string, regions []Region, lim Limits) (Stats, error) {
	seen := map[string]bool{}
	next := 1 // the next contents region
	st, err := walkEntries(tar.NewReader(r), dest, "apply framing", lim, func(root *os.Root, h *tar.Header, name string, perm fs.FileMode) error {
		slash := filepath.ToSlash(name)
		if seen[slash] {
			return fmt.Errorf("swap: apply framing: %w: %q appears twice", ErrUnsafeArchive, h.Name)
		}
		seen[slash] = true
		if parent := filepath.Dir(slash); parent != "." && !seen[parent] {
			return fmt.Errorf("swap: apply framing: %w: %q comes before its directory", ErrUnsafeArchive, h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o700); err != nil {
				// Made by the fetch as the parent of a file, or by an
				// earlier attempt: a real directory is what is wanted.
				if fi, lerr := root.Lstat(name); !errors.Is(err, fs.ErrExist) || lerr != nil || !fi.IsDir() {
					return fmt.Errorf("swap: apply framing: %w: %q: %v", ErrUnsafeArchive, h.Name, err)
				}
			}
		case tar.TypeReg:
			if h.Size > 0 {
				at, err := r.Seek(0, io.SeekCurrent)
				if err != nil {
					return fmt.Errorf("swap: apply framing: %w", err)
				}
				if next >= len(regions) || regions[next].Off != at || regions[next].Len != h.Size || regions[next].Path != slash {
					return fmt.Errorf("swap: apply framing: %w: %q (%d bytes at %d) is not where the layout placed it", ErrUnsafeArchive, h.Name, h.Size, at)
				}
				next += 2
			} else if f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
				f.Close()
			} else if !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("swap: apply framing: %w: %q: %v", ErrUnsafeArchive, h.Name, err)
			}
			fi, err := root.Lstat(name)
			if err != nil || !fi.Mode().IsRegular() || fi.Size() != h.Size {
				return fmt.Errorf("swap: apply framing: %w: %q is not the %d-byte file the layout placed (%v)", ErrUnsafeArchive, h.Name, h.Size, err)
			}
			if err := root.Chmod(name, perm); err != nil {
				return fmt.Errorf("swap: apply framing: %w", err)
			}
			_ = root.Chtimes(name, h.ModTime, h.ModTime)
		case tar.TypeSymlink:
			if err := root.Symlink(h.Linkname, name); err != nil {
				if target, rerr := root.Readlink(name); !errors.Is(err, fs.ErrExist) || rerr != nil || target != h.Linkname {
					return fmt.Errorf("swap: apply framing: %w: %q: %v", ErrUnsafeArchive, h.Name, err)
				}
			}
		}
		return nil
	})
	if err == nil && next != len(regions) {
		err = fmt.Errorf("swap: apply framing: %w: the layout placed files no header claims", ErrUnsafeArchive)
	}
	return st, err
}
