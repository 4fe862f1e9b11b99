package tcp

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors/internal/poll"
	"github.com/gopasta/gopasta/internal/nbsys"
)

// tcpSock is the host side of a flow: a non-blocking TCP socket. All I/O
// is done with raw system calls on fd, with iovecs and the message header
// kept in the flow, so that the data path allocates nothing. Readiness
// comes from the Protocol's edge-triggered epoll (internal/poll/poll.go) on wake.
type tcpSock struct {
	fd   int
	poll *poll.Poller
	slot int32 // in poll, -1 once removed

	// wake receives a value when an armed kind of event is pending.
	wake    chan struct{}
	pending atomic.Uint32 // events seen since the owner last cleared them
	armed   atomic.Uint32 // events the owner waits for
	// owner is the flow the socket belongs to, for the harvester to run
	// it inline (inline.go); nil until set, then never changed.
	owner atomic.Pointer[tcpConn]

	// peekOff says whether the kernel keeps our peek offset (SO_PEEK_OFF
	// on TCP, Linux 6.10+). Without it every peek starts at the head of
	// the receive queue and skips the bytes in flight into discardBuf.
	peekOff bool

	msg  unix.Msghdr
	iov  [tcpMaxIov]unix.Iovec
	ival int32 // ioctl result
}

// tcpMaxIov bounds one recvmsg/writev: UIO_MAXIOV is 1024; this many
// MSS-sized frames (4 MiB at a 65480-byte MSS) is more than any window.
const tcpMaxIov = 128

// discardBuf receives already-sent bytes when a peek must start at offset 0
// (kernels without SO_PEEK_OFF for TCP). Only the kernel writes it and no
// one reads it, so sharing it between flows is harmless.
var discardBuf []byte

var discardOnce sync.Once

func getDiscard() []byte {
	discardOnce.Do(func() { discardBuf = make([]byte, tcpMaxWindow) })
	return discardBuf
}

// tcpNoPeekOff makes new sockets do without SO_PEEK_OFF, as on kernels
// before 6.10; tests set it to cover that path.
var tcpNoPeekOff bool

// NewSock wraps a non-blocking socket fd. Unless later is set, it is
// registered with tp's poller at once; otherwise the caller calls
// register (an outbound socket, once connect is under way: an unconnected
// socket reports a hang-up that would read as "connected").
func newSock(tp *Protocol, fd int, later bool) (*tcpSock, error) {
	s := &tcpSock{fd: fd, poll: tp.poll, slot: -1, wake: make(chan struct{}, 1)}
	s.peekOff = !tcpNoPeekOff && nbsys.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0) == 0
	if !later {
		if err := s.register(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// register adds the socket to its poller.
func (s *tcpSock) register() error {
	slot, err := s.poll.Add(s.fd, s, poll.Events)
	s.slot = slot
	return err
}

// close closes the socket, abortively (RST to the host peer) if reset.
func (s *tcpSock) Close(reset bool) {
	if reset {
		_ = nbsys.SetsockoptLinger(s.fd, &unix.Linger{Onoff: 1, Linger: 0})
	}
	s.poll.Remove(s.fd, &s.slot)
	nbsys.Close(s.fd)
	s.fd = -1
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// recvmsg reads into the first n iovecs with flags.
func (s *tcpSock) recvmsg(n int, flags int) (int, error) {
	s.msg = unix.Msghdr{Iov: &s.iov[0]}
	s.msg.SetIovlen(n)
	r, e := nbsys.Recvmsg(s.fd, &s.msg, flags|unix.MSG_DONTWAIT)
	return r, errnoErr(e)
}

// sendmsg writes the first n iovecs (MSG_NOSIGNAL: a reset peer is an
// error to handle, not a signal).
func (s *tcpSock) sendmsg(n int) (int, error) {
	s.msg = unix.Msghdr{Iov: &s.iov[0]}
	s.msg.SetIovlen(n)
	r, e := nbsys.Sendmsg(s.fd, &s.msg, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
	return r, errnoErr(e)
}

// discard drops n bytes from the head of the receive queue without copying
// them (TCP honours MSG_TRUNC on receive as "discard").
func (s *tcpSock) discard(n int) error {
	for n > 0 {
		r, e := nbsys.Discard(s.fd, n)
		if e != 0 {
			return e
		}
		if r == 0 {
			return nil
		}
		n -= r
	}
	return nil
}

// setPeekOff sets the kernel's peek offset.
func (s *tcpSock) setPeekOff(off int) {
	if s.peekOff {
		_ = nbsys.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, off)
	}
}

// sendQueued returns the bytes in the send queue, unsent or unacknowledged
// (SIOCOUTQ).
func (s *tcpSock) sendQueued() int {
	e := nbsys.IoctlInt(s.fd, unix.SIOCOUTQ, &s.ival)
	if e != 0 {
		return 0
	}
	return int(s.ival)
}

// getInt reads an integer socket option.
func (s *tcpSock) getInt(level, opt int) int {
	v, e := nbsys.GetsockoptInt(s.fd, level, opt)
	if e != 0 {
		return 0
	}
	return v
}

// soError returns and clears the socket's pending error.
func (s *tcpSock) soError() error {
	v, err := unix.GetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	return errnoErr(unix.Errno(v))
}

func setIov(v *unix.Iovec, b []byte) {
	if len(b) == 0 {
		v.Base, v.Len = nil, 0
		return
	}
	v.Base = &b[0]
	v.SetLen(len(b))
}

// tcpMaxWindow is the largest window gopasta advertises or uses: the
// scale factors below are chosen so that buffers up to this size fit.
const tcpMaxWindow = 16 << 20

// tcpMaxSegOpt is the largest value TCP_MAXSEG accepts; a guest MSS above
// it (a 65520-byte tap) is left to the path MTU.
const tcpMaxSegOpt = 32767

// SysMax returns the largest send and receive buffers the kernel's TCP
// autotuning may grow a socket to (tcp_wmem/tcp_rmem maxima), read once.
var SysMax = sync.OnceValues(func() (wmem, rmem int) {
	return readSysctlMax("/proc/sys/net/ipv4/tcp_wmem", 4<<20), readSysctlMax("/proc/sys/net/ipv4/tcp_rmem", 6<<20)
})

func readSysctlMax(path string, def int) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return def
	}
	f := strings.Fields(string(b))
	if len(f) != 3 {
		return def
	}
	v, err := strconv.Atoi(f[2])
	if err != nil || v <= 0 {
		return def
	}
	return v
}

// windowScale returns the smallest shift that fits buf bytes of window in
// the 16-bit field, at most 14 (RFC 7323).
func windowScale(buf int) int {
	buf = min(buf, tcpMaxWindow)
	ws := 0
	for ws < 14 && buf>>ws > 0xffff {
		ws++
	}
	return ws
}

// Readiness bits of tcpSock.pending and tcpSock.armed.
// sockHup is sticky: the socket reported end of stream, a hang-up or an
// error, so a short peek no longer means the queue is drained.
const (
	sockReadable = 1 << iota
	sockWritable
	sockHup
)

// notify is the harvester's half of the protocol described above: it
// records events and reports whether the owner is to be woken.
func (s *tcpSock) Notify(events uint32) bool {
	var b uint32
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		b |= sockReadable
	}
	if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		b |= sockWritable
	}
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		b |= sockHup
	}
	s.pending.Or(b)
	return s.armed.Load()&b != 0
}

// woken runs the flow inline if it can, else wakes its actor.
func (s *tcpSock) Woken() {
	if !sockInline(s) {
		s.kick()
	}
}

func (s *tcpSock) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// clear forgets pending events of kind b: the owner calls it right before
// the I/O whose EAGAIN would make it arm b.
func (s *tcpSock) clear(b uint32) { s.pending.And(^b) }

// arm asks for a value on wake at the next event of kind b (or at once, if
// one arrived since clear). Owner only.
func (s *tcpSock) arm(b uint32) {
	if s.armed.Load()&b == b {
		return
	}
	s.armed.Or(b)
	if s.pending.Load()&b != 0 {
		s.kick()
	}
}

// hungUp reports whether the socket ever reported end of stream, a
// hang-up or an error.
func (s *tcpSock) hungUp() bool { return s.pending.Load()&sockHup != 0 }

// fired returns the armed kinds that have an event pending, disarms them
// and clears their pending bits: the owner calls it after receiving from
// wake, and then looks at the socket for each kind returned.
func (s *tcpSock) fired() uint32 {
	f := s.armed.Load() & s.pending.Load()
	s.armed.And(^f)
	s.pending.And(^f)
	return f
}
