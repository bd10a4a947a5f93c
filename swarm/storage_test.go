package swarm

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"
)

// The piece database reads what the engine's bolt database wrote (hosts
// upgraded keep their pieces), remembers across a reopen, forgets a build
// on request, and tells the file storage it is not persistent (with classic
// file I/O the storage then fsyncs the whole archive at every completed
// piece); what a crash dropped is found by re-hashing before serving
// (e2e/TestRestartedSeedChecksBeforeServing), not by a per-piece fsync.
func TestPieceDatabase(t *testing.T) {
	dir := t.TempDir()
	old, err := storage.NewBoltPieceCompletion(dir)
	if err != nil {
		t.Fatal(err)
	}
	a := metainfo.PieceKey{InfoHash: metainfo.Hash{1, 2, 3}, Index: 7}
	b := metainfo.PieceKey{InfoHash: metainfo.Hash{4, 5, 6}, Index: 0}
	for _, pk := range []metainfo.PieceKey{a, b} {
		if err := old.Set(pk, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := openPieceDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	var pc storage.PieceCompletion = db
	if p, ok := pc.(storage.PieceCompletionPersistenter); !ok || p.Persistent() {
		t.Fatalf("the storage sees a persistent piece database: it fsyncs the archive at every piece")
	}
	for _, pk := range []metainfo.PieceKey{a, b} {
		if c, err := db.Get(pk); err != nil || !c.Ok || !c.Complete {
			t.Fatalf("piece %v written by the engine's database reads %+v (%v); want complete", pk, c, err)
		}
	}
	if err := db.Set(metainfo.PieceKey{InfoHash: a.InfoHash, Index: 8}, false); err != nil {
		t.Fatal(err)
	}
	if c, _ := db.Get(metainfo.PieceKey{InfoHash: a.InfoHash, Index: 8}); !c.Ok || c.Complete {
		t.Fatalf("a piece set incomplete reads %+v", c)
	}
	if err := db.Forget(a.InfoHash); err != nil {
		t.Fatal(err)
	}
	if err := db.Forget(metainfo.Hash{9}); err != nil { // never seen: nothing to do
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = openPieceDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if c, _ := db.Get(a); c.Ok {
		t.Errorf("a forgotten build's piece still reads %+v", c)
	}
	if c, _ := db.Get(b); !c.Ok || !c.Complete {
		t.Errorf("another build's piece reads %+v after a forget; want complete", c)
	}
	// A record that is neither "c" nor "i" (a torn or foreign write) is
	// unknown, never complete: the engine then hashes the piece.
	junk := metainfo.PieceKey{InfoHash: b.InfoHash, Index: 3}
	if err := db.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(completionBucket).Bucket(junk.InfoHash[:]).Put(pieceKey(junk.Index), []byte("complete"))
	}); err != nil {
		t.Fatal(err)
	}
	if c, err := db.Get(junk); err != nil || c.Ok || c.Complete {
		t.Errorf("a junk record reads %+v (%v); want unknown", c, err)
	}
}

// Dropping a build forgets its pieces in the database (the engine's
// database kept a bucket for every build a host ever fetched).
func TestDropForgetsPieces(t *testing.T) {
	ctx := context.Background()
	s := startSwarms(t, 1, 44, zerolog.Nop(), nil)[0]
	m, _ := publish(t, s, 1<<20)
	x, err := s.Add(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	pk := metainfo.PieceKey{InfoHash: metainfo.NewHashFromHex(m.InfoHash), Index: 0}
	if c, _ := s.pc.Get(pk); !c.Ok || !c.Complete {
		t.Fatalf("piece 0 of a complete build reads %+v", c)
	}
	if err := s.Drop(m); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.pc.Get(pk); c.Ok {
		t.Errorf("piece 0 of the dropped build still reads %+v", c)
	}
}

// A build none of whose bytes are on a host is recorded as "no piece
// complete" in one transaction when it is added, so the engine does not
// check its pieces one by one (each check ended in a transaction of its
// own: 96 per host as a 40-host deploy began). A build whose archive is
// on disk while the database knows nothing of it (records lost in a
// crash) is still checked piece by piece, and found complete without a
// byte fetched.
func TestNewBuildIsNotCheckedPieceByPiece(t *testing.T) {
	ctx := context.Background()
	nodes := startSwarms(t, 3, 44, zerolog.Nop(), nil)
	m, data := publish(t, nodes[0], 8<<20+333)
	pieces := int64(len(data)+int(m.PieceLength)-1) / m.PieceLength
	fetcher, restored := nodes[1], nodes[2]
	before := fetcher.Counters()["piece_db_writes"]
	fetchAll(t, nodes[:2], m, data)
	// One transaction for the new build, one per piece as it completes.
	if w := fetcher.Counters()["piece_db_writes"] - before; w > pieces+1 {
		t.Errorf("fetching a new build of %d pieces took %d piece database writes; want at most %d (one for the build, one per completed piece)", pieces, w, pieces+1)
	}

	if err := os.WriteFile(restored.ArchivePath(m.Service, m.Build), data, 0o644); err != nil {
		t.Fatal(err)
	}
	x, err := restored.Add(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := x.Wait(wctx); err != nil {
		t.Fatal(err)
	}
	if p := x.Progress(); p.Received != 0 || p.Have != int64(len(data)) {
		t.Errorf("a build already on disk: %d bytes fetched, %d verified; want 0 and all %d (checked, not marked missing)", p.Received, p.Have, len(data))
	}
}
