package vhostuser

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/gopasta/gopasta/link"
)

// setUsedEvent writes the driver's used_event for q.
func (q *fakeQueue) setUsedEvent(ev uint16) {
	binary.LittleEndian.PutUint16(q.g.at(q.avail+4+2*fakeQSize, 2), ev)
}

// pollingRig is a rig that polls (missed.go) every few milliseconds, with
// a front end connected.
func pollingRig(t *testing.T) (*rig, *fakeFront) {
	r := newRig(t, Config{})
	r.d.pollFirst = 5 * time.Millisecond
	return r, r.connect(defaultFeatures)
}

// A driver whose kick was lost (it made a frame available and did not
// kick, as a guest whose barrier QEMU's TCG dropped may) still has the
// frame read: the sleeping reader polls. Without polling the reader
// would sleep forever (the test's ReadBatch never returns).
func TestMissedKickTransmit(t *testing.T) {
	r, f := pollingRig(t)
	frames := newFrames(4)
	got := readAsync(r.d, frames)
	waitUntil(t, "the reader to sleep", func() bool { return r.d.Stats.Waits.Load() > 0 })
	p := testFrame(1, 1514)
	txFrame(f.q[txQ], p) // and no kick
	select {
	case n := <-got:
		if n != 1 || !bytes.Equal(frames[0].Data, p) {
			t.Fatalf("ReadBatch = %d frames, first %d bytes", n, len(frames[0].Data))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a frame made available without a kick was never read")
	}
	if m := r.d.Stats.FoundByPoll.Load(); m != 1 {
		t.Errorf("FoundByPoll = %d, want 1", m)
	}
	if u := f.q[txQ].takeUsed(); len(u) != 1 {
		t.Errorf("used entries %v, want 1", u)
	}
}

// The writer, asleep for receive buffers, finds buffers added without a
// kick.
func TestMissedKickReceive(t *testing.T) {
	r, f := pollingRig(t)
	q := f.q[rxQ]
	p := testFrame(2, 1000)
	done := make(chan error, 1)
	go func() { done <- r.d.WriteBatch([]*link.Frame{{Data: p}}) }()
	waitUntil(t, "the writer to sleep", func() bool { return r.d.Stats.TxWaits.Load() > 0 })
	rxBuffers(q, 1, 2048) // and no kick
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the writer slept on with a buffer available")
	}
	used := q.takeUsed()
	if len(used) != 1 || !bytes.Equal(q.rxData(used[0])[virtioNetHdrSize:], p) {
		t.Fatalf("used = %+v", used)
	}
	if m := r.d.Stats.FoundByPoll.Load(); m != 1 {
		t.Errorf("FoundByPoll = %d, want 1", m)
	}
}

// A driver that asks for an interrupt (used_event) for an entry already
// published, after the device looked (the lost race), gets one from the
// polling reader; one that asks for nothing new gets none.
func TestInterruptResent(t *testing.T) {
	r, f := pollingRig(t)
	q := f.q[txQ]
	frames := newFrames(4)
	read := func() {
		t.Helper()
		n, err := r.d.ReadBatch(frames)
		if err != nil || n != 1 {
			t.Fatalf("ReadBatch = %d, %v", n, err)
		}
		comeBack(t, r.d)
	}
	txFrame(q, testFrame(1, 100))
	q.doKick()
	read()
	if !q.called() {
		t.Fatal("no interrupt after the first batch")
	}
	// The driver wants no interrupt for a while: the next entry is
	// published silently.
	q.setUsedEvent(100)
	txFrame(q, testFrame(2, 100))
	q.doKick()
	read()
	if q.called() {
		t.Fatal("interrupted although used_event was far ahead")
	}
	// Idle with nothing owed: polling sends nothing.
	got := readAsync(r.d, frames)
	time.Sleep(40 * time.Millisecond)
	if q.called() || r.d.Stats.InterruptsResent.Load() != 0 {
		t.Fatal("polling interrupted a driver that asked for nothing")
	}
	// Now the driver asks for an interrupt at the entry just published
	// (used_event 1: "after index 1"), as if it had raced with it.
	q.setUsedEvent(1)
	waitUntil(t, "the interrupt to be resent", func() bool { return r.d.Stats.InterruptsResent.Load() > 0 })
	if !q.called() {
		t.Fatal("InterruptsResent counted, call fd not signalled")
	}
	time.Sleep(40 * time.Millisecond)
	if n := r.d.Stats.InterruptsResent.Load(); n != 1 {
		t.Errorf("InterruptsResent = %d, want 1 (once sent, it is owed no more)", n)
	}
	txFrame(q, testFrame(3, 100))
	q.doKick()
	if n := <-got; n != 1 {
		t.Fatalf("ReadBatch = %d", n)
	}
}
