package actors

import (
	"github.com/gopasta/gopasta/link/nbsys"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Theory of operation: the TCP splice path
//
// A connection between two loopback endpoints in different namespaces
// (a host client of a -t port, a namespace client of a -T port) needs no
// translation at all: gopasta accepts it, opens a socket in the other
// namespace to the forwarded port, and moves bytes between the two
// sockets with splice(2). Data goes socket -> pipe -> socket inside the
// kernel, never through user space and never through the tap.
//
// Each direction has its own pipe (enlarged with F_SETPIPE_SZ, so that one
// splice moves megabytes: 4 MiB where allowed, else the 1 MiB an
// unprivileged process gets) and its own goroutine, parked in the Go
// runtime poller while neither of its sockets can make progress. Two
// goroutines per pair cost less than one goroutine with four Wakers (each
// a goroutine of its own) or one with a private epoll (a blocking
// epoll_wait takes an OS thread per idle connection), and make half-close
// trivial: a direction that reads EOF drains its pipe and shuts down the
// writing side of the other socket, and the other direction goes on.
//
// A pipe counts buffers, not bytes: a pipe can be full with fewer bytes
// than its size when the socket hands over small page fragments, and then
// splice into it fails with EAGAIN although the socket is readable. So a
// direction waits for its source only when its pipe is empty (an EAGAIN
// then can only be the socket's); with bytes in the pipe it drains first.
//
// Resets propagate: an error on either socket (ECONNRESET, EPIPE) closes
// both with SO_LINGER 0, so the other peer gets an RST rather than a FIN
// that would make a truncated stream look complete.

// splicePipeSize is the capacity asked for each direction's pipe. Above
// /proc/sys/fs/pipe-max-size (1 MiB by default) it takes CAP_SYS_RESOURCE
// in the initial user namespace; without it the size steps down to what
// is allowed, and later pipes ask for that at once (pipeSizeOK).
var splicePipeSize = 4 << 20

var pipeSizeOK atomic.Int64

// setPipeSize enlarges the pipe whose write end is pw as far as allowed
// and returns its capacity.
func setPipeSize(pw int) int {
	want := splicePipeSize
	if ok := int(pipeSizeOK.Load()); ok > 0 {
		want = ok
	}
	for ; want >= 64<<10; want /= 2 {
		if got, err := unix.FcntlInt(uintptr(pw), unix.F_SETPIPE_SZ, want); err == nil {
			pipeSizeOK.Store(int64(want))
			return got
		}
	}
	if got, err := unix.FcntlInt(uintptr(pw), unix.F_GETPIPE_SZ, 0); err == nil {
		return got
	}
	return 64 << 10
}

// SpliceStats count spliced connections and datagrams, for tests and logs.
var SpliceStats struct {
	TCPOpened, TCPActive, TCPResets atomic.Int64
	UDPFlows, UDPDatagrams          atomic.Int64
}

// spliceSock is one side of a spliced pair.
type spliceSock struct {
	fd    int
	file  *os.File
	rc    syscall.RawConn
	close sync.Once
}

func newSpliceSock(fd int) (*spliceSock, error) {
	f := os.NewFile(uintptr(fd), "splice")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &spliceSock{fd: fd, file: f, rc: rc}, nil
}

func (s *spliceSock) shut(reset bool) {
	s.close.Do(func() {
		if reset {
			_ = unix.SetsockoptLinger(s.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		}
		s.file.Close()
	})
}

// splicePair is two connected sockets joined by two pumps.
type splicePair struct {
	a, b  *spliceSock
	left  atomic.Int32 // pumps still running
	reset atomic.Bool
}

// startSplice joins the accepted socket accFD and the socket connFD, on
// which a non-blocking connect is in progress. It owns both descriptors
// from now on: if the connect fails, the client is reset.
func startSplice(accFD, connFD int) {
	for _, fd := range []int{accFD, connFD} {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	a, err := newSpliceSock(accFD)
	if err != nil {
		unix.Close(accFD)
		unix.Close(connFD)
		return
	}
	b, err := newSpliceSock(connFD)
	if err != nil {
		a.shut(true)
		unix.Close(connFD)
		return
	}
	p := &splicePair{a: a, b: b}
	SpliceStats.TCPOpened.Add(1)
	SpliceStats.TCPActive.Add(1)
	p.left.Store(2)
	go func() {
		if !p.connected() {
			SpliceStats.TCPResets.Add(1)
			p.a.shut(true)
			p.b.shut(false)
			SpliceStats.TCPActive.Add(-1)
			return
		}
		go p.pump(p.b, p.a)
		p.pump(p.a, p.b)
	}()
}

// connected waits for the connect on b to finish and reports success.
func (p *splicePair) connected() bool {
	var soerr int
	var gerr error
	err := p.b.rc.Write(func(fd uintptr) bool {
		soerr, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if gerr != nil || soerr != 0 {
			return true
		}
		// Writable and no error: connected, unless the connect is still
		// in progress (then there is no peer address yet).
		if _, err := unix.Getpeername(int(fd)); err == unix.ENOTCONN {
			return false
		}
		return true
	})
	return err == nil && gerr == nil && soerr == 0
}

// done is called by each pump as it ends; the last one closes both sockets.
func (p *splicePair) done(failed bool) {
	if failed && p.reset.CompareAndSwap(false, true) {
		// Reset both peers, and wake the other pump: closing a file
		// ends its pending poller wait.
		SpliceStats.TCPResets.Add(1)
		p.a.shut(true)
		p.b.shut(true)
	}
	if p.left.Add(-1) == 0 {
		p.a.shut(false)
		p.b.shut(false)
		SpliceStats.TCPActive.Add(-1)
	}
}

// pump moves bytes from src to dst until EOF (then half-closes dst) or an
// error (then resets both).
func (p *splicePair) pump(src, dst *spliceSock) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		p.done(true)
		return
	}
	pr, pw := fds[0], fds[1]
	defer unix.Close(pr)
	defer unix.Close(pw)
	size := setPipeSize(pw)

	inPipe := 0
	eof := false
	var n int64
	var err error
	const flags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK
	// The callbacks are made once per pump, not per wait.
	fill := func(fd uintptr) bool {
		for {
			n, err = splice(int(fd), pw, size, flags)
			if err != unix.EINTR {
				return err != unix.EAGAIN
			}
		}
	}
	drain := func(fd uintptr) bool {
		for {
			n, err = splice(pr, int(fd), inPipe, flags)
			if err != unix.EINTR {
				return err != unix.EAGAIN
			}
		}
	}
	// Attempts go through Control, which keeps the descriptor from being
	// closed (by the other pump's reset) under the system call.
	fillNow := func(fd uintptr) { fill(fd) }
	drainNow := func(fd uintptr) { drain(fd) }
	// short: the last fill got less than it asked for, so the socket is
	// most likely empty now. Then, once the pipe is drained, the pump
	// parks at once instead of trying the socket again first: the wait
	// makes that attempt anyway. One system call less per message is what
	// request-response traffic notices.
	short := false
	for {
		progress := false
		if !eof {
			room := size - inPipe
			if src.rc.Control(fillNow) != nil {
				p.done(true)
				return
			}
			switch {
			case err == nil && n == 0:
				eof = true
				progress = true
			case err == nil:
				inPipe += int(n)
				progress = true
				short = int(n) < room
			case err != unix.EAGAIN:
				p.done(true)
				return
			}
		}
		if inPipe > 0 {
			if dst.rc.Control(drainNow) != nil {
				p.done(true)
				return
			}
			switch {
			case err == nil:
				inPipe -= int(n)
				progress = true
			case err != unix.EAGAIN:
				p.done(true)
				return
			}
		}
		if eof && inPipe == 0 {
			_ = dst.rc.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_WR) })
			p.done(false)
			return
		}
		if progress && !(short && inPipe == 0) {
			continue
		}
		// Nothing moved: wait for the side that blocks us. With bytes
		// in the pipe that is dst (the drain above said EAGAIN);
		// with an empty pipe it is src.
		var werr error
		if inPipe > 0 {
			werr = dst.rc.Write(drain)
			if werr == nil && err == nil {
				inPipe -= int(n)
			}
		} else {
			room := size - inPipe
			werr = src.rc.Read(fill)
			if werr == nil && err == nil {
				if n == 0 {
					eof = true
				}
				inPipe += int(n)
				short = int(n) < room
			}
		}
		if werr != nil || (err != nil && err != unix.EAGAIN) {
			p.done(true)
			return
		}
	}
}

// splice is nbsys.Splice with unix.Splice's results.
func splice(rfd, wfd, n, flags int) (int64, error) {
	r, e := nbsys.Splice(rfd, wfd, n, flags)
	if e != 0 {
		return int64(r), e
	}
	return int64(r), nil
}
