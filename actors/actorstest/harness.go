package actorstest

import (
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/nat"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/linktest"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// The addresses of the unit tests' guest, and the gateway it sees, which
// stands for the host's loopback.
var (
	Guest4 = netip.MustParseAddr("10.0.2.100")
	GW4    = netip.MustParseAddr("10.0.2.2")
	Guest6 = netip.MustParseAddr("2001:db8::100")
	GW6    = netip.MustParseAddr("2001:db8::2")
	DNS4   = netip.MustParseAddr("169.254.1.1")
	DNS6   = netip.MustParseAddr("fd00::53")
	Lo4    = netip.MustParseAddr("127.0.0.1")
)

// Env is an actors.Env wired to an in-memory link with a real Writer; the
// test plays the dispatcher (Ended, Register) and the guest (guest end).
type Env struct {
	*actors.Env
	// Guest is the guest's end of the link: what the flows send arrives
	// there.
	Guest    *linktest.MemoryDevice
	Ended    chan *actors.Handle
	Register chan *actors.Handle
	// Cancel ends Env.Ctx: the daemon shuts down, every actor ends.
	Cancel context.CancelFunc
}

// New returns an Env with the options opts, whose zero fields take their
// defaults (actors.Options.WithDefaults).
func New(t testing.TB, opts actors.Options) *Env {
	t.Helper()
	return NewDev(t, opts, nil)
}

// NewDev is New with the Writer's device wrapped by wrap (nil: the
// in-memory link itself); the Writer lends the guest's buffers if that
// device is a link.Lender.
func NewDev(t testing.TB, opts actors.Options, wrap func(*linktest.MemoryDevice) link.Device) *Env {
	t.Helper()
	ours, guest := linktest.NewMemoryPair(65520, 8192)
	var dev link.Device = ours
	if wrap != nil {
		dev = wrap(ours)
	}
	w := link.NewWriter(dev, 1024)
	w.Lend, _ = dev.(link.Lender)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	log := logrus.New()
	log.SetOutput(io.Discard)
	if testing.Verbose() {
		log.SetOutput(os.Stderr)
		log.SetLevel(logrus.DebugLevel)
	}
	peer := &link.Peer{OurMAC: conf.DefaultMAC}
	peer.SetMAC(wiretest.GuestMAC)
	peer.SetAddr(Guest4)
	peer.SetAddr(Guest6)
	te := &Env{
		Env: &actors.Env{
			Ctx: ctx, Opts: opts.WithDefaults(), Out: w, Peer: peer, Log: log,
			NAT: &nat.NAT{HostLoopback4: GW4, HostLoopback6: GW6,
				DNSForward4: DNS4, DNSForward6: DNS6},
		},
		Guest:  guest,
		Cancel: cancel,
	}
	te.Env.Reg = actors.NewRegistrar()
	te.Ended, te.Register = te.Env.Reg.Ended, te.Env.Reg.Register
	t.Cleanup(func() {
		cancel()
		ours.Close()
		guest.Close()
		<-done
		// Give actors a moment to close their sockets after the cancel.
		time.Sleep(20 * time.Millisecond)
	})
	return te
}

// GuestFrame builds a frame the guest sends, parsed as the dispatcher hands
// it to an actor (offsets set, trimmed to the datagram).
func GuestFrame(t testing.TB, src, dst netip.Addr, proto uint8, l4 []byte) *link.Frame {
	t.Helper()
	b := wiretest.IP(src, dst, proto, l4)
	var p wire.Parsed
	if err := wire.ParseFrame(b, &p); err != nil {
		t.Fatalf("test frame does not parse: %v", err)
	}
	f := link.GetFrame(p.End)
	copy(f.Data, b[:p.End])
	f.L3, f.L4, f.Payload = p.L3, p.L4, p.Payload
	return f
}

// GuestUDP builds a UDP datagram from the guest.
func GuestUDP(t testing.TB, src, dst netip.AddrPort, payload []byte) *link.Frame {
	return GuestFrame(t, src.Addr(), dst.Addr(), wire.ProtoUDP, wiretest.UDP(src.Port(), dst.Port(), payload))
}

// UDPKey is the flow key the dispatcher would use.
func UDPKey(guest, far netip.AddrPort) actors.Key {
	return actors.Key{Proto: wire.ProtoUDP, Guest: guest, Far: far}
}

// readGuest waits for the next frame towards the guest, parses and checks
// it (lengths, checksums) and returns it with its parse.
func (te *Env) ReadGuest(t testing.TB, d time.Duration) ([]byte, wire.Parsed) {
	t.Helper()
	select {
	case b := <-te.Guest.Frames():
		var p wire.Parsed
		if err := wire.ParseFrame(b, &p); err != nil {
			t.Fatalf("frame to guest does not parse: %v\n% x", err, b)
		}
		if p.DstMAC != wiretest.GuestMAC || p.SrcMAC != conf.DefaultMAC {
			t.Fatalf("MACs %x <- %x", p.DstMAC, p.SrcMAC)
		}
		return b, p
	case <-time.After(d):
		t.Fatalf("no frame to the guest within %v", d)
	}
	return nil, wire.Parsed{}
}

// noGuestFrame asserts that nothing reaches the guest for d.
func (te *Env) NoGuestFrame(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case b := <-te.Guest.Frames():
		t.Fatalf("unexpected frame to guest: % x", b)
	case <-time.After(d):
	}
}

// UDPEcho runs a UDP echo server on addr until the test ends and returns
// its address.
func UDPEcho(t testing.TB, addr string) netip.AddrPort {
	t.Helper()
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		uc := c.(*net.UDPConn)
		buf := make([]byte, 65536)
		for {
			n, from, err := uc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = uc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// FreeUDPPort returns a port that was free on addr a moment ago.
func FreeUDPPort(t testing.TB, addr string) uint16 {
	t.Helper()
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
}

// InPrivateNetns moves the calling goroutine's thread into a fresh network
// namespace with loopback up, for tests that need port 53 or sysctls of
// their own. The thread is never given back (it dies with the goroutine),
// so no other goroutine ever runs in that namespace by accident. Sockets
// the code under test creates from this goroutine live in the namespace.
func InPrivateNetns(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a private network namespace")
	}
	runtime.LockOSThread()
	if unix.Gettid() == unix.Getpid() {
		// The main thread is wedged, not ended, when its goroutine exits
		// locked: keep the process's own namespace out of this.
		t.Skip("test goroutine landed on the main thread")
	}
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("unshare(CLONE_NEWNET): %v", err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	// Addresses of the netns loopback need a moment for IPv6.
	for i := 0; i < 50; i++ {
		if c, err := net.ListenPacket("udp6", "[::1]:0"); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// FDCount returns the number of open file descriptors of the process.
func FDCount(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// put hands f to the actor behind h as the dispatcher would, but waits
// for room instead of dropping: the tests play a dispatcher that must not
// lose the frames it checks for.
func Put(t testing.TB, h *actors.Handle, f *link.Frame) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !h.Offer(f) {
		if time.Now().After(deadline) {
			f.Release()
			t.Fatal("actor's inbox stayed full")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func Eventually(d time.Duration, cond func() bool) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cond()
}

// server listens on loopback and hands out accepted connections.
type server struct {
	Ln    *net.TCPListener
	Conns chan *net.TCPConn
}

func NewServer(t testing.TB, network, addr string) *server {
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("listen %s %s: %v", network, addr, err)
	}
	s := &server{Ln: ln.(*net.TCPListener), Conns: make(chan *net.TCPConn, 16)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.Conns <- c.(*net.TCPConn)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return s
}

func (s *server) Port() uint16 { return uint16(s.Ln.Addr().(*net.TCPAddr).Port) }

func (s *server) Accept(t testing.TB) *net.TCPConn {
	t.Helper()
	select {
	case c := <-s.Conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(5 * time.Second):
		t.Fatalf("no connection at the server")
		return nil
	}
}

func RandBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// WaitStats polls until ok holds for h's published counters.
func WaitStats(t *testing.T, h *actors.Handle, ok func(actors.FlowSnapshot) bool) actors.FlowSnapshot {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := h.Snapshot(time.Now())
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("flow stats never right: %+v", s)
		}
		time.Sleep(time.Millisecond)
	}
}
