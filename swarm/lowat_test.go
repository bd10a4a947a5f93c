package swarm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// The receive mark follows the peer protocol's framing: 1 between
// messages and in short ones, the rest of a long body (at most maxMark)
// inside it, and 1 for good on a stream that is not plaintext BitTorrent.
func TestFramingMark(t *testing.T) {
	hs := append([]byte(protocolName), make([]byte, handshakeLen-len(protocolName))...)
	msg := func(n int) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(n))
		return append(b, make([]byte, n)...)
	}
	var f framing
	steps := []struct {
		feed []byte
		want int
	}{
		{hs[:10], 1},
		{hs[10:], 1},
		{msg(13), 1},                        // a request
		{msg(9 + 256<<10)[:4], 9 + 256<<10}, // a piece message's length: all of its body
		{make([]byte, 256<<10-4096), 1},     // most of its body: 4,105 bytes left, under minMarkBody
		{make([]byte, 4096+9), 1},
		{msg(0), 1}, // a keep-alive
		{msg(9 + 20<<10)[:7], 20<<10 + 9 - 3},
	}
	for i, s := range steps {
		f.feed(s.feed)
		if got := f.mark(); got != s.want {
			t.Fatalf("step %d: mark %d, want %d", i, got, s.want)
		}
	}
	// A hostile length (4 GiB): the mark stays at maxMark, never asking
	// the kernel to hold more than that for the engine, which refuses the
	// message when it decodes the length.
	var huge framing
	huge.feed(hs)
	huge.feed([]byte{0xff, 0xff, 0xff, 0xff})
	if got := huge.mark(); got != maxMark {
		t.Errorf("after a 4 GiB length: mark %d, want %d", got, maxMark)
	}
	var enc framing
	enc.feed([]byte{0x7f, 0x13, 'B'}) // an encrypted handshake starts with key bytes
	enc.feed(msg(256 << 10))
	if enc.mark() != 1 || !enc.off {
		t.Errorf("a stream that is not plaintext BitTorrent: mark %d, off %v", enc.mark(), enc.off)
	}
}

// On a real socket, the mark reaches the kernel while a piece arrives and
// goes back to 1 after it.
func TestMarkedConnSetsRcvlowat(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.41.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		hs := append([]byte(protocolName), make([]byte, handshakeLen-len(protocolName))...)
		c.Write(hs)
		c.Write(binary.BigEndian.AppendUint32(nil, 100<<10))
		c.Write(make([]byte, 100<<10))
		io.Copy(io.Discard, c)
	}()
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mc := markConn(c).(*markedConn)
	lowat := func() int {
		rc, _ := mc.TCPConn.SyscallConn()
		v := -1
		rc.Control(func(fd uintptr) { v, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT) })
		return v
	}
	if _, err := io.ReadFull(mc, make([]byte, handshakeLen+4+10)); err != nil {
		t.Fatal(err)
	}
	if got, want := lowat(), 100<<10-10; got != want {
		t.Errorf("inside a 100 KiB body: SO_RCVLOWAT %d, want the rest of it, %d", got, want)
	}
	if _, err := io.ReadFull(mc, make([]byte, 100<<10-10)); err != nil {
		t.Fatal(err)
	}
	if got := lowat(); got != 1 {
		t.Errorf("after the body: SO_RCVLOWAT %d, want 1", got)
	}
}

// Both ends of a peer connection, dialed and accepted, keep a shallow
// send queue: TCP_NOTSENT_LOWAT at notSentMark, so a HAVE or a request
// waits behind at most that much unsent piece data.
func TestMarkedConnKeepsAShallowSendQueue(t *testing.T) {
	a, b := markedPair(t)
	for name, c := range map[string]*markedConn{"dialed": a, "accepted": b} {
		v := -1
		c.raw.Control(func(fd uintptr) { v, _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpNotSentLowat) })
		if v != notSentMark {
			t.Errorf("%s connection: TCP_NOTSENT_LOWAT %d, want %d", name, v, notSentMark)
		}
	}
}

// markedPair is a connected pair of marked connections on loopback.
func markedPair(t *testing.T) (a, b *markedConn) {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.41.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	a, b = markConn(c).(*markedConn), markConn(s).(*markedConn)
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// A marked connection reads and writes with raw system calls: it must
// still keep net.Conn's contract — whole writes across a full send
// buffer, deadlines as timeouts, EOF at the peer's close, ErrClosed after
// its own.
func TestMarkedConnRawIO(t *testing.T) {
	a, b := markedPair(t)

	// 8 MiB, far over the socket buffers: the writer meets EAGAIN and
	// waits in the poller until the reader, started late, drains it.
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	wrote := make(chan error, 1)
	go func() {
		n, err := a.Write(data)
		if err == nil && n != len(data) {
			err = fmt.Errorf("wrote %d of %d", n, len(data))
		}
		wrote <- err
	}()
	time.Sleep(50 * time.Millisecond)
	got := make([]byte, len(data))
	if _, err := io.ReadFull(b, got); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("bytes read differ from bytes written")
	}

	// Nothing to read before the deadline: a timeout, as net.Conn says.
	b.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	_, err := b.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline: %v, want a timeout", err)
	}
	b.SetReadDeadline(time.Time{})

	// The peer writes a little and shuts its side (a marked connection
	// closes with a reset, so a FIN comes from CloseWrite): the bytes,
	// then io.EOF itself.
	a.Write([]byte("bye"))
	a.CloseWrite()
	buf := make([]byte, 10)
	n, err := io.ReadAtLeast(b, buf, 3)
	if err != nil || string(buf[:n]) != "bye" {
		t.Fatalf("read %q, %v; want bye", buf[:n], err)
	}
	if n, err := b.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("read after the peer closed: %d, %v; want 0, io.EOF", n, err)
	}

	// Its own close: reads and writes fail with net.ErrClosed.
	b.Close()
	if _, err := b.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after close: %v, want net.ErrClosed", err)
	}
	if _, err := b.Write(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after close: %v, want net.ErrClosed", err)
	}
}

// A marked connection's reads and writes allocate nothing: the raw calls'
// callbacks are made once per connection (a closure per call escaped to
// the heap, several allocations for every read of every chunk).
func TestMarkedConnAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts under -race are the detector's; `make unit` runs it again without")
	}
	a, b := markedPair(t)
	buf, msg := make([]byte, 64), make([]byte, 64)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := a.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(b, buf); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("a write and a read on marked connections made %v allocations; want 0", allocs)
	}
}
