package tcp

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// Outbound handshake, data both ways, guest closes first, then the host.
func TestTCPOutboundGuestClosesFirst(t *testing.T) {
	te := newTestEnv(t)
	srv := actorstest.NewServer(t, "tcp4", "127.0.0.1:0")
	g := newGuest(te, netip.AddrPortFrom(testGW4, srv.Port()), 1000)
	sa := g.connect()
	if sa.opts.MSS != 65480 || sa.opts.WScale < 0 {
		t.Fatalf("SYN,ACK options %+v", sa.opts)
	}
	sc := srv.Accept(t)
	if got := sc.RemoteAddr().(*net.TCPAddr).IP.String(); got != "127.0.0.1" {
		t.Fatalf("server sees %s", got)
	}
	g.send(wire.TCPPsh, []byte("hello"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("server read %q %v", buf, err)
	}
	a := te.next(time.Second)
	if a.ack != g.sndNxt {
		t.Fatalf("ACK %d, want %d", a.ack, g.sndNxt)
	}
	// Guest half-closes; the host still answers, then closes.
	g.send(wire.TCPFin, nil)
	if n, err := sc.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("server expected EOF, got %d %v", n, err)
	}
	if _, err := sc.Write([]byte("world")); err != nil {
		t.Fatal(err)
	}
	sc.Close()
	g.readUntil(5, true)
	if string(g.rx) != "world" {
		t.Fatalf("guest got %q", g.rx)
	}
	te.waitEnded(g.h)
}

// The host closes first; the guest keeps sending, then closes.
func TestTCPOutboundHostClosesFirst(t *testing.T) {
	te, g, sc := connectedFlow(t, 2000)
	sc.Write([]byte("bye"))
	sc.CloseWrite()
	g.readUntil(3, true)
	g.send(wire.TCPPsh, []byte("still here"))
	g.send(wire.TCPFin, nil)
	b, err := io.ReadAll(sc)
	if err != nil || string(b) != "still here" {
		t.Fatalf("server read %q %v", b, err)
	}
	// Our FIN is acknowledged by the last ACK, which closes the flow.
	for {
		s := te.next(2 * time.Second)
		if s.ack == g.sndNxt {
			break
		}
	}
	te.waitEnded(g.h)
}

func TestTCPRefused(t *testing.T) {
	te := newTestEnv(t)
	srv := actorstest.NewServer(t, "tcp4", "127.0.0.1:0")
	port := srv.Port()
	srv.Ln.Close()
	g := newGuest(te, netip.AddrPortFrom(testGW4, port), 3000)
	start := time.Now()
	g.h = te.TCP.Start(g.k, buildFrame(g.k, wire.TCPSyn, g.iss, 0, 0xffff, synOpts(1460, 7), nil))
	s := te.next(time.Second)
	if el := time.Since(start); el > 100*time.Millisecond {
		t.Errorf("RST after %v", el)
	}
	if !s.has(wire.TCPRst|wire.TCPAck) || s.ack != g.iss+1 {
		t.Fatalf("want RST,ACK acking %d, got %#x ack %d", g.iss+1, s.flags, s.ack)
	}
	te.waitEnded(g.h)
}

func TestTCPUnknownFlowGetsRST(t *testing.T) {
	te := newTestEnv(t)
	g := newGuest(te, netip.AddrPortFrom(testGW4, 9), 4000)
	if h := te.TCP.Start(g.k, buildFrame(g.k, wire.TCPAck, 5, 777, 100, nil, []byte("x"))); h != nil {
		t.Fatal("StartTCP started a flow for a stray ACK")
	}
	s := te.next(time.Second)
	if !s.has(wire.TCPRst) || s.seq != 777 {
		t.Fatalf("want RST seq 777, got %#x seq %d", s.flags, s.seq)
	}
	if h := te.TCP.Start(g.k, buildFrame(g.k, wire.TCPRst, 5, 0, 0, nil, nil)); h != nil {
		t.Fatal("StartTCP started a flow for a RST")
	}
	if s, ok := te.tryNext(100 * time.Millisecond); ok {
		t.Fatalf("answered a RST with %#x", s.flags)
	}
}

// bulk moves n bytes each way, with both sequence spaces starting just
// below 2^32 so that they wrap.
func bulk(t *testing.T, network, addr string, far netip.Addr, n int) {
	bulkWith(t, network, addr, far, n, false)
}

// bulkWith is bulk, with every guest frame offered to the flow to run
// inline first if inline is set; it returns the guest.
func bulkWith(t *testing.T, network, addr string, far netip.Addr, n int, inline bool) *guest {
	te := newTestEnv(t)
	old := tcpISNFunc
	tcpISNFunc = func(l, r netip.AddrPort) uint32 { return 0xffffffff - 100000 }
	t.Cleanup(func() { tcpISNFunc = old })
	srv := actorstest.NewServer(t, network, addr)
	g := newGuest(te, netip.AddrPortFrom(far, srv.Port()), 0xffffffff-200000)
	g.inline = inline
	g.connect()
	sc := srv.Accept(t)

	upload(t, g, sc, actorstest.RandBytes(n), nil)

	download(t, g, sc, n)
	te.waitEnded(g.h)
	return g
}

// upload sends up from guest g, then its FIN, and checks that the host
// side sc reads exactly up to its end. before, if not nil, runs on the
// reading goroutine before it reads anything.
func upload(t *testing.T, g *guest, sc net.Conn, up []byte, before func()) {
	t.Helper()
	got := make(chan []byte, 1)
	go func() {
		if before != nil {
			before()
		}
		b, _ := io.ReadAll(sc)
		got <- b
	}()
	g.write(up)
	g.send(wire.TCPFin, nil)
	select {
	case b := <-got:
		if sha256.Sum256(b) != sha256.Sum256(up) {
			t.Fatalf("guest->host: %d bytes arrived, %d sent, or corrupted", len(b), len(up))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("guest->host transfer stuck")
	}
}

// download has the host side sc send n random bytes and close, and checks
// that guest g receives exactly them, then the FIN.
func download(t *testing.T, g *guest, sc net.Conn, n int) {
	t.Helper()
	down := actorstest.RandBytes(n)
	go func() {
		sc.Write(down)
		sc.Close()
	}()
	g.readUntil(n, true)
	if sha256.Sum256(g.rx) != sha256.Sum256(down) {
		t.Fatalf("host->guest: %d bytes, checksum mismatch", len(g.rx))
	}
}

func TestTCPBulkWrapV4(t *testing.T) { bulk(t, "tcp4", "127.0.0.1:0", testGW4, 8<<20) }
func TestTCPBulkWrapV6(t *testing.T) { bulk(t, "tcp6", "[::1]:0", testGW6, 8<<20) }

// A zero window from the guest stops data; opening it restarts it.
func TestTCPGuestZeroWindow(t *testing.T) {
	te, g, sc := connectedFlowWith(t, 5000, func(g *guest) { g.wnd = 0 })
	sc.Write([]byte("data"))
	// Nothing may come but, after a while, a window probe.
	if s, ok := te.tryNext(300 * time.Millisecond); ok && len(s.data) > 0 {
		t.Fatalf("data sent into a zero window")
	}
	g.wnd = 0xffff
	g.ack()
	g.readUntil(4, false)
	if string(g.rx) != "data" {
		t.Fatalf("got %q", g.rx)
	}
}

// The host does not read: the window we offer closes, everything the guest
// sent inside it is still delivered, and the window reopens.
func TestTCPHostFullNoDrop(t *testing.T) {
	te, g, sc := connectedFlow(t, 6000)
	sc.SetReadBuffer(64 << 10)
	// Fill: send while the window allows, without the server reading.
	var sent []byte
	una := g.sndNxt
	deadline := time.Now().Add(10 * time.Second)
	zero := false
	for !zero && time.Now().Before(deadline) {
		if g.sndNxt-una < g.peerWnd {
			n := min(g.mss, int(g.peerWnd-(g.sndNxt-una)))
			d := actorstest.RandBytes(n)
			g.send(wire.TCPPsh, d)
			sent = append(sent, d...)
			continue
		}
		s := te.next(2 * time.Second)
		una = g.absorb(s, una)
		// Closed: the right edge offered is where the guest already is.
		zero = !seqGT(s.ack+uint32(s.win)<<g.peerWS, g.sndNxt)
	}
	if !zero {
		t.Fatalf("window never closed (sent %d)", len(sent))
	}
	if len(sent) < 64<<10 {
		t.Fatalf("window closed after only %d bytes", len(sent))
	}
	// Now read everything: all of it must arrive, and the window reopen.
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, len(sent))
		_, err := io.ReadFull(sc, b)
		if err != nil {
			b = nil
		}
		got <- b
	}()
	reopened := false
	for !reopened {
		s := te.next(5 * time.Second)
		una = g.absorb(s, una)
		reopened = s.win > 0 && s.ack == g.sndNxt
	}
	if b := <-got; !bytes.Equal(b, sent) {
		t.Fatalf("host got %d bytes, guest sent %d inside the window", len(b), len(sent))
	}
}

// Three duplicate ACKs make gopasta resend from the first unacknowledged
// byte; so does the retransmission timer.
func TestTCPRetransmit(t *testing.T) {
	te, g, sc := connectedFlow(t, 7000)
	msg := actorstest.RandBytes(3000)
	sc.Write(msg)
	first := te.next(time.Second) // "lost"
	if first.seq != g.rcvNxt || len(first.data) == 0 {
		t.Fatalf("unexpected first segment seq %d len %d", first.seq, len(first.data))
	}
	// Fast retransmit: three duplicate ACKs.
	g.ack()
	g.ack()
	g.ack()
	s := te.next(time.Second)
	if s.seq != g.rcvNxt || !bytes.Equal(s.data, msg[:len(s.data)]) {
		t.Fatalf("fast retransmit: seq %d len %d, want seq %d", s.seq, len(s.data), g.rcvNxt)
	}
	// Timeout: drop that one too, and wait.
	start := time.Now()
	s = te.next(3 * time.Second)
	if el := time.Since(start); s.seq != g.rcvNxt || el < 150*time.Millisecond {
		t.Fatalf("RTO retransmit: seq %d after %v", s.seq, el)
	}
	g.absorb(s, g.sndNxt)
	g.readUntil(len(msg), false)
	if !bytes.Equal(g.rx, msg) {
		t.Fatal("data differs after retransmissions")
	}
}

// An ACK and the duplicates that make us retransmit, handled in one run
// of the actor: the acknowledged bytes, which leave the socket's queue
// only at the end of a run (consume), are gone before the rewind to the
// first unacknowledged byte, so that what is resent is the bytes at that
// sequence, not the ones before it.
func TestTCPRetransmitAfterAckInOneRun(t *testing.T) {
	te, g, sc := connectedFlowWith(t, 7000, func(g *guest) { g.synMSS = 1000 })
	msg := actorstest.RandBytes(5000)
	sc.Write(msg)
	base := g.rcvNxt
	for got := 0; got < len(msg); {
		s := te.next(time.Second)
		if s.seq != base+uint32(got) || len(s.data) == 0 || len(s.data) > 1000 {
			t.Fatalf("segment seq %d len %d, want seq %d", s.seq, len(s.data), base+uint32(got))
		}
		got += len(s.data)
	}
	// Hold the flow while the ACK of the first 2000 bytes and three
	// duplicates of it queue up: the actor then handles all four in one run.
	g.h.Gate.Enter()
	for range 4 {
		g.input(buildFrame(g.k, wire.TCPAck, g.sndNxt, base+2000, g.wnd, nil, nil))
	}
	g.h.Gate.Leave()
	s := te.next(time.Second)
	if s.seq != base+2000 || !bytes.Equal(s.data, msg[2000:2000+len(s.data)]) {
		t.Fatalf("retransmitted seq %d (want %d), bytes from the right place: %v",
			s.seq, base+2000, bytes.Equal(s.data, msg[2000:2000+len(s.data)]))
	}
	g.rcvNxt = base + 2000
	g.absorb(s, g.sndNxt)
	g.readUntil(len(msg)-2000, false)
	if !bytes.Equal(g.rx, msg[2000:]) {
		t.Fatal("data differs after the retransmission")
	}
}

// Out-of-order segments from the guest are held and delivered once the
// hole is filled.
func TestTCPOutOfOrderFromGuest(t *testing.T) {
	te, g, sc := connectedFlow(t, 8000)
	a, b := []byte("first-"), []byte("second")
	base := g.sndNxt
	g.input(buildFrame(g.k, wire.TCPAck, base+uint32(len(a)), g.rcvNxt, g.wnd, nil, b))
	d := te.next(time.Second)
	if d.ack != base {
		t.Fatalf("duplicate ACK %d, want %d", d.ack, base)
	}
	g.input(buildFrame(g.k, wire.TCPAck, base, g.rcvNxt, g.wnd, nil, a))
	g.sndNxt = base + uint32(len(a)+len(b))
	buf := make([]byte, len(a)+len(b))
	sc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "first-second" {
		t.Fatalf("server got %q %v", buf, err)
	}
}

func TestTCPGuestReset(t *testing.T) {
	te, g, sc := connectedFlow(t, 9000)
	g.input(buildFrame(g.k, wire.TCPRst, g.sndNxt, 0, 0, nil, nil))
	sc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := sc.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("server read: %v, want ECONNRESET", err)
	}
	te.waitEnded(g.h)
}

// TestTCPGuestResetInHandshake: a guest that gives up on connecting (its
// application closed the socket in SYN-SENT) answers our SYN,ACK with a
// reset. The host server has already accepted the connection: it must see
// it closed (EOF), not reset, which it would report as an error.
func TestTCPGuestResetInHandshake(t *testing.T) {
	te := newTestEnv(t)
	srv := actorstest.NewServer(t, "tcp4", "127.0.0.1:0")
	g := newGuest(te, netip.AddrPortFrom(testGW4, srv.Port()), 9100)
	g.h = te.TCP.Start(g.k, buildFrame(g.k, wire.TCPSyn, g.iss, 0, 0xffff, synOpts(65480, g.ws), nil))
	if g.h == nil {
		t.Fatal("StartTCP returned nil for a SYN")
	}
	sa := te.next(5 * time.Second)
	if !sa.has(wire.TCPSyn|wire.TCPAck) || sa.ack != g.iss+1 {
		t.Fatalf("expected SYN,ACK acking %d, got flags %#x ack %d", g.iss+1, sa.flags, sa.ack)
	}
	sc := srv.Accept(t)
	// What Linux sends for a segment to a socket that no longer exists:
	// RST, sequence number taken from the segment's ACK field.
	g.input(buildFrame(g.k, wire.TCPRst, sa.ack, 0, 0, nil, nil))
	sc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := sc.Read(make([]byte, 1))
	if n != 0 || err != io.EOF {
		t.Fatalf("server read: %d, %v, want EOF", n, err)
	}
	te.waitEnded(g.h)
	if s, ok := te.tryNext(200 * time.Millisecond); ok {
		t.Fatalf("answered the guest's reset with %#x", s.flags)
	}
}

func TestTCPHostReset(t *testing.T) {
	te, g, sc := connectedFlow(t, 10000)
	sc.SetLinger(0)
	sc.Close()
	for {
		s := te.next(5 * time.Second)
		if s.has(wire.TCPRst) {
			break
		}
	}
	te.waitEnded(g.h)
}

// A panic in one flow resets that flow only.
func TestTCPPanicResetsOnlyThatFlow(t *testing.T) { panicResetsOnlyThatFlow(t, false) }

// panicResetsOnlyThatFlow makes one of two flows panic on its first data
// segment, which runs inline (on the test's goroutine, as on the
// dispatcher's) if inline is set: that flow alone is reset, the panic
// counted once, and the other flow still carries data.
func panicResetsOnlyThatFlow(t *testing.T, inline bool) {
	te := newTestEnv(t)
	srv := actorstest.NewServer(t, "tcp4", "127.0.0.1:0")
	bad := newGuest(te, netip.AddrPortFrom(testGW4, srv.Port()), 11000)
	good := newGuest(te, netip.AddrPortFrom(testGW4, srv.Port()), 12001)
	bad.inline, good.inline = inline, inline
	hook := func(k actors.Key, f *link.Frame) {
		if k == bad.k && f.Payload < len(f.Data) {
			panic("injected")
		}
	}
	tcpTestHook.Store(&hook)
	t.Cleanup(func() { tcpTestHook.Store(nil) })
	bad.connect()
	srv.Accept(t)
	good.connect()
	gc := srv.Accept(t)
	if inline {
		// The handshake's last ACK may still be the actor's: wait
		// until the flow is idle, so that the data runs inline.
		waitIdle(t, bad)
	}
	panics := te.env.Stats.Panics.Load()
	bad.send(wire.TCPPsh, []byte("boom"))
	if inline && bad.direct == 0 {
		t.Fatal("the segment did not run inline")
	}
	s := te.next(5 * time.Second)
	if !s.has(wire.TCPRst) || s.dst != bad.k.Guest {
		t.Fatalf("expected RST to the panicking flow, got %#x to %v", s.flags, s.dst)
	}
	te.waitEnded(bad.h)
	if n := te.env.Stats.Panics.Load() - panics; n != 1 {
		t.Fatalf("Panics = %d", n)
	}
	good.send(wire.TCPPsh, []byte("fine"))
	buf := make([]byte, 4)
	gc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(gc, buf); err != nil || string(buf) != "fine" {
		t.Fatalf("other flow: %q %v", buf, err)
	}
}

func TestSipHashVector(t *testing.T) {
	// Reference vector from the SipHash paper: key 00..0f, message 00..0e.
	var k [16]byte
	for i := range k {
		k[i] = byte(i)
	}
	msg := make([]byte, 15)
	for i := range msg {
		msg[i] = byte(i)
	}
	k0 := uint64(0)
	k1 := uint64(0)
	for i := 7; i >= 0; i-- {
		k0 = k0<<8 | uint64(k[i])
		k1 = k1<<8 | uint64(k[8+i])
	}
	if h := sipHash24(k0, k1, msg); h != 0xa129ca6149be45e5 {
		t.Fatalf("siphash = %#x", h)
	}
}

func TestSeqArithmetic(t *testing.T) {
	if !seqLT(0xfffffff0, 0x10) || seqLT(0x10, 0xfffffff0) || !seqGT(5, 0xffffffff) {
		t.Fatal("wrap-around comparison")
	}
	if !seqInRange(2, 0xfffffffe, 5) || seqInRange(6, 0xfffffffe, 5) {
		t.Fatal("range across wrap")
	}
	if windowScale(65535) != 0 || windowScale(65536) != 1 || windowScale(6<<20) != 7 || windowScale(1<<30) != 9 {
		t.Fatal("window scale")
	}
	a := netip.MustParseAddrPort("10.0.0.1:80")
	b := netip.MustParseAddrPort("10.0.0.2:4000")
	if tcpISN(a, b) == tcpISN(b, a) {
		t.Fatal("ISN does not depend on the direction")
	}
}

// inbound accepts a host client on a -t forward and runs it to the guest.
func inbound(t *testing.T, network, bind string, gw netip.Addr) {
	te := newTestEnv(t)
	ln, err := net.Listen(network, net.JoinHostPort(bind, "0"))
	if err != nil {
		t.Skipf("listen %s %s: %v", network, bind, err)
	}
	t.Cleanup(func() { ln.Close() })
	cl, err := net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// What a -t forwarder does with an accepted client (actors/forward).
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	fd := takeFD(t, sc)
	far, _ := te.env.NAT.Inbound(cl.LocalAddr().(*net.TCPAddr).AddrPort())
	ga := testGuest4
	if network == "tcp6" {
		ga = testGuest6
	}
	te.TCP.StartInbound(actors.Key{Proto: wire.ProtoTCP, Guest: netip.AddrPortFrom(ga, 8080), Far: far}, fd)
	var h *actors.Handle
	select {
	case h = <-te.register:
	case <-time.After(5 * time.Second):
		t.Fatal("no flow registered")
	}
	syn := te.next(5 * time.Second)
	cport := uint16(cl.LocalAddr().(*net.TCPAddr).Port)
	if !syn.has(wire.TCPSyn) || syn.has(wire.TCPAck) || syn.src != netip.AddrPortFrom(gw, cport) || syn.dst.Port() != 8080 {
		t.Fatalf("SYN %#x %v -> %v, want from %v:%d to port 8080", syn.flags, syn.src, syn.dst, gw, cport)
	}
	if syn.opts.MSS == 0 || syn.opts.WScale < 0 {
		t.Fatalf("SYN options %+v", syn.opts)
	}
	if h.Key.Guest != syn.dst || h.Key.Far != syn.src {
		t.Fatalf("registered key %v, SYN %v -> %v", h.Key, syn.src, syn.dst)
	}
	g := &guest{te: te, k: h.Key, h: h, iss: 77, sndNxt: 78, rcvNxt: syn.seq + 1, wnd: 0xffff, ws: 7,
		mss: int(syn.opts.MSS), peerWS: uint8(syn.opts.WScale), peerWnd: uint32(syn.win)}
	g.input(buildFrame(g.k, wire.TCPSyn|wire.TCPAck, 77, syn.seq+1, 0xffff, synOpts(65480, 7), nil))
	a := te.next(5 * time.Second)
	if a.ack != 78 || !a.has(wire.TCPAck) {
		t.Fatalf("handshake ACK %#x ack %d", a.flags, a.ack)
	}
	g.peerWnd = uint32(a.win) << g.peerWS
	cl.Write([]byte("ping"))
	g.readUntil(4, false)
	g.send(wire.TCPPsh, []byte("pong"))
	buf := make([]byte, 4)
	cl.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(cl, buf); err != nil || string(buf) != "pong" || string(g.rx) != "ping" {
		t.Fatalf("client got %q %v, guest got %q", buf, err, g.rx)
	}
	cl.Close()
	g.readUntil(4, true)
	g.send(wire.TCPFin, nil)
	te.waitEnded(h)
}

func TestTCPInboundV4(t *testing.T) { inbound(t, "tcp4", "127.0.0.1", testGW4) }
func TestTCPInboundV6(t *testing.T) { inbound(t, "tcp6", "::1", testGW6) }

// Without SO_PEEK_OFF (kernels before 6.10) every peek starts at the head
// of the queue, and the end of stream shows only once the guest has
// acknowledged everything: the flow must still see it, in both close
// orders.
func TestTCPBulkNoPeekOff(t *testing.T) {
	tcpNoPeekOff = true
	t.Cleanup(func() { tcpNoPeekOff = false })
	bulk(t, "tcp4", "127.0.0.1:0", testGW4, 1<<20)
	TestTCPOutboundGuestClosesFirst(t)
}
