package splice

import (
	"errors"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors/internal/sockutil"
	"github.com/gopasta/gopasta/internal/nbsys"
)

// Theory of operation: the UDP splice path
//
// Datagrams from a loopback client to a forwarded port (-u on the host,
// -U in the namespace) are relayed socket to socket: for each client
// address the relay keeps a connected socket on the other side (made in
// the other namespace), sends the client's datagrams on it, and a
// goroutine per client returns the replies through the listening socket,
// so that they come from the address and port the client sent to. Like
// pasta, the relay socket is bound to the client's source port when that
// port is free on the other side, so the server sees the same port.
//
// The listening socket is the relay's own for -U; for -u it is shared
// with the tap path's udp.Binding, which hands over loopback datagrams
// (udp.Binding.splice) and keeps the rest; the relay sends replies on a
// dup(2) of it, so that each closes its own descriptor.
//
// Replies move in batches: one recvmmsg on the client's socket, one
// sendmmsg of the same buffers to the client; the -U listener receives
// with recvmmsg too. The deadline timer is touched only when it fires, not
// per datagram. A client's socket is closed after the UDP timeout without
// traffic.

var errNoTarget = errors.New("no splice target")

// UDPSplice relays datagrams of loopback clients of one listening socket.
type UDPSplice struct {
	lfd     int                                                // listening socket (owned: a dup or our own)
	target  func(client netip.AddrPort) (netip.AddrPort, bool) // where its datagrams go
	newSock func(v6 bool) (int, error)
	timeout time.Duration
	stats   *Counters // the daemon's splice's

	mu    sync.Mutex
	flows map[netip.AddrPort]*udpSpliceFlow
	wg    sync.WaitGroup
	done  chan struct{}
	once  sync.Once
}

// udpSpliceFlow is one client's socket on the other side.
type udpSpliceFlow struct {
	fd     int
	file   *os.File
	client netip.AddrPort
	sa     unix.RawSockaddrInet6
	salen  uint32
	mu     sync.Mutex
	last   int64 // sockutil.MonoNow of the last datagram either way; mu
}

// NewUDP returns a relay for the loopback clients of the listening socket
// lfd (which it owns): a client's datagrams go to target(client) from a
// socket of its own that newSock makes, and end with timeout of silence.
func (sp *Splicer) NewUDP(lfd int, target func(netip.AddrPort) (netip.AddrPort, bool), newSock func(bool) (int, error), timeout time.Duration) *UDPSplice {
	if timeout <= 0 {
		timeout = 180 * time.Second
	}
	return &UDPSplice{lfd: lfd, target: target, newSock: newSock, timeout: timeout, stats: &sp.Stats,
		flows: make(map[netip.AddrPort]*udpSpliceFlow), done: make(chan struct{})}
}

// take relays one datagram from client; false if it cannot (the caller
// then uses the tap path).
func (s *UDPSplice) Take(client netip.AddrPort, payload []byte) bool {
	s.mu.Lock()
	fl := s.flows[client]
	if fl == nil {
		select {
		case <-s.done:
			s.mu.Unlock()
			return true
		default:
		}
		var err error
		if fl, err = s.open(client); err != nil {
			s.mu.Unlock()
			return false
		}
		s.flows[client] = fl
		s.wg.Add(1)
		go s.replies(fl)
	}
	s.mu.Unlock()
	fl.mu.Lock()
	fl.last = sockutil.MonoNow()
	fl.mu.Unlock()
	for {
		_, err := nbsys.Write(fl.fd, payload)
		if err != unix.EINTR {
			break
		}
	}
	s.stats.UDPDatagrams.Add(1)
	return true
}

// open makes the client's socket on the other side, connected to target.
func (s *UDPSplice) open(client netip.AddrPort) (*udpSpliceFlow, error) {
	dst, ok := s.target(client)
	if !ok {
		return nil, errNoTarget
	}
	v6 := dst.Addr().Is6()
	fd, err := s.newSock(v6)
	if err != nil {
		return nil, err
	}
	if v6 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	// Bursts from a fast client must not overflow a default-sized buffer
	// while the reply goroutine is scheduled.
	sockutil.SetBufs(fd)
	// Keep the client's port if it is free there; any port otherwise.
	any := netip.IPv4Unspecified()
	if v6 {
		any = netip.IPv6Unspecified()
	}
	_ = sockutil.BindAddrPort(fd, netip.AddrPortFrom(any, client.Port()))
	if err := unix.Connect(fd, sockutil.SockaddrOf(dst)); err != nil {
		unix.Close(fd)
		return nil, err
	}
	fl := &udpSpliceFlow{fd: fd, file: os.NewFile(uintptr(fd), "udp-splice"), client: client}
	fl.salen = sockutil.PutSockaddr(&fl.sa, client)
	s.stats.UDPFlows.Add(1)
	return fl, nil
}

// replies returns the other side's datagrams to the client until the flow
// times out or the relay stops.
func (s *UDPSplice) replies(fl *udpSpliceFlow) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.flows, fl.client)
		s.mu.Unlock()
		fl.file.Close()
		s.stats.UDPFlows.Add(-1)
	}()
	rc, err := fl.file.SyscallConn()
	if err != nil {
		return
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		// Stopping the relay ends the pending read.
		select {
		case <-s.done:
			fl.file.SetReadDeadline(time.Unix(1, 0))
		case <-stop:
		}
	}()
	r := newUDPBatchReader(false)
	defer r.release()
	fl.file.SetReadDeadline(time.Now().Add(s.timeout))
	for {
		if err := rc.Read(r.recv); err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			fl.mu.Lock()
			last := fl.last
			fl.mu.Unlock()
			idle := time.Duration(sockutil.MonoNow() - last)
			if idle >= s.timeout {
				return
			}
			fl.file.SetReadDeadline(time.Now().Add(s.timeout - idle))
			continue
		}
		if r.e != 0 {
			// ECONNREFUSED: nobody listens there (yet); keep the flow.
			continue
		}
		b, n := r.b, r.n
		fl.mu.Lock()
		fl.last = sockutil.MonoNow()
		fl.mu.Unlock()
		// The same buffers go back out to the client in one sendmmsg.
		for i := 0; i < n; i++ {
			h := &b.hdrs[i]
			b.iovs[i].SetLen(int(min(h.Len, udpSpliceMax)))
			h.Hdr.Name = (*byte)(unsafe.Pointer(&fl.sa))
			h.Hdr.Namelen = fl.salen
		}
		for sent := 0; sent < n; {
			k, e := sockutil.Sendmmsg(s.lfd, b.hdrs[sent:n])
			if e != 0 {
				if e == unix.EINTR {
					continue
				}
				break // full or gone: the rest is lost, as on a wire
			}
			sent += k
		}
		s.stats.UDPDatagrams.Add(int64(n))
		r.release()
	}
}

// udpSpliceBatch is how many datagrams one recvmmsg/sendmmsg of the relay
// moves; udpSpliceMax the largest datagram.
const (
	udpSpliceBatch = 16
	udpSpliceMax   = 65536
)

// udpSpliceBuf is a relay's batch: headers, iovecs, addresses and room
// for udpSpliceBatch datagrams of any size. A megabyte each, so they are
// pooled: a relay goroutine holds one only while it moves datagrams, not
// while it is parked.
type udpSpliceBuf struct {
	hdrs  [udpSpliceBatch]unix.Mmsghdr
	iovs  [udpSpliceBatch]unix.Iovec
	names [udpSpliceBatch]unix.RawSockaddrInet6
	data  [udpSpliceBatch][udpSpliceMax]byte
}

var udpSplicePool = sync.Pool{New: func() any { return new(udpSpliceBuf) }}

// udpBatchReader receives datagram batches with recvmmsg into a pooled
// udpSpliceBuf that it holds only while datagrams are in hand: on EAGAIN,
// before its goroutine parks, the buffer goes back to the pool. One
// goroutine owns it; recv is bound once, for RawConn.Read.
type udpBatchReader struct {
	names bool // receive source addresses too
	b     *udpSpliceBuf
	n     int           // datagrams in b after a read
	e     syscall.Errno // the read's error, 0 if none
	recv  func(fd uintptr) bool
}

func newUDPBatchReader(names bool) *udpBatchReader {
	r := &udpBatchReader{names: names}
	r.recv = r.read
	return r
}

func (r *udpBatchReader) read(fd uintptr) bool {
	if r.b == nil {
		r.b = getUDPSpliceBuf(r.names)
	}
	r.n, r.e = sockutil.Recvmmsg(int(fd), r.b.hdrs[:])
	if r.e == unix.EAGAIN {
		r.release() // nothing to hold on to while parked
		return false
	}
	return true
}

// release returns the buffer to the pool, if one is held.
func (r *udpBatchReader) release() {
	if r.b != nil {
		putUDPSpliceBuf(r.b)
		r.b = nil
	}
}

// getUDPSpliceBuf returns a batch ready for recvmmsg (with room for the
// senders' addresses if names is set).
func getUDPSpliceBuf(names bool) *udpSpliceBuf {
	b := udpSplicePool.Get().(*udpSpliceBuf)
	for i := range b.hdrs {
		b.iovs[i].Base = &b.data[i][0]
		b.iovs[i].SetLen(udpSpliceMax)
		b.hdrs[i] = unix.Mmsghdr{}
		b.hdrs[i].Hdr.Iov = &b.iovs[i]
		b.hdrs[i].Hdr.SetIovlen(1)
		if names {
			b.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
			b.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		}
	}
	return b
}

func putUDPSpliceBuf(b *udpSpliceBuf) { udpSplicePool.Put(b) }

// stop ends every flow and closes the listening descriptor.
func (s *UDPSplice) Stop() {
	s.once.Do(func() {
		s.mu.Lock()
		close(s.done)
		s.mu.Unlock()
		s.wg.Wait()
		unix.Close(s.lfd)
	})
}

// UDPListener is a -U listening socket in the namespace, relaying to
// the host.
type UDPListener struct {
	File  *os.File
	Relay *UDPSplice
	WG    sync.WaitGroup
}

// serve receives datagrams on l until it is closed.
func (l *UDPListener) Serve() {
	defer l.WG.Done()
	rc, err := l.File.SyscallConn()
	if err != nil {
		return
	}
	r := newUDPBatchReader(true)
	defer r.release()
	for {
		if err := rc.Read(r.recv); err != nil {
			return
		}
		if b := r.b; r.e == 0 {
			for i := 0; i < r.n; i++ {
				h := &b.hdrs[i]
				if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
					continue
				}
				l.Relay.Take(sockutil.GetSockaddr(&b.names[i]), b.data[i][:h.Len])
			}
		}
		r.release()
	}
}

func (l *UDPListener) Close() {
	l.File.Close()
	l.WG.Wait()
	l.Relay.Stop()
}
