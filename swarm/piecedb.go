package swarm

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
	"go.etcd.io/bbolt"
)

// pieceDB is the piece database: which pieces of which build this host has
// verified, kept across restarts in archives/.torrent.bolt.db. It keeps
// the engine's own bolt layout (bucket "completion", a bucket per info
// hash, a 4-byte big-endian key per piece, "c" complete or "i" not), so a
// database written by an earlier Shoal reads the same. Two differences:
//
//   - It can forget a build (Forget, from Drop). The engine's never
//     deleted anything: every build a host ever fetched kept its bucket.
//   - It tells the file storage it is not persistent, so the storage does
//     not fsync the whole archive each time a piece completes (v1.61's
//     MarkComplete does for a persistent database, with classic file I/O:
//     39 fsyncs of the archive for a 12-piece build fetched by 2 hosts in
//     TestThreeNodeTransfer, none now; 0.7 of a 20-host deploy's 26 CPU-s,
//     and a journal commit each on the host's disk). Its records are not
//     synced either (like the engine's, bolt runs without sync). What a
//     crash drops is found by hashing instead: a restarted agent re-hashes
//     every piece the database calls complete before serving any
//     (CheckBeforeServing), and the install checks the archive's SHA-256.
type pieceDB struct {
	db     *bbolt.DB
	writes atomic.Int64 // write transactions (the piece_db_writes counter)
}

var _ storage.PieceCompletion = (*pieceDB)(nil)

var completionBucket = []byte("completion")

const (
	pieceComplete   = "c"
	pieceIncomplete = "i"
)

func openPieceDB(dir string) (*pieceDB, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	db, err := bbolt.Open(filepath.Join(dir, ".torrent.bolt.db"), 0o660, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, err
	}
	db.NoSync = true
	return &pieceDB{db: db}, nil
}

func pieceKey(i int) []byte {
	var k [4]byte
	binary.BigEndian.PutUint32(k[:], uint32(i))
	return k[:]
}

func (p *pieceDB) Get(pk metainfo.PieceKey) (c storage.Completion, err error) {
	err = p.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(completionBucket)
		if b == nil {
			return nil
		}
		if b = b.Bucket(pk.InfoHash[:]); b == nil {
			return nil
		}
		switch string(b.Get(pieceKey(pk.Index))) {
		case pieceComplete:
			c.Ok, c.Complete = true, true
		case pieceIncomplete:
			c.Ok = true
		}
		return nil
	})
	return c, err
}

func (p *pieceDB) Set(pk metainfo.PieceKey, complete bool) error {
	if c, err := p.Get(pk); err == nil && c.Ok && c.Complete == complete {
		return nil
	}
	return p.update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(completionBucket)
		if err != nil {
			return err
		}
		if b, err = b.CreateBucketIfNotExists(pk.InfoHash[:]); err != nil {
			return err
		}
		v := pieceIncomplete
		if complete {
			v = pieceComplete
		}
		return b.Put(pieceKey(pk.Index), []byte(v))
	})
}

// Fresh records every one of a build's n pieces as not complete, in one
// transaction, when the database knows nothing of the build (no record
// of it). Add calls it for a build none of
// whose bytes are on this host: without it the engine checked each
// piece whose completion was unknown on adding the build, and each
// check ended in its own transaction recording "not complete" — at
// N = 40, 96 of them per host as the deploy began, 23 % of the
// machine's CPU while the signal reached the fleet. Recording a piece as
// not complete is always safe: at worst it is fetched again.
func (p *pieceDB) Fresh(ih metainfo.Hash, n int) error {
	return p.update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(completionBucket)
		if err != nil {
			return err
		}
		if b.Bucket(ih[:]) != nil {
			return nil
		}
		if b, err = b.CreateBucket(ih[:]); err != nil {
			return err
		}
		for i := range n {
			if err := b.Put(pieceKey(i), []byte(pieceIncomplete)); err != nil {
				return err
			}
		}
		return nil
	})
}

func (p *pieceDB) update(f func(*bbolt.Tx) error) error {
	p.writes.Add(1)
	return p.db.Update(f)
}

// Forget deletes every record of the build with this info hash.
func (p *pieceDB) Forget(ih metainfo.Hash) error {
	return p.update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(completionBucket)
		if b == nil || b.Bucket(ih[:]) == nil {
			return nil
		}
		return b.DeleteBucket(ih[:])
	})
}

// Persistent is false: see pieceDB.
func (p *pieceDB) Persistent() bool { return false }

func (p *pieceDB) Close() error { return p.db.Close() }
