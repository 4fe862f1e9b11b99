package tcp

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/linktest"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
	"golang.org/x/sys/unix"
)

// This file is the test's stand-in for the dispatcher and for the guest's
// TCP: frames built with link/wire go to Start and Handle.In, and what
// the actors send comes back through a real link.Writer over an in-memory
// link, where the checksums are verified.

// The unit tests' one address plan (actorstest's).
var (
	testGuest4 = actorstest.Guest4
	testGW4    = actorstest.GW4
	testGuest6 = actorstest.Guest6
	testGW6    = actorstest.GW6
	testMAC    = wiretest.GuestMAC
)

// testEnv is actorstest's Env seen from the TCP tests, with the daemon's
// TCP protocol.
type testEnv struct {
	t        testing.TB
	env      *actors.Env
	TCP      *Protocol              // Env's
	dev      *linktest.MemoryDevice // the guest's end
	ended    chan *actors.Handle
	register chan *actors.Handle
	cancel   context.CancelFunc
}

func newTestEnv(t testing.TB) *testEnv { return newTestEnvDev(t, nil) }

// newTestEnvDev is newTestEnv with the writer's device wrapped by wrap,
// and lending if that is a link.Lender.
func newTestEnvDev(t testing.TB, wrap func(*linktest.MemoryDevice) link.Device) *testEnv {
	ae := actorstest.NewDev(t, actors.Options{MTU: 65520}, wrap)
	te := &testEnv{t: t, env: ae.Env, dev: ae.Guest, ended: ae.Ended, register: ae.Register, cancel: ae.Cancel}
	te.TCP = testProtocol(t, te.env)
	return te
}

// testProtocol returns a TCP for env, closed when the test ends (before
// the cleanups registered earlier, env's among them, run).
func testProtocol(t testing.TB, env *actors.Env) *Protocol {
	t.Helper()
	p, err := New(env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// seg is a parsed segment from gopasta to the guest.
type seg struct {
	src, dst netip.AddrPort
	flags    uint8
	seq, ack uint32
	win      uint16
	opts     wire.TCPOptions
	data     []byte
}

func (s seg) has(f uint8) bool { return s.flags&f == f }

// parseSeg checks a frame from gopasta and returns its segment.
func parseSeg(t testing.TB, p []byte) seg {
	t.Helper()
	if len(p) < 14 {
		t.Fatalf("short frame")
	}
	if wire.Ethernet(p).Dst() != testMAC || wire.Ethernet(p).Src() != conf.DefaultMAC {
		t.Fatalf("bad MACs % x", p[:12])
	}
	var s seg
	var l4 []byte
	var pseudo uint32
	switch wire.Ethernet(p).Type() {
	case wire.EtherTypeIPv4:
		ip := wire.IPv4(p[14:])
		if wire.Fold(wire.Checksum(ip[:20], 0)) != 0 {
			t.Fatalf("bad IPv4 header checksum")
		}
		if ip.TotalLen() != len(ip) {
			t.Fatalf("IPv4 length %d, frame carries %d", ip.TotalLen(), len(ip))
		}
		l4 = ip[20:]
		s4, d4 := ip.Src().As4(), ip.Dst().As4()
		pseudo = wire.PseudoHeaderSum(s4[:], d4[:], wire.ProtoTCP, len(l4))
		s.src = netip.AddrPortFrom(ip.Src(), 0)
		s.dst = netip.AddrPortFrom(ip.Dst(), 0)
	case wire.EtherTypeIPv6:
		ip := wire.IPv6(p[14:])
		if ip.PayloadLen() != len(ip)-40 {
			t.Fatalf("IPv6 length %d, frame carries %d", ip.PayloadLen(), len(ip)-40)
		}
		l4 = ip[40:]
		s16, d16 := ip.Src().As16(), ip.Dst().As16()
		pseudo = wire.PseudoHeaderSum(s16[:], d16[:], wire.ProtoTCP, len(l4))
		s.src = netip.AddrPortFrom(ip.Src(), 0)
		s.dst = netip.AddrPortFrom(ip.Dst(), 0)
	default:
		t.Fatalf("not IP")
	}
	if wire.Fold(wire.Checksum(l4, pseudo)) != 0 {
		t.Fatalf("bad TCP checksum")
	}
	th := wire.TCP(l4)
	s.src = netip.AddrPortFrom(s.src.Addr(), th.SrcPort())
	s.dst = netip.AddrPortFrom(s.dst.Addr(), th.DstPort())
	s.flags, s.seq, s.ack, s.win = th.Flags(), th.Seq(), th.Ack(), th.Window()
	s.opts = wire.ParseTCPOptions(th.Options())
	s.data = l4[th.DataOffset():]
	return s
}

// next returns gopasta's next segment, or fails after d.
func (te *testEnv) next(d time.Duration) seg {
	te.t.Helper()
	s, ok := te.tryNext(d)
	if !ok {
		te.t.Fatalf("no segment from gopasta within %v", d)
	}
	return s
}

func (te *testEnv) tryNext(d time.Duration) (seg, bool) {
	te.t.Helper()
	select {
	case p := <-te.dev.Frames():
		return parseSeg(te.t, p), true
	case <-time.After(d):
		return seg{}, false
	}
}

// buildFrame makes a guest frame as the dispatcher would hand it over.
func buildFrame(k actors.Key, flags uint8, seq, ack uint32, win uint16, opts, data []byte) *link.Frame {
	v6 := k.Guest.Addr().Is6()
	iplen := 20
	if v6 {
		iplen = 40
	}
	tcplen := 20 + len(opts)
	n := 14 + iplen + tcplen + len(data)
	f := link.GetFrame(n)
	b := f.Data
	wire.Ethernet(b).Set(conf.DefaultMAC, testMAC, wire.EtherTypeIPv4)
	var pseudo uint32
	if v6 {
		binary.BigEndian.PutUint16(b[12:], wire.EtherTypeIPv6)
		s, d := k.Guest.Addr().As16(), k.Far.Addr().As16()
		wire.IPv6(b[14:]).SetHeader(tcplen+len(data), wire.ProtoTCP, 64, s, d)
		pseudo = wire.PseudoHeaderSum(s[:], d[:], wire.ProtoTCP, tcplen+len(data))
	} else {
		s, d := k.Guest.Addr().As4(), k.Far.Addr().As4()
		wire.IPv4(b[14:]).SetHeader(iplen+tcplen+len(data), 1, 64, wire.ProtoTCP, s, d)
		pseudo = wire.PseudoHeaderSum(s[:], d[:], wire.ProtoTCP, tcplen+len(data))
	}
	l4 := 14 + iplen
	th := wire.TCP(b[l4:])
	th.SetPorts(k.Guest.Port(), k.Far.Port())
	th.SetSeqAck(seq, ack)
	th.SetFlagsWindow(tcplen, flags, win)
	copy(b[l4+20:], opts)
	copy(b[l4+tcplen:], data)
	th.SetChecksum(0)
	th.SetChecksum(wire.Fold(wire.Checksum(b[l4:], pseudo)))
	f.L3, f.L4, f.Payload = 14, l4, l4+tcplen
	return f
}

// guest is a minimal TCP endpoint on the guest's side of one flow.
type guest struct {
	te      *testEnv
	k       actors.Key
	h       *actors.Handle
	iss     uint32
	sndNxt  uint32 // next sequence we send
	rcvNxt  uint32 // next sequence we expect
	peerWnd uint32
	peerWS  uint8
	wnd     uint16 // our window field
	ws      int    // our scale (-1: none)
	mss     int    // peer's MSS
	rx      []byte
	finRcvd bool
	inline  bool   // offer every frame to Handle.Direct first
	synMSS  uint16 // the MSS our SYN offers (0: 65480)
	direct  int    // frames Direct took
}

func newGuest(te *testEnv, far netip.AddrPort, iss uint32) *guest {
	ga := testGuest4
	if far.Addr().Is6() {
		ga = testGuest6
	}
	return &guest{te: te, iss: iss, sndNxt: iss, wnd: 0xffff, ws: 7,
		k: actors.Key{Proto: wire.ProtoTCP, Guest: netip.AddrPortFrom(ga, 40000+uint16(iss%1000)), Far: far}}
}

func synOpts(mss uint16, ws int) []byte {
	b := make([]byte, 8)
	n := putSynOpts(b, mss, ws)
	return b[:n]
}

// input hands a frame to the flow, as the dispatcher would: to
// Handle.Direct first if g.inline (the dispatcher only does that for a
// frame alone in its batch; offering every frame tests order harder),
// else into the inbox.
func (g *guest) input(f *link.Frame) {
	g.te.t.Helper()
	if g.inline && g.h.Direct != nil && g.h.Direct(f) {
		g.direct++
		return
	}
	g.h.Gate.Queue(1)
	select {
	case g.h.In <- f:
	case <-time.After(5 * time.Second):
		g.te.t.Fatalf("actor inbox stuck")
	}
}

// connect runs the outbound handshake and returns the SYN,ACK.
func (g *guest) connect() seg {
	t := g.te.t
	t.Helper()
	mss := g.synMSS
	if mss == 0 {
		mss = 65480
	}
	g.h = g.te.TCP.Start(g.k, buildFrame(g.k, wire.TCPSyn, g.iss, 0, 0xffff, synOpts(mss, g.ws), nil))
	if g.h == nil {
		t.Fatalf("StartTCP returned nil for a SYN")
	}
	g.sndNxt = g.iss + 1
	sa := g.te.next(5 * time.Second)
	if !sa.has(wire.TCPSyn|wire.TCPAck) || sa.ack != g.iss+1 {
		t.Fatalf("expected SYN,ACK acking %d, got flags %#x ack %d", g.iss+1, sa.flags, sa.ack)
	}
	if sa.src != g.k.Far || sa.dst != g.k.Guest {
		t.Fatalf("SYN,ACK %v -> %v, want %v -> %v", sa.src, sa.dst, g.k.Far, g.k.Guest)
	}
	g.rcvNxt = sa.seq + 1
	g.mss = int(sa.opts.MSS)
	g.peerWnd = uint32(sa.win)
	if sa.opts.WScale >= 0 && g.ws >= 0 {
		g.peerWS = uint8(sa.opts.WScale)
	}
	g.ack()
	return sa
}

func (g *guest) send(flags uint8, data []byte) {
	g.input(buildFrame(g.k, flags|wire.TCPAck, g.sndNxt, g.rcvNxt, g.wnd, nil, data))
	g.sndNxt += uint32(len(data))
	if flags&wire.TCPFin != 0 {
		g.sndNxt++
	}
}

func (g *guest) ack() { g.send(0, nil) }

// write sends data in MSS-sized segments, within the peer's window as last
// seen, reading ACKs as needed.
func (g *guest) write(data []byte) {
	una := g.sndNxt
	for len(data) > 0 {
		for g.sndNxt-una >= g.peerWnd || int(g.sndNxt-una) >= 4*g.mss {
			s := g.te.next(5 * time.Second)
			una = g.absorb(s, una)
		}
		n := min(len(data), g.mss, int(g.peerWnd-(g.sndNxt-una)))
		g.send(wire.TCPPsh, data[:n])
		data = data[n:]
	}
}

// absorb handles a segment from gopasta: ACK and window, data appended in
// order. It returns the new oldest unacknowledged sequence.
func (g *guest) absorb(s seg, una uint32) uint32 {
	if s.has(wire.TCPRst) {
		g.te.t.Fatalf("unexpected RST")
	}
	if s.has(wire.TCPAck) && seqGT(s.ack, una) {
		una = s.ack
	}
	g.peerWnd = uint32(s.win) << g.peerWS
	if len(s.data) > 0 || s.has(wire.TCPFin) {
		if s.seq == g.rcvNxt {
			g.rx = append(g.rx, s.data...)
			g.rcvNxt += uint32(len(s.data))
			if s.has(wire.TCPFin) {
				g.rcvNxt++
				g.finRcvd = true
			}
		}
		g.ack()
	}
	return una
}

// readUntil absorbs segments until n bytes (and fin, if asked) arrived.
func (g *guest) readUntil(n int, fin bool) {
	g.te.t.Helper()
	for len(g.rx) < n || fin && !g.finRcvd {
		s := g.te.next(5 * time.Second)
		g.absorb(s, g.sndNxt)
	}
}

// waitEnded waits for the flow's Handle on Env.Ended.
func (te *testEnv) waitEnded(h *actors.Handle) {
	te.t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case e := <-te.ended:
			if e == h {
				return
			}
		case <-deadline:
			te.t.Fatalf("flow %v did not end", h.Key)
		}
	}
}

// connectedFlow sets up a test environment, a loopback IPv4 server and a
// guest flow to it starting at sequence iss, runs the handshake, and
// returns the environment, the guest and the server's end.
func connectedFlow(t *testing.T, iss uint32) (*testEnv, *guest, *net.TCPConn) {
	t.Helper()
	return connectedFlowWith(t, iss, nil)
}

// connectedFlowWith is connectedFlow with the guest set up by with (its
// window, the MSS it offers) before its SYN.
func connectedFlowWith(t *testing.T, iss uint32, with func(*guest)) (*testEnv, *guest, *net.TCPConn) {
	t.Helper()
	te := newTestEnv(t)
	srv := actorstest.NewServer(t, "tcp4", "127.0.0.1:0")
	g := newGuest(te, netip.AddrPortFrom(testGW4, srv.Port()), iss)
	if with != nil {
		with(g)
	}
	g.connect()
	return te, g, srv.Accept(t)
}

// takeFD takes c's socket as a non-blocking descriptor of the test's own,
// as a flow holds its host socket, and closes c.
func takeFD(t testing.TB, c net.Conn) int {
	t.Helper()
	f, err := c.(*net.TCPConn).File()
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	return fd
}
