// Package nbsys is the data path's system calls: the few non-blocking
// calls made for every frame or segment (read and write on the tap, the
// socket calls of TCP and UDP flows, epoll harvesting, splice), issued
// without the Go runtime's system call bookkeeping.
//
// # Why not golang.org/x/sys/unix
//
// unix.Read and friends go through syscall.Syscall, which brackets the call
// with entersyscall/exitsyscall so that a call that blocks gives its P to
// another thread. Part of entersyscall is waking sysmon, the runtime's
// monitor thread, whenever it has gone into its deep sleep — which it does
// as soon as every P is idle. A request/response flow idles between every
// transaction, so each transaction's first system call would wake sysmon
// on the other CPU, which then polls every 20 µs until the process idles
// again and goes back to sleep: several context switches per transaction
// (futex wake from runtime.entersyscallWakeSysmon, nanosleep and futex
// wait in sysmon) and an inter-processor wake-up on the critical path.
//
// Every call here is made on a non-blocking descriptor or with
// MSG_DONTWAIT / SPLICE_F_NONBLOCK, so it cannot hold its thread for long,
// and the bookkeeping buys nothing: the calls use syscall.RawSyscall6
// instead. Anything that may block (connect on a blocking socket, waiting
// for readiness) stays with the runtime: readiness is waited for in the
// runtime's poller, never here.
//
// The same holds for the few calls of periodic work that never wait (the
// "auto" port scan's sock_diag dump and /proc/net reads): an idle daemon
// would otherwise wake sysmon with each of them.
//
// Errors are returned as unix.Errno (0 for success), which converts to an
// error without allocating.
package nbsys

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Read is read(2) on a non-blocking descriptor.
func Read(fd int, p []byte) (int, unix.Errno) {
	r, _, e := syscall.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(r), e
}

// Write is write(2) on a non-blocking descriptor.
func Write(fd int, p []byte) (int, unix.Errno) {
	r, _, e := syscall.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(r), e
}

// Sendmsg is sendmsg(2); flags should include MSG_DONTWAIT unless fd is
// non-blocking.
func Sendmsg(fd int, msg *unix.Msghdr, flags int) (int, unix.Errno) {
	r, _, e := syscall.RawSyscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(msg)), uintptr(flags))
	return int(r), e
}

// Recvmsg is recvmsg(2); flags should include MSG_DONTWAIT unless fd is
// non-blocking.
func Recvmsg(fd int, msg *unix.Msghdr, flags int) (int, unix.Errno) {
	r, _, e := syscall.RawSyscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(msg)), uintptr(flags))
	return int(r), e
}

// Sendmmsg is sendmmsg(2) of hdrs.
func Sendmmsg(fd int, hdrs []unix.Mmsghdr, flags int) (int, unix.Errno) {
	if len(hdrs) == 0 {
		return 0, 0
	}
	r, _, e := syscall.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdrs[0])), uintptr(len(hdrs)), uintptr(flags), 0, 0)
	return int(r), e
}

// Recvmmsg is recvmmsg(2) into hdrs, without a timeout.
func Recvmmsg(fd int, hdrs []unix.Mmsghdr, flags int) (int, unix.Errno) {
	if len(hdrs) == 0 {
		return 0, 0
	}
	r, _, e := syscall.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdrs[0])), uintptr(len(hdrs)), uintptr(flags), 0, 0)
	return int(r), e
}

// Sendto is sendto(2) of p to the raw socket address sa of length salen
// (nil: the connected peer).
func Sendto(fd int, p []byte, flags int, sa unsafe.Pointer, salen uint32) (int, unix.Errno) {
	r, _, e := syscall.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)), uintptr(flags), uintptr(sa), uintptr(salen))
	return int(r), e
}

// Recvfrom is recvfrom(2) into p; the sender's address goes to sa, whose
// size is *salen on entry (sa and salen may be nil). With p empty and
// MSG_TRUNC, a TCP socket discards up to n bytes: see Discard.
func Recvfrom(fd int, p []byte, flags int, sa unsafe.Pointer, salen *uint32) (int, unix.Errno) {
	r, _, e := syscall.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)), uintptr(flags), uintptr(sa), uintptr(unsafe.Pointer(salen)))
	return int(r), e
}

// Discard drops up to n bytes from the head of a TCP socket's receive
// queue without copying them (recv with MSG_TRUNC and no buffer).
func Discard(fd int, n int) (int, unix.Errno) {
	r, _, e := syscall.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), 0, uintptr(n), unix.MSG_TRUNC|unix.MSG_DONTWAIT, 0, 0)
	return int(r), e
}

// IoctlInt is an ioctl that stores an int through its argument (SIOCOUTQ,
// SIOCINQ, FIONREAD).
func IoctlInt(fd int, req uint, v *int32) unix.Errno {
	_, _, e := syscall.RawSyscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(v)))
	return e
}

// GetsockoptInt reads an integer socket option.
func GetsockoptInt(fd, level, opt int) (int, unix.Errno) {
	var v int32
	l := uint32(4)
	_, _, e := syscall.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
	return int(v), e
}

// EpollWait is epoll_wait(2) with a zero timeout: it never waits.
func EpollWait(epfd int, evs []unix.EpollEvent) (int, unix.Errno) {
	if len(evs) == 0 {
		return 0, 0
	}
	r, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&evs[0])), uintptr(len(evs)), 0, 0, 0)
	return int(r), e
}

// Splice is splice(2) between rfd and wfd without offsets; flags must
// include SPLICE_F_NONBLOCK, and the socket end should be non-blocking.
func Splice(rfd, wfd, n int, flags int) (int, unix.Errno) {
	r, _, e := syscall.RawSyscall6(unix.SYS_SPLICE, uintptr(rfd), 0, uintptr(wfd), 0, uintptr(n), uintptr(flags))
	return int(r), e
}

// The calls below open, set up and close a flow's socket. None of them
// waits: the socket is created non-blocking, connect on it returns
// EINPROGRESS (or completes at once towards a local peer), and close
// without a lingering timeout never waits for the peer. A flow of a
// connect/request/response/close exchange makes a dozen of them.

// Socket is socket(2).
func Socket(domain, typ, proto int) (int, unix.Errno) {
	r, _, e := syscall.RawSyscall(unix.SYS_SOCKET, uintptr(domain), uintptr(typ), uintptr(proto))
	return int(r), e
}

// SetsockoptInt sets an integer socket option.
func SetsockoptInt(fd, level, opt, v int) unix.Errno {
	iv := int32(v)
	_, _, e := syscall.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&iv)), 4, 0)
	return e
}

// SetsockoptLinger sets SO_LINGER.
func SetsockoptLinger(fd int, l *unix.Linger) unix.Errno {
	_, _, e := syscall.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_LINGER,
		uintptr(unsafe.Pointer(l)), unsafe.Sizeof(*l), 0)
	return e
}

// Connect is connect(2) to the raw socket address sa of length salen, on a
// non-blocking socket.
func Connect(fd int, sa unsafe.Pointer, salen uint32) unix.Errno {
	_, _, e := syscall.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(sa), uintptr(salen))
	return e
}

// Connected reports whether a socket has a peer (getpeername succeeds).
func Connected(fd int) bool {
	var sa unix.RawSockaddrInet6
	l := uint32(unsafe.Sizeof(sa))
	_, _, e := syscall.RawSyscall(unix.SYS_GETPEERNAME, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)))
	return e == 0
}

// EpollCtl is epoll_ctl(2).
func EpollCtl(epfd, op, fd int, ev *unix.EpollEvent) unix.Errno {
	_, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	return e
}

// Shutdown is shutdown(2).
func Shutdown(fd, how int) unix.Errno {
	_, _, e := syscall.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	return e
}

// Close is close(2) of a descriptor that no lingering option makes wait.
func Close(fd int) unix.Errno {
	_, _, e := syscall.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
	return e
}

// Seek is lseek(2).
func Seek(fd int, offset int64, whence int) (int64, unix.Errno) {
	r, _, e := syscall.RawSyscall(unix.SYS_LSEEK, uintptr(fd), uintptr(offset), uintptr(whence))
	return int64(r), e
}
