package swarm

import (
	"context"
	"encoding/binary"
	"net"
	"syscall"
)

// Fewer wake-ups per received byte.
//
// A host receives a build at its link's pace: at 10 MB/s the kernel holds
// a segment or two for a socket at a time, and the engine's reader, woken
// for each arrival, reads 2-3 KiB, re-arms its read deadline and parks
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

// maxMark is the largest SO_RCVLOWAT set: 32 KiB is a dozen segments, and
// small enough next to the default 128 KiB receive buffer that the kernel
// does not clamp the window for it (tcp_set_rcvlowat).
const maxMark = 32 << 10

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
// The engine reads each connection from one goroutine.
type markedConn struct {
	*net.TCPConn
	f    framing
	cur  int // the mark set on the socket
	fail bool
}

func markConn(c net.Conn) net.Conn {
	if tc, ok := c.(*net.TCPConn); ok {
		// What the engine does to a *net.TCPConn, which it can no
		// longer see through the wrapper: close with a reset, leaving no
		// TIME_WAIT behind for each of the many short peer connections.
		tc.SetLinger(0)
		return &markedConn{TCPConn: tc, cur: 1}
	}
	return c
}

func (c *markedConn) Read(b []byte) (int, error) {
	n, err := c.TCPConn.Read(b)
	c.f.feed(b[:n])
	if want := c.f.mark(); want != c.cur && !c.fail {
		c.setMark(want)
	}
	return n, err
}

func (c *markedConn) setMark(v int) {
	rc, err := c.TCPConn.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, v)
		})
		if err == nil {
			err = serr
		}
	}
	if err != nil {
		c.fail = true // reads work as before; only the batching is lost
		return
	}
	c.cur = v
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
