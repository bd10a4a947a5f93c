package swarm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

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
	for _, r := range []struct{ off, n int64 }{{0, 16 << 10}, {60 << 10, 200 << 10}, {int64(len(data)) - 1000, 1000}} {
		start := time.Now()
		got := make([]byte, r.n)
		done := make(chan error, 1)
		go func() { _, err := io.ReadFull(b, got); done <- err }()
		n, err := pl.sendTo(a, r.off, r.n)
		if err != nil || n != r.n {
			t.Fatalf("sendTo(%d, %d): %d, %v", r.off, r.n, n, err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data[r.off:r.off+r.n]) {
			t.Fatalf("sendTo(%d, %d): the bytes differ", r.off, r.n)
		}
		t.Logf("sendTo(%d, %d) %v", r.off, r.n, time.Since(start))
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
	for _, r := range []struct{ off, n int64 }{{0, int64(len(data))}, {500, 30}, {1000, 3000}} {
		got := make([]byte, r.n)
		done := make(chan error, 1)
		go func() { _, err := io.ReadFull(b, got); done <- err }()
		if n, err := pl.sendTo(a, r.off, r.n); err != nil || n != r.n {
			t.Fatalf("sendTo(%d, %d): %d, %v", r.off, r.n, n, err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data[r.off:r.off+r.n]) {
			t.Fatalf("sendTo(%d, %d): the bytes differ", r.off, r.n)
		}
	}
}
