package tcp

import (
	"testing"
	"time"
)

// Both directions of a wrapping bulk transfer with every guest segment
// offered to the flow to run inline: whether a segment runs on the
// caller or is queued changes from one to the next, and not a byte may be
// lost or reordered (bulkWith compares checksums).
func TestTCPInlineBulk(t *testing.T) {
	seg0, ev0 := Inline.Segments.Load(), Inline.Events.Load()
	g := bulkWith(t, "tcp4", "127.0.0.1:0", testGW4, 4<<20, true)
	if g.direct == 0 || Inline.Segments.Load() == seg0 {
		t.Fatalf("no segment ran inline (%d taken by Direct)", g.direct)
	}
	if Inline.Events.Load() == ev0 {
		t.Fatal("no socket event ran inline on the harvester")
	}
}

// With several Ps (SetSerial(false)) nothing runs inline, and the same
// transfer goes through the actor alone.
func TestTCPInlineOff(t *testing.T) {
	SetSerial(false)
	t.Cleanup(func() { SetSerial(true) })
	seg0, ev0 := Inline.Segments.Load(), Inline.Events.Load()
	g := bulkWith(t, "tcp4", "127.0.0.1:0", testGW4, 1<<20, true)
	if g.direct != 0 || Inline.Segments.Load() != seg0 || Inline.Events.Load() != ev0 {
		t.Fatalf("ran inline with SetSerial(false): %d segments, %d events",
			Inline.Segments.Load()-seg0, Inline.Events.Load()-ev0)
	}
}

// A panic while a flow runs on the dispatcher's goroutine resets that
// flow, as it would in the actor, and is not the caller's: the caller
// gets on with the next frame, the actor ends the flow and reports it.
func TestTCPInlinePanicResetsOnlyThatFlow(t *testing.T) { panicResetsOnlyThatFlow(t, true) }

// waitIdle waits until g's flow has handled every queued frame and is
// established, so that the next frame may run inline.
func waitIdle(t *testing.T, g *guest) {
	t.Helper()
	if g.h.Direct == nil {
		t.Fatal("no Direct on a TCP handle")
	}
	deadline := time.Now().Add(5 * time.Second)
	for g.h.Inflight.Load() != 0 || len(g.h.In) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("flow never idle")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // the actor back in its select
}
