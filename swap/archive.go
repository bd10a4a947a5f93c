package swap

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Pack writes dir as a tar stream to w, keeping file modes, empty
// directories and symlinks (which torrent metadata alone would lose).
// Entries are sorted and owner fields cleared, so the same tree packs to
// the same bytes. It returns the number of entries written.
func Pack(dir string, w io.Writer) (int, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return 0, fmt.Errorf("swap: pack: %w", err)
	}
	if !st.IsDir() {
		return 0, fmt.Errorf("swap: pack: %s is not a directory", dir)
	}
	var paths []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("swap: pack %s: %w", dir, err)
	}
	sort.Strings(paths)
	tw := tar.NewWriter(w)
	for _, p := range paths {
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return 0, fmt.Errorf("swap: pack: %w", err)
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return 0, fmt.Errorf("swap: pack: %w", err)
			}
		} else if !fi.Mode().IsRegular() && !fi.IsDir() {
			return 0, fmt.Errorf("swap: pack: %s is a %s; only files, directories and symlinks can ship", p, fi.Mode().Type())
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return 0, fmt.Errorf("swap: pack %s: %w", p, err)
		}
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		h.AccessTime, h.ChangeTime = h.ModTime, h.ModTime
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return 0, fmt.Errorf("swap: pack %s: %w", p, err)
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return 0, fmt.Errorf("swap: pack: %w", err)
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return 0, fmt.Errorf("swap: pack %s: %w", p, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return 0, fmt.Errorf("swap: pack: %w", err)
	}
	return len(paths), nil
}

// ErrUnsafeArchive: an archive entry would land outside the release directory.
var ErrUnsafeArchive = errors.New("unsafe archive entry")

// Unpack extracts a tar stream made by Pack into dest, which must exist
// and be empty. Entries that would escape dest (absolute paths, "..",
// writing through a symlink) are refused with ErrUnsafeArchive.
func Unpack(r io.Reader, dest string) error {
	tr := tar.NewReader(r)
	type dirMode struct {
		path string
		mode fs.FileMode
	}
	var dirs []dirMode
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("swap: unpack: %w", err)
		}
		name := filepath.Clean(filepath.FromSlash(h.Name))
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, ".."+string(filepath.Separator)) {
			return fmt.Errorf("swap: unpack: %w: %q", ErrUnsafeArchive, h.Name)
		}
		target := filepath.Join(dest, name)
		if err := noSymlinkParents(dest, name); err != nil {
			return err
		}
		mode := fs.FileMode(h.Mode) & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return fmt.Errorf("swap: unpack: %w", err)
			}
			dirs = append(dirs, dirMode{target, mode})
		case tar.TypeReg:
			f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return fmt.Errorf("swap: unpack: %w", err)
			}
			_, err = io.Copy(f, tr)
			if err == nil {
				err = f.Chmod(mode)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("swap: unpack %s: %w", h.Name, err)
			}
			_ = os.Chtimes(target, h.ModTime, h.ModTime)
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, target); err != nil {
				return fmt.Errorf("swap: unpack: %w", err)
			}
		default:
			return fmt.Errorf("swap: unpack: %w: %q has unsupported type %c", ErrUnsafeArchive, h.Name, h.Typeflag)
		}
	}
	// Directory modes last, so a read-only directory can still be filled.
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Chmod(dirs[i].path, dirs[i].mode); err != nil {
			return fmt.Errorf("swap: unpack: %w", err)
		}
	}
	return nil
}

// noSymlinkParents refuses a path whose existing parent components are
// symlinks: writing through one could land anywhere on the host.
func noSymlinkParents(root, rel string) error {
	parts := strings.Split(rel, string(filepath.Separator))
	p := root
	for _, part := range parts[:len(parts)-1] {
		p = filepath.Join(p, part)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("swap: unpack: %w", err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("swap: unpack: %w: %q goes through symlink %q", ErrUnsafeArchive, rel, p)
		}
	}
	return nil
}
