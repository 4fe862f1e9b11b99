package dispatcher

import (
	"bytes"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// extOff is where extDevice's frames leave the link's memory: past every
// header the tests send.
const extOff = 74

// extDevice leaves the bytes of every large frame it reads from extOff on
// in "guest memory" (link.Frame.Ext), as the vhost-user device leaves a
// TCP payload; the frame's own bytes there are garbage.
type extDevice struct {
	link.Device
	out, copied atomic.Int64
}

type testExt struct {
	d    *extDevice
	mem  []byte
	done bool
}

func (e *testExt) Segs() [][]byte { return [][]byte{e.mem} }
func (e *testExt) CopyTo(frame []byte, off int) bool {
	e.d.copied.Add(int64(copy(frame[off:], e.mem)))
	return true
}
func (e *testExt) Release() {
	if e.done {
		panic("ext released twice")
	}
	e.done = true
	e.d.out.Add(-1)
}

func (d *extDevice) ReadBatch(frames []*link.Frame) (int, error) {
	n, err := d.Device.ReadBatch(frames)
	for _, f := range frames[:n] {
		if len(f.Data) < 200 {
			continue
		}
		e := &testExt{d: d, mem: append([]byte(nil), f.Data[extOff:]...)}
		for i := extOff; i < len(f.Data); i++ {
			f.Data[i] = 0xee
		}
		f.Ext, f.ExtOff = e, extOff
		d.out.Add(1)
	}
	return n, err
}

// A TCP segment of a flow reaches its actor with its payload still in
// guest memory; anything else (a UDP datagram, the first frame of a flow,
// a frame a capture records) is copied in first, and a frame the
// dispatcher drops gives its memory back at once.
func TestExtFrames(t *testing.T) {
	fa := &fakeActors{depth: 4}
	var dev *extDevice
	capturing := false
	var teed [][]byte
	h := newSplitHarness(t, nil, func(d *Dispatcher) {
		withFakes(fa)(d)
		dev = &extDevice{Device: d.dev}
		d.dev = dev
		d.Tee = func(f *link.Frame) {
			if f.Ext != nil {
				t.Error("Tee saw a frame whose payload is not in it")
			}
			teed = append(teed, append([]byte(nil), f.Data...))
		}
		d.Capturing = func() bool { return capturing }
	})
	pay := bytes.Repeat([]byte("0123456789"), 100)

	// A flow's first frame, large: copied in for the starter.
	syn := wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 1, 0, wire.TCPSyn, pay))
	h.send(syn)
	h.waitStat("flows_started", 1)
	if s := fa.get(0); !bytes.Equal(s.data, syn) {
		t.Fatal("first frame of a flow not copied in")
	}
	// The flow's next segment: handed over with its Ext, not copied.
	seg := wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 2, 1, wire.TCPAck, pay))
	h.send(seg)
	f := recvFrame(t, fa.get(0).handle)
	if f.Ext == nil || f.ExtOff != extOff || !bytes.Equal(f.Data[:extOff], seg[:extOff]) || len(f.Data) != len(seg) {
		t.Fatalf("segment: Ext %v at %d, %d bytes", f.Ext, f.ExtOff, len(f.Data))
	}
	if dev.copied.Load() != int64(len(syn)-extOff) {
		t.Errorf("copied %d bytes, want only the first frame's", dev.copied.Load())
	}
	f.Release()

	// A UDP datagram: copied in before its actor sees it.
	udp := wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(40000, 53, pay))
	h.send(udp)
	h.waitStat("flows_started", 2)
	if s := fa.get(1); !bytes.Equal(s.data, udp) {
		t.Fatal("UDP datagram not copied in")
	}

	// Dropped (multicast destination, bad checksum): given back.
	h.send(wiretest.IP(guest4, netip.MustParseAddr("224.0.0.1"), wire.ProtoTCP, wiretest.TCP(40000, 80, 1, 0, wire.TCPSyn, pay)))
	bad := wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(40001, 53, pay))
	bad[len(bad)-1] ^= 1
	h.send(bad)
	h.waitStat("drop_bad_dest", 1)
	h.waitStat("drop_l4_checksum", 1)
	for deadline := time.Now().Add(3 * time.Second); dev.out.Load() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d Exts of dropped frames not given back", dev.out.Load())
		}
	}

	// A capture: the frame it sees is whole.
	capturing = true
	h.send(seg)
	f = recvFrame(t, fa.get(0).handle)
	if f.Ext != nil || !bytes.Equal(f.Data, seg) {
		t.Fatal("segment not copied in for the capture")
	}
	f.Release()
	if !bytes.Equal(teed[len(teed)-1], seg) {
		t.Error("the capture did not see the whole segment")
	}
	if dev.out.Load() != 0 {
		t.Errorf("%d Exts out", dev.out.Load())
	}
}

// Frames left in an ended flow's inbox are given back when the dispatcher
// takes the flow out of its table: a segment whose payload is still in
// guest memory must not keep the guest's transmit buffer for good.
func TestEndedFlowInboxReleased(t *testing.T) {
	fa := &fakeActors{depth: 8}
	var dev *extDevice
	h := newSplitHarness(t, nil, func(d *Dispatcher) {
		withFakes(fa)(d)
		dev = &extDevice{Device: d.dev}
		d.dev = dev
	})
	pay := bytes.Repeat([]byte("0123456789"), 100)
	h.send(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 1, 0, wire.TCPSyn, pay)))
	h.waitStat("flows_started", 1)
	s := fa.get(0)
	// The fake starter kept a copy of the first frame and released it.
	for i := uint32(0); i < 3; i++ {
		h.send(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 2+i, 1, wire.TCPAck, pay)))
	}
	for deadline := time.Now().Add(3 * time.Second); len(s.handle.In) < 3; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d segments queued, want 3", len(s.handle.In))
		}
	}
	if dev.out.Load() != 3 {
		t.Fatalf("%d Exts out, want the 3 queued", dev.out.Load())
	}
	h.env.Reg.Ended <- s.handle // the actor returned with them unread
	h.waitStat("flows_ended", 1)
	if n := dev.out.Load(); n != 0 || len(s.handle.In) != 0 {
		t.Fatalf("%d Exts out, %d frames queued after the flow ended", n, len(s.handle.In))
	}
}

// extDeadlineDevice is an extDevice with the read deadline of the device
// under it, so that the dispatcher reads it on its own goroutine and
// offers lone frames to Direct, as on vhost-user.
type extDeadlineDevice struct {
	*extDevice
	dl readDeadliner
}

func (d *extDeadlineDevice) SetReadDeadline(t time.Time) error { return d.dl.SetReadDeadline(t) }

// On the single-goroutine dispatcher (the tap, vhost-user), a flow's TCP
// segment offered to its Direct keeps its payload in guest memory, as one
// queued for the actor does: the flow writes it to its socket from there
// even when it runs on the dispatcher's goroutine.
func TestExtFramesDirect(t *testing.T) {
	fa := &fakeActors{depth: 4}
	var dev *extDevice
	h := newHarness(t, nil, func(d *Dispatcher) {
		withFakes(fa)(d)
		dl, ok := d.dev.(readDeadliner)
		if !ok {
			t.Fatal("the harness device has no read deadline")
		}
		dev = &extDevice{Device: d.dev}
		d.dev = &extDeadlineDevice{extDevice: dev, dl: dl}
	})
	pay := bytes.Repeat([]byte("0123456789"), 100)
	syn := wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 1, 0, wire.TCPSyn, pay))
	h.send(syn)
	h.waitStat("flows_started", 1)
	hd := fa.get(0).handle
	offered := make(chan bool, 1)
	hd.Direct = func(f *link.Frame) bool {
		offered <- f.Ext != nil && f.ExtOff == extOff
		f.Release()
		return true
	}
	h.send(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 2, 1, wire.TCPAck, pay)))
	select {
	case ext := <-offered:
		if !ext {
			t.Fatal("Direct was offered the segment copied in")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Direct was not offered the segment")
	}
	h.waitStat("frames_direct", 1)
	if dev.copied.Load() != int64(len(syn)-extOff) {
		t.Errorf("copied %d bytes, want only the first frame's", dev.copied.Load())
	}
	if dev.out.Load() != 0 {
		t.Errorf("%d Exts out", dev.out.Load())
	}
}
