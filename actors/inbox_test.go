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
