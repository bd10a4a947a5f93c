package swarm

import (
	"runtime"
	"runtime/debug"
)

// idleTrim gives memory back to the operating system once a host stops
// moving bytes. A transfer's buffers (chunks read for peers, write buffers,
// received pieces) live in pools and free heap that Go keeps resident after
// the work is done: an idle agent stayed at the peak of the last build it
// moved (53 MiB against 30 at start, N = 20 in the bench) and the next
// build's peak started from there, so each build's peak stood on the one
// before it. The swarm collects twice (a sync.Pool keeps what it held
// through one collection) and returns the free pages at two moments: when
// a build has been installed here (fetching, checking and unpacking are
// over; the host goes on serving with much less), and once the engine has
// moved nothing for a whole peer-refresh tick after moving something.
// About 10 ms of CPU each. Another build may still be fetching when one is
// installed, and a fetch that stalls for a tick counts as quiet: both only
// cost that collection, and the heap grows back as the work needs it.
type idleTrim struct {
	moved  int64 // bytes read and written by the engine at the last tick
	active bool  // something moved since the last trim
}

// tick reports whether the host just went quiet: called each peer-refresh
// tick with the engine's bytes moved so far.
func (t *idleTrim) tick(moved int64) bool {
	quiet := moved == t.moved
	t.moved = moved
	switch {
	case !quiet:
		t.active = true
		return false
	case t.active:
		t.active = false
		return true
	}
	return false
}

// trimWhenIdle trims when the host has just gone quiet.
func (s *Swarm) trimWhenIdle() {
	st := s.cl.ConnStats()
	if s.trim.tick(st.BytesRead.Int64() + st.BytesWritten.Int64()) {
		s.trimMemory("no bytes moved for a peer-refresh tick")
	}
}

// trimSoon asks Run's loop to trim (a build was installed).
func (s *Swarm) trimSoon() {
	select {
	case s.trimNow <- struct{}{}:
	default:
	}
}

// trimMemory returns the heap's free pages to the OS and counts it
// (memory_trims). What moved before it is given back: the next quiet tick
// trims again only if bytes moved since.
func (s *Swarm) trimMemory(why string) {
	s.trim.active = false
	runtime.GC()
	debug.FreeOSMemory()
	s.count.trims.Add(1)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.log.Debug().Uint64("heap_bytes", ms.HeapAlloc).Uint64("resident_heap_bytes", ms.HeapSys-ms.HeapReleased).
		Str("why", why).Msg("memory returned to the OS")
}
