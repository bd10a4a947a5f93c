package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"

	"github.com/shoal-deploy/shoal/swap"
)

// Where a build's bytes live on this host. Every torrent is one of two
// placements:
//
//   - archive: the torrent's bytes are the archive file, byte for byte,
//     at ArchivePath (the origin, builds whose metainfo has no layout, and
//     every build when TreeDir is not configured). Installing it unpacks
//     the archive: each byte is written twice on the host.
//   - tree: the metainfo lists the archive as alternating tar framing and
//     file contents (see framingPath and swap.Layout), and each file's
//     contents are written straight into the directory that becomes the
//     release; the framing goes to a small sparse file at the same offsets
//     as in the archive. Installing it applies the framing (directories,
//     modes, symlinks) in place: each byte is written once.
//
// The storage also keeps a bounded set of open files per build (the
// engine's classic file I/O opened and closed the archive for every chunk
// written).

// ErrReadOnly: a piece write to a build whose tree is an installed release.
var ErrReadOnly = errors.New("installed release is read-only to the swarm")

// maxOpenFiles bounds the files one build keeps open.
const maxOpenFiles = 64

// placement says where one build's bytes go; registered by Add before the
// engine opens the torrent's storage.
type placement struct {
	archive string // the archive, or (tree placement) the framing file
	tree    string // the release tree being fetched; "" for archive placement
	sealed  atomic.Bool
	open    atomic.Pointer[placed] // the engine's open storage of it
	moved   atomic.Pointer[string] // where the tree went when it was installed
	check   *pieceCheck            // SHA-256 piece checks (pieces.go); nil: the engine's SHA-1
}

// empty reports whether none of the build's bytes are on this host: no
// archive (or framing file), and for a tree placement no installed
// release and nothing in the tree yet.
func (p *placement) empty() bool {
	if p.sealed.Load() {
		return false
	}
	if _, err := os.Lstat(p.archive); !errors.Is(err, os.ErrNotExist) {
		return false
	}
	if p.tree == "" {
		return true
	}
	d, err := os.Open(p.tree)
	if errors.Is(err, os.ErrNotExist) {
		return true
	}
	if err != nil {
		return false
	}
	defer d.Close()
	names, _ := d.Readdirnames(1)
	return len(names) == 0
}

// framingPath is the side file of a tree placement: the archive's tar
// framing at the archive's offsets, holes where file contents go.
func framingPath(archive string) string { return archive + ".framing" }

// placeStorage is the engine's storage for every build.
type placeStorage struct {
	pc   *pieceDB
	dir  string        // the archives directory
	sent *atomic.Int64 // bytes handed to peers' sockets by sendfile (sendfile.go); nil: not counted
	mu   sync.Mutex    // guards at
	at   map[metainfo.Hash]*placement
}

// place registers p for ih, unless a placement is registered already
// (the build was added before); it returns the one in force.
func (ps *placeStorage) place(ih metainfo.Hash, p *placement) *placement {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if old := ps.at[ih]; old != nil {
		return old
	}
	ps.at[ih] = p
	return p
}

func (ps *placeStorage) placementOf(ih metainfo.Hash) *placement {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.at[ih]
}

func (ps *placeStorage) forget(ih metainfo.Hash) {
	ps.mu.Lock()
	delete(ps.at, ih)
	ps.mu.Unlock()
}

func (ps *placeStorage) Close() error { return nil }

// A segment is a run of the torrent's bytes in one file: the archive (or
// the framing file) at the same offsets when its Path is "", else the tree
// file Path from its start.
type segment = swap.Region

func (ps *placeStorage) OpenTorrent(_ context.Context, info *metainfo.Info, ih metainfo.Hash) (storage.TorrentImpl, error) {
	p := ps.placementOf(ih)
	if p == nil {
		p = &placement{archive: filepath.Join(ps.dir, filepath.Base(info.Name))}
	}
	t := &placed{pc: ps.pc, sent: ps.sent, ih: ih, p: p, files: map[int]*os.File{}}
	if p.tree == "" {
		t.segs = []segment{{Off: 0, Len: info.TotalLength()}}
	} else {
		segs, err := treeSegments(info)
		if err != nil {
			return storage.TorrentImpl{}, err
		}
		if err := os.MkdirAll(p.tree, 0o700); err != nil {
			return storage.TorrentImpl{}, fmt.Errorf("swarm: release tree: %w", err)
		}
		if t.root, err = os.OpenRoot(p.tree); err != nil {
			return storage.TorrentImpl{}, fmt.Errorf("swarm: release tree: %w", err)
		}
		t.segs = segs
	}
	p.open.Store(t)
	return storage.TorrentImpl{
		Piece: func(mp metainfo.Piece) storage.PieceImpl {
			if p.check != nil {
				return &checkedPiece{placedPiece{t, mp}}
			}
			return &placedPiece{t, mp}
		},
		Close:  t.close,
		SendTo: t.sendTo,
	}, nil
}

// treeSegments maps a layout metainfo to segments, refusing one whose file
// list is not framing and contents alternating, or names a file outside
// the tree or twice. (The metainfo is covered by the manifest's signature,
// and the install checks every name and length against the tar headers
// again; this is so the storage never writes outside the tree first.)
func treeSegments(info *metainfo.Info) ([]segment, error) {
	segs := layoutRegions(info)
	if segs == nil {
		return nil, fmt.Errorf("swarm: %w: %s has no release layout", ErrBadMetaInfo, info.Name)
	}
	seen := map[string]bool{}
	for _, s := range segs {
		if s.Path == "" {
			continue
		}
		if clean, err := swap.LocalName(s.Path); err != nil || clean != s.Path || seen[s.Path] || s.Len <= 0 {
			return nil, fmt.Errorf("swarm: %w: file %q in %s's layout", ErrBadMetaInfo, s.Path, info.Name)
		}
		seen[s.Path] = true
	}
	return segs, nil
}

// layoutRegions is the layout a layout metainfo lists, or nil.
func layoutRegions(info *metainfo.Info) []swap.Region {
	if !IsLayout(info) {
		return nil
	}
	var out []swap.Region
	off := int64(0)
	for i, f := range info.UpvertedFiles() {
		r := swap.Region{Off: off, Len: f.Length}
		if i%2 == 1 {
			r.Path = strings.Join(f.Path, "/")
		}
		out = append(out, r)
		off += f.Length
	}
	return out
}

// framingDir is the first path element of the framing entries in a layout
// metainfo's file list (file i, i even, is [framingDir, "i"]).
const framingDir = ".tar-framing"

// IsLayout reports whether info lists its archive as framing and file
// contents (made by Describe from swap.Layout), so that it can be fetched
// into a tree.
func IsLayout(info *metainfo.Info) bool {
	files := info.Files
	if len(files) == 0 || len(files)%2 == 0 {
		return false
	}
	for i := 0; i < len(files); i += 2 {
		if p := files[i].Path; len(p) != 2 || p[0] != framingDir {
			return false
		}
	}
	return true
}

// placed is one build's open storage.
type placed struct {
	pc   *pieceDB
	sent *atomic.Int64 // placeStorage.sent
	ih   metainfo.Hash
	p    *placement
	segs []segment
	root *os.Root // tree placement

	mu     sync.RWMutex // guards files and closed; I/O runs under the read lock
	files  map[int]*os.File
	closed bool
}

func (t *placed) close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	var err error
	for i, f := range t.files {
		err = errors.Join(err, f.Close())
		delete(t.files, i)
	}
	if t.root != nil {
		err = errors.Join(err, t.root.Close())
	}
	return err
}

// ReadAt reads the torrent's bytes at off, across files.
func (t *placed) ReadAt(b []byte, off int64) (int, error) { return t.rw(b, off, false) }

// rw reads or writes b at the torrent offset off, across files.
func (t *placed) rw(b []byte, off int64, write bool) (int, error) {
	if write && t.p.sealed.Load() {
		return 0, fmt.Errorf("swarm: write to %s: %w", t.p.tree, ErrReadOnly)
	}
	n, err := t.spans(off, int64(len(b)), func(i int, rel, at, m int64) (int64, error) {
		k, err := t.io(i, b[rel:rel+m], at, write)
		return int64(k), err
	})
	return int(n), err
}

// spans calls fn for each file span of the torrent's bytes [off, off+n):
// segment i, the span's offset rel in the range and at in its file, and
// its length m; fn returns how much of it was done. It stops at fn's error
// and returns io.EOF if the range runs past the torrent.
func (t *placed) spans(off, n int64, fn func(i int, rel, at, m int64) (int64, error)) (int64, error) {
	var done int64
	i := sort.Search(len(t.segs), func(i int) bool { return t.segs[i].Off+t.segs[i].Len > off })
	for ; done < n && i < len(t.segs); i++ {
		s := t.segs[i]
		at := off + done
		m := min(n-done, s.Off+s.Len-at)
		fileAt := at
		if s.Path != "" {
			fileAt = at - s.Off
		}
		k, err := fn(i, done, fileAt, m)
		done += k
		if err != nil {
			return done, err
		}
	}
	if done < n {
		return done, io.EOF
	}
	return done, nil
}

// fileKey is segment i's key in files: the archive or framing file (-1)
// for every framing segment, i for a file of the tree.
func (t *placed) fileKey(i int) int {
	if t.segs[i].Path == "" {
		return -1
	}
	return i
}

// withFile calls fn with segment i's file, opened for reading or writing,
// under the read lock (so it is not closed meanwhile).
func (t *placed) withFile(i int, write bool, fn func(f *os.File)) error {
	key := t.fileKey(i)
	for {
		t.mu.RLock()
		if t.closed {
			t.mu.RUnlock()
			return fs.ErrClosed
		}
		if f := t.files[key]; f != nil {
			fn(f)
			t.mu.RUnlock()
			return nil
		}
		t.mu.RUnlock()
		if err := t.open(key, write); err != nil {
			return err
		}
	}
}

// io does one read or write on segment i's file.
func (t *placed) io(i int, b []byte, at int64, write bool) (n int, err error) {
	if oerr := t.withFile(i, write, func(f *os.File) {
		if write {
			n, err = f.WriteAt(b, at)
		} else {
			n, err = f.ReadAt(b, at)
		}
	}); oerr != nil {
		return 0, oerr
	}
	return n, err
}

// open opens segment key's file (creating it, and its directories, for a
// write) and keeps it, closing another if maxOpenFiles are open.
func (t *placed) open(key int, write bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || t.files[key] != nil {
		return nil
	}
	flag := os.O_RDWR
	if t.p.sealed.Load() {
		flag = os.O_RDONLY
	}
	if write {
		flag |= os.O_CREATE
	}
	var f *os.File
	var err error
	if key < 0 {
		if write {
			err = os.MkdirAll(filepath.Dir(t.p.archive), 0o750)
		}
		if err == nil {
			f, err = os.OpenFile(t.p.archive, flag, 0o600)
		}
	} else {
		name := filepath.FromSlash(t.segs[key].Path)
		if write {
			err = t.root.MkdirAll(filepath.Dir(name), 0o700)
		}
		if err == nil {
			f, err = t.root.OpenFile(name, flag, 0o600)
		}
	}
	if err != nil {
		return fmt.Errorf("swarm: open %s: %w", t.describe(key), err)
	}
	if len(t.files) >= maxOpenFiles {
		for k, old := range t.files {
			old.Close()
			delete(t.files, k)
			break
		}
	}
	t.files[key] = f
	return nil
}

func (t *placed) describe(key int) string {
	if key < 0 {
		return t.p.archive
	}
	return filepath.Join(t.p.tree, filepath.FromSlash(t.segs[key].Path))
}

// placedPiece is one piece of a placed build.
type placedPiece struct {
	t *placed
	p metainfo.Piece
}

func (pp *placedPiece) key() metainfo.PieceKey {
	return metainfo.PieceKey{InfoHash: pp.t.ih, Index: pp.p.Index()}
}

func (pp *placedPiece) ReadAt(b []byte, off int64) (int, error) {
	if rest := pp.p.Length() - off; int64(len(b)) > rest {
		b = b[:max(rest, 0)]
	}
	return pp.t.rw(b, pp.p.Offset()+off, false)
}

func (pp *placedPiece) WriteAt(b []byte, off int64) (int, error) {
	pp.unchecked()
	return pp.t.rw(b, pp.p.Offset()+off, true)
}

func (pp *placedPiece) MarkComplete() error { return pp.t.pc.Set(pp.key(), true) }
func (pp *placedPiece) MarkNotComplete() error {
	pp.unchecked()
	return pp.t.pc.Set(pp.key(), false)
}

// unchecked forgets that the piece passed its SHA-256 check: it is being
// written, or the engine found it bad.
func (pp *placedPiece) unchecked() {
	if c := pp.t.p.check; c != nil {
		c.set(pp.p.Index(), false)
	}
}

func (pp *placedPiece) Completion() storage.Completion {
	c, err := pp.t.pc.Get(pp.key())
	c.Err = err
	return c
}

// WriteTo hands the piece to the engine's hasher in 1 MiB reads, exactly
// its length. (In v1.61's classic file I/O, a piece's WriteTo returned
// io.ErrShortWrite on almost every piece, so the engine treated each hash
// as a storage error and never banned a peer that sent a corrupt piece:
// TestCorruptPeerIsBanned.)
func (pp *placedPiece) WriteTo(w io.Writer) (int64, error) {
	bp := hashBufs.Get().(*[]byte)
	defer hashBufs.Put(bp)
	return io.CopyBuffer(w, struct{ io.Reader }{io.NewSectionReader(pp, 0, pp.p.Length())}, *bp)
}

var hashBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// pieceBuf is a buffer of n bytes for reading a piece, from hashBufs when
// n fits one (pieces are 256 KiB-4 MiB); put returns it.
func pieceBuf(n int64) (buf []byte, put func()) {
	bp := hashBufs.Get().(*[]byte)
	if int64(len(*bp)) < n {
		hashBufs.Put(bp)
		return make([]byte, n), func() {}
	}
	return (*bp)[:n], func() { hashBufs.Put(bp) }
}

// archiveReader reads a placed build's archive bytes, wherever they are
// placed: the install reads a tree-placed build through it.
type archiveReader struct {
	ps *placeStorage
	ih metainfo.Hash
}

func (r archiveReader) ReadAt(b []byte, off int64) (int, error) {
	p := r.ps.placementOf(r.ih)
	if p == nil || p.open.Load() == nil {
		return 0, fmt.Errorf("swarm: read archive: %w", fs.ErrClosed)
	}
	return p.open.Load().ReadAt(b, off)
}

// where is where this build's bytes are: the archive, or the tree (the
// installed release once Installed says so, the fetch dir before).
func (x *Transfer) where() string {
	if x.pl.tree == "" {
		return x.pl.archive
	}
	if p := x.pl.moved.Load(); p != nil {
		return *p
	}
	return x.pl.tree
}

// Layout is the layout this build's bytes were placed by when it is
// fetched into a tree (see Tree), else nil.
func (x *Transfer) Layout() []swap.Region {
	if x.pl.tree == "" {
		return nil
	}
	return layoutRegions(x.t.Info())
}
