package actors

import (
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// Both directions of a wrapping bulk transfer with every guest segment
// offered to the flow to run inline: whether a segment runs on the
// caller or is queued changes from one to the next, and not a byte may be
// lost or reordered (bulkWith compares checksums).
func TestTCPInlineBulk(t *testing.T) {
	seg0, ev0 := TCPInline.Segments.Load(), TCPInline.Events.Load()
	g := bulkWith(t, "tcp4", "127.0.0.1:0", testGW4, 4<<20, true)
	if g.direct == 0 || TCPInline.Segments.Load() == seg0 {
		t.Fatalf("no segment ran inline (%d taken by Direct)", g.direct)
	}
	if TCPInline.Events.Load() == ev0 {
		t.Fatal("no socket event ran inline on the harvester")
	}
}

// With several Ps (SetSerial(false)) nothing runs inline, and the same
// transfer goes through the actor alone.
func TestTCPInlineOff(t *testing.T) {
	SetSerial(false)
	t.Cleanup(func() { SetSerial(true) })
	seg0, ev0 := TCPInline.Segments.Load(), TCPInline.Events.Load()
	g := bulkWith(t, "tcp4", "127.0.0.1:0", testGW4, 1<<20, true)
	if g.direct != 0 || TCPInline.Segments.Load() != seg0 || TCPInline.Events.Load() != ev0 {
		t.Fatalf("ran inline with SetSerial(false): %d segments, %d events",
			TCPInline.Segments.Load()-seg0, TCPInline.Events.Load()-ev0)
	}
}

// A panic while a flow runs on the dispatcher's goroutine resets that
// flow, as it would in the actor, and is not the caller's: the caller
// gets on with the next frame, the actor ends the flow and reports it.
func TestTCPInlinePanicResetsOnlyThatFlow(t *testing.T) {
	te := newTestEnv(t)
	srv := newServer(t, "tcp4", "127.0.0.1:0")
	bad := newGuest(te, netip.AddrPortFrom(testGW4, srv.port()), 21000)
	good := newGuest(te, netip.AddrPortFrom(testGW4, srv.port()), 22001)
	bad.inline, good.inline = true, true
	hook := func(k Key, f *link.Frame) {
		if k == bad.k && f.Payload < len(f.Data) {
			panic("injected")
		}
	}
	tcpTestHook.Store(&hook)
	t.Cleanup(func() { tcpTestHook.Store(nil) })
	bad.connect()
	srv.accept(t)
	good.connect()
	gc := srv.accept(t)
	// The handshake's last ACK may still be the actor's: wait until the
	// flow is idle and established, so that the data segment runs inline.
	waitIdle(t, bad)
	panics := te.env.Stats.Panics.Load()
	bad.send(wire.TCPPsh, []byte("boom"))
	if bad.direct == 0 {
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

// waitIdle waits until g's flow has handled every queued frame and is
// established, so that the next frame may run inline.
func waitIdle(t *testing.T, g *guest) {
	t.Helper()
	c := g.h.Direct
	if c == nil {
		t.Fatal("no Direct on a TCP handle")
	}
	deadline := time.Now().Add(5 * time.Second)
	for g.h.inflight.Load() != 0 || len(g.h.In) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("flow never idle")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // the actor back in its select
}
