package tcp

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/linktest"
)

// Both directions of a wrapping bulk transfer with every guest segment
// offered to the flow to run inline: whether a segment runs on the
// caller or is queued changes from one to the next, and not a byte may be
// lost or reordered (bulkWith compares checksums).
func TestTCPInlineBulk(t *testing.T) {
	g := bulkWith(t, "tcp4", "127.0.0.1:0", testGW4, 4<<20, true)
	in := &g.te.TCP.Inline // the test's own protocol: counted from 0
	if g.direct == 0 || in.Segments.Load() == 0 {
		t.Fatalf("no segment ran inline (%d taken by Direct)", g.direct)
	}
	if in.Events.Load() == 0 {
		t.Fatal("no socket event ran inline on the harvester")
	}
}

// With several Ps (SetSerial(false)) nothing runs inline, and the same
// transfer goes through the actor alone.
func TestTCPInlineOff(t *testing.T) {
	SetSerial(false)
	t.Cleanup(func() { SetSerial(true) })
	g := bulkWith(t, "tcp4", "127.0.0.1:0", testGW4, 1<<20, true)
	in := &g.te.TCP.Inline
	if g.direct != 0 || in.Segments.Load() != 0 || in.Events.Load() != 0 {
		t.Fatalf("ran inline with SetSerial(false): %d segments, %d events",
			in.Segments.Load(), in.Events.Load())
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
	for g.h.Gate.Backlog() != 0 || len(g.h.In) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("flow never idle")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // the actor back in its select
}

// stallDev is a link whose writes wait while it is stalled, as a guest
// that stops reading makes them.
type stallDev struct {
	*linktest.MemoryDevice
	stall   atomic.Pointer[chan struct{}]
	stalled atomic.Bool // a write waits
}

func (d *stallDev) WriteBatch(frames []*link.Frame) error {
	if ch := d.stall.Load(); ch != nil {
		d.stalled.Store(true)
		<-*ch
	}
	return d.MemoryDevice.WriteBatch(frames)
}

// fillerType marks the frames a test queues only to fill the Writer.
const fillerType = 0x88b5

// TestTCPInlineFullLinkHandsOver: with the link Writer's queue full, a
// flow run inline on the harvester must not wait for room (the harvester
// serves every flow): it parks its frames and hands the flow to its
// actor, and the harvester goes on to the next flow. Once the link drains,
// both flows' data reach the guest whole and in order.
func TestTCPInlineFullLinkHandsOver(t *testing.T) {
	var sd *stallDev
	te := newTestEnvDev(t, func(a *linktest.MemoryDevice) link.Device {
		sd = &stallDev{MemoryDevice: a}
		return sd
	})
	stall := make(chan struct{})
	unstall := sync.OnceFunc(func() { sd.stall.Store(nil); close(stall) })
	t.Cleanup(unstall) // before the link closes (cleanups run last first)

	var gs [2]*guest
	var socks [2]*net.TCPConn
	for i := range gs {
		srv := actorstest.NewServer(t, "tcp4", "127.0.0.1:0")
		gs[i] = newGuest(te, netip.AddrPortFrom(testGW4, srv.Port()), uint32(1000+i))
		gs[i].connect()
		socks[i] = srv.Accept(t)
		waitIdle(t, gs[i])
	}

	// Stall the link and fill the Writer: a batch waits in the device,
	// the rest fill the queue.
	sd.stall.Store(&stall)
	fill := func() {
		for {
			f := link.GetFrame(60)
			binary.BigEndian.PutUint16(f.Data[12:], fillerType)
			if !te.env.Out.Offer(f) {
				f.Release()
				return
			}
		}
	}
	fill()
	for !sd.stalled.Load() {
		time.Sleep(time.Millisecond)
	}
	fill() // what the writer goroutine took off the queue before it stalled

	parked0, ev0 := te.TCP.Inline.Parked.Load(), te.TCP.Inline.Events.Load()
	const n = 256 << 10
	data := [2][]byte{actorstest.RandBytes(n), actorstest.RandBytes(n)}
	for i, sc := range socks {
		if _, err := sc.Write(data[i]); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(3 * time.Second)
		for te.TCP.Inline.Parked.Load() < parked0+uint64(i)+1 {
			if time.Now().After(deadline) {
				t.Fatalf("flow %d: the harvester did not hand over (%d inline events, %d parked): is it waiting for the link?",
					i, te.TCP.Inline.Events.Load()-ev0, te.TCP.Inline.Parked.Load()-parked0)
			}
			time.Sleep(time.Millisecond)
		}
	}

	unstall()
	for !bytes.Equal(gs[0].rx, data[0]) || !bytes.Equal(gs[1].rx, data[1]) {
		var p []byte
		select {
		case p = <-te.dev.Frames():
		case <-time.After(5 * time.Second):
			t.Fatalf("stuck with %d and %d of %d bytes", len(gs[0].rx), len(gs[1].rx), n)
		}
		if binary.BigEndian.Uint16(p[12:]) == fillerType {
			continue
		}
		s := parseSeg(t, p)
		for i, g := range gs {
			if s.dst.Port() == g.k.Guest.Port() {
				g.absorb(s, g.sndNxt)
				if len(g.rx) > n || !bytes.Equal(g.rx, data[i][:len(g.rx)]) {
					t.Fatalf("flow %d: bytes lost, reordered or corrupted at %d", i, len(g.rx))
				}
			}
		}
	}
}
