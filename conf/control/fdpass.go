package control

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// File descriptors over the native protocol.
//
// A request that hands the daemon a file (pcap) carries its descriptor as
// SCM_RIGHTS ancillary data of the sendmsg(2) that writes the request
// line, one line per such sendmsg: the client opens the file, as the user
// it runs as, and the daemon, which can no longer open paths once
// sandboxed, only writes to it. On a stream socket a recvmsg(2) may glue
// bytes sent without descriptors before those of a sendmsg that carried
// some, but never reads past the latter's bytes in the same call: so the
// last byte a read returns with descriptors is one of the bytes they were
// sent with, and fdReader notes that offset of the stream for them. Each
// request then takes the descriptors that came with its own line, even
// when the client sends several lines before reading an answer.
//
// Bounds: the control buffer of one read has room for maxFDsPerRead
// descriptors (the kernel closes whatever did not fit and says
// MSG_CTRUNC), of which at most one per request is kept; all others are
// closed as soon as they arrive or when their request turns out to take
// none. At most maxPendingFDs wait for their request line at any time.

const (
	maxFDsPerRead = 4
	maxPendingFDs = 4
)

// pendingFD is a received descriptor and the stream offset of the byte it
// came with.
type pendingFD struct {
	off int64
	fd  int
}

// fdReader reads a UNIX stream connection and keeps the descriptors that
// come with the bytes. Read runs on one goroutine at a time (the request
// reader, then a trace's discarding reader); take and closeAll on any.
type fdReader struct {
	c   *net.UnixConn
	oob []byte
	off int64 // bytes read so far; owned by Read's goroutine

	mu      sync.Mutex
	pending []pendingFD
	done    bool // closeAll ran: close whatever still arrives
}

func newFDReader(c *net.UnixConn) *fdReader {
	return &fdReader{c: c, oob: make([]byte, unix.CmsgSpace(4*maxFDsPerRead))}
}

func (r *fdReader) Read(p []byte) (int, error) {
	n, oobn, _, _, err := r.c.ReadMsgUnix(p, r.oob)
	// Unlike Read, ReadMsgUnix says -1 with an error and nothing at the
	// end of the stream.
	if n < 0 {
		n = 0
	}
	if oobn > 0 {
		r.keep(r.off+int64(max(n-1, 0)), receivedFDs(r.oob[:oobn]))
	}
	if n == 0 && err == nil && len(p) > 0 {
		err = io.EOF
	}
	r.off += int64(n)
	return n, err
}

// receivedFDs returns the descriptors of SCM_RIGHTS messages in oob.
func receivedFDs(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if got, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, got...)
		}
	}
	return fds
}

// keep records the first descriptor that came with the byte at off, if
// there is room, and closes the others.
func (r *fdReader) keep(off int64, fds []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, fd := range fds {
		if i > 0 || r.done || len(r.pending) >= maxPendingFDs {
			unix.Close(fd)
			continue
		}
		r.pending = append(r.pending, pendingFD{off: off, fd: fd})
	}
}

// take returns the descriptor that came with the bytes [from, to) (-1 if
// none) and closes any that came before them: those belonged to requests
// that took none.
func (r *fdReader) take(from, to int64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	fd := -1
	rest := r.pending[:0]
	for _, p := range r.pending {
		switch {
		case p.off < from:
			unix.Close(p.fd)
		case p.off < to && fd < 0:
			fd = p.fd
		case p.off < to:
			unix.Close(p.fd)
		default:
			rest = append(rest, p)
		}
	}
	r.pending = rest
	return fd
}

// closeAll closes every pending descriptor, and from now on each one that
// arrives.
func (r *fdReader) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.pending {
		unix.Close(p.fd)
	}
	r.pending = nil
	r.done = true
}

// outputFile checks that fd, received from a client, is something the
// daemon may write a capture to: a regular file or a FIFO, open for
// writing. It returns it as a file named name, close-on-exec, or closes
// it and says why not.
func outputFile(fd int, name string) (*os.File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pcap: the file descriptor sent: %v", err)
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFREG && t != unix.S_IFIFO {
		unix.Close(fd)
		return nil, errors.New("pcap: the file descriptor sent is not a regular file or a FIFO")
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pcap: the file descriptor sent: %v", err)
	}
	if acc := fl & unix.O_ACCMODE; acc != unix.O_WRONLY && acc != unix.O_RDWR {
		unix.Close(fd)
		return nil, errors.New("pcap: the file descriptor sent is not open for writing")
	}
	// MSG_CMSG_CLOEXEC (the net package's ReadMsgUnix) made it
	// close-on-exec already; a daemon never executes anything anyway.
	return os.NewFile(uintptr(fd), name), nil
}

// sendWithFile writes line on c with f's descriptor attached to its first
// byte.
func sendWithFile(c *net.UnixConn, line []byte, f *os.File) error {
	n, _, err := c.WriteMsgUnix(line, unix.UnixRights(int(f.Fd())), nil)
	runtime.KeepAlive(f)
	if err != nil {
		return err
	}
	// A stream socket may take a long line in parts; the descriptor went
	// with the first.
	if n < len(line) {
		_, err = c.Write(line[n:])
	}
	return err
}
