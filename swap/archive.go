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
	"sync"
)

// Pack writes dir as a tar stream to w, keeping file modes, empty
// directories and symlinks (which torrent metadata alone would lose).
// Entries are sorted and owner fields cleared, so the same tree packs to
// the same bytes. It returns what it wrote: entries and regular-file bytes
// (a manifest declares both; unpacking refuses more).
func Pack(dir string, w io.Writer) (Stats, error) {
	var ps Stats
	st, err := os.Stat(dir)
	if err != nil {
		return ps, fmt.Errorf("swap: pack: %w", err)
	}
	if !st.IsDir() {
		return ps, fmt.Errorf("swap: pack: %s is not a directory", dir)
	}
	paths, err := treePaths(dir)
	if err != nil {
		return ps, fmt.Errorf("swap: pack %s: %w", dir, err)
	}
	tw := tar.NewWriter(w)
	for _, p := range paths {
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return ps, fmt.Errorf("swap: pack: %w", err)
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return ps, fmt.Errorf("swap: pack: %w", err)
			}
		} else if !fi.Mode().IsRegular() && !fi.IsDir() {
			return ps, fmt.Errorf("swap: pack: %s is a %s; only files, directories and symlinks can ship", p, fi.Mode().Type())
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return ps, fmt.Errorf("swap: pack %s: %w", p, err)
		}
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		h.AccessTime, h.ChangeTime = h.ModTime, h.ModTime
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return ps, fmt.Errorf("swap: pack %s: %w", p, err)
		}
		if fi.Mode().IsRegular() {
			ps.Bytes += fi.Size()
			f, err := os.Open(p)
			if err != nil {
				return ps, fmt.Errorf("swap: pack: %w", err)
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return ps, fmt.Errorf("swap: pack %s: %w", p, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return ps, fmt.Errorf("swap: pack: %w", err)
	}
	ps.Entries = len(paths)
	return ps, nil
}

// treePaths lists every path under dir (not dir itself), sorted: the order
// Pack writes and TreeDigest hashes.
func treePaths(dir string) ([]string, error) {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			paths = append(paths, p)
		}
		return nil
	})
	sort.Strings(paths)
	return paths, err
}

// Sentinel errors of unpacking; check with errors.Is.
var (
	// ErrUnsafeArchive: an entry would land outside the release directory,
	// or is of a kind Shoal never ships (hardlink, device, FIFO, sparse file).
	ErrUnsafeArchive = errors.New("unsafe archive entry")
	// ErrArchiveLimit: the archive holds more bytes or entries than its
	// manifest declares or the agent allows.
	ErrArchiveLimit = errors.New("archive exceeds its limits")
)

// Limits bound what one archive may unpack to.
type Limits struct {
	// MaxBytes caps the total size of regular files; negative means no cap.
	MaxBytes int64
	// MaxEntries caps the number of entries; negative means no cap.
	MaxEntries int
	// AllowSpecialBits keeps setuid, setgid and sticky bits; otherwise
	// they are dropped (the file is still unpacked).
	AllowSpecialBits bool
}

// NoLimits caps nothing (tests, and archives this host packed itself).
var NoLimits = Limits{MaxBytes: -1, MaxEntries: -1}

// Stats counts what an archive held.
type Stats struct {
	Entries int   `json:"entries"`
	Bytes   int64 `json:"bytes"`
	// SpecialBitsDropped counts entries whose setuid/setgid/sticky bits were cleared.
	SpecialBitsDropped int `json:"special_bits_dropped,omitempty"`
}

// Unpack extracts a tar stream made by Pack into dest, which must exist
// and be empty. Every write goes through an os.Root opened on dest, so no
// write, chmod, chtimes or link creation can leave it; on top of that,
// entries are refused (ErrUnsafeArchive) when their name is not local
// (absolute, ".."), when any parent is a symlink or not a directory, when
// they would replace an existing entry, and when they are hardlinks,
// devices, FIFOs or sparse files. Symlinks may point anywhere but are
// never followed while unpacking. Sizes and entry counts are checked
// against lim before anything is written for the entry (ErrArchiveLimit).
func Unpack(r io.Reader, dest string, lim Limits) (Stats, error) {
	tr := tar.NewReader(r)
	return walkEntries(tr, dest, "unpack", lim, func(root *os.Root, h *tar.Header, name string, perm fs.FileMode) error {
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o700); err != nil {
				return fmt.Errorf("swap: unpack: %w: %q: %v", ErrUnsafeArchive, h.Name, err)
			}
		case tar.TypeReg:
			// O_EXCL: never through an existing entry, dangling symlinks included.
			f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return fmt.Errorf("swap: unpack: %w: %q: %v", ErrUnsafeArchive, h.Name, err)
			}
			n, err := copyLarge(f, tr)
			if err == nil && n != h.Size {
				err = io.ErrUnexpectedEOF
			}
			if err == nil {
				err = f.Chmod(perm)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("swap: unpack %s: %w", h.Name, err)
			}
			_ = root.Chtimes(name, h.ModTime, h.ModTime)
		case tar.TypeSymlink:
			if err := root.Symlink(h.Linkname, name); err != nil {
				return fmt.Errorf("swap: unpack: %w: %q: %v", ErrUnsafeArchive, h.Name, err)
			}
		}
		return nil
	})
}

// walkEntries reads every entry of tr and hands it to do with the checks
// Unpack and applyFraming share made first: the entry count and (for a
// regular file) the byte total within lim, the name (entryName: local, no
// parent that is not a directory), the kind (files, directories and
// symlinks with a target only) and the mode (entryPerm; st counts dropped
// special bits). do makes the entry under dest's root. Directory modes are
// set after the last entry, so a read-only directory can still be filled;
// op names the caller in errors.
func walkEntries(tr *tar.Reader, dest, op string, lim Limits, do func(root *os.Root, h *tar.Header, name string, perm fs.FileMode) error) (Stats, error) {
	var st Stats
	root, err := os.OpenRoot(dest)
	if err != nil {
		return st, fmt.Errorf("swap: %s: %w", op, err)
	}
	defer root.Close()
	type dirMode struct {
		name string
		mode fs.FileMode
	}
	var dirs []dirMode
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return st, fmt.Errorf("swap: %s: %w", op, err)
		}
		st.Entries++
		if lim.MaxEntries >= 0 && st.Entries > lim.MaxEntries {
			return st, fmt.Errorf("swap: %s: %w: more than %d entries", op, ErrArchiveLimit, lim.MaxEntries)
		}
		name, err := entryName(root, h)
		if err != nil {
			return st, err
		}
		switch h.Typeflag {
		case tar.TypeDir:
		case tar.TypeReg:
			if h.Size < 0 {
				return st, fmt.Errorf("swap: %s: %w: %q has size %d", op, ErrUnsafeArchive, h.Name, h.Size)
			}
			st.Bytes += h.Size
			if lim.MaxBytes >= 0 && st.Bytes > lim.MaxBytes {
				return st, fmt.Errorf("swap: %s: %w: more than the %d bytes declared", op, ErrArchiveLimit, lim.MaxBytes)
			}
		case tar.TypeSymlink:
			if h.Linkname == "" {
				return st, fmt.Errorf("swap: %s: %w: symlink %q has no target", op, ErrUnsafeArchive, h.Name)
			}
		default:
			return st, fmt.Errorf("swap: %s: %w: %q is a %s; only files, directories and symlinks ship", op, ErrUnsafeArchive, h.Name, typeName(h.Typeflag))
		}
		perm, dropped := entryPerm(h, lim)
		if dropped {
			st.SpecialBitsDropped++
		}
		if err := do(root, h, name, perm); err != nil {
			return st, err
		}
		if h.Typeflag == tar.TypeDir {
			dirs = append(dirs, dirMode{name, perm})
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := root.Chmod(dirs[i].name, dirs[i].mode); err != nil {
			return st, fmt.Errorf("swap: %s: %w", op, err)
		}
	}
	return st, nil
}

// entryPerm is the mode an entry gets: its permission bits, and its
// setuid, setgid and sticky bits if lim allows them (dropped says they
// were there and were not kept).
func entryPerm(h *tar.Header, lim Limits) (perm fs.FileMode, dropped bool) {
	mode := h.FileInfo().Mode() // maps tar's 04000/02000/01000 to Go's mode bits
	perm = mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	if special := perm &^ fs.ModePerm; special != 0 && !lim.AllowSpecialBits {
		return perm & fs.ModePerm, true
	}
	return perm, false
}

// entryName checks an entry's name and parents and returns it in local form.
func entryName(root *os.Root, h *tar.Header) (string, error) {
	if h.Typeflag == tar.TypeGNUSparse || hasSparseRecords(h) {
		return "", fmt.Errorf("swap: unpack: %w: %q is a sparse file", ErrUnsafeArchive, h.Name)
	}
	name := filepath.Clean(filepath.FromSlash(h.Name))
	if !filepath.IsLocal(name) || name == "." {
		return "", fmt.Errorf("swap: unpack: %w: %q is not inside the release", ErrUnsafeArchive, h.Name)
	}
	parts := strings.Split(name, string(filepath.Separator))
	p := ""
	for _, part := range parts[:len(parts)-1] {
		p = filepath.Join(p, part)
		fi, err := root.Lstat(p)
		if err != nil {
			return "", fmt.Errorf("swap: unpack: %w: %q: parent %q: %v", ErrUnsafeArchive, h.Name, p, err)
		}
		if !fi.IsDir() {
			return "", fmt.Errorf("swap: unpack: %w: %q goes through %q, a %s", ErrUnsafeArchive, h.Name, p, typeOf(fi))
		}
	}
	return name, nil
}

func hasSparseRecords(h *tar.Header) bool {
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

func typeOf(fi fs.FileInfo) string {
	if fi.Mode()&fs.ModeSymlink != 0 {
		return "symlink"
	}
	return fi.Mode().Type().String()
}

func typeName(t byte) string {
	switch t {
	case tar.TypeLink:
		return "hardlink"
	case tar.TypeChar:
		return "character device"
	case tar.TypeBlock:
		return "block device"
	case tar.TypeFifo:
		return "FIFO"
	case tar.TypeGNUSparse:
		return "sparse file"
	}
	return fmt.Sprintf("entry of type %q", t)
}

// copyLarge copies through a pooled 1 MiB buffer. io.Copy between files
// goes through os.File's ReadFrom/WriteTo fallbacks with 32 KiB at a
// time: at 100 MB per build that was 3,200 read and write calls per pass,
// and installing a build makes three passes (check, unpack, seal).
func copyLarge(dst io.Writer, src io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}
