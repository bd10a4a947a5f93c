package torrent

import (
	"bytes"
	"encoding/binary"
	"io"
	stdsync "sync"
	"time"

	"github.com/anacrolix/chansync"
	"github.com/anacrolix/log"
	"github.com/anacrolix/sync"

	pp "github.com/anacrolix/torrent/peer_protocol"
)

func (pc *PeerConn) initMessageWriter() {
	w := &pc.messageWriter
	*w = peerConnMsgWriter{
		fillWriteBuffer: func() {
			pc.locker().Lock()
			defer pc.locker().Unlock()
			if pc.closed.IsSet() {
				return
			}
			pc.fillWriteBuffer()
		},
		closed:     &pc.closed,
		logger:     pc.logger,
		w:          pc.w,
		sendStored: pc.sendStored,
		keepAlive: func() bool {
			pc.locker().RLock()
			defer pc.locker().RUnlock()
			return pc.useful()
		},
	}
}

// writeBuffers recycles message writers' buffers across connections (Shoal
// patch): each connection's two buffers grew from empty to hold a 256 KiB
// piece message or two, zeroed as they grew, and were kept for the
// connection's life, idle or not; a host makes dozens of connections per
// build and keeps those of the builds it still seeds. A connection now holds
// a buffer only while it has bytes to send: the writer takes one from here
// for the first message and gives it back once its bytes are written.
var writeBuffers stdsync.Pool

func getWriteBuffer() *peerConnMsgWriterBuffer {
	if b, ok := writeBuffers.Get().(*peerConnMsgWriterBuffer); ok {
		return b
	}
	return new(peerConnMsgWriterBuffer)
}

// maxPooledWriteBuffer bounds what a pooled buffer may keep.
const maxPooledWriteBuffer = 4 << 20

func putWriteBuffer(b *peerConnMsgWriterBuffer) {
	if b.Cap() > maxPooledWriteBuffer {
		return
	}
	b.Reset()
	b.pieceDataBytes = 0
	b.stored = b.stored[:0]
	b.storedNext = 0
	b.storedBytes = 0
	b.consumed = 0
	writeBuffers.Put(b)
}

func (pc *PeerConn) startMessageWriter() {
	pc.initMessageWriter()
	go pc.messageWriterRunner()
}

func (pc *PeerConn) messageWriterRunner() {
	defer pc.locker().Unlock()
	defer pc.close()
	defer pc.locker().Lock()
	pc.messageWriter.run(pc.t.cl.config.KeepAliveTimeout)
}

type peerConnMsgWriterBuffer struct {
	// The number of bytes in the buffer that are part of a piece message. When
	// the whole buffer is written, we can count this many bytes.
	pieceDataBytes int
	bytes.Buffer
	// Piece data sent from storage, in order, each once the buffer's bytes
	// before it are written (Shoal patch: see sendFromStorage).
	stored      []storedSend
	storedNext  int // stored[storedNext:] are still to send
	storedBytes int
	consumed    int // buffer bytes written so far
}

// storedSend is a piece message's data, sent from the torrent's storage
// after the buffer's first at bytes.
type storedSend struct {
	at     int
	off, n int64
}

// pending is how many bytes the buffer has to send, its own and storage's.
func (b *peerConnMsgWriterBuffer) pending() int { return b.Len() + b.storedBytes }

type peerConnMsgWriter struct {
	// Must not be called with the local mutex held, as it will call back into the write method.
	fillWriteBuffer func()
	closed          *chansync.SetOnce
	logger          log.Logger
	w               io.Writer
	keepAlive       func() bool
	// sendStored sends n bytes of the torrent at off from storage (Shoal patch).
	sendStored func(off, n int64) error

	mu        sync.Mutex
	writeCond chansync.BroadcastCond
	// Pointer so we can swap with the "front buffer". Nil while nothing is
	// buffered (Shoal patch: see writeBuffers).
	writeBuffer *peerConnMsgWriterBuffer

	totalWriteDuration    time.Duration
	totalBytesWritten     int64
	totalDataBytesWritten int64
	dataUploadRate        float64
}

// Routine that writes to the peer. Some of what to write is buffered by
// activity elsewhere in the Client, and some is determined locally when the
// connection is writable.
func (cn *peerConnMsgWriter) run(keepAliveTimeout time.Duration) {
	lastWrite := time.Now()
	keepAliveTimer := time.NewTimer(keepAliveTimeout)
	var frontBuf *peerConnMsgWriterBuffer // only while it holds bytes being written
	defer func() {
		if frontBuf != nil {
			putWriteBuffer(frontBuf)
		}
		cn.mu.Lock()
		if cn.writeBuffer != nil {
			putWriteBuffer(cn.writeBuffer) // a later write takes another, left to the GC
			cn.writeBuffer = nil
		}
		cn.mu.Unlock()
	}()
	for {
		if cn.closed.IsSet() {
			return
		}
		cn.fillWriteBuffer()
		keepAlive := cn.keepAlive()
		cn.mu.Lock()
		if cn.bufferedLocked() == 0 && time.Since(lastWrite) >= keepAliveTimeout && keepAlive {
			cn.writeToBuffer(pp.Message{Keepalive: true})
			torrent.Add("written keepalives", 1)
		}
		if cn.bufferedLocked() == 0 {
			writeCond := cn.writeCond.Signaled()
			cn.mu.Unlock()
			select {
			case <-cn.closed.Done():
			case <-writeCond:
			case <-keepAliveTimer.C:
			}
			continue
		}
		// Flip the buffers.
		frontBuf, cn.writeBuffer = cn.writeBuffer, nil
		cn.mu.Unlock()
		if frontBuf.pending() == 0 {
			panic("expected non-empty front buffer")
		}
		var err error
		startedWriting := time.Now()
		startingBufLen := frontBuf.pending()
		for frontBuf.pending() != 0 {
			next := frontBuf.Bytes()
			if frontBuf.storedNext < len(frontBuf.stored) {
				next = next[:frontBuf.stored[frontBuf.storedNext].at-frontBuf.consumed]
			}
			if len(next) == 0 {
				s := frontBuf.stored[frontBuf.storedNext]
				frontBuf.storedNext++
				frontBuf.storedBytes -= int(s.n)
				if err = cn.sendStored(s.off, s.n); err != nil {
					break
				}
				continue
			}
			var n int
			n, err = cn.w.Write(next)
			frontBuf.Next(n)
			frontBuf.consumed += n
			if err == nil && n != len(next) {
				panic("expected full write")
			}
			if err != nil {
				break
			}
		}
		if err != nil {
			cn.logger.WithDefaultLevel(log.Debug).Printf("error writing: %v", err)
			return
		}
		// Track what was sent and how long it took.
		writeDuration := time.Since(startedWriting)
		cn.mu.Lock()
		cn.dataUploadRate = float64(frontBuf.pieceDataBytes) / writeDuration.Seconds()
		cn.totalWriteDuration += writeDuration
		cn.totalBytesWritten += int64(startingBufLen)
		cn.totalDataBytesWritten += int64(frontBuf.pieceDataBytes)
		cn.mu.Unlock()
		putWriteBuffer(frontBuf)
		frontBuf = nil
		lastWrite = time.Now()
		keepAliveTimer.Reset(keepAliveTimeout)
	}
}

func (cn *peerConnMsgWriter) writeToBuffer(msg pp.Message) (err error) {
	if cn.writeBuffer == nil {
		cn.writeBuffer = getWriteBuffer()
	}
	originalLen := cn.writeBuffer.Len()
	defer func() {
		if err != nil {
			// Since an error occurred during buffer write, revert buffer to its original state before the write.
			cn.writeBuffer.Truncate(originalLen)
		}
	}()
	err = msg.WriteTo(cn.writeBuffer)
	if err == nil {
		cn.writeBuffer.pieceDataBytes += len(msg.Piece)
	}
	return
}

// writePieceFromStorage buffers a piece message for r whose data, the
// torrent's bytes at off, is sent from storage (Shoal patch).
func (cn *peerConnMsgWriter) writePieceFromStorage(r Request, off int64) bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.writeBuffer == nil {
		cn.writeBuffer = getWriteBuffer()
	}
	b := cn.writeBuffer
	var hdr [13]byte
	binary.BigEndian.PutUint32(hdr[0:], uint32(9+r.Length))
	hdr[4] = byte(pp.Piece)
	binary.BigEndian.PutUint32(hdr[5:], uint32(r.Index))
	binary.BigEndian.PutUint32(hdr[9:], uint32(r.Begin))
	b.Write(hdr[:])
	b.stored = append(b.stored, storedSend{at: b.consumed + b.Len(), off: off, n: int64(r.Length)})
	b.storedBytes += int(r.Length)
	b.pieceDataBytes += int(r.Length)
	cn.writeCond.Broadcast()
	return !cn.writeBufferFull()
}

func (cn *peerConnMsgWriter) write(msg pp.Message) bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	cn.writeToBuffer(msg)
	cn.writeCond.Broadcast()
	return !cn.writeBufferFull()
}

func (cn *peerConnMsgWriter) writeBufferFull() bool {
	return cn.bufferedLocked() >= writeBufferHighWaterLen
}

// buffered is how many bytes wait to be written (Shoal patch: upstream read
// the buffer's length without the lock the writer flips it under).
func (cn *peerConnMsgWriter) buffered() int {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.bufferedLocked()
}

func (cn *peerConnMsgWriter) bufferedLocked() int {
	if cn.writeBuffer == nil {
		return 0
	}
	return cn.writeBuffer.pending()
}
