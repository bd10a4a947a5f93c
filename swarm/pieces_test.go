package swarm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/core"
)

// openChecked opens storage for a build of data in pieces of pieceLen,
// checked against sums, and returns its pieces and the bans it asks for.
func openChecked(t *testing.T, data []byte, pieceLen int64, sums []byte) ([]storage.PieceImpl, *[][]netip.Addr) {
	t.Helper()
	info := metainfo.Info{Name: "web@v1.tar", PieceLength: pieceLen, Length: int64(len(data))}
	for off := int64(0); off < int64(len(data)); off += pieceLen {
		s := sha1.Sum(data[off:min(off+pieceLen, int64(len(data)))])
		info.Pieces = append(info.Pieces, s[:]...)
	}
	var mu sync.Mutex
	var bans [][]netip.Addr
	ban := func(_ int, ips []netip.Addr) {
		mu.Lock()
		bans = append(bans, ips)
		mu.Unlock()
	}
	ps := &placeStorage{dir: t.TempDir(), at: map[metainfo.Hash]*placement{}}
	ih := metainfo.HashBytes(data)
	p := ps.place(ih, &placement{archive: filepath.Join(ps.dir, info.Name), check: newPieceCheck(sums, ban)})
	ti, err := ps.OpenTorrent(context.Background(), &info, ih)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ti.Close() })
	var pieces []storage.PieceImpl
	for i := range info.NumPieces() {
		pieces = append(pieces, ti.Piece(info.Piece(i)))
	}
	if p.check == nil {
		t.Fatal("no check")
	}
	return pieces, &bans
}

func sha256s(data []byte, pieceLen int) []byte {
	var out []byte
	for off := 0; off < len(data); off += pieceLen {
		s := sha256.Sum256(data[off:min(off+pieceLen, len(data))])
		out = append(out, s[:]...)
	}
	return out
}

// selfHash runs the engine's check of piece p: whether it passes.
func selfHash(t *testing.T, p storage.PieceImpl, want []byte) bool {
	t.Helper()
	sh, ok := p.(storage.SelfHashing)
	if !ok {
		t.Fatal("a piece of a build with a SHA-256 list does not hash itself")
	}
	got, err := sh.SelfHash()
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(got[:], want)
}

// With a SHA-256 list in the metainfo, SHA-256 decides whether a piece is
// good, not SHA-1: a piece whose SHA-1 matches but whose SHA-256 does not
// (what a SHA-1 collision would look like) fails.
func TestPieceListDecides(t *testing.T) {
	data := make([]byte, 3*32<<10)
	_, _ = rand.Read(data)
	sums := sha256s(data, 32<<10)
	sums[sha256.Size] ^= 1 // piece 1: SHA-1 right, SHA-256 not
	pieces, _ := openChecked(t, data, 32<<10, sums)
	for i, p := range pieces {
		if _, err := p.WriteAt(data[i*32<<10:(i+1)*32<<10], 0); err != nil {
			t.Fatal(err)
		}
	}
	sha1Of := func(i int) []byte { s := sha1.Sum(data[i*32<<10 : (i+1)*32<<10]); return s[:] }
	for i, want := range []bool{true, false, true} {
		if got := selfHash(t, pieces[i], sha1Of(i)); got != want {
			t.Errorf("piece %d passed = %v, want %v", i, got, want)
		}
	}
}

// Every piece passed by SHA-256 and none written since: the transfer is
// checked (the install skips its whole-archive hash). A write, or the
// engine finding a piece bad, takes that back.
func TestCheckedUntilWritten(t *testing.T) {
	data := make([]byte, 2*32<<10+100)
	_, _ = rand.Read(data)
	pieces, _ := openChecked(t, data, 32<<10, sha256s(data, 32<<10))
	x := &Transfer{pl: pieces[0].(*checkedPiece).t.p}
	for i, p := range pieces {
		end := min((i+1)*32<<10, len(data))
		if _, err := p.WriteAt(data[i*32<<10:end], 0); err != nil {
			t.Fatal(err)
		}
		if x.Checked() {
			t.Fatalf("checked before piece %d was", i)
		}
		s := sha1.Sum(data[i*32<<10 : end])
		if !selfHash(t, p, s[:]) {
			t.Fatalf("piece %d failed", i)
		}
	}
	if !x.Checked() {
		t.Fatal("every piece passed, but the build is not checked")
	}
	if _, err := pieces[1].WriteAt([]byte{1}, 5); err != nil {
		t.Fatal(err)
	}
	if x.Checked() {
		t.Error("still checked after a write")
	}
	s := sha1.Sum(data[32<<10 : 2*32<<10])
	selfHash(t, pieces[1], s[:]) // fails: byte 5 changed
	if x.Checked() {
		t.Error("checked with a piece that failed")
	}
}

// A piece is hashed as its chunks are written: in order, nothing is read
// back; a chunk that came early leaves the rest of the piece to be read
// back; and a chunk written again over the hashed prefix means the sum no
// longer says what the file holds, so the whole piece is read back — a
// good copy hashed first must not vouch for bad bytes written over it.
func TestPieceHashedAsWritten(t *testing.T) {
	const chunk, pieceLen = 16 << 10, 64 << 10
	data := make([]byte, 3*pieceLen)
	_, _ = rand.Read(data)
	pieces, _ := openChecked(t, data, pieceLen, sha256s(data, pieceLen))
	readBack := pieces[0].(*checkedPiece).t.p.check.readBack
	write := func(i, c int, b []byte) {
		t.Helper()
		if _, err := pieces[i].WriteAt(b, int64(c*chunk)); err != nil {
			t.Fatal(err)
		}
	}
	good := func(i, c int) []byte { return data[i*pieceLen+c*chunk : i*pieceLen+(c+1)*chunk] }
	sha1Of := func(i int) []byte { s := sha1.Sum(data[i*pieceLen : (i+1)*pieceLen]); return s[:] }

	for c := range 4 {
		write(0, c, good(0, c))
	}
	if !selfHash(t, pieces[0], sha1Of(0)) {
		t.Fatal("piece 0, written in order, failed")
	}
	if n := readBack.Load(); n != 0 {
		t.Errorf("piece 0, written in order: %d bytes read back, want 0", n)
	}

	for _, c := range []int{1, 0, 2, 3} {
		write(1, c, good(1, c))
	}
	if !selfHash(t, pieces[1], sha1Of(1)) {
		t.Fatal("piece 1, chunk 1 first, failed")
	}
	if n := readBack.Load(); n != 3*chunk {
		t.Errorf("piece 1, chunk 1 first: %d bytes read back, want %d (all after chunk 0)", n, 3*chunk)
	}

	for c := range 4 {
		write(2, c, good(2, c))
	}
	bad := bytes.Clone(good(2, 0))
	bad[7] ^= 1
	write(2, 0, bad)
	if selfHash(t, pieces[2], sha1Of(2)) {
		t.Fatal("piece 2 passed with bad bytes written over its good first chunk")
	}
	if n := readBack.Load(); n != 3*chunk+pieceLen {
		t.Errorf("piece 2, rewritten: %d bytes read back in all, want %d (the whole piece)", n, 3*chunk+pieceLen)
	}
	for c := range 4 { // the engine fetches it again
		write(2, c, good(2, c))
	}
	if !selfHash(t, pieces[2], sha1Of(2)) {
		t.Fatal("piece 2, fetched again, failed")
	}
	if n := readBack.Load(); n != 3*chunk+pieceLen {
		t.Errorf("piece 2, fetched again in order: %d bytes read back in all, want %d", n, 3*chunk+pieceLen)
	}
}

// The engine cannot smart-ban for pieces it does not hash: when a piece
// made of two members' chunks fails, and a good copy arrives later, the
// member whose chunk differs is banned, and only it.
func TestBlameBansTheSenderOfABadChunk(t *testing.T) {
	const chunk = 16 << 10
	data := make([]byte, 4*chunk)
	_, _ = rand.Read(data)
	pieces, bans := openChecked(t, data, int64(len(data)), sha256s(data, len(data)))
	p := pieces[0].(*checkedPiece)
	c := p.t.p.check
	good, bad := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3")
	wrong := bytes.Clone(data)
	wrong[3*chunk+7] ^= 0xff
	for k, from := range []netip.Addr{good, good, bad, bad} {
		c.noteSent(0, int64(k*chunk), chunk, from)
	}
	if _, err := p.WriteAt(wrong, 0); err != nil {
		t.Fatal(err)
	}
	want := sha1.Sum(data)
	if selfHash(t, p, want[:]) {
		t.Fatal("a piece with a wrong byte passed")
	}
	if len(*bans) != 0 {
		t.Fatalf("banned %v before a good copy showed who was wrong", *bans)
	}
	c.noteSent(0, 3*chunk, chunk, good) // the engine asks again; another member sends it
	if _, err := p.WriteAt(data[3*chunk:], 3*chunk); err != nil {
		t.Fatal(err)
	}
	if !selfHash(t, p, want[:]) {
		t.Fatal("the good copy failed")
	}
	if len(*bans) != 1 || !slices.Equal((*bans)[0], []netip.Addr{bad}) {
		t.Errorf("bans %v, want [[%v]]", *bans, bad)
	}
}

// A ban blocks the member in the engine's IP guard and shows in status.
func TestBanBlocksAndReports(t *testing.T) {
	nodes := startSwarms(t, 1, 45, zerolog.Nop(), nil)
	s := nodes[0]
	// The refresh loop sets the guard to the membership: let its first
	// refresh pass, so it does not drop the member added here (it did,
	// once, under -race).
	for deadline := time.Now().Add(10 * time.Second); s.count.refreshes.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no peer refresh in 10 s")
		}
	}
	ip := netip.MustParseAddr("127.0.45.9")
	s.guard.add(ip)
	if _, blocked := s.guard.Lookup(net.IP(ip.AsSlice())); blocked {
		t.Fatal("a member is blocked before any ban")
	}
	s.ban(metainfo.Hash{}, 3, []netip.Addr{ip})
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(s.BannedPeers(), ip.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("banned peers %v, want %v", s.BannedPeers(), ip)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, blocked := s.guard.Lookup(net.IP(ip.AsSlice())); !blocked {
		t.Error("a banned member is not blocked")
	}
	s.guard.set([]netip.Addr{ip}) // a membership refresh does not lift it
	if _, blocked := s.guard.Lookup(net.IP(ip.AsSlice())); !blocked {
		t.Error("a membership refresh lifted the ban")
	}
}

// Describe puts a SHA-256 per piece beside the info dict (the info hash
// is the same as without it); Add refuses a list of the wrong length.
func TestDescribeListsPieceSHA256(t *testing.T) {
	nodes := startSwarms(t, 1, 45, zerolog.Nop(), nil)
	s := nodes[0]
	data := make([]byte, 300<<10)
	_, _ = rand.Read(data)
	m := &core.Manifest{Service: "web", Build: "v1", Origin: s.cfg.Node}
	if err := os.WriteFile(s.ArchivePath("web", "v1"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Describe(m); err != nil {
		t.Fatal(err)
	}
	mi, err := metainfo.Load(bytes.NewReader(m.MetaInfo))
	if err != nil {
		t.Fatal(err)
	}
	info, _ := mi.UnmarshalInfo()
	sums, err := pieceSumsOf(m.MetaInfo, &info)
	if err != nil || !bytes.Equal(sums, sha256s(data, int(info.PieceLength))) {
		t.Fatalf("piece SHA-256 list %x (%v), want the pieces' hashes", sums, err)
	}
	if mi.HashInfoBytes().HexString() != m.InfoHash {
		t.Fatal("info hash differs")
	}
	var f metaInfoFile
	if err := bencode.Unmarshal(m.MetaInfo, &f); err != nil {
		t.Fatal(err)
	}
	f.PieceSHA256 = f.PieceSHA256[1:]
	bad := *m
	if bad.MetaInfo, err = bencode.Marshal(f); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Add(context.Background(), &bad); !errors.Is(err, ErrBadMetaInfo) {
		t.Errorf("a short SHA-256 list: %v, want ErrBadMetaInfo", err)
	}
}

// A build whose metainfo has no room for the SHA-256 list (or that an
// older Shoal published) is checked the old way: SHA-1 per piece by the
// engine, and the install hashes the archive whole (Checked is false).
func TestWithoutPieceListPiecesAreCheckedBySHA1(t *testing.T) {
	defer func(old int) { maxMetaInfo = old }(maxMetaInfo)
	maxMetaInfo = 100
	nodes := startSwarms(t, 2, 45, zerolog.Nop(), nil)
	m, data := publishBuild(t, nodes[0], "v1", 700<<10)
	mi, _ := metainfo.Load(bytes.NewReader(m.MetaInfo))
	info, _ := mi.UnmarshalInfo()
	if sums, err := pieceSumsOf(m.MetaInfo, &info); sums != nil || err != nil {
		t.Fatalf("a metainfo over the limit kept its SHA-256 list (%v)", err)
	}
	if _, err := nodes[0].Add(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	x := fetchAll(t, nodes[1:], m, data)[0]
	if x.pl.check != nil || x.Checked() {
		t.Error("a build without a SHA-256 list counts as checked by it")
	}
	if _, ok := x.t.Piece(0).Storage().PieceImpl.(storage.SelfHashing); ok {
		t.Error("a build without a SHA-256 list hashes its pieces itself")
	}
}
