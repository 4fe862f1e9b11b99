package sockutil

import (
	"encoding/binary"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/internal/nbsys"
)

// Datagram socket plumbing shared by the UDP and ICMP actors.
//
// The actors do their I/O with raw, non-blocking syscalls on the integer fd
// (sendmmsg, recvmmsg, sendto with pre-built sockaddrs), because the
// syscall.RawConn callbacks and the net package's address types would cost
// an allocation per datagram. The fd is still wrapped in an *os.File so that
// the runtime poller knows it: that is what a UDP receiver waits on, and
// closing the File is what ends a pending wait. Only the goroutine that owns the
// socket uses the fd, and it closes the File last, so the integer is never
// used after it could have been reused.

// DgramSock is a non-blocking datagram socket registered with the poller.
type DgramSock struct {
	FD      int
	file    *os.File
	RawConn syscall.RawConn
	Ino     uint64 // in ownDgram while open; 0 if fstat failed
}

// ownDgram holds the inodes of the datagram sockets NewDgramSock made and
// close has not closed. "-U auto" scans the host's UDP table for bound,
// unconnected sockets, and the host sockets of the guest's UDP flows are
// exactly that (bound to the guest's source port): the scan must leave
// them out. Keeping the set here costs an fstat(2) per socket; finding
// them in /proc/self/fd cost a readlink(2) per open descriptor, flows
// included, every second.
var ownDgram = struct {
	sync.Mutex
	m map[uint64]struct{}
}{m: make(map[uint64]struct{})}

// OwnDgramInodes copies ownDgram into m (cleared first) and returns it.
func OwnDgramInodes(m map[uint64]struct{}) map[uint64]struct{} {
	if m == nil {
		m = make(map[uint64]struct{})
	}
	clear(m)
	ownDgram.Lock()
	for ino := range ownDgram.m {
		m[ino] = struct{}{}
	}
	ownDgram.Unlock()
	return m
}

// NewDgramSock creates a socket of the given family and protocol
// (IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6); setup runs on the raw fd
// before it is handed to the poller (options, bind). On error the fd is
// closed.
func NewDgramSock(v6 bool, proto int, setup func(fd int) error) (*DgramSock, error) {
	family := unix.AF_INET
	if v6 {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, err
	}
	if v6 {
		// A v6 socket carries only v6: the guest's v4 flows get their own
		// v4 sockets, so a v4-mapped source never has to be untangled.
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	if setup != nil {
		if err := setup(fd); err != nil {
			unix.Close(fd)
			return nil, err
		}
	}
	f := os.NewFile(uintptr(fd), "dgram")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	s := &DgramSock{FD: fd, file: f, RawConn: rc}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil {
		s.Ino = st.Ino
		ownDgram.Lock()
		ownDgram.m[s.Ino] = struct{}{}
		ownDgram.Unlock()
	}
	return s, nil
}

// Close closes the socket, ending a pending wait on it. Owner only, once.
func (s *DgramSock) Close() {
	if s.Ino != 0 {
		ownDgram.Lock()
		delete(ownDgram.m, s.Ino)
		ownDgram.Unlock()
	}
	s.file.Close()
}

// SetRecvErr asks the kernel to queue ICMP errors (and local errors) on the
// socket's error queue, also for unconnected sockets, which is how the
// actors learn that a datagram they sent met "port unreachable".
func SetRecvErr(fd int, v6 bool) error {
	if v6 {
		return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1)
	}
	return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1)
}

// BindAddrPort binds fd to ap.
func BindAddrPort(fd int, ap netip.AddrPort) error {
	var sa unix.RawSockaddrInet6
	l := PutSockaddr(&sa, ap)
	_, _, e := unix.Syscall(unix.SYS_BIND, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(l))
	if e != 0 {
		return e
	}
	return nil
}

// LocalPort returns the port fd is bound to.
func LocalPort(fd int) uint16 {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return 0
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return uint16(a.Port)
	case *unix.SockaddrInet6:
		return uint16(a.Port)
	}
	return 0
}

// PutSockaddr writes ap as a sockaddr_in or sockaddr_in6 into sa (which is
// large enough for both) and returns its length.
func PutSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort) uint32 {
	a := ap.Addr()
	if a.Is4() || a.Is4In6() {
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*s4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.Unmap().As4()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&s4.Port))[:], ap.Port())
		return unix.SizeofSockaddrInet4
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], ap.Port())
	return unix.SizeofSockaddrInet6
}

// GetSockaddr reads the address a recvmmsg or recvmsg left in sa.
func GetSockaddr(sa *unix.RawSockaddrInet6) netip.AddrPort {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	switch sa.Family {
	case unix.AF_INET:
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), port)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}

// sendmmsg sends hdrs[:n] and returns how many went out.
func Sendmmsg(fd int, hdrs []unix.Mmsghdr) (int, syscall.Errno) {
	return nbsys.Sendmmsg(fd, hdrs, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
}

// recvmmsg receives into hdrs and returns how many datagrams arrived.
func Recvmmsg(fd int, hdrs []unix.Mmsghdr) (int, syscall.Errno) {
	return nbsys.Recvmmsg(fd, hdrs, unix.MSG_DONTWAIT)
}

// sendto sends p to the sockaddr sa of length l.
func Sendto(fd int, p []byte, sa *unix.RawSockaddrInet6, l uint32) syscall.Errno {
	_, e := nbsys.Sendto(fd, p, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, unsafe.Pointer(sa), l)
	return e
}

// recvfrom receives one datagram into p, the sender into sa.
func Recvfrom(fd int, p []byte, sa *unix.RawSockaddrInet6) (int, syscall.Errno) {
	l := uint32(unix.SizeofSockaddrInet6)
	return nbsys.Recvfrom(fd, p, unix.MSG_DONTWAIT|unix.MSG_TRUNC, unsafe.Pointer(sa), &l)
}

// IsTransient reports errors after which the next datagram may well go
// through: a pending ICMP error reported on this call, or a full buffer.
func IsTransient(e syscall.Errno) bool {
	switch e {
	case unix.ECONNREFUSED, unix.EHOSTUNREACH, unix.ENETUNREACH, unix.EMSGSIZE,
		unix.EHOSTDOWN, unix.ENETDOWN, unix.EPROTO, unix.ETIMEDOUT, unix.EINTR, unix.ENOBUFS:
		return true
	}
	return false
}

var monoBase = time.Now()

// MonoNow is a monotonic clock in nanoseconds, cheap enough per batch.
func MonoNow() int64 { return int64(time.Since(monoBase)) }

// SetBufs asks for socket buffers big enough for bursts of large datagrams;
// the kernel caps them at rmem_max/wmem_max.
func SetBufs(fd int) {
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
}
