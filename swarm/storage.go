package swarm

import (
	"context"
	"io"
	"sync"

	g "github.com/anacrolix/generics"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
)

// exactHashStorage wraps the engine's file storage so that hashing a piece
// reads exactly the piece and reports no spurious error.
//
// Why: in v1.61's classic file I/O (which Shoal uses: the mmap mode grows
// RSS by the whole archive), a piece's WriteTo copies through a writer
// that returns io.ErrShortWrite as soon as the file's read buffer runs
// past the piece's end — on almost every piece. The engine then treats
// each hash as a storage error and skips banning: a peer that sent a
// corrupt piece was never banned and kept being asked for more (found by
// TestCorruptPeerIsBanned: 22 MB fetched for an 8 MB build, no ban).
// Reading through ReaderAt with an exact length avoids it.
type exactHashStorage struct{ storage.ClientImplCloser }

func (s exactHashStorage) OpenTorrent(ctx context.Context, info *metainfo.Info, ih metainfo.Hash) (storage.TorrentImpl, error) {
	t, err := s.ClientImplCloser.OpenTorrent(ctx, info, ih)
	if err != nil {
		return t, err
	}
	wrap := func(p metainfo.Piece, pi storage.PieceImpl) storage.PieceImpl {
		return exactPiece{PieceImpl: pi, length: p.Length()}
	}
	if piece := t.Piece; piece != nil {
		t.Piece = func(p metainfo.Piece) storage.PieceImpl { return wrap(p, piece(p)) }
	}
	if piece := t.PieceWithHash; piece != nil {
		t.PieceWithHash = func(p metainfo.Piece, h g.Option[[]byte]) storage.PieceImpl { return wrap(p, piece(p, h)) }
	}
	return t, nil
}

// exactPiece is a piece whose WriteTo writes exactly its length.
type exactPiece struct {
	storage.PieceImpl
	length int64
}

// It reads in one piece-sized step where io.Copy took 32 KiB at a time
// (a 2 MiB piece was 64 reads, each through the storage's file lookup).
func (p exactPiece) WriteTo(w io.Writer) (int64, error) {
	bp := hashBufs.Get().(*[]byte)
	defer hashBufs.Put(bp)
	return io.CopyBuffer(w, struct{ io.Reader }{io.NewSectionReader(p.PieceImpl, 0, p.length)}, *bp)
}

var hashBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// Flush passes the engine's flush through to the file piece.
func (p exactPiece) Flush() error {
	if f, ok := p.PieceImpl.(interface{ Flush() error }); ok {
		return f.Flush()
	}
	return nil
}
