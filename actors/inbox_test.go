package actors

import (
	"testing"
	"time"

	"github.com/gopasta/gopasta/link"
)

// TestInboxOrderAndLimit: frames come out in order, all at once; Push
// refuses beyond the limit and takes again once the consumer has taken.
func TestInboxOrderAndLimit(t *testing.T) {
	ib := NewInbox(3)
	var fs []*link.Frame
	for i := 0; i < 4; i++ {
		f := link.GetFrame(8)
		f.Data[0] = byte(i)
		fs = append(fs, f)
	}
	for i := 0; i < 3; i++ {
		if !ib.Push(fs[i]) {
			t.Fatalf("push %d refused", i)
		}
	}
	if ib.Push(fs[3]) {
		t.Fatal("push beyond the limit accepted")
	}
	if ib.Len() != 3 {
		t.Fatalf("Len %d", ib.Len())
	}
	select {
	case <-ib.Ready:
	default:
		t.Fatal("no Ready signal after pushes")
	}
	q := ib.Take(nil)
	if len(q) != 3 {
		t.Fatalf("took %d frames", len(q))
	}
	for i, f := range q {
		if f.Data[0] != byte(i) {
			t.Fatalf("frame %d out of order: %d", i, f.Data[0])
		}
		f.Release()
	}
	if !ib.Push(fs[3]) {
		t.Fatal("push refused after Take")
	}
	select {
	case <-ib.Ready:
	default:
		t.Fatal("no Ready signal for the empty -> non-empty edge")
	}
	ib.Drain()
	if ib.Len() != 0 {
		t.Fatal("Drain left frames")
	}
}

// TestInboxNoLostWakeup: a producer and a consumer that only looks after
// Ready: every frame arrives, none twice, whatever the interleaving.
func TestInboxNoLostWakeup(t *testing.T) {
	const n = 20000
	ib := NewInbox(n)
	go func() {
		for i := 0; i < n; i++ {
			f := link.GetFrame(8)
			f.Data[0], f.Data[1], f.Data[2] = byte(i), byte(i>>8), byte(i>>16)
			for !ib.Push(f) {
				time.Sleep(time.Microsecond)
			}
		}
	}()
	var spare []*link.Frame
	next := 0
	timeout := time.After(10 * time.Second)
	for next < n {
		select {
		case <-ib.Ready:
		case <-timeout:
			t.Fatalf("stuck after %d frames: a wakeup was lost", next)
		}
		q := ib.Take(spare)
		for _, f := range q {
			got := int(f.Data[0]) | int(f.Data[1])<<8 | int(f.Data[2])<<16
			if got != next {
				t.Fatalf("got frame %d, want %d", got, next)
			}
			next++
			f.Release()
		}
		clear(q)
		spare = q[:0]
	}
	ib.Shrink()
	if ib.Len() != 0 {
		t.Fatal("frames left")
	}
}

// TestInboxBytes: a UDP inbox is bounded by the bytes its frames keep
// alive, charged to the daemon-wide budget until the actor takes them.
func TestInboxBytes(t *testing.T) {
	env := &Env{Opts: Options{TotalBuffer: 4 << 20}.WithDefaults()}
	ib := NewBudgetInbox(env, testInboxLimit, 1<<20)
	n := 0
	for ; n < testInboxLimit; n++ {
		f := link.GetFrame(link.MaxFrameSize) // a 64 KiB datagram
		if !ib.Push(f) {
			f.Release()
			break
		}
	}
	if want := (1 << 20) / link.MaxFrameSize; n != want {
		t.Fatalf("%d 64 KiB frames queued, want %d (1 MiB)", n, want)
	}
	if got := env.Stats.BufferBytes.Load(); got != int64(n*link.MaxFrameSize) {
		t.Fatalf("budget charged %d for %d frames", got, n)
	}
	// Small frames still fit where a large one does not.
	small := link.GetFrame(100)
	if !ib.Push(small) {
		t.Fatal("a small frame refused below the byte limit")
	}
	// The daemon-wide budget binds the inboxes together.
	others := []*Inbox{NewBudgetInbox(env, testInboxLimit, 1<<20), NewBudgetInbox(env, testInboxLimit, 1<<20), NewBudgetInbox(env, testInboxLimit, 1<<20), NewBudgetInbox(env, testInboxLimit, 1<<20)}
	total := 0
	for _, o := range others {
		for {
			f := link.GetFrame(link.MaxFrameSize)
			if !o.Push(f) {
				f.Release()
				break
			}
			total++
		}
	}
	if got := env.Stats.BufferBytes.Load(); got > 4<<20 {
		t.Fatalf("inboxes hold %d bytes, daemon-wide budget %d", got, 4<<20)
	}
	for _, q := range append(others, ib) {
		for _, f := range q.Take(nil) {
			f.Release()
		}
	}
	if got := env.Stats.BufferBytes.Load(); got != 0 {
		t.Fatalf("%d bytes still charged after every frame was taken", got)
	}
}

// testInboxLimit is a datagram limit as a UDP binding's inbox has.
const testInboxLimit = 4096
