package swarm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/shoal-deploy/shoal/core"
)

// A build added and let go leaves nothing behind in the process. The
// engine names each torrent's logger after its info hash, and
// anacrolix/log kept every name it ever logged under in a process-wide
// tree (to report which rule matched each, once): 2.4-2.6 KB per deploy
// that no drop freed, found by e2e/TestSoakDeploys's live heap. Shoal
// carries a patched anacrolix/log (third_party/anacrolix-log) that keeps
// that tree only when the report is asked for.
func TestAddedAndDroppedBuildsLeaveNoHeap(t *testing.T) {
	ctx := context.Background()
	s := startSwarms(t, 1, 48, zerolog.Nop(), nil)[0]
	cycle := func(i int) {
		m, _ := publishBuild(t, s, fmt.Sprintf("b%d", i), 64<<10)
		if _, err := s.Add(ctx, m); err != nil {
			t.Fatal(err)
		}
		if err := s.Drop(m); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 { // warm up: pools, maps and the engine reach their working size
		cycle(i)
	}
	before := liveHeap()
	const n = 300
	for i := range n {
		cycle(1000 + i)
	}
	after := liveHeap()
	per := (float64(after) - float64(before)) / n
	t.Logf("live heap %d -> %d bytes over %d builds added and dropped: %.0f bytes each", before, after, n, per)
	if per > 450 {
		t.Errorf("each build added and dropped leaves %.0f bytes on the heap; want none (at most 450: the rest of the engine's bookkeeping and noise measure 140-200)", per)
	}
}

// Serving a build allocates little per byte sent. The engine made a fresh
// buffer for every chunk it read for a peer (256 KiB, zeroed, garbage as
// soon as it was copied into the write buffer), and each connection's
// write buffers grew from empty; with the patched engine
// (third_party/anacrolix-torrent) both are reused. Measured on a host
// that gets every byte of a 32 MiB build from a non-origin peer over the
// torrent protocol (both ends in this process).
func TestServingAllocatesLittlePerByte(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts under -race are the detector's; `make unit` runs it again without")
	}
	const size = 32 << 20
	nodes, m, data := onePeerHasIt(t, size)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	x := addAndWait(t, nodes[2], m) // every byte from nodes[1]
	runtime.ReadMemStats(&after)    // before reading the archive back: that allocates its size
	if got, _ := io.ReadAll(x.Archive()); !bytes.Equal(got, data) {
		t.Fatal("the archive differs")
	}
	if p := x.Progress(); p.FromOrigin != 0 {
		t.Fatalf("%d bytes came from the origin", p.FromOrigin)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("moving %d bytes peer to peer allocated %d bytes (%.2f per byte)", size, alloc, float64(alloc)/size)
	if alloc > size/2 {
		t.Errorf("moving %d bytes allocated %d bytes; want under half a byte per byte (the engine allocated a buffer per chunk served)", size, alloc)
	}
}

// A host serves its peers' requests from its files with sendfile: the
// patched engine hands each chunk's range to the storage (SendTo) instead
// of reading it into memory and copying it into the connection's write
// buffer. Without the patch the engine never calls SendTo and the counter
// stays at 0.
func TestServingSendsFromFiles(t *testing.T) {
	const size = 8 << 20
	nodes, m, data := onePeerHasIt(t, size)
	was := nodes[1].Counters()["sendfile_bytes"]
	x := addAndWait(t, nodes[2], m) // every byte from nodes[1]
	if got, _ := io.ReadAll(x.Archive()); !bytes.Equal(got, data) {
		t.Fatal("the archive differs")
	}
	if sent := nodes[1].Counters()["sendfile_bytes"] - was; sent < size {
		t.Errorf("the serving host sent %d bytes by sendfile; want all %d it served", sent, size)
	}
}

// A connection that has sent what it had holds no write buffer. Each
// connection's message writer kept its two buffers, grown to hold a piece
// message or two (256 KiB pieces each), for as long as the connection
// lived, busy or idle. With the patched engine a writer takes a buffer
// from a shared pool when it has something to send and gives it back once
// sent. Here a host takes part of a build from a peer and stops (Pause,
// as when a newer release supersedes it): the connection stays open, idle.
func TestIdleConnectionsHoldNoWriteBuffers(t *testing.T) {
	if raceEnabled {
		t.Skip("heap sizes under -race are the detector's; `make unit` runs it again without")
	}
	nodes, m, _ := onePeerHasIt(t, 64<<20)
	before := liveHeap()
	x, err := nodes[2].Add(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); x.Progress().Have == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no piece arrived in 30 s")
		}
	}
	x.Pause()
	time.Sleep(500 * time.Millisecond) // the writers send what they had queued
	p := x.Progress()
	if p.Have == p.Total || len(p.Peers) == 0 {
		t.Fatalf("want a partial build with its connection open: %d of %d bytes, %d peers", p.Have, p.Total, len(p.Peers))
	}
	after := liveHeap()
	grew := int64(after) - int64(before)
	t.Logf("live heap %d -> %d bytes with %d of %d bytes moved and the connection idle (%+d)", before, after, p.Have, p.Total, grew)
	// The new torrent and both ends' 128 KiB read buffers measure about
	// 400 KB; the sender's two write buffers, kept, added 540 KB more.
	if grew > 640<<10 {
		t.Errorf("hosts keep %d more bytes live with an idle connection; want under 640 KiB (400 KB is the torrent and the read buffers; a connection that keeps its write buffers adds 540 KB)", grew)
	}
}

// onePeerHasIt starts three hosts and a size-byte build that only
// nodes[1], not the origin nodes[0], has: what nodes[2] fetches comes
// from a peer over the torrent protocol.
func onePeerHasIt(t *testing.T, size int) ([]*Swarm, *core.Manifest, []byte) {
	t.Helper()
	nodes := startSwarms(t, 3, 48, zerolog.Nop(), nil)
	m, data := publishBuild(t, nodes[0], "v1", size)
	if _, err := nodes[0].Add(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	fetchAll(t, nodes[1:2], m, data)
	if err := nodes[0].Drop(m); err != nil {
		t.Fatal(err)
	}
	return nodes, m, data
}

// addAndWait adds m on node and waits (a minute at most) for all of it.
func addAndWait(t *testing.T, node *Swarm, m *core.Manifest) *Transfer {
	t.Helper()
	x, err := node.Add(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := x.Wait(wctx); err != nil {
		t.Fatal(err)
	}
	return x
}

// liveHeap is the heap in use once garbage is collected.
func liveHeap() uint64 {
	var ms runtime.MemStats
	for range 3 { // sync.Pool keeps what it held through one collection
		runtime.GC()
	}
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
