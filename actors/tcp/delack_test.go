package tcp

import (
	"bytes"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/link/wire"
)

// withDelAck sets a long delayed-ACK time, so that "the answer came first"
// does not depend on the machine's speed.
func withDelAck(t *testing.T, d time.Duration) {
	old := tcpDelAck
	tcpDelAck = d
	t.Cleanup(func() { tcpDelAck = old })
}

// A small request's ACK rides on the answer: the guest sees no pure ACK
// before the data, over many exchanges; acknowledged answers stay in the
// socket (batched discard) without disturbing anything.
func TestTCPDelayedAckPiggybacks(t *testing.T) {
	withDelAck(t, 300*time.Millisecond)
	te, g, sc := connectedFlow(t, 11000)
	go func() {
		buf := make([]byte, 64)
		for {
			n, err := sc.Read(buf)
			if err != nil {
				return
			}
			sc.Write(bytes.ToUpper(buf[:n]))
		}
	}()
	for i := range 50 {
		req := []byte{'a' + byte(i%26), 'b'}
		g.send(wire.TCPPsh, req)
		s := te.next(2 * time.Second)
		if len(s.data) == 0 {
			t.Fatalf("exchange %d: pure ACK (ack %d) before the answer", i, s.ack)
		}
		if s.ack != g.sndNxt || !bytes.Equal(s.data, bytes.ToUpper(req)) || s.seq != g.rcvNxt {
			t.Fatalf("exchange %d: seq %d ack %d data %q; want seq %d ack %d", i, s.seq, s.ack, s.data, g.rcvNxt, g.sndNxt)
		}
		g.rcvNxt += uint32(len(s.data))
		// The next request acknowledges this answer.
	}
	g.ack()
	if s, ok := te.tryNext(400 * time.Millisecond); ok {
		t.Fatalf("a segment (seq %d, ack %d, %d bytes) after everything was acknowledged", s.seq, s.ack, len(s.data))
	}
}

// With no answer, the ACK comes after the delay; a full segment, a FIN
// and a window update are acknowledged at once.
func TestTCPDelayedAckTimesOut(t *testing.T) {
	withDelAck(t, 300*time.Millisecond)
	te, g, sc := connectedFlow(t, 12000)

	start := time.Now()
	g.send(wire.TCPPsh, []byte("no answer to this"))
	s := te.next(3 * time.Second)
	if el := time.Since(start); s.ack != g.sndNxt || len(s.data) != 0 || el < 250*time.Millisecond {
		t.Fatalf("delayed ACK %d (want %d) with %d bytes after %v", s.ack, g.sndNxt, len(s.data), el)
	}

	start = time.Now()
	g.send(wire.TCPPsh, actorstest.RandBytes(g.mss))
	s = te.next(3 * time.Second)
	if el := time.Since(start); s.ack != g.sndNxt || el > 200*time.Millisecond {
		t.Fatalf("full segment: ACK %d (want %d) after %v", s.ack, g.sndNxt, el)
	}

	// The guest's FIN: its ACK waits for the host's FIN, which comes as
	// soon as the host has read everything; one segment carries both.
	g.send(wire.TCPFin, nil)
	got, err := io.ReadAll(sc)
	if err != nil || len(got) != len("no answer to this")+g.mss {
		t.Fatalf("server read %d bytes, %v", len(got), err)
	}
	sc.Close()
	s = te.next(3 * time.Second)
	if !s.has(wire.TCPFin|wire.TCPAck) || s.ack != g.sndNxt {
		t.Fatalf("after the guest's FIN: flags %#x ack %d, want FIN,ACK acking %d", s.flags, s.ack, g.sndNxt)
	}
}

// An ACK that waited in vain (the host did not answer, perhaps because
// the guest holds its next write until this ACK, as Nagle's algorithm
// does) puts the flow in quick-ACK mode: the next tcpQuickAcks small
// segments are acknowledged at once, and then ACKs wait again.
func TestTCPQuickAckAfterTimeout(t *testing.T) {
	withDelAck(t, 300*time.Millisecond)
	te, g, sc := connectedFlow(t, 15000)
	go io.Copy(io.Discard, sc) // the host reads, and never answers
	start := time.Now()
	g.send(wire.TCPPsh, []byte("first"))
	if s := te.next(3 * time.Second); s.ack != g.sndNxt || time.Since(start) < 250*time.Millisecond {
		t.Fatalf("first ACK %d (want %d) after %v: not delayed", s.ack, g.sndNxt, time.Since(start))
	}
	for i := range tcpQuickAcks {
		start = time.Now()
		g.send(wire.TCPPsh, []byte("more"))
		s := te.next(3 * time.Second)
		if el := time.Since(start); s.ack != g.sndNxt || el > 150*time.Millisecond {
			t.Fatalf("quick ACK %d: ack %d (want %d) after %v", i, s.ack, g.sndNxt, el)
		}
	}
	start = time.Now()
	g.send(wire.TCPPsh, []byte("delayed again"))
	if s := te.next(3 * time.Second); s.ack != g.sndNxt || time.Since(start) < 250*time.Millisecond {
		t.Fatalf("after the quick ACKs: ack %d (want %d) after %v, want the delay again", s.ack, g.sndNxt, time.Since(start))
	}
}

// A guest's FIN the host does not answer with its own is acknowledged
// after the delay.
func TestTCPDelayedAckOfFin(t *testing.T) {
	withDelAck(t, 300*time.Millisecond)
	te, g, sc := connectedFlow(t, 14000)
	start := time.Now()
	g.send(wire.TCPFin, nil)
	s := te.next(3 * time.Second)
	if el := time.Since(start); s.ack != g.sndNxt || s.has(wire.TCPFin) || el < 250*time.Millisecond {
		t.Fatalf("ACK of FIN: flags %#x ack %d (want %d) after %v", s.flags, s.ack, g.sndNxt, el)
	}
	// Half-closed: the host still talks.
	sc.Write([]byte("after your FIN"))
	g.readUntil(len("after your FIN"), false)
	if string(g.rx) != "after your FIN" {
		t.Fatalf("guest got %q", g.rx)
	}
}

// A rewind after acknowledged data resends exactly the unacknowledged
// bytes, and a graceful close is a FIN to the host peer, not a reset.
func TestTCPRewindAfterAck(t *testing.T) {
	te, g, sc := connectedFlow(t, 13000)
	first := []byte("acknowledged")
	sc.Write(first)
	g.readUntil(len(first), false) // acknowledges it
	second := []byte("lost once")
	sc.Write(second)
	s := te.next(time.Second)
	if !bytes.Equal(s.data, second) {
		t.Fatalf("got %q", s.data)
	}
	g.ack()
	g.ack()
	g.ack()
	s = te.next(time.Second)
	if s.seq != g.rcvNxt || !bytes.Equal(s.data, second) {
		t.Fatalf("retransmission seq %d %q, want seq %d %q", s.seq, s.data, g.rcvNxt, second)
	}
	g.absorb(s, g.sndNxt)

	// The host closes, the guest acknowledges everything and closes.
	sc.CloseWrite()
	g.readUntil(len(first)+len(second), true)
	rsts := outRsts(t)
	g.send(wire.TCPFin, nil)
	te.waitEnded(g.h)
	sc.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := sc.Read(make([]byte, 8))
	if n != 0 || err != io.EOF {
		t.Fatalf("server read %d, %v; want EOF", n, err)
	}
	// The peer has seen our FIN first either way: a reset for unread data
	// shows only in the kernel's count of resets sent.
	if d := outRsts(t) - rsts; d != 0 {
		t.Fatalf("%d resets sent at a graceful close: data was left in the socket", d)
	}
}

// outRsts is the network namespace's count of TCP resets sent.
func outRsts(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		t.Skip(err)
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "OutRsts" && i < len(f) {
				v, _ := strconv.Atoi(f[i])
				return v
			}
		}
	}
	t.Skip("no Tcp OutRsts in /proc/net/snmp")
	return 0
}

// A large answer through a small guest window: every acknowledged byte
// must leave the socket at once. Held back, a partly consumed buffer keeps
// its whole size charged to the receive buffer, the window towards the
// host closes, the host stops sending and the flow stalls (seen with
// 256 KiB HTTP downloads when acknowledged data was discarded in
// batches).
func TestTCPSmallWindowLargeAnswer(t *testing.T) {
	te := newTestEnv(t)
	srv := actorstest.NewServer(t, "tcp4", "127.0.0.1:0")
	g := newGuest(te, netip.AddrPortFrom(testGW4, srv.Port()), 15000)
	g.wnd = 97 // with scale 7: 12416 bytes
	g.connect()
	sc := srv.Accept(t)
	msg := actorstest.RandBytes(4 << 20)
	go func() {
		sc.Write(msg)
		sc.CloseWrite()
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !g.finRcvd {
		if time.Now().After(deadline) {
			t.Fatalf("stalled after %d of %d bytes", len(g.rx), len(msg))
		}
		s, ok := te.tryNext(3 * time.Second)
		if !ok {
			t.Fatalf("nothing for 3 s after %d of %d bytes", len(g.rx), len(msg))
		}
		g.absorb(s, g.sndNxt)
	}
	if !bytes.Equal(g.rx, msg) {
		t.Fatalf("got %d bytes, differing from the %d sent", len(g.rx), len(msg))
	}
}
