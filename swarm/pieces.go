package swarm

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"hash"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"
)

// Hashing each piece once.
//
// A BitTorrent v1 metainfo names each piece by its SHA-1, and SHA-1 alone
// is not enough for a build: a chosen-prefix collision lets whoever gets
// crafted bytes into a build make two pieces with one hash. So the install
// checked the whole archive again with SHA-256 against the signed
// manifest — a second hash pass over every byte on every host (SHA-1 2.2
// and SHA-256 1.9 of a 20-host deploy's 20 CPU-s, docs/BENCHMARKS.md).
//
// Describe also lists each piece's SHA-256 in the metainfo, under
// pieceSumsKey beside the info dict (so the info hash, and the torrent
// every v1 peer sees, are unchanged); the manifest's signature covers the
// metainfo bytes. A host whose metainfo has the list checks every piece
// with SHA-256 instead of SHA-1: the storage hashes the piece itself
// (checkedPiece.SelfHash) and answers the engine with the piece's SHA-1
// only when the SHA-256 matched. When every piece passed that check since
// the storage opened, and none was written since, the install skips its
// whole-archive pass (Transfer.Checked): the same bytes, checked once, by
// SHA-256, against the signed list. A metainfo without the list (an older
// publisher) is checked by SHA-1 and the whole-archive SHA-256, as before.
//
// The engine cannot smart-ban for a piece it did not hash (it compares each
// peer's blocks with the good copy as it reads it), so pieceCheck does:
// it keeps which member sent each chunk of a piece, and the bytes of a
// piece that failed; when a good copy of that piece arrives, the members
// whose chunks differ from it are banned (Swarm.ban). The engine still
// bans a peer that sent a whole failing piece by itself.

// pieceSumsKey is the metainfo key of the SHA-256 piece list: 32 bytes
// per piece, in order.
const pieceSumsKey = "shoal piece sha256"

// metaInfoFile is the metainfo Describe writes (bencode sorts the keys).
type metaInfoFile struct {
	CreatedBy    string        `bencode:"created by,omitempty"`
	CreationDate int64         `bencode:"creation date,omitempty"`
	Info         bencode.Bytes `bencode:"info"`
	PieceSHA256  string        `bencode:"shoal piece sha256,omitempty"`
}

// pieceSumsOf returns the SHA-256 piece list of a metainfo, nil when it
// has none, or an error when the list does not have one hash per piece.
func pieceSumsOf(mi []byte, info *metainfo.Info) ([]byte, error) {
	var f metaInfoFile
	if err := bencode.Unmarshal(mi, &f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadMetaInfo, err)
	}
	if f.PieceSHA256 == "" {
		return nil, nil
	}
	if want := info.NumPieces() * sha256.Size; len(f.PieceSHA256) != want {
		return nil, fmt.Errorf("%w: %q lists %d bytes of hashes, %d pieces need %d", ErrBadMetaInfo, pieceSumsKey, len(f.PieceSHA256), info.NumPieces(), want)
	}
	return []byte(f.PieceSHA256), nil
}

// sent is a chunk of a piece and the member that sent it.
type sent struct {
	off, n int64
	ip     netip.Addr
}

// failedPiece is a piece that failed its check, kept until a good copy
// shows whose chunks were wrong.
type failedPiece struct {
	data []byte
	from []sent
}

// maxFailedKept bounds the failed pieces kept per build for blame (their
// bytes are held in memory): a fleet with one bad member fails a few
// pieces before it is banned.
const maxFailedKept = 8

// pieceCheck is one open build's SHA-256 piece state.
type pieceCheck struct {
	sums []byte
	// ban bans the members whose chunks of piece differed from its good
	// copy; nil bans no one.
	ban func(piece int, ips []netip.Addr)

	mu      sync.Mutex
	ok      []bool // passed since the storage opened, not written since
	nOK     int
	senders map[int][]sent // chunks received for each piece not yet checked
	failed  map[int]*failedPiece
	running []*runningSum // each piece's sum as written, nil until written
	// readBack counts the bytes SelfHash read back from storage to hash
	// (the swarm's piece_bytes_read_back counter once a transfer opens).
	readBack *atomic.Int64
}

func newPieceCheck(sums []byte, ban func(piece int, ips []netip.Addr)) *pieceCheck {
	n := len(sums) / sha256.Size
	return &pieceCheck{sums: sums, ban: ban, ok: make([]bool, n), senders: map[int][]sent{}, failed: map[int]*failedPiece{}, running: make([]*runningSum, n), readBack: new(atomic.Int64)}
}

// Hashing a piece as it is written.
//
// SelfHash used to read every piece back from the page cache to hash it
// (0.29 CPU-s of pread in a 20-host deploy, beside 1.5 of SHA-256). Chunks
// mostly arrive in order, so the storage hashes each chunk as it writes it
// when it continues the piece's hashed prefix, and SelfHash reads back
// only what the prefix does not cover. Any write into the prefix (a chunk
// sent again, by this peer or another) spoils the running sum: it no
// longer says what the file holds, and SelfHash reads the whole piece. A
// write past the prefix (a chunk that came early) is simply read back.

// runningSum is the SHA-256 of the first n bytes written to a piece.
type runningSum struct {
	mu      sync.Mutex
	h       hash.Hash
	n       int64
	spoiled bool // a write overlapped the prefix, or failed
}

// wrote notes that b was written at off of piece i (err: how the write
// ended).
func (c *pieceCheck) wrote(i int, off int64, b []byte, err error) {
	if i < 0 || i >= len(c.running) {
		return
	}
	c.mu.Lock()
	r := c.running[i]
	if r == nil {
		r = &runningSum{h: sha256.New()}
		c.running[i] = r
	}
	c.mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.spoiled:
	case err != nil || off < r.n:
		r.spoiled = true
	case off == r.n:
		r.h.Write(b)
		r.n += int64(len(b))
	}
}

// takeSum hands over piece i's running sum, if any, and forgets it: the
// next write starts a new one.
func (c *pieceCheck) takeSum(i int) *runningSum {
	if i < 0 || i >= len(c.running) {
		return nil
	}
	c.mu.Lock()
	r := c.running[i]
	c.running[i] = nil
	c.mu.Unlock()
	return r
}

// checkSum records piece i as good when sum, its SHA-256 as written, is
// the listed one and no failed copy waits for blame. decided is false when
// the caller must check the bytes as stored instead (a failed copy is kept
// for blame, or the sum did not match, and blame keeps the failing bytes).
func (c *pieceCheck) checkSum(i int, sum []byte) (decided bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failed[i] != nil || !c.listed(i, sum) {
		return false
	}
	c.setLocked(i, true)
	delete(c.senders, i)
	return true
}

// matches reports whether data is piece i by its SHA-256.
func (c *pieceCheck) matches(i int, data []byte) bool {
	sum := sha256.Sum256(data)
	return c.listed(i, sum[:])
}

// listed reports whether sum is piece i's SHA-256 in the list.
func (c *pieceCheck) listed(i int, sum []byte) bool {
	return i >= 0 && i < len(c.ok) && bytes.Equal(sum, c.sums[i*sha256.Size:(i+1)*sha256.Size])
}

// noteSent records that ip sent n bytes at off of piece i (before they are
// written).
func (c *pieceCheck) noteSent(i int, off, n int64, ip netip.Addr) {
	c.mu.Lock()
	c.senders[i] = append(c.senders[i], sent{off: off, n: n, ip: ip})
	c.mu.Unlock()
}

// set records whether piece i as stored now passed its check.
func (c *pieceCheck) set(i int, good bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setLocked(i, good)
}

func (c *pieceCheck) setLocked(i int, good bool) {
	if i < 0 || i >= len(c.ok) || c.ok[i] == good {
		return
	}
	c.ok[i] = good
	if good {
		c.nOK++
	} else {
		c.nOK--
	}
}

// all reports whether every piece passed and none was written since.
func (c *pieceCheck) all() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nOK == len(c.ok)
}

// check hashes piece i as stored (data), records the result and returns
// it, with the members whose chunks of an earlier failed copy differ from
// data when data is good.
func (c *pieceCheck) check(i int, data []byte) (good bool, culprits []netip.Addr) {
	good = c.matches(i, data)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setLocked(i, good)
	from := c.senders[i]
	delete(c.senders, i)
	if !good {
		if len(from) > 0 && (c.failed[i] != nil || len(c.failed) < maxFailedKept) {
			c.failed[i] = &failedPiece{data: bytes.Clone(data), from: from}
		}
		return false, nil
	}
	bad := c.failed[i]
	delete(c.failed, i)
	if bad == nil {
		return true, nil
	}
	seen := map[netip.Addr]bool{}
	for _, s := range bad.from {
		end := s.off + s.n
		if s.off < 0 || end > int64(len(data)) || end > int64(len(bad.data)) || seen[s.ip] {
			continue
		}
		if !bytes.Equal(bad.data[s.off:end], data[s.off:end]) {
			seen[s.ip] = true
			culprits = append(culprits, s.ip)
		}
	}
	return true, culprits
}

// checkedPiece is a piece of a build whose metainfo lists SHA-256 piece
// hashes: it hashes itself.
type checkedPiece struct{ placedPiece }

func (cp *checkedPiece) WriteAt(b []byte, off int64) (int, error) {
	n, err := cp.placedPiece.WriteAt(b, off)
	cp.t.p.check.wrote(cp.p.Index(), off, b[:n], err)
	return n, err
}

// SelfHash checks the piece by SHA-256 and returns its SHA-1 from the
// metainfo when it matched, anything else when not (the engine compares
// the two). Members whose chunks made an earlier copy fail are banned.
func (cp *checkedPiece) SelfHash() (metainfo.Hash, error) {
	want := cp.p.V1Hash().Unwrap()
	c, i := cp.t.p.check, cp.p.Index()
	if sum, err := cp.sumAsWritten(c.takeSum(i)); err != nil {
		return metainfo.Hash{}, err
	} else if sum != nil && c.checkSum(i, sum) {
		return want, nil
	}
	buf, put := pieceBuf(cp.p.Length())
	defer put()
	if _, err := cp.ReadAt(buf, 0); err != nil {
		return metainfo.Hash{}, err
	}
	c.readBack.Add(int64(len(buf)))
	good, culprits := c.check(i, buf)
	if len(culprits) > 0 && c.ban != nil {
		c.ban(i, culprits)
	}
	if !good {
		want[0] ^= 0xff
	}
	return want, nil
}

// sumAsWritten completes r, the piece's running sum, by reading back what
// its prefix does not cover; nil when there is no usable running sum.
func (cp *checkedPiece) sumAsWritten(r *runningSum) ([]byte, error) {
	if r == nil {
		return nil, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.spoiled || r.n == 0 || r.n > cp.p.Length() {
		return nil, nil
	}
	if rest := cp.p.Length() - r.n; rest > 0 {
		buf, put := pieceBuf(rest)
		defer put()
		if _, err := cp.ReadAt(buf, r.n); err != nil {
			return nil, err
		}
		cp.t.p.check.readBack.Add(rest)
		r.h.Write(buf)
	}
	return r.h.Sum(nil), nil
}
