package link

import (
	"context"
	"encoding/binary"
	"testing"
)

// numbered returns a frame carrying producer p's sequence number i.
func numbered(p, i int) *Frame {
	f := GetFrame(64)
	binary.BigEndian.PutUint32(f.Data[14:], uint32(p))
	binary.BigEndian.PutUint32(f.Data[18:], uint32(i))
	return f
}

// TestWriterSendBatchNowDirect: with nothing queued, a batch is written by
// the caller itself, in order, and the Writer's goroutine (not running
// here) is not needed for it.
func TestWriterSendBatchNowDirect(t *testing.T) {
	sink := newSink(1500, 64)
	defer sink.Close()
	w := NewWriter(sink, 4)
	batch := make([]*Frame, 10)
	for i := range batch {
		batch[i] = numbered(0, i)
	}
	if !w.SendBatchNow(context.Background(), batch) {
		t.Fatal("SendBatchNow failed on an open link")
	}
	for i, f := range batch {
		if f != nil {
			t.Fatalf("batch[%d] not cleared: the caller still holds a frame it handed over", i)
		}
	}
	for i := 0; i < 10; i++ {
		select {
		case b := <-sink.Frames():
			if got := binary.BigEndian.Uint32(b[18:]); got != uint32(i) {
				t.Fatalf("frame %d arrived when %d was due", got, i)
			}
		default:
			t.Fatalf("frame %d not written by SendBatchNow itself", i)
		}
	}
	if w.Frames.Load() != 10 || w.gate.Backlog() != 0 {
		t.Fatalf("Frames = %d, queued = %d", w.Frames.Load(), w.gate.Backlog())
	}
	if !w.SendBatchNow(context.Background(), nil) {
		t.Fatal("an empty batch failed")
	}
}

// TestWriterSendBatchNowQueuesBehind: a batch arriving while frames are
// queued must not overtake them, and gives up (releasing the frames it did
// not hand over) when its context ends while the queue is full.
func TestWriterSendBatchNowQueuesBehind(t *testing.T) {
	sink := newSink(1500, 64)
	defer sink.Close()
	w := NewWriter(sink, 3)
	ctx, cancel := context.WithCancel(context.Background())
	w.Send(numbered(0, 0)) // queued, the writer goroutine not running yet
	batch := []*Frame{numbered(0, 1), numbered(0, 2)}
	if !w.SendBatchNow(ctx, batch) {
		t.Fatal("SendBatchNow failed")
	}
	select {
	case <-sink.Frames():
		t.Fatal("a batch was written while an earlier frame was queued")
	default:
	}
	// The queue (3) is full now: the next batch blocks until ctx ends.
	late := []*Frame{numbered(0, 3), numbered(0, 4)}
	kept := late[1]
	cancel()
	if w.SendBatchNow(ctx, late) {
		t.Fatal("SendBatchNow succeeded with a full queue and a done context")
	}
	if kept.pool != nil {
		t.Fatal("a frame not handed over was not released")
	}
	if q := w.gate.Backlog(); q != 3 {
		t.Fatalf("queued = %d, want 3", q)
	}
	done := make(chan struct{})
	rctx, rcancel := context.WithCancel(context.Background())
	go func() { _ = w.Run(rctx); close(done) }()
	defer func() { rcancel(); <-done }()
	for i := 0; i < 3; i++ {
		b := sink.ReadFrame()
		if got := binary.BigEndian.Uint32(b[18:]); got != uint32(i) {
			t.Fatalf("frame %d arrived when %d was due", got, i)
		}
	}
}

// TestWriterSendBatchNowKeepsOrder: producers mixing batches of every size
// with SendNow and SendCtx see each frame on the link once, in their order,
// while direct writes and the writer goroutine interleave.
func TestWriterSendBatchNowKeepsOrder(t *testing.T) {
	producersKeepOrder(t, 16, func(ctx context.Context, w *Writer, p int) {
		batch := make([]*Frame, 0, 16)
		for i := 0; i < orderEach; {
			switch i % 5 {
			case 0:
				w.SendCtx(ctx, numbered(p, i))
				i++
			case 1:
				w.SendNow(ctx, numbered(p, i))
				i++
			default:
				batch = batch[:0]
				for n := (i*7+p)%16 + 1; n > 0 && i < orderEach; n-- {
					batch = append(batch, numbered(p, i))
					i++
				}
				if !w.SendBatchNow(ctx, batch) {
					t.Error("SendBatchNow failed")
					return
				}
			}
		}
	})
}
