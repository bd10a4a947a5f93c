// Package swap owns a service's release directories on one host: it
// verifies a fetched archive, unpacks it into a cold directory, moves it
// into releases/<build>, and makes it live by draining the app, switching
// the `current` symlink atomically, activating and health-checking it. A
// failed health check switches back by itself. The previous release always
// stays on disk, so a rollback is a symlink switch that moves no bytes.
//
// Layout under the service root:
//
//	releases/<build>/   unpacked, verified trees (never modified once here)
//	cold/               unpacks in progress; removed on failure
//	current  -> releases/<build>   the live release
//	previous -> releases/<build>   what `current` pointed to before
//
// Nothing in this package ever deletes what `current` or `previous` point to.
package swap

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Sentinel errors; check with errors.Is.
var (
	// ErrVerifyFailed: the archive's SHA-256 does not match the manifest.
	ErrVerifyFailed = errors.New("verification failed")
	// ErrDrainFailed: the drain hook failed or timed out; nothing was switched.
	ErrDrainFailed = errors.New("drain failed")
	// ErrHealthFailed: the new release did not become healthy; the host switched back.
	ErrHealthFailed = errors.New("health check failed")
	// ErrNotInstalled: the build is not in releases/ on this host.
	ErrNotInstalled = errors.New("release not installed on this host")
	// ErrStaleRelease: releases/<build> holds other content than the
	// manifest of that name (a name reused after Consul lost its data),
	// and it is live or previous, so it cannot be replaced.
	ErrStaleRelease = errors.New("installed release differs from the published build of that name")
)

// Store is one service's release area on this host. Its methods are not
// safe for concurrent use: the agent's per-service goroutine is its owner.
type Store struct {
	root string
	log  zerolog.Logger
	// checked holds the releases whose tree this process installed or
	// checked (see Intact).
	checked map[string]bool
}

// Open prepares (creating if needed) the release area at root and removes
// leftovers of interrupted unpacks.
func Open(root string, log zerolog.Logger) (*Store, error) {
	for _, d := range []string{root, filepath.Join(root, "releases")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("swap: open %s: %w", root, err)
		}
	}
	if err := os.RemoveAll(filepath.Join(root, "cold")); err != nil {
		return nil, fmt.Errorf("swap: clean cold dir: %w", err)
	}
	return &Store{root: root, log: log, checked: map[string]bool{}}, nil
}

// Root is the service's release area.
func (s *Store) Root() string { return s.root }

// CurrentPath is the path of the `current` symlink apps should serve from.
func (s *Store) CurrentPath() string { return filepath.Join(s.root, "current") }

// ReleaseDir is where build lives once installed.
func (s *Store) ReleaseDir(build string) string { return filepath.Join(s.root, "releases", build) }

// Current is the live build, or "" if none.
func (s *Store) Current() string { return s.link("current") }

// Previous is the build that was live before Current, or "".
func (s *Store) Previous() string { return s.link("previous") }

func (s *Store) link(name string) string {
	t, err := os.Readlink(filepath.Join(s.root, name))
	if err != nil {
		return ""
	}
	return filepath.Base(t)
}

// Has reports whether build is installed.
func (s *Store) Has(build string) bool {
	fi, err := os.Stat(s.ReleaseDir(build))
	return err == nil && fi.IsDir()
}

// sumPath is the file that ties releases/<build> to the SHA-256 of the
// archive it was unpacked from. It is written durably before the release
// directory is renamed into place.
func (s *Store) sumPath(build string) string {
	return filepath.Join(s.root, "releases", "."+build+".sha256")
}

// Matches reports whether build is installed from the archive with this
// SHA-256. A release installed by a Shoal that wrote no sum file matches
// any sum only while it is current or previous (it cannot be replaced
// then anyway); otherwise it is installed again.
func (s *Store) Matches(build, sha256hex string) bool {
	if !s.Has(build) {
		return false
	}
	b, err := os.ReadFile(s.sumPath(build))
	if errors.Is(err, fs.ErrNotExist) {
		return build == s.Current() || build == s.Previous()
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return err == nil && strings.EqualFold(strings.TrimSpace(first), sha256hex)
}

// Installed lists installed builds, sorted by name.
func (s *Store) Installed() []string {
	ents, _ := os.ReadDir(filepath.Join(s.root, "releases"))
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// checkSum compares the archive's SHA-256 (in h) with want (hex).
func checkSum(archive string, h hash.Hash, want string) error {
	got := hex.EncodeToString(h.Sum(nil))
	if !strings.EqualFold(got, want) {
		return fmt.Errorf("swap: %w: %s has sha256 %s, manifest says %s; the build was not published from this archive — republish it", ErrVerifyFailed, filepath.Base(archive), got, want)
	}
	return nil
}

// prepare decides what installing build (with the archive sum
// sha256hex) has to do: nothing (done: installed and intact), refuse, or
// install afresh (a stale or damaged release that is neither live nor
// previous is removed first).
func (s *Store) prepare(build, sha256hex string) (done bool, err error) {
	damaged := error(nil)
	if s.Matches(build, sha256hex) {
		if damaged = s.Intact(build); damaged == nil {
			return true, nil
		}
	}
	if s.Has(build) {
		if damaged != nil && build == s.Current() {
			return false, fmt.Errorf("swap: install %s: %w; it is live and cannot be replaced under the service: deploy another build, or roll back (the previous release is checked before it goes live)", build, damaged)
		}
		if damaged == nil && (build == s.Current() || build == s.Previous()) {
			return false, fmt.Errorf("swap: install %s: %w: releases/%s is %s and was unpacked from another archive; publish under a new build name",
				build, ErrStaleRelease, build, map[bool]string{true: "live", false: "the previous release"}[build == s.Current()])
		}
		// Left by a crash before its sum was written, a build name
		// published again with other content, or damaged on disk (a
		// power loss that dropped writes): install it afresh.
		if damaged != nil {
			s.log.Error().Err(damaged).Str("build", build).Msg("installed release is damaged; installing it again from its archive")
		} else {
			s.log.Warn().Str("build", build).Msg("installed release does not match the published archive; installing it again")
		}
		delete(s.checked, build)
		if err := os.RemoveAll(s.ReleaseDir(build)); err != nil {
			return false, fmt.Errorf("swap: install %s: remove the stale release: %w", build, err)
		}
	}
	return false, nil
}

// Install checks the archive's SHA-256 against sha256hex and, only if it
// matches, unpacks it into a cold directory within lim (see Unpack) and
// renames that into releases/<build>. Not one entry is written before the
// sum is known to match: an archive that fails verification never reaches
// cold/. On any error the cold directory is removed and nothing else
// changes. Installing an already installed build is a no-op.
func (s *Store) Install(ctx context.Context, build, archive, sha256hex string, lim Limits) (Stats, error) {
	var st Stats
	if done, err := s.prepare(build, sha256hex); done || err != nil {
		return st, err
	}
	f, err := os.Open(archive)
	if err != nil {
		return st, fmt.Errorf("swap: install %s: %w", build, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := copyLarge(h, f); err != nil {
		return st, fmt.Errorf("swap: install %s: verify %s: %w", build, archive, err)
	}
	if err := checkSum(archive, h, sha256hex); err != nil {
		return st, err
	}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	if lim.MaxBytes > 0 {
		if err := CheckFree(s.root, lim.MaxBytes, "unpacking "+build); err != nil {
			return st, fmt.Errorf("swap: install %s: %w", build, err)
		}
	}
	cold := filepath.Join(s.root, "cold")
	if err := os.MkdirAll(cold, 0o755); err != nil {
		return st, fmt.Errorf("swap: install %s: %w", build, err)
	}
	tmp, err := os.MkdirTemp(cold, build+".")
	if err != nil {
		return st, fmt.Errorf("swap: install %s: %w", build, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(tmp)
		}
	}()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return st, fmt.Errorf("swap: install %s: %w", build, err)
	}
	fault("before-unpack")
	if st, err = Unpack(f, tmp, lim); err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			free, _ := FreeBytes(s.root)
			return st, fmt.Errorf("swap: install %s: %w: the disk filled up %d entries into an unpack that needs %d bytes (%d free now); the partial release was removed, free space and deploy again",
				build, ErrNoSpace, st.Entries, lim.MaxBytes, free)
		}
		return st, fmt.Errorf("swap: install %s: %w", build, err)
	}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return st, fmt.Errorf("swap: install %s: %w", build, err)
	}
	if err := s.finish(build, tmp, sha256hex); err != nil {
		return st, err
	}
	ok = true
	return st, nil
}

// finish makes the unpacked (or fetched and framed) tree dir the release
// of build: every file on disk, its seal and the archive's sum recorded,
// then renamed into releases/ in one step, so that after a power loss a
// release is either absent or complete.
func (s *Store) finish(build, dir, sha256hex string) error {
	paths, err := treePaths(dir)
	if err != nil {
		return fmt.Errorf("swap: install %s: %w", build, err)
	}
	if err := syncTree(dir, paths); err != nil {
		return fmt.Errorf("swap: install %s: %w", build, err)
	}
	digest, err := sealDigest(dir, paths)
	if err != nil {
		return fmt.Errorf("swap: install %s: %w", build, err)
	}
	fault("unpacked")
	if err := writeDurable(s.sumPath(build), []byte(strings.ToLower(sha256hex)+"\n"+sealPrefix+digest+"\n")); err != nil {
		return fmt.Errorf("swap: install %s: %w", build, err)
	}
	if err := os.Rename(dir, s.ReleaseDir(build)); err != nil {
		return fmt.Errorf("swap: install %s: move into releases: %w", build, err)
	}
	if err := syncDir(filepath.Join(s.root, "releases")); err != nil {
		return err
	}
	s.checked[build] = true
	fault("installed")
	return nil
}

// Switch points `current` at build atomically (temp link, rename over,
// fsync the directory) and records the old target as `previous`.
// `previous` is set first: a crash between the two renames leaves
// previous == current (both the old build, both protected from pruning),
// never a stale `previous` that lets pruning remove the build that was
// live a moment ago.
func (s *Store) Switch(build string) error {
	if !s.Has(build) {
		return fmt.Errorf("swap: switch to %s: %w", build, ErrNotInstalled)
	}
	old := s.Current()
	if old == build {
		return nil
	}
	if old != "" {
		if err := s.setLink("previous", old); err != nil {
			return err
		}
	}
	fault("switch-between-links")
	return s.setLink("current", build)
}

func (s *Store) setLink(name, build string) error {
	tmp := filepath.Join(s.root, "."+name+".tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Join("releases", build), tmp); err != nil {
		return fmt.Errorf("swap: link %s: %w", name, err)
	}
	if err := os.Rename(tmp, filepath.Join(s.root, name)); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("swap: switch %s to %s: %w", name, build, err)
	}
	return syncDir(s.root)
}

// Prune removes installed releases until keep remain (current and previous
// count toward keep and are never removed; the others go oldest first).
// It returns what it removed.
func (s *Store) Prune(keep int) []string {
	var removed []string
	for _, b := range s.Prunable(keep) {
		if err := s.Remove(b); err == nil {
			removed = append(removed, b)
		} else {
			s.log.Warn().Err(err).Str("build", b).Msg("prune failed")
		}
	}
	return removed
}

// Prunable lists the releases Prune(keep) would remove, newest first.
func (s *Store) Prunable(keep int) []string {
	keep = max(keep, 2)
	evictable := s.Evictable()
	kept := len(s.Installed()) - len(evictable) // current and previous
	var out []string
	for i := len(evictable) - 1; i >= 0; i-- { // newest first
		if kept < keep {
			kept++
			continue
		}
		out = append(out, evictable[i])
	}
	return out
}

// Evictable lists installed releases other than current and previous,
// oldest first (by when they were installed).
func (s *Store) Evictable() []string {
	protect := map[string]bool{s.Current(): true, s.Previous(): true}
	type rel struct {
		name string
		mt   int64
	}
	var rs []rel
	for _, b := range s.Installed() {
		if fi, err := os.Stat(s.ReleaseDir(b)); err == nil && !protect[b] {
			rs = append(rs, rel{b, fi.ModTime().UnixNano()})
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].mt < rs[j].mt })
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.name
	}
	return out
}

// Remove deletes an installed release that is neither current nor previous.
func (s *Store) Remove(build string) error {
	if build == s.Current() || build == s.Previous() {
		return fmt.Errorf("swap: remove %s: it is the current or previous release", build)
	}
	return s.discard(build)
}

// Reinstalling removes a release that is not live so that it can be
// installed afresh: what Install does itself to a damaged or stale
// release that is not live, for a caller that must do it before it
// fetches (a build fetched into its release has no other copy to
// install from).
func (s *Store) Reinstalling(build string) error {
	if build == s.Current() {
		return fmt.Errorf("swap: remove %s: it is the live release", build)
	}
	return s.discard(build)
}

func (s *Store) discard(build string) error {
	delete(s.checked, build)
	if err := os.RemoveAll(s.ReleaseDir(build)); err != nil {
		return fmt.Errorf("swap: remove %s: %w", build, err)
	}
	_ = os.Remove(s.sumPath(build))
	return nil
}

// syncTree flushes every file and directory of a freshly unpacked release
// (fsync each, syncWorkers at a time, so the file system can commit them
// together). It replaced syncfs(2), which flushes the whole file system:
// on a fleet host that is the service's own dirty data as well (a
// writeback storm under the running service at every deploy), and this
// host's fetched archive, which needs no flush (after a crash its pieces
// are hashed again before they are served). paths is the tree's treePaths.
func syncTree(dir string, paths []string) error {
	paths = append(paths[:len(paths):len(paths)], dir) // a copy: the caller's slice goes on to the seal
	work := make(chan string)
	errs := make(chan error, syncWorkers)
	for range syncWorkers {
		go func() {
			var first error
			for p := range work {
				if first == nil {
					first = syncPath(p)
				}
			}
			errs <- first
		}()
	}
	for _, p := range paths {
		work <- p
	}
	close(work)
	var err error
	for range syncWorkers {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	return err
}

const syncWorkers = 8

// syncPath fsyncs a file or directory; a symlink is made durable by its
// directory's fsync.
func syncPath(p string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return fmt.Errorf("swap: sync: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return nil
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrPermission) {
		// A file the agent cannot read (mode 0 and no root): flush the
		// file system instead.
		if f, err = os.Open(filepath.Dir(p)); err == nil {
			defer f.Close()
			err = unix.Syncfs(int(f.Fd()))
		}
		if err != nil {
			return fmt.Errorf("swap: sync %s: %w", p, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("swap: sync: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("swap: sync %s: %w", p, err)
	}
	return nil
}

// WriteFile replaces path with b through a temp file in the same
// directory and a rename, so readers and a restarted agent see the old or
// the new content, never a mix. With durable it fsyncs the file before
// the rename and the directory after it, so the new content survives a
// power loss; state that is cheap to rebuild skips that (an fsync per
// transition on 40 busy agents sharing a disk delayed the start of
// fetches by hundreds of milliseconds). The temp name is unique, so two
// writers of one path never write into each other's temp file. The file
// gets perm.
func WriteFile(path string, b []byte, perm fs.FileMode, durable bool) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	_, err = tmp.Write(b)
	if err == nil && durable {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), perm)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if durable {
		return syncDir(filepath.Dir(path))
	}
	return nil
}

// writeDurable is WriteFile that survives a power loss.
func writeDurable(path string, b []byte) error { return WriteFile(path, b, 0o644, true) }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("swap: fsync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, fs.ErrInvalid) {
		return fmt.Errorf("swap: fsync %s: %w", dir, err)
	}
	return nil
}
