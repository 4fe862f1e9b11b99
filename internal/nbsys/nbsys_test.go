package nbsys

import (
	"bytes"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func tcpPair(t *testing.T) (a, b int) {
	t.Helper()
	l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(l)
	if err := unix.Bind(l, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(l, 1); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(l)
	a, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(a, sa); err != nil && err != unix.EINPROGRESS {
		t.Fatal(err)
	}
	b, _, err = unix.Accept4(l, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(a); unix.Close(b) })
	return a, b
}

// TestCalls drives every wrapper once against real descriptors and checks
// results and errno, so that a wrong argument order cannot hide.
func TestCalls(t *testing.T) {
	a, b := tcpPair(t)

	if _, e := Read(b, make([]byte, 4)); e != unix.EAGAIN {
		t.Fatalf("Read on empty socket: errno %v, want EAGAIN", e)
	}
	if n, e := Write(a, []byte("hello")); n != 5 || e != 0 {
		t.Fatalf("Write = %d, %v", n, e)
	}
	iov := []unix.Iovec{{}, {}}
	p1, p2 := []byte(" wor"), []byte("ld")
	iov[0].Base, iov[1].Base = &p1[0], &p2[0]
	iov[0].SetLen(len(p1))
	iov[1].SetLen(len(p2))
	msg := unix.Msghdr{Iov: &iov[0]}
	msg.SetIovlen(2)
	if n, e := Sendmsg(a, &msg, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL); n != 6 || e != 0 {
		t.Fatalf("Sendmsg = %d, %v", n, e)
	}
	// Wait for all 11 bytes to be queued at b.
	var inq int32
	for range 1000 {
		if IoctlInt(b, unix.SIOCINQ, &inq) != 0 {
			t.Fatal("SIOCINQ failed")
		}
		if inq == 11 {
			break
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
	}
	if inq != 11 {
		t.Fatalf("SIOCINQ = %d, want 11", inq)
	}
	peek := make([]byte, 16)
	riov := unix.Iovec{Base: &peek[0]}
	riov.SetLen(len(peek))
	rmsg := unix.Msghdr{Iov: &riov}
	rmsg.SetIovlen(1)
	if n, e := Recvmsg(b, &rmsg, unix.MSG_PEEK|unix.MSG_DONTWAIT); n != 11 || e != 0 || string(peek[:n]) != "hello world" {
		t.Fatalf("Recvmsg(PEEK) = %d, %v, %q", n, e, peek[:max(n, 0)])
	}
	if n, e := Discard(b, 6); n != 6 || e != 0 {
		t.Fatalf("Discard = %d, %v", n, e)
	}
	got := make([]byte, 16)
	if n, e := Recvfrom(b, got, unix.MSG_DONTWAIT, nil, nil); n != 5 || e != 0 || string(got[:n]) != "world" {
		t.Fatalf("Recvfrom = %d, %v, %q", n, e, got[:max(n, 0)])
	}
	if v, e := GetsockoptInt(a, unix.SOL_SOCKET, unix.SO_TYPE); v != unix.SOCK_STREAM || e != 0 {
		t.Fatalf("GetsockoptInt(SO_TYPE) = %d, %v", v, e)
	}
	if _, e := GetsockoptInt(-1, unix.SOL_SOCKET, unix.SO_TYPE); e != unix.EBADF {
		t.Fatalf("GetsockoptInt(-1) errno %v, want EBADF", e)
	}

	// Splice a -> pipe -> b's peer direction.
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, e := Write(b, []byte("spliced")); e != 0 {
		t.Fatal(e)
	}
	var n int
	var e unix.Errno
	for range 1000 {
		if n, e = Splice(a, p[1], 64, unix.SPLICE_F_NONBLOCK); e != unix.EAGAIN {
			break
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
	}
	if n != 7 || e != 0 {
		t.Fatalf("Splice = %d, %v", n, e)
	}
	if n, e := Read(p[0], got); n != 7 || e != 0 || !bytes.Equal(got[:7], []byte("spliced")) {
		t.Fatalf("Read(pipe) = %d, %v", n, e)
	}
}

func TestDatagramCalls(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	bufs := [][]byte{[]byte("one"), []byte("two!")}
	var hdrs [2]unix.Mmsghdr
	var iovs [2]unix.Iovec
	for i, b := range bufs {
		iovs[i].Base = &b[0]
		iovs[i].SetLen(len(b))
		hdrs[i].Hdr.Iov = &iovs[i]
		hdrs[i].Hdr.SetIovlen(1)
	}
	if n, e := Sendmmsg(fds[0], hdrs[:], unix.MSG_DONTWAIT); n != 2 || e != 0 {
		t.Fatalf("Sendmmsg = %d, %v", n, e)
	}
	in := [2][8]byte{}
	for i := range hdrs {
		iovs[i].Base = &in[i][0]
		iovs[i].SetLen(8)
	}
	if n, e := Recvmmsg(fds[1], hdrs[:], unix.MSG_DONTWAIT); n != 2 || e != 0 ||
		string(in[0][:hdrs[0].Len]) != "one" || string(in[1][:hdrs[1].Len]) != "two!" {
		t.Fatalf("Recvmmsg = %d, %v", n, e)
	}
	if _, e := Sendto(fds[0], []byte("x"), unix.MSG_DONTWAIT, unsafe.Pointer(nil), 0); e != 0 {
		t.Fatal(e)
	}
	if n, e := Recvfrom(fds[1], in[0][:], unix.MSG_DONTWAIT, nil, nil); n != 1 || e != 0 {
		t.Fatalf("Recvfrom = %d, %v", n, e)
	}
	if n, e := Recvmmsg(fds[1], hdrs[:], unix.MSG_DONTWAIT); n != -1 || e != unix.EAGAIN {
		t.Fatalf("Recvmmsg on empty = %d, %v; want -1, EAGAIN", n, e)
	}

	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(epfd)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fds[1], &unix.EpollEvent{Events: unix.EPOLLIN, Fd: 42}); err != nil {
		t.Fatal(err)
	}
	evs := make([]unix.EpollEvent, 4)
	if n, e := EpollWait(epfd, evs); n != 0 || e != 0 {
		t.Fatalf("EpollWait on idle = %d, %v", n, e)
	}
	Write(fds[0], []byte("y"))
	if n, e := EpollWait(epfd, evs); n != 1 || e != 0 || evs[0].Fd != 42 {
		t.Fatalf("EpollWait = %d, %v, %+v", n, e, evs[0])
	}
}

// The point of the package is a cheap call: none may allocate.
func TestNoAllocs(t *testing.T) {
	a, b := tcpPair(t)
	p := []byte("z")
	buf := make([]byte, 8)
	var v int32
	allocs := testing.AllocsPerRun(100, func() {
		Write(a, p)
		IoctlInt(a, unix.SIOCOUTQ, &v)
		GetsockoptInt(a, unix.SOL_SOCKET, unix.SO_SNDBUF)
		Read(b, buf)
		var err error = unix.Errno(0)
		if _, e := Read(b, buf); e != 0 {
			err = e
		}
		_ = err
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per round, want 0", allocs)
	}
}
