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
	defer sink.Close()
	w := NewWriter(sink, depth)
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
	if q := w.queued.Load(); q != 0 {
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
