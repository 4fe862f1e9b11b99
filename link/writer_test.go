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
	const producers, each = 4, 3000
	ours, guest := NewMemoryPair(1500, producers*each)
	defer ours.Close()
	defer guest.Close()
	w := NewWriter(ours, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	var wg sync.WaitGroup
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				f := GetFrame(64)
				binary.BigEndian.PutUint32(f.Data[14:], uint32(p))
				binary.BigEndian.PutUint32(f.Data[18:], uint32(i))
				if i%3 == 0 {
					w.SendCtx(ctx, f)
				} else {
					w.SendNow(ctx, f)
				}
			}
		}()
	}
	wg.Wait()
	next := make([]uint32, producers)
	for n := 0; n < producers*each; n++ {
		b := guest.ReadFrame()
		p, i := binary.BigEndian.Uint32(b[14:]), binary.BigEndian.Uint32(b[18:])
		if p >= producers || i != next[p] {
			t.Fatalf("frame %d of producer %d arrived when %d was due", i, p, next[p])
		}
		next[p]++
	}
	if got := w.Frames.Load(); got != producers*each {
		t.Fatalf("Frames = %d", got)
	}
	if q := w.queued.Load(); q != 0 {
		t.Fatalf("queued = %d after everything was written", q)
	}
}
