package link

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
)

// TestWriterSendNowKeepsOrder: producers that mix SendNow and SendCtx see
// each of their frames on the link once, in the order they sent them, while
// the writer goroutine and direct writes interleave.
func TestWriterSendNowKeepsOrder(t *testing.T) {
	producersKeepOrder(t, 64, func(ctx context.Context, w *Writer, p int) {
		for i := 0; i < orderEach; i++ {
			if i%3 == 0 {
				w.SendCtx(ctx, numbered(p, i))
			} else {
				w.SendNow(ctx, numbered(p, i))
			}
		}
	})
}

// orderProducers producers send orderEach frames each in producersKeepOrder.
const orderProducers, orderEach = 4, 3000

// producersKeepOrder runs produce for orderProducers producers at once on
// a running Writer with a queue of depth frames; each must send its frames
// numbered(p, 0..orderEach-1) in order. It checks that every frame reached
// the link once, each producer's in order, and that the Writer's counters
// agree.
func producersKeepOrder(t *testing.T, depth int, produce func(ctx context.Context, w *Writer, p int)) {
	t.Helper()
	sink := newSink(1500, orderProducers*orderEach)
	producersKeepOrderOn(t, sink, sink, depth, produce)
}

// producersKeepOrderOn is producersKeepOrder on dev, which writes to sink.
func producersKeepOrderOn(t *testing.T, dev Device, sink *sink, depth int, produce func(ctx context.Context, w *Writer, p int)) {
	t.Helper()
	defer sink.Close()
	w := NewWriter(dev, depth)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	var wg sync.WaitGroup
	for p := 0; p < orderProducers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			produce(ctx, w, p)
		}()
	}
	wg.Wait()
	next := make([]uint32, orderProducers)
	for n := 0; n < orderProducers*orderEach; n++ {
		b := sink.ReadFrame()
		p, i := binary.BigEndian.Uint32(b[14:]), binary.BigEndian.Uint32(b[18:])
		if p >= orderProducers || i != next[p] {
			t.Fatalf("frame %d of producer %d arrived when %d was due", i, p, next[p])
		}
		next[p]++
	}
	if got := w.Frames.Load(); got != orderProducers*orderEach {
		t.Fatalf("Frames = %d", got)
	}
	if q := w.gate.Backlog(); q != 0 {
		t.Fatalf("queued = %d after everything was written", q)
	}
}

// TestTryGetFrame: a size no frame can have is an error, not a panic.
func TestTryGetFrame(t *testing.T) {
	for _, n := range []int{-1, MaxFrameSize + 1, 1 << 20} {
		if f, err := TryGetFrame(n); err != ErrFrameSize || f != nil {
			t.Errorf("TryGetFrame(%d) = %v, %v", n, f, err)
		}
	}
	for _, n := range []int{0, SmallFrameSize, SmallFrameSize + 1, MaxFrameSize} {
		f, err := TryGetFrame(n)
		if err != nil || len(f.Data) != n {
			t.Fatalf("TryGetFrame(%d): %v", n, err)
		}
		f.Release()
	}
}

// TestWriterOfferNeverWaits: Offer and OfferNow, for goroutines that
// must not wait, write a lone frame at once on an idle link, queue
// behind what is queued, and give the frame back, not released and not
// counted, when the queue is full, where Send would wait.
func TestWriterOfferNeverWaits(t *testing.T) {
	sink := newSink(1500, 64)
	defer sink.Close()
	w := NewWriter(sink, 2)
	if !w.OfferNow(numbered(0, 0)) {
		t.Fatal("OfferNow refused an idle link")
	}
	select {
	case <-sink.Frames():
	default:
		t.Fatal("OfferNow on an idle link did not write the frame itself")
	}
	// The writer goroutine is not running: what is queued stays queued.
	if !w.Offer(numbered(0, 1)) || !w.OfferNow(numbered(0, 2)) {
		t.Fatal("Offer refused a queue with room")
	}
	select {
	case <-sink.Frames():
		t.Fatal("OfferNow wrote a frame while an earlier one was queued")
	default:
	}
	for _, offer := range []func(*Frame) bool{w.Offer, w.OfferNow} {
		f := numbered(0, 3)
		if offer(f) {
			t.Fatal("a full queue took a frame")
		}
		if f.pool == nil {
			t.Fatal("a frame given back was released")
		}
		f.Release()
	}
	if q, d := w.gate.Backlog(), w.Dropped.Load(); q != 2 || d != 0 {
		t.Fatalf("backlog = %d, Dropped = %d after refused offers, want 2, 0", q, d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	for i := 1; i <= 2; i++ {
		b := sink.ReadFrame()
		if got := binary.BigEndian.Uint32(b[18:]); got != uint32(i) {
			t.Fatalf("frame %d arrived when %d was due", got, i)
		}
	}
}

// TestWriterOfferKeepsOrder: producers mixing OfferNow (queued with Send
// when refused) with SendNow see their frames in order.
func TestWriterOfferKeepsOrder(t *testing.T) {
	producersKeepOrder(t, 8, func(ctx context.Context, w *Writer, p int) {
		for i := 0; i < orderEach; i++ {
			f := numbered(p, i)
			switch {
			case i%2 == 0:
				if !w.OfferNow(f) {
					w.Send(f)
				}
			default:
				w.SendNow(ctx, f)
			}
		}
	})
}
