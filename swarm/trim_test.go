package swarm

import (
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// A host trims once per quiet spell that follows work: not while bytes
// move, not again while it stays quiet, not before it ever moved any.
func TestIdleTrimOncePerQuietSpell(t *testing.T) {
	var tr idleTrim
	steps := []struct {
		moved int64
		trim  bool
	}{
		{0, false},   // started quiet: nothing to give back
		{0, false},   //
		{100, false}, // moving
		{900, false}, // moving
		{900, true},  // went quiet
		{900, false}, // still quiet: done already
		{950, false}, // moving again
		{950, true},  // quiet again
	}
	for i, st := range steps {
		if got := tr.tick(st.moved); got != st.trim {
			t.Errorf("tick %d (moved %d): trim %v, want %v", i, st.moved, got, st.trim)
		}
	}
}

// Hosts that moved a build return memory to the OS once the swarm goes
// quiet (the memory_trims counter), and a host that never moved a byte
// does not; a host that installs a build does at once.
func TestHostsTrimAfterATransfer(t *testing.T) {
	nodes := startSwarms(t, 3, 48, zerolog.Nop(), nil)
	idle := nodes[2]
	m, data := publish(t, nodes[0], 1<<20+77)
	fetchAll(t, nodes[:2], m, data)
	deadline := time.Now().Add(20 * time.Second)
	for nodes[0].Counters()["memory_trims"] == 0 || nodes[1].Counters()["memory_trims"] == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no trim 20 s after the transfer: origin %d, fetcher %d",
				nodes[0].Counters()["memory_trims"], nodes[1].Counters()["memory_trims"])
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := idle.Counters()["memory_trims"]; n != 0 {
		t.Errorf("a host that moved nothing trimmed %d times", n)
	}
	// Installing a build trims too, without waiting for the swarm to go quiet.
	x := nodes[1].Transfer(m.Service, m.Build)
	was := nodes[1].Counters()["memory_trims"]
	x.Installed(t.TempDir())
	for deadline := time.Now().Add(10 * time.Second); nodes[1].Counters()["memory_trims"] == was; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no trim 10 s after a build was installed")
		}
	}
}
