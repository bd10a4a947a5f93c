package swarm

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Fewer wake-ups per received byte.
//
// A host receives a build at its link's pace: at 10 MB/s the kernel holds
// a segment or two for a socket at a time, and the engine's reader, woken
// for each arrival, read 2-3 KiB, re-armed its read deadline and parked
// again. Waking goroutines (the Go scheduler polling the network) and the
// read syscalls were a quarter of an agent's CPU (docs/BENCHMARKS.md).
//
// The peer protocol says how many bytes are coming: every message after
// the handshake is a 4-byte length and a body. markedConn follows that
// framing in the bytes it passes to the engine, and while the reader is
// inside a long body (a piece message: 16-256 KiB) sets the socket's
// SO_RCVLOWAT to the rest of it, at most maxMark: the kernel wakes the
// reader once that much has arrived instead of on every segment. Between
// messages, and for short ones, the mark is 1, so a request or a have is
// read as soon as it lands. Only a body that the peer has started sending
// is waited for, so the mark never asks for bytes that are not coming; the
// kernel also wakes a reader below the mark when its receive buffer is
// under pressure, the window is nearly shut, or the peer closed.
// A stream that does not start with the plaintext handshake (an encrypted
// one) is passed through with the mark left at 1.

// maxMark is the largest SO_RCVLOWAT set. It is above the largest chunk
// Shoal asks for (ChunkSize: 256 KiB), so the reader of a piece message
// wakes once for its header and once when the rest of its body is there;
// the bound only matters for a hostile length, which the engine refuses
// once decoded. A mark above the receive buffer makes the kernel grow the
// buffer for it (tcp_set_rcvlowat) and clamp the window at the mark until
// its autotuning grows both further. Measured (docs/BENCHMARKS.md, N = 20,
// perf stat over one run each): marks of 32, 128 and 512 KiB gave 472 k,
// 413 k and 391 k context switches.
const maxMark = 512 << 10

// A shallow send queue.
//
// A connection carries piece data one way and, the same way, the HAVEs
// and requests that keep the swarm's pipeline moving: a host announces a
// piece it just verified on the connection that carries its uploads to
// that peer, and asks for pieces on the one that carries the peer's
// uploads to it. The kernel grows a socket's send buffer to megabytes
// (autotuning), and every byte of it not yet sent sat in front of the
// next HAVE or request: at ~2 MB/s per connection (a 10 MB/s host
// uploading to a few peers) that is seconds between a piece arriving on
// one host and its neighbours asking for it. TCP_NOTSENT_LOWAT keeps at
// most notSentMark bytes queued but unsent in the kernel (the socket is
// writable again below it; what the network has in flight is not
// limited), so a message waits behind at most that much. Measured
// (docs/BENCHMARKS.md, "A shallow send queue"; 100 MB at 10 MB/s, 3 runs
// each, medians): the last host 11.59 against 12.17 s at N = 5, 15.18
// against 15.65 at 20, 17.10 against 17.49 at 40, machine CPU the same
// within the runs' spread; 256 KiB was no better.
const notSentMark = 128 << 10

// tcpNotSentLowat is TCP_NOTSENT_LOWAT (linux/tcp.h), which package
// syscall does not name.
const tcpNotSentLowat = 25

// minMarkBody is the shortest remaining body worth a mark.
const minMarkBody = 8 << 10

// handshake is the plaintext BitTorrent handshake's fixed length and start.
const (
	handshakeLen = 68
	protocolName = "\x13BitTorrent protocol"
)

// framing follows the peer protocol's message boundaries in a byte stream.
type framing struct {
	seen int // bytes of the handshake seen
	hdr  [4]byte
	nh   int   // length bytes collected
	body int64 // bytes of the current body still to come
	off  bool  // not a plaintext peer-protocol stream: stop following it
}

// feed follows b, the next bytes of the stream.
func (f *framing) feed(b []byte) {
	for len(b) > 0 && !f.off {
		switch {
		case f.seen < handshakeLen:
			n := min(handshakeLen-f.seen, len(b))
			for i := 0; i < n; i++ {
				if at := f.seen + i; at < len(protocolName) && b[i] != protocolName[at] {
					f.off = true
					return
				}
			}
			f.seen += n
			b = b[n:]
		case f.body > 0:
			n := min(f.body, int64(len(b)))
			f.body -= n
			b = b[n:]
		default:
			f.hdr[f.nh] = b[0]
			f.nh++
			b = b[1:]
			if f.nh == len(f.hdr) {
				f.body, f.nh = int64(binary.BigEndian.Uint32(f.hdr[:])), 0
			}
		}
	}
}

// mark is the SO_RCVLOWAT the stream's position calls for.
func (f *framing) mark() int {
	if f.off || f.body < minMarkBody {
		return 1
	}
	return int(min(f.body, maxMark))
}

// markedConn is a peer connection whose receive mark follows its framing.
// The engine reads each connection from one goroutine and writes it from
// another.
//
// Its reads, writes and marks are raw system calls on the non-blocking
// socket (see Raw socket calls, below): a socket call that would block
// returns EAGAIN and the goroutine waits in Go's network poller as before.
type markedConn struct {
	*net.TCPConn
	raw  syscall.RawConn
	f    framing
	cur  int // the mark set on the socket
	fail bool

	// The raw calls' callbacks and their arguments, made once: a closure
	// per call escaped to the heap, three allocations per read.
	rd, wr rawCall
	mark   int
	merr   syscall.Errno
	markFn func(fd uintptr)
}

// rawCall is one direction's raw socket call: its buffer, how much of it
// is done, the error, and the callback the RawConn runs. mu makes calls in
// one direction take turns (net.Conn allows concurrent calls; the engine
// makes none).
type rawCall struct {
	mu    sync.Mutex
	b     []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

func markConn(c net.Conn) net.Conn {
	if tc, ok := c.(*net.TCPConn); ok {
		// What the engine does to a *net.TCPConn, which it can no
		// longer see through the wrapper: close with a reset, leaving no
		// TIME_WAIT behind for each of the many short peer connections.
		tc.SetLinger(0)
		raw, err := tc.SyscallConn()
		if err != nil {
			return c
		}
		raw.Control(func(fd uintptr) {
			// Best effort: without it the connection works as before.
			_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpNotSentLowat, notSentMark)
		})
		mc := &markedConn{TCPConn: tc, raw: raw, cur: 1}
		mc.rd.fn = mc.rd.read
		mc.wr.fn = mc.wr.write
		mc.markFn = func(fd uintptr) {
			_, _, mc.merr = syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, fd, syscall.SOL_SOCKET, syscall.SO_RCVLOWAT,
				uintptr(unsafe.Pointer(&mc.mark)), unsafe.Sizeof(int32(0)), 0)
		}
		return mc
	}
	return c
}

func (c *markedConn) Read(b []byte) (int, error) {
	c.rd.mu.Lock() // also guards the framing and the mark
	defer c.rd.mu.Unlock()
	n, err := c.rd.do(c.raw, false, b)
	if n == 0 && err == nil && len(b) > 0 {
		err = io.EOF
	}
	if err != nil && !errors.Is(err, io.EOF) {
		err = &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	c.f.feed(b[:n])
	if want := c.f.mark(); want != c.cur && !c.fail {
		c.setMark(want)
	}
	return n, err
}

func (c *markedConn) Write(b []byte) (int, error) {
	c.wr.mu.Lock()
	defer c.wr.mu.Unlock()
	n, err := c.wr.do(c.raw, true, b)
	if err != nil {
		err = &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	return n, err
}

func (c *markedConn) setMark(v int) {
	c.mark, c.merr = v, 0
	if err := c.raw.Control(c.markFn); err != nil || c.merr != 0 {
		c.fail = true // reads work as before; only the batching is lost
		return
	}
	c.cur = v
}

// Raw socket calls.
//
// Go enters every system call through the scheduler (entersyscall), and
// the first one a process makes after all its threads went idle also wakes
// the runtime's monitor thread (sysmon) out of its deep sleep; sysmon then
// polls every 20 µs until the process is idle again. An agent receiving a
// build at its link's pace is idle between arrivals, so every arrival paid
// for it: under perf over a 20-host deploy, waking and running sysmon
// (futex, nanosleep and its own loop) was 1.3 CPU-s of 14.7, and 87 % of
// the wakes came from this connection's reads (docs/BENCHMARKS.md). A read
// or write on a non-blocking socket never sleeps in the kernel, so it
// needs none of that: the calls below are made directly
// (syscall.RawSyscall, as the runtime's own poller does), hand EAGAIN back
// to Go's poller to wait for readiness, and keep the socket's deadlines.

// do makes the call on b through rc. A read returns what the socket
// holds, waiting only while it holds nothing; a write writes all of b,
// waiting whenever the send buffer is full.
func (r *rawCall) do(rc syscall.RawConn, write bool, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r.b, r.n, r.errno = b, 0, 0
	var perr error
	op := "read"
	if write {
		op = "write"
		perr = rc.Write(r.fn)
	} else {
		perr = rc.Read(r.fn)
	}
	n := r.n
	r.b = nil
	if perr != nil {
		return n, unwrapRaw(perr)
	}
	if r.errno != 0 {
		return n, os.NewSyscallError(op, r.errno)
	}
	return n, nil
}

func (r *rawCall) read(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&r.b[0])), uintptr(len(r.b)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		case 0:
			r.n = int(n)
		default:
			r.errno = e
		}
		return true
	}
}

func (r *rawCall) write(fd uintptr) bool {
	for r.n < len(r.b) {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&r.b[r.n])), uintptr(len(r.b)-r.n))
		switch e {
		case 0:
			r.n += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			r.errno = e
			return true
		}
	}
	return true
}

// unwrapRaw takes the poller's error (a deadline, a closed connection) out
// of the "raw-read"/"raw-write" OpError the RawConn wraps it in, so the
// caller's own OpError says read or write.
func unwrapRaw(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe.Err
	}
	return err
}

// markedDialer dials peers from the bind address (see New) and marks
// their connections.
type markedDialer struct{ d *net.Dialer }

func (d markedDialer) DialerNetwork() string { return "tcp" }

func (d markedDialer) Dial(ctx context.Context, addr string) (net.Conn, error) {
	c, err := d.d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return markConn(c), nil
}

// markedListener accepts peers' connections and marks them.
type markedListener struct{ net.Listener }

func (l markedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return markConn(c), nil
}
