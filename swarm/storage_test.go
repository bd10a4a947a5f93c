package swarm

import (
	"testing"

	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
)

// The file storage must not see the piece database as persistent (with
// classic file I/O it then fsyncs the whole archive at every completed
// piece), while the database still remembers completed pieces across a
// restart: what a crash dropped is found by re-hashing before serving
// (e2e/TestRestartedSeedChecksBeforeServing), not by a per-piece fsync.
func TestPieceDatabaseRemembersWithoutPerPieceFsync(t *testing.T) {
	dir := t.TempDir()
	bolt, err := storage.NewBoltPieceCompletion(dir)
	if err != nil {
		t.Fatal(err)
	}
	var pc storage.PieceCompletion = unflushedCompletion{bolt}
	if p, ok := pc.(storage.PieceCompletionPersistenter); !ok || p.Persistent() {
		t.Fatalf("the storage sees a persistent piece database (%T): it fsyncs the archive at every piece", pc)
	}
	key := metainfo.PieceKey{InfoHash: metainfo.Hash{1, 2, 3}, Index: 7}
	if err := pc.Set(key, true); err != nil {
		t.Fatal(err)
	}
	if err := bolt.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := storage.NewBoltPieceCompletion(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	c, err := again.Get(key)
	if err != nil || !c.Ok || !c.Complete {
		t.Fatalf("after reopening, piece 7 is %+v (%v); want complete", c, err)
	}
}
