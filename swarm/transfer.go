package swarm

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"
	pp "github.com/anacrolix/torrent/peer_protocol"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/swap"
)

// ArchiveName is the file name a build's archive has on every host.
func ArchiveName(service, build string) string { return service + "@" + build + ".tar" }

// ArchivePath is where this host keeps (or will fetch) a build's archive.
func (s *Swarm) ArchivePath(service, build string) string {
	return filepath.Join(s.cfg.DataDir, "archives", ArchiveName(service, build))
}

// PieceLength picks a piece size for an archive of size bytes shared by a
// fleet of hosts. A host forwards a piece only once it has all of it, so
// small pieces spread sooner; but every piece costs a HAVE to each peer
// and a request update on each of them, so a host's engine work grows
// with pieces × peers. Fleets of more than 16 hosts get pieces twice the
// size table's (once: at N = 40, 2 MiB for 100 MB was no faster than
// 1 MiB, 58 s against 55-57 s, and left hosts without a complete piece
// long enough to fall back to the origin, which sent 1.9 × S), as long as
// that still leaves a piece per host: with fewer, each host's first piece
// from the origin takes N·piece/u to arrive and the swarm has nothing to
// trade meanwhile (10 MB at 0.5 MB/s, N = 20: 512 KiB pieces took 55-64 s
// where 256 KiB took 42 s). The rule asked for two pieces per host until
// peer sets bounded each host's connections; since, at N = 80 (100 MB),
// 1 MiB pieces took 62.9 s and 15.7 CPU-s per GB where 512 KiB took
// 75.5 s and 18.9 (half the messages per byte). Measured with 100 MB on the
// bench (docs/BENCHMARKS.md): at N = 5, 512 KiB pieces took 12.1-12.8 s
// and 1 MiB 12.7-13.0 s; at N = 20, 1 MiB 17.6-18.2 s and 512 KiB 19-29 s.
func PieceLength(size int64, hosts int) int64 {
	var pl int64
	switch {
	case size < 32<<20:
		pl = 256 << 10
	case size < 256<<20:
		pl = 512 << 10
	case size < 2<<30:
		pl = 2 << 20
	default:
		pl = 4 << 20
	}
	if hosts > 16 && pl < 4<<20 && size >= int64(hosts)*(2*pl) {
		pl *= 2
	}
	return pl
}

// ChunkSize is how much this host asks a peer for in one request. The
// BitTorrent convention is 16 KiB, but every request costs a message each
// way, a storage write and engine bookkeeping, and at fleet scale that
// per-chunk work, not the network, is what the CPU spends its time on.
// Shoal peers serve any request up to a piece, so ask for a quarter piece
// (16-256 KiB): large enough to cut that work 4-16 times, small enough
// that a piece still comes from up to four peers at once, which matters
// on slow links (whole-piece requests made 10 MB at 0.5 MB/s 12-27 %
// slower).
func ChunkSize(pieceLength int64) int64 { return min(max(pieceLength/4, 16<<10), 256<<10) }

// Describe hashes an archive already at ArchivePath(service, build) and
// fills in the manifest's size, SHA-256, piece length, info hash and
// metainfo. It reads the file twice (SHA-256 and layout, then piece
// hashes). An archive that is a tar stream gets a metainfo that lists it
// as its framing and file contents (swap.Layout), unless that list would
// make the manifest too large for Consul: hosts that fetch into the
// release tree need it (see placement); to every other host the bytes are
// the same archive.
func (s *Swarm) Describe(m *core.Manifest) error {
	path := s.ArchivePath(m.Service, m.Build)
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("swarm: describe: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	regions, lerr := swap.Layout(io.TeeReader(f, h))
	if _, err := io.Copy(h, f); err != nil { // what Layout did not read, if it stopped early
		return fmt.Errorf("swarm: describe %s: %w", path, err)
	}
	n, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return fmt.Errorf("swarm: describe %s: %w", path, err)
	}
	if n == 0 {
		return fmt.Errorf("swarm: describe %s: archive is empty", path)
	}
	info := metainfo.Info{Name: ArchiveName(m.Service, m.Build), PieceLength: PieceLength(n, s.ml.NumMembers())}
	var sums []byte
	if info.Pieces, sums, err = pieceHashes(f, info.PieceLength); err != nil {
		return fmt.Errorf("swarm: piece hashes of %s: %w", path, err)
	}
	ib, err := layoutInfo(info, regions)
	if lerr != nil || err != nil || len(ib) > maxLayoutInfo {
		info.Length = n
		ib, err = bencode.Marshal(info)
	}
	if err != nil {
		return fmt.Errorf("swarm: encode info: %w", err)
	}
	mf := metaInfoFile{Info: ib, CreatedBy: "shoal", CreationDate: time.Now().Unix(), PieceSHA256: string(sums)}
	mb, err := bencode.Marshal(mf)
	if err == nil && len(mb) > maxMetaInfo {
		// No room for the SHA-256 list in one Consul value: pieces are
		// checked by SHA-1 and the install hashes the archive whole.
		mf.PieceSHA256 = ""
		mb, err = bencode.Marshal(mf)
	}
	if err != nil {
		return fmt.Errorf("swarm: encode metainfo: %w", err)
	}
	m.Size, m.SHA256, m.PieceLength = n, hex.EncodeToString(h.Sum(nil)), info.PieceLength
	m.InfoHash, m.MetaInfo = metainfo.HashBytes(ib).HexString(), mb
	return nil
}

// maxMetaInfo bounds the metainfo with its SHA-256 piece list (pieces.go):
// the manifest carries it base64 in one Consul value of at most 512 KiB.
// A 4 MiB-piece build over ~25 GB (or one whose layout is near
// maxLayoutInfo) goes without the list. A var for tests.
var maxMetaInfo = 360 << 10

// maxLayoutInfo bounds a layout metainfo (~110 bytes per file with
// 30-character paths, so about 2,000 files): the
// manifest carries it, base64, in one Consul value (512 KiB at most).
// A build with more files is fetched as an archive.
const maxLayoutInfo = 256 << 10

// layoutInfo encodes info listing the archive as its regions.
func layoutInfo(info metainfo.Info, regions []swap.Region) ([]byte, error) {
	for i, r := range regions {
		p := []string{framingDir, strconv.Itoa(i)}
		if r.Path != "" {
			p = strings.Split(r.Path, "/")
		}
		info.Files = append(info.Files, metainfo.FileInfo{Length: r.Len, Path: p})
	}
	if !IsLayout(&info) {
		return nil, fmt.Errorf("swarm: layout of %s does not alternate framing and contents", info.Name)
	}
	return bencode.Marshal(info)
}

// pieceHashes reads r from its start and returns the SHA-1 and the
// SHA-256 of each piece.
func pieceHashes(r io.ReaderAt, pieceLength int64) (sha1s, sha256s []byte, err error) {
	buf, put := pieceBuf(pieceLength)
	defer put()
	for off := int64(0); ; off += pieceLength {
		n, err := r.ReadAt(buf, off)
		if n > 0 {
			s1, s256 := sha1.Sum(buf[:n]), sha256.Sum256(buf[:n])
			sha1s, sha256s = append(sha1s, s1[:]...), append(sha256s, s256[:]...)
		}
		if errors.Is(err, io.EOF) || (err == nil && int64(n) < pieceLength) {
			return sha1s, sha256s, nil
		}
		if err != nil {
			return nil, nil, err
		}
	}
}

// Transfer is one build being fetched or seeded by this host.
type Transfer struct {
	s       *Swarm
	t       *torrent.Torrent
	m       *core.Manifest
	pl      *placement
	started time.Time
	// initial is what was already verified on disk when the transfer was added.
	initial int64

	mu   sync.Mutex       // guards from, slice, offeredAt, lastHave and lastGain
	from map[string]int64 // useful bytes received, by sending node
	// offeredAt is when each member not yet connected was offered as a
	// peer; lastHave is the verified bytes at lastGain, when they last
	// grew (see topUp).
	offeredAt map[torrent.PeerID]time.Time
	lastHave  int64
	lastGain  time.Time

	// slice lists the pieces this host pulled from the origin over HTTP
	// (see handout.go); avoidOrigin keeps the origin out of its torrent peers
	// meanwhile, so the origin sends each piece once.
	slice       []int
	avoidOrigin atomic.Bool
	// On the origin: handedOut counts the pieces handed out in order;
	// keptBack holds pieces that failed their check at handout, to hand
	// out once repaired (see NextSlicePiece). Guarded by handMu.
	handMu    sync.Mutex
	handedOut int
	keptBack  []int
	handBuf   []byte
	// healing is set while the origin repairs its copy from the publish
	// directory; healAgain asks it for one more pass.
	healing, healAgain atomic.Bool
	// served counts archive bytes this host sent outside the torrent engine
	// (HTTP slices and origin-method copies), reported in Uploaded.
	served atomic.Int64
	// writeErr is the last error writing a piece to disk (ENOSPC, EIO);
	// downloading stops until Resume.
	writeErr atomic.Pointer[error]
	// badOnDisk counts pieces that were complete here and failed a later
	// re-hash (scrub, or a failed SHA-256 check of the whole archive).
	badOnDisk atomic.Int64
	// paused is set while a superseded build is not downloaded (see
	// Pause); its peer set is not topped up meanwhile.
	paused atomic.Bool
	// repairing is set while pieces a re-hash found bad are fetched again
	// (the origin then dials peers, which it otherwise never does).
	repairing atomic.Bool

	// checking is set while a restarted host re-hashes a build it already
	// had, before serving it again (see CheckBeforeServing).
	checking atomic.Bool

	life    sync.RWMutex // read-held around verify calls; Drop write-holds it
	dropped bool         // guarded by life
}

// verify runs f (a piece or torrent verification) unless the transfer was
// dropped, and keeps Drop waiting until f returns. In v1.61
// Piece.VerifyDataContext on a dropped torrent returns with the engine's
// lock still held, which froze the whole agent (a superseded fetch's slice
// pull verifying a piece as the build was let go).
func (x *Transfer) verify(f func() error) error {
	x.life.RLock()
	defer x.life.RUnlock()
	if x.dropped {
		return fmt.Errorf("swarm: %s/%s: %w", x.m.Service, x.m.Build, ErrClosed)
	}
	return f()
}

// CheckBeforeServing re-hashes, in the background, a build this host
// already had when it started (the piece database says complete; the disk
// may say otherwise after a crash or a fault), serving none of it
// meanwhile; bad pieces are fetched again.
func (s *Swarm) CheckBeforeServing(x *Transfer) {
	x.checking.Store(true)
	x.t.DisallowDataUpload()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer x.checking.Store(false)
		if _, err := x.reverify(s.ctx); err != nil && s.ctx.Err() == nil {
			s.log.Warn().Err(err).Str("build", x.m.Build).Msg("re-hashing a build after the restart failed")
		}
		x.t.AllowDataUpload()
	}()
}

// Reverify re-hashes every piece of a build this host holds. Pieces that
// fail are marked missing, so the engine fetches them again from peers;
// it returns how many failed.
func (s *Swarm) Reverify(ctx context.Context, service, build string) (int, error) {
	x := s.Transfer(service, build)
	if x == nil {
		return 0, fmt.Errorf("swarm: reverify %s/%s: not shared by this host", service, build)
	}
	return x.reverify(ctx)
}

// Complete reports whether this host holds every piece of a build,
// verified: false while pieces found bad are fetched or repaired again.
func (s *Swarm) Complete(service, build string) bool {
	x := s.Transfer(service, build)
	return x != nil && x.t.Complete().Bool()
}

// reverify hashes every complete piece itself and hands only the ones
// that fail to the engine to re-check (which marks them missing). Counting
// incomplete pieces after the engine's own full re-hash missed them: on a
// fast link a bad piece was fetched again before it could be counted.
func (x *Transfer) reverify(ctx context.Context) (int, error) {
	bad := 0
	err := x.verify(func() error {
		buf := make([]byte, x.m.PieceLength)
		for i := 0; i < x.t.NumPieces(); i++ {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !x.t.PieceState(i).Complete {
				continue
			}
			good, err := x.pieceGood(ctx, i, buf)
			if !good {
				bad++
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return bad, fmt.Errorf("swarm: reverify %s/%s: %w", x.m.Service, x.m.Build, err)
	}
	if bad > 0 && x.pl.sealed.Load() {
		// The installed release is what this host seeds, and a release is
		// never written to: those pieces are no longer served, and that
		// is all (its seal check reports the damage where it matters).
		x.badOnDisk.Add(int64(bad))
		x.t.DisallowDataDownload()
		x.s.log.Error().Str("service", x.m.Service).Str("build", x.m.Build).Int("pieces", bad).Str("release", x.pl.tree).
			Msg("installed release changed on disk: those pieces no longer match the build and are not served; nothing is written into a release, so deploy another build or roll back to replace it")
		return bad, nil
	}
	if bad > 0 {
		x.badOnDisk.Add(int64(bad))
		x.resume()
		x.t.DownloadAll()
		x.s.log.Error().Str("service", x.m.Service).Str("build", x.m.Build).Int("pieces", bad).
			Msg("pieces on disk failed their hash; fetching them again")
		x.s.heal(x)
	}
	return bad, nil
}

// onWriteError stops downloading after a piece could not be written to
// disk. (Left to itself the engine also stops, but says nothing: the
// fetch sat in `fetching` forever.)
func (x *Transfer) onWriteError(err error) {
	x.writeErr.Store(&err)
	x.t.DisallowDataDownload()
	if errors.Is(err, ErrReadOnly) {
		x.s.log.Error().Err(err).Str("service", x.m.Service).Str("build", x.m.Build).
			Msg("installed release changed on disk: its damaged pieces are not fetched into it again (a release is never written to); deploy another build or roll back to replace it")
		return
	}
	x.s.log.Error().Err(err).Str("service", x.m.Service).Str("build", x.m.Build).Msg("cannot write a piece to disk; download stopped until the next attempt")
}

// WriteError is the error that stopped this transfer's download, or nil.
func (x *Transfer) WriteError() error {
	if p := x.writeErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Pause stops downloading (a newer release superseded this build); the
// transfer keeps what it has and resumes if the build is added again.
func (x *Transfer) Pause() {
	x.paused.Store(true)
	x.t.DisallowDataDownload()
}

// resume lets a transfer stopped by a write error or Pause download again.
func (x *Transfer) resume() {
	x.writeErr.Store(nil)
	x.paused.Store(false)
	x.t.AllowDataDownload()
}

// AddServed records n archive bytes of a build sent over HTTP.
func (s *Swarm) AddServed(service, build string, n int64) {
	if x := s.Transfer(service, build); x != nil {
		x.served.Add(n)
	}
}

// Transfer is this host's transfer of service/build, or nil.
func (s *Swarm) Transfer(service, build string) *Transfer {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, x := range s.transfers {
		if x.m.Service == service && x.m.Build == build {
			return x
		}
	}
	return nil
}

// uploaded counts archive bytes this host sent to others: torrent pieces
// and HTTP.
func (x *Transfer) uploaded() int64 {
	st := x.t.Stats()
	return st.BytesWrittenData.Int64() + x.served.Load()
}

// Add starts fetching the build described by m, or seeding it if this host
// already has every piece (as the origin does after publish, or any host
// after a restart). Pieces verified earlier are kept: an interrupted fetch
// resumes where it stopped. Adding a build twice returns the same Transfer.
func (s *Swarm) Add(ctx context.Context, m *core.Manifest) (*Transfer, error) {
	mi, err := metainfo.Load(bytes.NewReader(m.MetaInfo))
	if err != nil {
		return nil, fmt.Errorf("swarm: %s/%s: %w: %v", m.Service, m.Build, ErrBadMetaInfo, err)
	}
	if got := mi.HashInfoBytes().HexString(); got != m.InfoHash {
		return nil, fmt.Errorf("swarm: %s/%s: %w: info hash is %s, manifest says %s", m.Service, m.Build, ErrBadMetaInfo, got, m.InfoHash)
	}
	info, err := mi.UnmarshalInfo()
	if err != nil || info.Name != ArchiveName(m.Service, m.Build) || info.TotalLength() != m.Size {
		return nil, fmt.Errorf("swarm: %s/%s: %w: name or length differ from the manifest", m.Service, m.Build, ErrBadMetaInfo)
	}
	spec, err := torrent.TorrentSpecFromMetaInfoErr(mi)
	if err != nil {
		return nil, fmt.Errorf("swarm: %s/%s: %w: %v", m.Service, m.Build, ErrBadMetaInfo, err)
	}
	sums, err := pieceSumsOf(m.MetaInfo, &info)
	if err != nil {
		return nil, fmt.Errorf("swarm: %s/%s: %w", m.Service, m.Build, err)
	}
	spec.ChunkSize = pp.Integer(ChunkSize(info.PieceLength))
	pl := s.placementFor(m, &info, spec.InfoHash, sums)
	if pl.empty() {
		// Nothing of it here: no piece needs checking (pieceDB.Fresh).
		if err := s.pc.Fresh(spec.InfoHash, info.NumPieces()); err != nil {
			s.log.Warn().Err(err).Str("build", m.Build).Msg("piece database: cannot record a new build's pieces; the engine will check each")
		}
	}
	t, _, err := s.cl.AddTorrentSpec(spec)
	if err != nil {
		return nil, fmt.Errorf("swarm: add %s/%s: %w", m.Service, m.Build, err)
	}
	url := s.sliceURL(m) // outside s.mu: it asks the agent, which asks memberlist
	s.mu.Lock()
	if x, ok := s.transfers[t]; ok {
		s.mu.Unlock()
		x.resume() // a new attempt after a write error
		return x, nil
	}
	x := &Transfer{s: s, t: t, m: m, pl: pl, started: time.Now(), from: map[string]int64{}}
	x.avoidOrigin.Store(url != "") // before the engine can be offered the origin as a peer
	s.transfers[t] = x
	s.mu.Unlock()
	t.SetOnWriteChunkError(x.onWriteError)
	select {
	case <-t.GotInfo():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	x.initial = x.verified()
	t.DownloadAll()
	s.planSlice(x, url)
	s.refreshPeers()
	return x, nil
}

// Has reports whether this host keeps any of a build's bytes: its archive,
// or the framing file of a build fetched into a tree.
func (s *Swarm) Has(service, build string) bool {
	archive := s.ArchivePath(service, build)
	for _, p := range []string{archive, framingPath(archive)} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

// FramingPath is where a build fetched into a tree keeps its tar framing.
func (s *Swarm) FramingPath(service, build string) string {
	return framingPath(s.ArchivePath(service, build))
}

// IntoTree reports whether m would be (or is being) fetched into a tree
// on this host rather than into an archive.
func (s *Swarm) IntoTree(m *core.Manifest) bool {
	if x := s.Transfer(m.Service, m.Build); x != nil {
		return x.pl.tree != ""
	}
	mi, err := metainfo.Load(bytes.NewReader(m.MetaInfo))
	if err != nil {
		return false
	}
	info, err := mi.UnmarshalInfo()
	if err != nil {
		return false
	}
	dir, _ := s.treeFor(m, &info)
	return dir != ""
}

// placementFor decides, before the engine opens the storage, where m's
// bytes go on this host (treeFor) and how its pieces are checked (sums:
// SHA-256, see pieces.go), and registers it.
func (s *Swarm) placementFor(m *core.Manifest, info *metainfo.Info, ih metainfo.Hash, sums []byte) *placement {
	archive := s.ArchivePath(m.Service, m.Build)
	p := &placement{archive: archive}
	if sums != nil {
		p.check = newPieceCheck(sums, func(piece int, ips []netip.Addr) { s.ban(ih, piece, ips) })
		p.check.readBack = &s.count.readBack
	}
	if dir, installed := s.treeFor(m, info); dir != "" {
		p.archive, p.tree = framingPath(archive), dir
		p.sealed.Store(installed)
	}
	return s.ps.place(ih, p)
}

// treeFor is the tree m is fetched into on this host, and whether that is
// its installed release: TreeDir set, a layout metainfo, no archive of it
// here already, and TreeDir naming a dir; "" means the archive.
func (s *Swarm) treeFor(m *core.Manifest, info *metainfo.Info) (dir string, installed bool) {
	if s.cfg.TreeDir == nil || !IsLayout(info) {
		return "", false
	}
	if _, err := os.Stat(s.ArchivePath(m.Service, m.Build)); !errors.Is(err, os.ErrNotExist) {
		return "", false
	}
	return s.cfg.TreeDir(m.Service, m.Build)
}

// Drop stops sharing a build and deletes its archive (or, for a build
// fetched into a tree, its framing file: the tree is the release store's).
func (s *Swarm) Drop(m *core.Manifest) error {
	ih := metainfo.NewHashFromHex(m.InfoHash)
	if t, ok := s.cl.Torrent(ih); ok {
		s.mu.Lock()
		x := s.transfers[t]
		delete(s.transfers, t)
		s.mu.Unlock()
		if x != nil {
			x.life.Lock() // no verification in progress, none after
			x.dropped = true
			t.Drop()
			x.life.Unlock()
		} else {
			t.Drop()
		}
	}
	s.ps.forget(ih)
	archive := s.ArchivePath(m.Service, m.Build)
	for _, p := range []string{archive, framingPath(archive)} {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("swarm: drop %s/%s: %w", m.Service, m.Build, err)
		}
	}
	if err := s.pc.Forget(ih); err != nil {
		return fmt.Errorf("swarm: drop %s/%s: piece database: %w", m.Service, m.Build, err)
	}
	return nil
}

// verified counts the bytes of pieces that passed their hash check.
// (Torrent.BytesCompleted also counts chunks of unverified pieces.)
func (x *Transfer) verified() int64 {
	var n, idx int64
	pl := x.m.PieceLength
	for _, run := range x.t.PieceStateRuns() {
		if run.Complete {
			end := min((idx+int64(run.Length))*pl, x.m.Size)
			n += end - idx*pl
		}
		idx += int64(run.Length)
	}
	return n
}

// Tree is the release tree this build is fetched into, or "" when it is
// fetched as an archive (see Config.TreeDir).
func (x *Transfer) Tree() string { return x.pl.tree }

// Checked reports whether every piece of the build passed its SHA-256
// check against the list the signed metainfo carries since this host
// opened it, and none was written since: the bytes are the published
// archive, and the install need not hash it whole again (pieces.go).
func (x *Transfer) Checked() bool { return x.pl.check != nil && x.pl.check.all() }

// Archive reads the build's archive bytes wherever this host placed them
// (the archive, or the framing file and the tree's files).
func (x *Transfer) Archive() *io.SectionReader {
	return io.NewSectionReader(archiveReader{x.s.ps, x.t.InfoHash()}, 0, x.m.Size)
}

// Installed tells the swarm that the tree was installed as the release
// at dir (the storage, holding the tree open, follows the rename by
// itself): from now on it only reads it. A piece found bad later (someone wrote
// into the release) is not fetched again into it: the download stops
// with ErrReadOnly, and the release's own seal check reports the damage.
func (x *Transfer) Installed(dir string) {
	x.pl.moved.Store(&dir)
	x.pl.sealed.Store(true)
	x.s.trimSoon()
}

// Wait blocks until every piece is verified, or ctx is done.
func (x *Transfer) Wait(ctx context.Context) error {
	select {
	case <-x.t.Complete().On():
		return nil
	case <-x.t.Closed():
		return fmt.Errorf("swarm: %s/%s: %w", x.m.Service, x.m.Build, ErrClosed)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Progress is a snapshot of one transfer.
type Progress struct {
	// Have is the number of verified bytes; Total the archive size.
	Have  int64 `json:"have"`
	Total int64 `json:"total"`
	// Resumed is what was already verified on disk when the transfer began.
	Resumed int64 `json:"resumed"`
	// Received counts useful bytes received since the transfer began:
	// FromOrigin from the publishing host, FromPeers from everyone else.
	Received   int64 `json:"received"`
	FromOrigin int64 `json:"from_origin"`
	FromPeers  int64 `json:"from_peers"`
	// Uploaded counts archive bytes this host sent to others (pieces and HTTP).
	Uploaded int64      `json:"uploaded"`
	Complete bool       `json:"complete"`
	Peers    []PeerStat `json:"peers,omitempty"`
}

// PeerStat is one connected peer of a transfer.
type PeerStat struct {
	Node string `json:"node"`
	Addr string `json:"addr"`
	// Received is useful bytes this host got from the peer over the whole transfer.
	Received int64 `json:"received"`
	// Pieces is how many pieces the peer has.
	Pieces int `json:"pieces"`
	// DownloadRate is bytes/s from the peer, recently.
	DownloadRate float64 `json:"download_rate"`
}

// Progress reports the transfer's counters.
func (x *Transfer) Progress() Progress {
	p := Progress{Have: x.verified(), Total: x.m.Size, Resumed: x.initial,
		Uploaded: x.uploaded(), Complete: x.t.Complete().Bool()}
	x.s.mu.RLock()
	names := x.s.names
	x.s.mu.RUnlock()
	x.mu.Lock()
	from := make(map[string]int64, len(x.from))
	for k, v := range x.from {
		from[k] = v
	}
	x.mu.Unlock()
	for node, n := range from {
		p.Received += n
		if node == x.m.Origin {
			p.FromOrigin += n
		} else {
			p.FromPeers += n
		}
	}
	for _, pc := range x.t.PeerConns() {
		ps := pc.Stats()
		name, ok := names[pc.PeerID]
		if !ok {
			name = "?"
		}
		p.Peers = append(p.Peers, PeerStat{Node: name, Addr: pc.RemoteAddr.String(), Received: from[name],
			Pieces: ps.RemotePieceCount, DownloadRate: ps.DownloadRate})
	}
	sort.Slice(p.Peers, func(i, j int) bool { return p.Peers[i].Node < p.Peers[j].Node })
	return p
}

// Seed is one build this host holds or is fetching.
type Seed struct {
	Service  string `json:"service"`
	Build    string `json:"build"`
	Have     int64  `json:"have"`
	Total    int64  `json:"total"`
	Uploaded int64  `json:"uploaded"`
	Peers    int    `json:"peers"`
	// BadOnDisk counts pieces that were complete here and failed a later
	// re-hash; they were fetched again.
	BadOnDisk int64 `json:"bad_on_disk,omitempty"`
	// Checking: re-hashed after a restart, not served until done.
	Checking bool `json:"checking,omitempty"`
	// Path is where the build's bytes are: its archive, or the tree it
	// was fetched into (the cold directory, then its installed release);
	// InRelease says which.
	Path      string `json:"path"`
	InRelease bool   `json:"in_release,omitempty"`
}

// Seeds lists every build this host shares, sorted by service and build.
func (s *Swarm) Seeds() []Seed {
	s.mu.RLock()
	xs := make([]*Transfer, 0, len(s.transfers))
	for _, x := range s.transfers {
		xs = append(xs, x)
	}
	s.mu.RUnlock()
	out := make([]Seed, 0, len(xs))
	for _, x := range xs {
		out = append(out, Seed{Service: x.m.Service, Build: x.m.Build, Have: x.verified(), Total: x.m.Size,
			Uploaded: x.uploaded(), Peers: len(x.t.PeerConns()), BadOnDisk: x.badOnDisk.Load(), Checking: x.checking.Load(),
			Path: x.where(), InRelease: x.pl.tree != ""})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Build < out[j].Build
	})
	return out
}

// Stall causes, as Diagnose names them (status and metrics carry them).
const (
	StallNoPeers     = "no_peers"          // nobody connected
	StallUnavailable = "pieces_nobody_has" // missing pieces no connected peer holds
	StallOriginGone  = "origin_gone"       // ... and the origin, who had them, is not a member
	StallPeersSilent = "peers_silent"      // peers hold the pieces but send none
	StallWriteError  = "write_error"       // this host cannot write pieces (Service sets it)
)

// Diagnose says, from what this host can see, why the transfer is not
// progressing: which missing pieces no connected peer has, whether the
// origin is still a member, which peers sent bad pieces or are banned, or
// that nobody is connected at all. It returns a cause (one of the Stall
// constants) and a sentence; the service puts both in status when a
// fetch stalls.
func (x *Transfer) Diagnose() (cause, text string) {
	if x.t.Complete().Bool() {
		return "", "complete"
	}
	var missing []int
	for i := 0; i < x.t.NumPieces(); i++ {
		if !x.t.PieceState(i).Complete {
			missing = append(missing, i)
		}
	}
	conns := x.t.PeerConns()
	held := map[int]bool{}
	for _, pc := range conns {
		it := pc.PeerPieces().Iterator()
		for it.HasNext() {
			held[int(it.Next())] = true
		}
	}
	var nobody []int
	for _, i := range missing {
		if !held[i] {
			nobody = append(nobody, i)
		}
	}
	var parts []string
	origin, alive := x.s.Member(x.m.Origin)
	originUp := alive && (origin.State == "alive" || origin.State == "suspect")
	switch {
	case len(conns) == 0:
		cause = StallNoPeers
		parts = append(parts, fmt.Sprintf("no peer is connected (%d members seen): check that members reach each other's torrent port (%s here)",
			len(x.s.Members()), x.s.TorrentAddr()))
	case len(nobody) > 0:
		cause = StallUnavailable
		parts = append(parts, fmt.Sprintf("%d of the %d missing pieces are held by none of the %d connected peers (pieces %s)",
			len(nobody), len(missing), len(conns), pieceList(nobody)))
	default:
		cause = StallPeersSilent
		parts = append(parts, fmt.Sprintf("the %d connected peers hold the %d missing pieces but sent none: check the links and upload caps",
			len(conns), len(missing)))
	}
	switch {
	case x.m.Origin == x.s.cfg.Node:
	case !originUp:
		if cause != StallPeersSilent {
			cause = StallOriginGone
		}
		parts = append(parts, fmt.Sprintf("the origin %s is not a member any more; pieces only it had arrive once it is back (restart it, or publish the build again elsewhere)", x.m.Origin))
	case x.avoidOrigin.Load():
		parts = append(parts, fmt.Sprintf("the origin %s is up; this host turns to it as a torrent peer after the slice stall limit", x.m.Origin))
	}
	if bad := x.s.BadPieces(); len(bad) > 0 {
		var bs []string
		for _, b := range bad {
			bs = append(bs, fmt.Sprintf("%s %d", b.Peer, b.Count))
		}
		parts = append(parts, "pieces that failed their hash, by sender: "+strings.Join(bs, ", "))
	}
	if banned := x.s.BannedPeers(); len(banned) > 0 {
		parts = append(parts, "banned for sending corrupt pieces: "+strings.Join(banned, ", "))
	}
	return cause, strings.Join(parts, "; ")
}

// pieceList shows up to 8 piece indexes.
func pieceList(ps []int) string {
	var b strings.Builder
	for i, p := range ps {
		if i == 8 {
			fmt.Fprintf(&b, ", … (%d more)", len(ps)-8)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprint(&b, p)
	}
	return b.String()
}
