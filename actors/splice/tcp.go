package splice

import (
	"errors"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/internal/poll"
	"github.com/gopasta/gopasta/actors/internal/sockutil"
	"github.com/gopasta/gopasta/internal/nbsys"
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
// goroutines per pair cost less than one goroutine waking on four
// readiness channels (each fed by a goroutine of its own) or one with a
// private epoll (a blocking
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

// spliceSock is one side of a spliced pair.
type spliceSock struct {
	fd    int
	file  *os.File
	rc    syscall.RawConn
	close sync.Once

	// Hang-up watch (see splicePump): poll and slot while registered,
	// hup once the socket reported end of stream, a hang-up or an error.
	poll *poll.Poller
	slot int32
	hup  atomic.Bool
}

func newSpliceSock(fd int) (*spliceSock, error) {
	f := os.NewFile(uintptr(fd), "splice")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &spliceSock{fd: fd, file: f, rc: rc, slot: -1}, nil
}

// spliceHupEvents: a FIN only (a hang-up and an error are always
// reported). Data raises no event here: the pumps hear of it from the
// runtime's poller.
const spliceHupEvents = unix.EPOLLRDHUP | unix.EPOLLET

// watch registers s with p for hang-ups. The pump reading s then skips
// the read that only says EAGAIN; without the watch it makes it always.
// Called before the pump starts, so the pump sees poll set.
func (s *spliceSock) watch(p *poll.Poller) {
	slot, err := p.Add(s.fd, s, spliceHupEvents)
	if err != nil {
		return
	}
	s.slot, s.poll = slot, p
}

// notify is called by the harvester for the socket's hang-up events: the
// first one is news for the pump.
func (s *spliceSock) Notify(uint32) bool { return !s.hup.Swap(true) }

// hupDeadline is a read deadline long past: setting it ends the pump's
// wait for data at once (see splicePump.run).
var hupDeadline = time.Unix(1, 0)

// woken wakes the pump that reads s, wherever it waits for s: with hup
// set, it makes the read it had skipped and finds the end of stream.
func (s *spliceSock) Woken() { _ = s.file.SetReadDeadline(hupDeadline) }

func (s *spliceSock) shut(reset bool) {
	s.close.Do(func() {
		if s.poll != nil {
			s.poll.Remove(s.fd, &s.slot)
		}
		if reset {
			_ = unix.SetsockoptLinger(s.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		}
		s.file.Close()
	})
}

// splicePair is two connected sockets joined by two pumps.
type splicePair struct {
	sp    *Splicer // its env, if any, is the budget the pair holds actors.FDsSplice of
	kind  int      // of the descriptors it holds
	a, b  *spliceSock
	left  atomic.Int32 // pumps still running
	reset atomic.Bool
}

// Alt is a second target for a spliced connection whose first is
// refused: the same port in the other IP family. A client of "localhost"
// often tries ::1 first, and its connection is accepted by our [::]
// listener; a service listening on 127.0.0.1 only (or the other way round)
// would refuse the splice, and the client would see its accepted
// connection reset rather than refused, so it would not try the next
// address. Trying the other family once makes "localhost:PORT" work
// whichever family the service listens on.
type Alt struct {
	Dst  netip.AddrPort
	Sock func() (int, error) // a non-blocking socket of dst's family, in the right namespace
}

// Start joins the accepted socket accFD and the socket connFD, on
// which a non-blocking connect is in progress. It owns both descriptors
// from now on: if the connect fails (and alt, if not nil, is refused
// too), the client is reset.
func (sp *Splicer) Start(kind, accFD, connFD int, alt *Alt) {
	for _, fd := range []int{accFD, connFD} {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	p := &splicePair{sp: sp, kind: kind}
	a, err := newSpliceSock(accFD)
	if err != nil {
		unix.Close(accFD)
		unix.Close(connFD)
		p.giveFDs()
		return
	}
	b, err := newSpliceSock(connFD)
	if err != nil {
		a.shut(true)
		unix.Close(connFD)
		p.giveFDs()
		return
	}
	p.a, p.b = a, b
	p.sp.Stats.TCPOpened.Add(1)
	p.sp.Stats.TCPActive.Add(1)
	p.left.Store(2)
	go func() {
		for err := p.connected(); err != nil; err = p.connected() {
			if err != unix.ECONNREFUSED || alt == nil || !p.redial(alt) {
				p.sp.Stats.TCPResets.Add(1)
				p.a.shut(true)
				p.b.shut(false)
				p.sp.Stats.TCPActive.Add(-1)
				p.giveFDs()
				return
			}
			alt = nil
		}
		if sp.poll != nil {
			p.a.watch(sp.poll)
			p.b.watch(sp.poll)
		}
		go p.pump(p.b, p.a)
		p.pump(p.a, p.b)
	}()
}

// dial makes a socket for a's target and starts a non-blocking connect
// on it; the descriptor is the caller's.
func (a *Alt) Dial() (int, error) {
	fd, err := a.Sock()
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, sockutil.SockaddrOf(a.Dst)); err != nil && err != unix.EINPROGRESS && err != unix.EINTR {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// redial replaces the refused b with a connection to alt's target.
func (p *splicePair) redial(alt *Alt) bool {
	fd, err := alt.Dial()
	if err != nil {
		return false
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	b, err := newSpliceSock(fd)
	if err != nil {
		unix.Close(fd)
		return false
	}
	p.b.shut(false)
	p.b = b
	p.sp.Stats.TCPFamilyRetries.Add(1)
	return true
}

// connected waits for the connect on b to finish: nil once connected,
// else why not.
func (p *splicePair) connected() error {
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
	switch {
	case err != nil:
		return err
	case gerr != nil:
		return gerr
	case soerr != 0:
		return unix.Errno(soerr)
	}
	return nil
}

// done is called by each pump as it ends; the last one closes both sockets.
func (p *splicePair) done(failed bool) {
	if failed && p.reset.CompareAndSwap(false, true) {
		// Reset both peers, and wake the other pump: closing a file
		// ends its pending poller wait.
		p.sp.Stats.TCPResets.Add(1)
		p.a.shut(true)
		p.b.shut(true)
	}
	if p.left.Add(-1) == 0 {
		p.a.shut(false)
		p.b.shut(false)
		p.sp.Stats.TCPActive.Add(-1)
		p.giveFDs()
	}
}

// giveFDs returns the pair's descriptors to the budget, once every one of
// them is closed.
func (p *splicePair) giveFDs() {
	if p.sp.env != nil {
		p.sp.env.Limits.GiveFDs(p.kind, actors.FDsSplice)
	}
}

// pumpFlags: never block in the kernel (the poller does the waiting), and
// move pages rather than copy where the kernel can.
const pumpFlags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK

// splicePump is one direction of a pair: src -> pipe -> dst.
//
// The pump lives inside the poller's callbacks. While the socket it reads
// keeps delivering, it stays in src's RawConn.Read callback, moving each
// read straight on to dst, and returns false there to wait: the poller
// then parks it until src is readable and calls the callback again. That
// matters because entering RawConn.Read afresh forgets readiness the
// poller recorded, so every re-entry costs a read that can only say
// EAGAIN; staying inside costs none. The pump leaves the read callback
// only when dst cannot take the pipe's bytes (it then waits in dst's
// RawConn.Write callback until the pipe is empty), at end of stream, or
// on an error.
//
// After a read it waits for src at once when that read plainly emptied
// the socket, rather than make one more read that can only say EAGAIN
// (on request/response traffic, a third of a pump's system calls). A
// read emptied the socket if it moved fewer bytes than the pipe has
// slots: it started on an empty pipe and each slot holds at least a
// byte, so the pipe cannot have filled, and a non-blocking splice from a
// TCP socket stops short only at a full pipe or at the end of the queue.
// Data that arrives later is a new edge, which the poller records while
// the pump is inside the callback.
//
// What the read cannot say is whether a FIN came with the data: the read
// ends at the FIN without reporting it, and the FIN's own event, if it
// arrived before the poller looked, was merged into the data's. So the
// shortcut is only taken while src is watched for hang-ups in the flows'
// epoll (internal/poll/poll.go, spliceSock.watch) and has reported none. A FIN
// sets src.hup and ends the pump's wait through a read deadline; from
// then on the pump makes the extra read after every read, and finds the
// end of stream. An unwatched socket always gets the extra read.
type splicePump struct {
	p        *splicePair
	src, dst *spliceSock
	pr, pw   int
	size     int // pipe capacity, bytes
	slots    int // pipe capacity, buffers
	dfd      int // dst's descriptor, valid inside dst's callbacks
	inPipe   int // bytes in the pipe
	eof      bool
	err      error // fatal socket error; resets the pair

	// Bound once per pump, so waiting allocates nothing.
	readable, writable func(uintptr) bool
	drainDst, shutDst  func(uintptr)
}

// pump moves bytes from src to dst until EOF (then half-closes dst) or an
// error (then resets both).
func (p *splicePair) pump(src, dst *spliceSock) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		p.done(true)
		return
	}
	u := &splicePump{p: p, src: src, dst: dst, pr: fds[0], pw: fds[1]}
	defer unix.Close(u.pr)
	defer unix.Close(u.pw)
	u.size = setPipeSize(u.pw)
	u.slots = u.size / os.Getpagesize()
	u.readable = u.onReadable
	u.writable = u.onWritable
	u.drainDst = func(dfd uintptr) {
		u.dfd = int(dfd)
		u.drain()
	}
	u.shutDst = func(dfd uintptr) { _ = unix.Shutdown(int(dfd), unix.SHUT_WR) }
	u.run()
}

// run is the pump's loop.
func (u *splicePump) run() {
	for {
		err := u.src.rc.Read(u.readable)
		if errors.Is(err, os.ErrDeadlineExceeded) && u.src.hup.Load() {
			// src hung up while we waited (spliceSock.woken): read on.
			_ = u.src.file.SetReadDeadline(time.Time{})
			continue
		}
		if err != nil || u.err != nil {
			u.p.done(true)
			return
		}
		if u.inPipe > 0 {
			// dst is full: wait until the pipe is empty, then read on.
			if u.dst.rc.Write(u.writable) != nil || u.err != nil {
				u.p.done(true)
				return
			}
		}
		if u.eof {
			_ = u.dst.rc.Control(u.shutDst)
			u.p.done(false)
			return
		}
	}
}

// onReadable runs inside src's RawConn.Read with the pipe empty. It
// returns false to wait for src, true to leave (dst full, EOF, error).
func (u *splicePump) onReadable(sfd uintptr) bool {
	for {
		n, e := nbsys.Splice(int(sfd), u.pw, u.size, pumpFlags)
		switch e {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			// The pipe is empty, so this is the socket's: wait.
			u.p.sp.Stats.TCPEmptyReads.Add(1)
			return false
		default:
			u.err = e
			return true
		}
		if n == 0 {
			u.eof = true
			return true
		}
		u.inPipe = n
		// dst goes through Control, which keeps its descriptor from
		// being closed (by the other pump's reset) and its number
		// reused under the system call. Only ever for the length of
		// a call: os.File.Close waits for such references, so holding
		// one while waiting could deadlock the two pumps' resets.
		if u.dst.rc.Control(u.drainDst) != nil {
			u.err = os.ErrClosed
			return true
		}
		if u.inPipe > 0 {
			return true
		}
		if n < u.slots && u.src.poll != nil && !u.src.hup.Load() {
			return false // emptied, no FIN: wait (see splicePump)
		}
	}
}

// onWritable runs inside dst's RawConn.Write: it empties the pipe.
func (u *splicePump) onWritable(dfd uintptr) bool {
	u.dfd = int(dfd)
	return u.drain() || u.err != nil
}

// drain moves the pipe's bytes to dst and reports whether the pipe is
// empty; false with u.err nil means dst has no room.
func (u *splicePump) drain() bool {
	for u.inPipe > 0 {
		n, e := nbsys.Splice(u.pr, u.dfd, u.inPipe, pumpFlags)
		switch e {
		case 0:
			u.inPipe -= n
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			u.err = e
			return false
		}
	}
	return true
}
