package actors

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link/wire"
)

func TestSynTimeout(t *testing.T) {
	for _, c := range []struct {
		retries, linear int
		want            time.Duration
	}{
		{6, 4, 19 * time.Second},  // Linux's defaults: pasta's handshake timeout
		{6, 0, 127 * time.Second}, // the kernel's own connect timeout before linear timeouts
		{0, 0, time.Second},
		{2, 4, 11 * time.Second},
	} {
		if got := synTimeout(c.retries, c.linear); got != c.want {
			t.Errorf("synTimeout(%d, %d) = %v, want %v", c.retries, c.linear, got, c.want)
		}
	}
}

func TestFDBudgetFor(t *testing.T) {
	if got := FDBudgetFor(256, 20); got != 256-20-FDReserve {
		t.Errorf("256 with 20 open: %d", got)
	}
	if got := FDBudgetFor(40, 20); got != fdsSplice {
		t.Errorf("40 with 20 open: %d, want the floor %d", got, fdsSplice)
	}
	if got := FDBudgetFor(0, 20); got != 0 {
		t.Errorf("unknown limit: %d, want no budget", got)
	}
	var l Limits
	l.SetFDBudget(200)
	if got := l.ConnectLimit(); got != 50 {
		t.Errorf("connect limit for a budget of 200: %d, want a quarter", got)
	}
	l.SetFDBudget(1 << 20)
	if got := l.ConnectLimit(); got != maxConnecting {
		t.Errorf("connect limit for a large budget: %d", got)
	}
}

// TestRateLog: one line per interval, and the next one says how many were
// left out.
func TestRateLog(t *testing.T) {
	var buf bytes.Buffer
	log := logrus.New()
	log.SetOutput(&buf)
	r := RateLog{Every: 100 * time.Millisecond}
	e := logrus.NewEntry(log)
	for i := range 1000 {
		r.Warnf(e, "socket %d failed", i)
	}
	if n := strings.Count(buf.String(), "\n"); n != 1 || !strings.Contains(buf.String(), "socket 0 failed") {
		t.Fatalf("first burst logged %d lines: %q", n, buf.String())
	}
	time.Sleep(120 * time.Millisecond)
	r.Warnf(e, "socket %d failed", 1000)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "socket 1000 failed (suppressed 999 similar messages)") {
		t.Fatalf("after the interval: %q", lines)
	}
}

// blackholeListener returns a loopback port whose listener never accepts
// and whose accept queue is full: a SYN to it is dropped, and a connect()
// stays in progress, as towards a host that never answers.
func blackholeListener(t *testing.T) uint16 {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	port := sa.(*unix.SockaddrInet4).Port
	// Fill the accept queue; later SYNs are dropped.
	for range 3 {
		if c, err := net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond); err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	return uint16(port)
}

// TestTCPConnectCap: SYNs beyond the cap on pending connects are answered
// with a reset at once and counted; the pending ones are reset at their
// connect deadline; and then nothing is held (pending count, descriptors).
func TestTCPConnectCap(t *testing.T) {
	te := newTestEnv(t)
	old := tcpConnectTimeoutFor
	tcpConnectTimeoutFor = func() time.Duration { return 400 * time.Millisecond }
	defer func() { tcpConnectTimeoutFor = old }()
	te.env.Limits.SetConnectLimit(3)
	far := netip.AddrPortFrom(testGW4, blackholeListener(t))
	if _, err := tcpPollerFor(te.env); err != nil { // its epoll stays
		t.Fatal(err)
	}
	base := fdCount(t)

	var pending []*Handle
	start := time.Now()
	for i := range 5 {
		g := newGuest(te, far, uint32(1000+i))
		h := StartTCP(te.env, g.k, buildFrame(g.k, wire.TCPSyn, g.iss, 0, 0xffff, synOpts(1460, 7), nil))
		if i < 3 {
			if h == nil {
				t.Fatalf("SYN %d within the cap refused", i)
			}
			pending = append(pending, h)
			continue
		}
		if h != nil {
			t.Fatalf("SYN %d over the cap of 3 started a flow", i)
		}
		s := te.next(time.Second)
		if !s.has(wire.TCPRst|wire.TCPAck) || s.ack != g.iss+1 || s.dst != g.k.Guest {
			t.Fatalf("SYN %d over the cap: want RST,ACK acking %d to %v, got %#x ack %d to %v", i, g.iss+1, g.k.Guest, s.flags, s.ack, s.dst)
		}
	}
	if n := te.env.Limits.ConnectRefused.Load(); n != 2 {
		t.Errorf("connects refused: %d, want 2", n)
	}
	if n := te.env.Limits.Connecting(); n != 3 {
		t.Errorf("connects pending: %d, want 3", n)
	}
	// Each actor opens its socket on its own goroutine: give them until
	// well before the connect deadline.
	got := fdCount(t)
	for wait := time.Now().Add(300 * time.Millisecond); got < base+3 && time.Now().Before(wait); got = fdCount(t) {
		time.Sleep(5 * time.Millisecond)
	}
	if got < base+3 {
		t.Errorf("descriptors %d, base %d: the pending connects hold none?", got, base)
	}
	for range pending {
		s := te.next(2 * time.Second)
		if !s.has(wire.TCPRst) {
			t.Fatalf("pending connect ended with %#x, want a reset", s.flags)
		}
	}
	if el := time.Since(start); el < 400*time.Millisecond || el > 1500*time.Millisecond {
		t.Errorf("pending connects reset after %v, want about 400ms", el)
	}
	ended := map[*Handle]bool{}
	for len(ended) < len(pending) {
		select {
		case h := <-te.ended:
			ended[h] = true
		case <-time.After(2 * time.Second):
			t.Fatalf("%d of %d pending flows ended", len(ended), len(pending))
		}
	}
	if n := te.env.Limits.ConnectTimeout.Load(); n != 3 {
		t.Errorf("connect timeouts: %d, want 3", n)
	}
	if n := te.env.Limits.Connecting(); n != 0 {
		t.Errorf("connects pending after the deadline: %d", n)
	}
	if _, used := te.env.Limits.FDBudget(); used != 0 {
		t.Errorf("descriptors still counted: %d", used)
	}
	if !eventuallyTrue(time.Second, func() bool { return fdCount(t) <= base }) {
		t.Errorf("descriptors %d, base %d", fdCount(t), base)
	}
}

// TestTCPFDBudget: a SYN that finds the descriptor budget spent is reset
// and counted; the budget comes back when a flow ends.
func TestTCPFDBudget(t *testing.T) {
	te := newTestEnv(t)
	srv := newServer(t, "tcp4", "127.0.0.1:0")
	te.env.Limits.SetFDBudget(1)
	far := netip.AddrPortFrom(testGW4, srv.port())
	g1 := newGuest(te, far, 5000)
	g1.connect()
	g2 := newGuest(te, far, 6000)
	if h := StartTCP(te.env, g2.k, buildFrame(g2.k, wire.TCPSyn, g2.iss, 0, 0xffff, synOpts(1460, 7), nil)); h != nil {
		t.Fatal("a flow started beyond the descriptor budget")
	}
	if s := te.next(time.Second); !s.has(wire.TCPRst) || s.dst != g2.k.Guest {
		t.Fatalf("over the budget: got %#x to %v, want a reset", s.flags, s.dst)
	}
	if n := te.env.Limits.FDRefused.Load(); n != 1 {
		t.Errorf("refusals: %d", n)
	}
	g1.send(wire.TCPRst, nil)
	te.waitEnded(g1.h)
	g3 := newGuest(te, far, 7000)
	g3.connect() // room again
}

// TestUDPBindingBudget: bindings are capped like flows: a new guest port
// beyond the budget is dropped and counted, while a new far end of a port
// already bound needs nothing more.
func TestUDPBindingBudget(t *testing.T) {
	te := newUDPTestEnv(t, nil)
	te.Limits.SetFDBudget(1)
	echo := udpEcho(t, "127.0.0.1:0")
	echo2 := udpEcho(t, "127.0.0.1:0")
	g1 := netip.AddrPortFrom(tGuest4, freeUDPPort(t, "127.0.0.1:0"))
	g2 := netip.AddrPortFrom(tGuest4, freeUDPPort(t, "127.0.0.1:0"))
	far := netip.AddrPortFrom(tGW4, echo.Port())
	far2 := netip.AddrPortFrom(tGW4, echo2.Port())
	refused := UDPStats.BindingsRefused.Load()
	if StartUDP(te.Env, udpKey(g1, far), guestUDP(t, g1, far, []byte("a"))) == nil {
		t.Fatal("first binding refused")
	}
	te.readGuest(t, 2*time.Second)
	if StartUDP(te.Env, udpKey(g2, far), guestUDP(t, g2, far, []byte("b"))) != nil {
		t.Fatal("a second binding beyond the budget of one")
	}
	if n := UDPStats.BindingsRefused.Load() - refused; n != 1 {
		t.Errorf("bindings refused: %d", n)
	}
	if StartUDP(te.Env, udpKey(g1, far2), guestUDP(t, g1, far2, []byte("c"))) == nil {
		t.Fatal("a new far end of a bound port refused")
	}
	te.readGuest(t, 2*time.Second)
}

// TestUDPBindingEndsWithLastFlow: a far end the guest never sent to can
// reach the guest's port, but cannot keep the binding, and with it the
// host port and a descriptor, alive once the guest's flows are over.
func TestUDPBindingEndsWithLastFlow(t *testing.T) {
	te := newUDPTestEnv(t, &conf.Config{UDPTimeout: 200 * time.Millisecond})
	echo := udpEcho(t, "127.0.0.1:0")
	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	base := fdCount(t)
	gport := freeUDPPort(t, "127.0.0.1:0")
	guest := netip.AddrPortFrom(tGuest4, gport)
	far := netip.AddrPortFrom(tGW4, echo.Port())
	h := StartUDP(te.Env, udpKey(guest, far), guestUDP(t, guest, far, []byte("hello")))
	te.readGuest(t, 2*time.Second)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				_, _ = stranger.WriteToUDPAddrPort([]byte("keepalive"), netip.AddrPortFrom(lo4, gport))
			}
		}
	}()
	select {
	case e := <-te.ended:
		if e != h {
			t.Fatalf("ended %v", e.Key)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the guest's flow did not end")
	}
	var berr error
	if !eventuallyTrue(2*time.Second, func() bool {
		c, err := net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", gport))
		if berr = err; err == nil {
			c.Close()
		}
		return err == nil
	}) {
		t.Fatalf("the guest's port is still bound on the host after its last flow: %v", berr)
	}
	if !eventuallyTrue(time.Second, func() bool { return fdCount(t) <= base }) {
		t.Fatalf("descriptors %d, base %d: the binding outlived its last flow", fdCount(t), base)
	}
}

func eventuallyTrue(d time.Duration, cond func() bool) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cond()
}

// TestTCPInboundFlowLimit: connections accepted on a -t listener are held
// to --flow-limit and to the descriptor budget like the guest's own: over
// either, the client is reset and the guest sees nothing.
func TestTCPInboundFlowLimit(t *testing.T) {
	for _, full := range []string{"table", "descriptors"} {
		t.Run(full, func(t *testing.T) {
			te := newTestEnv(t)
			probe := newServer(t, "tcp4", "127.0.0.1:0")
			port := probe.port()
			probe.ln.Close()
			te.env.Conf.FlowLimit = 4
			te.env.Conf.TCPPorts = []conf.PortSpec{{Raw: "test", Option: "-t", Bind: netip.MustParseAddr("127.0.0.1"),
				Ranges: []conf.PortRange{{First: port, Last: port, To: 8080}}}}
			if full == "table" {
				te.env.TableFlows.Store(4)
			} else {
				te.env.Limits.SetFDBudget(2)
				te.env.Limits.takeFDs(fdInbound, 2)
			}
			stop, err := StartTCPForwarders(te.env)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
			// The reset may come before the dial returns.
			cl, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
			if err == nil {
				defer cl.Close()
				cl.SetReadDeadline(time.Now().Add(2 * time.Second))
				_, err = cl.Read(make([]byte, 1))
			}
			if !errors.Is(err, unix.ECONNRESET) {
				t.Fatalf("client: %v, want a reset", err)
			}
			select {
			case h := <-te.register:
				t.Fatalf("flow %v registered over the limit", h.Key)
			default:
			}
			if s, ok := te.tryNext(100 * time.Millisecond); ok {
				t.Fatalf("the guest got %#x", s.flags)
			}
			refused := te.env.Stats.Refused.Load() + te.env.Limits.FDRefused.Load()
			if refused != 1 {
				t.Errorf("refusals counted: %d", refused)
			}
		})
	}
}

// TestFDShares: one kind of flow cannot take the whole budget: the others
// keep a quarter of it.
func TestFDShares(t *testing.T) {
	var l Limits
	l.SetFDBudget(8)
	for i := range 6 {
		if !l.takeFDs(fdGuestTCP, 1) {
			t.Fatalf("TCP flow %d refused within its share", i)
		}
	}
	if l.takeFDs(fdGuestTCP, 1) {
		t.Fatal("TCP took more than three quarters of the budget")
	}
	if !l.takeFDs(fdGuestDgram, 1) || !l.takeFDs(fdInbound, 1) {
		t.Fatal("other kinds refused while a quarter is left")
	}
	if l.takeFDs(fdNSSplice, 1) {
		t.Fatal("the budget was exceeded")
	}
	if n := l.FDRefused.Load(); n != 2 {
		t.Errorf("refusals %d", n)
	}
	l.giveFDs(fdGuestTCP, 6)
	l.giveFDs(fdGuestDgram, 1)
	l.giveFDs(fdInbound, 1)
	if _, used := l.FDBudget(); used != 0 {
		t.Errorf("used %d after giving everything back", used)
	}
}

// TestUDPHostPortChoice: the host port of a guest's flow is the guest's
// own source port, as pasta chooses it; a port a host program has stays
// the program's (the flow leaves from another port, and the program still
// gets what is sent to its port).
func TestUDPHostPortChoice(t *testing.T) {
	te := newUDPTestEnv(t, nil)
	echo := udpEcho(t, "127.0.0.1:0")
	far := netip.AddrPortFrom(tGW4, echo.Port())
	seen := make(chan netip.AddrPort, 4)
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	farSink := netip.AddrPortFrom(tGW4, uint16(sink.LocalAddr().(*net.UDPAddr).Port))
	go func() {
		buf := make([]byte, 100)
		for {
			_, from, err := sink.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			seen <- from
		}
	}()
	from := func() netip.AddrPort {
		select {
		case a := <-seen:
			return a
		case <-time.After(2 * time.Second):
			t.Fatal("nothing reached the host")
		}
		return netip.AddrPort{}
	}

	free := freeUDPPort(t, "0.0.0.0:0")
	g := netip.AddrPortFrom(tGuest4, free)
	StartUDP(te.Env, udpKey(g, farSink), guestUDP(t, g, farSink, []byte("x")))
	if a := from(); a.Port() != free {
		t.Errorf("guest port %d free on the host: the flow left from %v", free, a)
	}

	// A host program has this port (no SO_REUSEADDR, as most do).
	owner, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	taken := uint16(owner.LocalAddr().(*net.UDPAddr).Port)
	g2 := netip.AddrPortFrom(tGuest4, taken)
	StartUDP(te.Env, udpKey(g2, farSink), guestUDP(t, g2, farSink, []byte("y")))
	if a := from(); a.Port() == taken || a.Port() == 0 {
		t.Errorf("guest port %d taken on the host: the flow left from %v", taken, a)
	}
	// The program still has its port, and the guest its answers.
	c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(taken)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("for the program"))
	owner.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 100)
	if n, _, err := owner.ReadFromUDP(buf); err != nil || string(buf[:n]) != "for the program" {
		t.Fatalf("the program's port: %q %v", buf[:n], err)
	}
	StartUDP(te.Env, udpKey(g2, far), guestUDP(t, g2, far, []byte("z")))
	for {
		b, p := te.readGuest(t, 2*time.Second)
		if netip.AddrPortFrom(p.Src, p.SrcPort) == far && string(b[p.Payload:p.End]) == "z" {
			if got := netip.AddrPortFrom(p.Dst, p.DstPort); got != g2 {
				t.Fatalf("answer to %v, want %v", got, g2)
			}
			break
		}
	}
}
