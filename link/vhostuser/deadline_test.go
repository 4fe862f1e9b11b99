package vhostuser

import (
	"bytes"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/gopasta/gopasta/link"
)

// readErr runs ReadBatch in the background and reports its result.
func readErr(d *Device, frames []*link.Frame) chan error {
	ch := make(chan error, 1)
	go func() {
		n, err := d.ReadBatch(frames)
		if err == nil && n == 0 {
			err = errors.New("ReadBatch returned nothing and no error")
		}
		ch <- err
	}()
	return ch
}

// comeBack is the reader coming back for frames after a batch, as the
// dispatcher does once it has handled one: what the batch left due (the
// transmit queue's interrupt, txIrq) goes out. It returns at once, on a
// passed deadline, with no deadline left set.
func comeBack(t *testing.T, d *Device) {
	t.Helper()
	d.SetReadDeadline(time.Now())
	if n, err := d.ReadBatch(newFrames(1)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("coming back: ReadBatch = %d, %v", n, err)
	}
	d.SetReadDeadline(time.Time{})
}

// expectDeadline waits for ch to report os.ErrDeadlineExceeded.
func expectDeadline(t *testing.T, ch chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s: ReadBatch returned %v, want the deadline error", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: ReadBatch still blocked", what)
	}
}

// The dispatcher reads the device on its own goroutine and needs it back
// for its timers and its queries: a read deadline ends a ReadBatch that
// found nothing, with or without a front end, and one not after now
// wakes a ReadBatch that sleeps. Frames already there are returned even
// past the deadline, and none is lost to a deadline.
func TestReadDeadline(t *testing.T) {
	r := newRig(t, Config{})
	frames := newFrames(4)

	// No front end yet: the reader sleeps without a kick.
	start := time.Now()
	r.d.SetReadDeadline(start.Add(50 * time.Millisecond))
	if _, err := r.d.ReadBatch(frames); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("no front end: ReadBatch returned %v", err)
	}
	if el := time.Since(start); el < 50*time.Millisecond {
		t.Errorf("no front end: the deadline ended the read after %v", el)
	}
	r.d.SetReadDeadline(time.Time{})
	ch := readErr(r.d, frames)
	time.Sleep(20 * time.Millisecond)
	r.d.SetReadDeadline(time.Now())
	expectDeadline(t, ch, "no front end, woken")

	// Connected: the reader sleeps on the kick.
	f := r.connect(defaultFeatures)
	r.d.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	expectDeadline(t, readErr(r.d, frames), "connected, deadline")
	r.d.SetReadDeadline(time.Time{})
	ch = readErr(r.d, frames)
	waitUntil(t, "the reader to sleep", func() bool { return r.d.Stats.Waits.Load() > 0 })
	time.Sleep(20 * time.Millisecond)
	select {
	case err := <-ch:
		t.Fatalf("ReadBatch without a deadline returned %v", err)
	default:
	}
	r.d.SetReadDeadline(time.Now())
	expectDeadline(t, ch, "connected, woken")

	// A frame waiting past the deadline is read, not lost.
	p := testFrame(7, 200)
	txFrame(f.q[txQ], p)
	n, err := r.d.ReadBatch(frames)
	if n != 1 || err != nil || !bytes.Equal(frames[0].Data, p) {
		t.Fatalf("frame past the deadline: ReadBatch = %d, %v", n, err)
	}
	// And one kicked while the reader sleeps wakes it as before.
	r.d.SetReadDeadline(time.Time{})
	ch = readErr(r.d, frames)
	time.Sleep(20 * time.Millisecond)
	txFrame(f.q[txQ], testFrame(8, 300))
	f.q[txQ].doKick()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a kick did not wake the reader")
	}
	if !bytes.Equal(frames[0].Data, testFrame(8, 300)) {
		t.Error("frame corrupted")
	}
}

// TryWriteBatch writes what the guest has posted buffers for and never
// waits: a frame without room is left to the caller, untouched, and is
// written whole once buffers come. A lent frame needs no room: its
// buffers were taken when it was lent.
func TestTryWriteBatch(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	q := f.q[rxQ]
	p1, p2 := testFrame(1, 1000), testFrame(2, 1500)
	frames := []*link.Frame{{Data: p1}, {Data: p2}}
	done := make(chan struct{})
	var n int
	var err error
	go func() { n, err = r.d.TryWriteBatch(frames); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("TryWriteBatch waited for buffers")
	}
	if n != 0 || err != nil {
		t.Fatalf("no buffers: TryWriteBatch = %d, %v", n, err)
	}
	bufs := rxBuffers(q, 1, 2048)
	if n, err = r.d.TryWriteBatch(frames); n != 1 || err != nil {
		t.Fatalf("one buffer: TryWriteBatch = %d, %v", n, err)
	}
	if got := r.g.at(bufs[0], 2048)[virtioNetHdrSize : virtioNetHdrSize+len(p1)]; !bytes.Equal(got, p1) {
		t.Error("first frame corrupted")
	}
	if !bytes.Equal(frames[1].Data, p2) {
		t.Error("the frame left to the caller was changed")
	}

	// Lent: buffers taken at Lend, none left on the ring.
	rxBuffers(q, 1, 4096)
	fr := r.d.Lend(lendHlen, 3000)
	if fr == nil {
		t.Fatal("Lend refused with a buffer posted")
	}
	copy(fr.Data, lendHeaders(0))
	for _, b := range fr.Loan.Payload() {
		for i := range b {
			b[i] = 0x5a
		}
	}
	fr.Loan.Commit(3000, 34, 16)
	mixed := []*link.Frame{fr, frames[1]}
	if n, err = r.d.TryWriteBatch(mixed); n != 1 || err != nil {
		t.Fatalf("lent then plain, no free buffer: TryWriteBatch = %d, %v", n, err)
	}
	fr.Release()
	used := q.takeUsed()
	if len(used) != 2 || used[1].len != uint32(virtioNetHdrSize+lendHlen+3000) {
		t.Fatalf("used = %+v, want the first frame and the lent one", used)
	}
}
