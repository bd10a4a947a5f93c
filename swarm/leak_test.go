package swarm

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/rs/zerolog"
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
	live := func() uint64 {
		var ms runtime.MemStats
		for range 3 { // sync.Pool keeps what it held through one collection
			runtime.GC()
		}
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	for i := range 20 { // warm up: pools, maps and the engine reach their working size
		cycle(i)
	}
	before := live()
	const n = 300
	for i := range n {
		cycle(1000 + i)
	}
	after := live()
	per := (float64(after) - float64(before)) / n
	t.Logf("live heap %d -> %d bytes over %d builds added and dropped: %.0f bytes each", before, after, n, per)
	if per > 450 {
		t.Errorf("each build added and dropped leaves %.0f bytes on the heap; want none (at most 450: the rest of the engine's bookkeeping and noise measure 140-200)", per)
	}
}
