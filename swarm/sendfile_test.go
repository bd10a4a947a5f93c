package swarm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/anacrolix/torrent/metainfo"
)

// sendTo hands a range of the torrent to a socket with sendfile — across
// pieces, and up to the torrent's end — and to any other connection through
// a buffer; the bytes that arrive are the torrent's.
func TestSendToSendsTheTorrentsBytes(t *testing.T) {
	data := make([]byte, 5*64<<10+123)
	_, _ = rand.Read(data)
	pieces, _ := openChecked(t, data, 64<<10, sha256s(data, 64<<10))
	for i, p := range pieces {
		if _, err := p.WriteAt(data[i*64<<10:min((i+1)*64<<10, len(data))], 0); err != nil {
			t.Fatal(err)
		}
	}
	pl := pieces[0].(*checkedPiece).t
	a, b := markedPair(t)
	for _, r := range [][2]int64{{0, 16 << 10}, {60 << 10, 200 << 10}, {int64(len(data)) - 1000, 1000}} {
		sendAndCompare(t, pl, a, b, data, r[0], r[1])
	}
	// Past the end: what there is, then io.EOF.
	if n, err := pl.sendTo(a, int64(len(data))-10, 20); n != 10 || err != io.EOF {
		t.Errorf("sendTo past the end: %d, %v; want 10, io.EOF", n, err)
	}
	io.ReadFull(b, make([]byte, 10))

	// A connection that is not a socket: through a buffer.
	c1, c2 := net.Pipe()
	defer c1.Close()
	go func() { pl.sendTo(c1, 0, int64(len(data))) }()
	got := make([]byte, len(data))
	if _, err := io.ReadFull(c2, got); err != nil || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("through a pipe: %v, bytes equal %v", err, bytes.Equal(got, data))
	}
}

// In a tree placement a range spans the framing file and the release's
// files: sendTo sends each span from its own file, in order.
func TestSendToAcrossTreeFiles(t *testing.T) {
	info := metainfo.Info{Name: "web@v1.tar", PieceLength: 16 << 10, Files: []metainfo.FileInfo{
		{Length: 512, Path: []string{framingDir, "0"}}, {Length: 10, Path: []string{"a"}},
		{Length: 512, Path: []string{framingDir, "2"}}, {Length: 3000, Path: []string{"b", "c"}},
		{Length: 1024, Path: []string{framingDir, "4"}},
	}}
	info.Pieces = make([]byte, 20)
	ps := &placeStorage{dir: t.TempDir(), at: map[metainfo.Hash]*placement{}}
	ih := metainfo.HashBytes([]byte("tree"))
	ps.place(ih, &placement{archive: filepath.Join(ps.dir, "web@v1.tar.framing"), tree: t.TempDir()})
	ti, err := ps.OpenTorrent(context.Background(), &info, ih)
	if err != nil {
		t.Fatal(err)
	}
	defer ti.Close()
	pl := ps.placementOf(ih).open.Load()
	data := make([]byte, info.TotalLength())
	_, _ = rand.Read(data)
	if _, err := pl.rw(data, 0, true); err != nil {
		t.Fatal(err)
	}
	a, b := markedPair(t)
	for _, r := range [][2]int64{{0, int64(len(data))}, {500, 30}, {1000, 3000}} {
		sendAndCompare(t, pl, a, b, data, r[0], r[1])
	}
}

// sendAndCompare sends n bytes at off of pl over a and checks that b
// receives data[off:off+n].
func sendAndCompare(t *testing.T, pl *placed, a, b net.Conn, data []byte, off, n int64) {
	t.Helper()
	got := make([]byte, n)
	done := make(chan error, 1)
	go func() { _, err := io.ReadFull(b, got); done <- err }()
	if m, err := pl.sendTo(a, off, n); err != nil || m != n {
		t.Fatalf("sendTo(%d, %d): %d, %v", off, n, m, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data[off:off+n]) {
		t.Fatalf("sendTo(%d, %d): the bytes differ", off, n)
	}
}

// A file cut short on disk (a crash, a full disk, a hand edit) ends a send
// with an error: no hang, no bytes that are not the file's.
func TestSendToFileCutShort(t *testing.T) {
	data := make([]byte, 4*64<<10)
	_, _ = rand.Read(data)
	pieces, _ := openChecked(t, data, 64<<10, sha256s(data, 64<<10))
	for i, p := range pieces {
		if _, err := p.WriteAt(data[i*64<<10:(i+1)*64<<10], 0); err != nil {
			t.Fatal(err)
		}
	}
	pl := pieces[0].(*checkedPiece).t
	if err := os.Truncate(pl.p.archive, 100<<10); err != nil {
		t.Fatal(err)
	}
	a, b := markedPair(t)
	got := make(chan []byte, 1)
	go func() { bs, _ := io.ReadAll(b); got <- bs }()
	n, err := pl.sendTo(a, 0, int64(len(data)))
	a.CloseWrite()
	if !errors.Is(err, errShortFile) || n != 100<<10 {
		t.Fatalf("sendTo over a file cut to 100 KiB: %d, %v; want 102400, errShortFile", n, err)
	}
	if bs := <-got; !bytes.Equal(bs, data[:100<<10]) {
		t.Fatalf("the peer got %d bytes, not the file's first 100 KiB", len(bs))
	}
}
