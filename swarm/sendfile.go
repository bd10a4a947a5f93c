package swarm

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
)

// Serving chunks without copying them.
//
// The engine served a peer's request by reading the chunk from storage
// into a buffer (pread), copying it into the connection's write buffer and
// writing that to the socket: two copies through the process and a third
// into the socket. Under perf over a 40-host deploy, reading chunks for
// peers was 0.6 CPU-s and socket writes 1.0 (docs/BENCHMARKS.md). With the
// patched engine's SendTo (third_party/anacrolix-torrent, PATCH.md) the
// message writer writes a piece message's header and asks the storage for
// its data, which sendTo hands from the file holding it to the socket with
// sendfile(2): the kernel passes page-cache pages to TCP, and the bytes
// never enter the process.
//
// Each sendfile call is made under the storage's read lock, so the file is
// not closed during it; the socket is non-blocking, so a call returns at
// once when the send buffer is full, and the wait for room happens in Go's
// poller with no lock held.

// sendTo writes the n bytes of the torrent at off to conn: with sendfile
// from the files holding them when conn is a socket, through a buffer
// otherwise.
func (t *placed) sendTo(conn net.Conn, off, n int64) (int64, error) {
	var rc syscall.RawConn
	if sc, ok := conn.(syscall.Conn); ok {
		rc, _ = sc.SyscallConn()
	}
	if rc == nil {
		return t.copyTo(conn, off, n)
	}
	return t.spans(off, n, func(i int, _, at, m int64) (int64, error) {
		return t.sendFile(rc, i, at, m)
	})
}

// errShortFile: sendfile found the file ending before the span did.
var errShortFile = errors.New("file ends before the bytes to send")

// sendFile sends m bytes of segment i's file at at to the socket rc.
func (t *placed) sendFile(rc syscall.RawConn, i int, at, m int64) (int64, error) {
	var sent int64
	var err error
	werr := rc.Write(func(sfd uintptr) bool {
		for sent < m {
			var k int
			var serr error
			if err = t.withFile(i, false, func(f *os.File) {
				// Fd stays valid: withFile holds the lock that closing the
				// file takes, and a regular file is in blocking mode already.
				o := at + sent
				k, serr = syscall.Sendfile(int(sfd), int(f.Fd()), &o, int(min(m-sent, 1<<30)))
			}); err != nil {
				return true
			}
			if k > 0 {
				sent += int64(k)
			}
			switch {
			case serr == syscall.EAGAIN:
				return false // wait in the poller for room in the send buffer
			case serr == syscall.EINTR:
			case serr != nil:
				err = os.NewSyscallError("sendfile", serr)
				return true
			case k == 0:
				err = errShortFile
				return true
			}
		}
		return true
	})
	if err == nil && werr != nil {
		err = unwrapRaw(werr)
	}
	if t.sent != nil {
		t.sent.Add(sent)
	}
	if err != nil {
		return sent, &net.OpError{Op: "sendfile", Net: "tcp", Err: err}
	}
	return sent, nil
}

// copyTo writes the n bytes at off to w through a buffer; io.EOF if the
// torrent ends first.
func (t *placed) copyTo(w io.Writer, off, n int64) (int64, error) {
	buf, put := pieceBuf(min(n, 1<<20))
	defer put()
	m, err := io.CopyBuffer(w, io.NewSectionReader(t, off, n), buf)
	if err == nil && m < n {
		err = io.EOF
	}
	return m, err
}
