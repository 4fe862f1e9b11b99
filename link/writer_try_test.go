package link

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"
)

// trySink is a sink with a peer that takes frames only while it has room
// (a vhost-user guest's receive buffers): WriteBatch waits for room,
// TryWriteBatch (TryWriter) writes as far as the room goes. A negative
// room is unlimited.
type trySink struct {
	*sink
	mu    sync.Mutex
	more  *sync.Cond
	room  int
	tries int // TryWriteBatch calls
}

func newTrySink(depth, room int) *trySink {
	s := &trySink{sink: newSink(1500, depth), room: room}
	s.more = sync.NewCond(&s.mu)
	return s
}

// give makes room for n more frames.
func (s *trySink) give(n int) {
	s.mu.Lock()
	s.room += n
	s.mu.Unlock()
	s.more.Broadcast()
}

// take takes room for one frame, waiting for it if wait.
func (s *trySink) take(wait bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.room == 0 {
		if !wait {
			return false
		}
		s.more.Wait()
	}
	if s.room > 0 {
		s.room--
	}
	return true
}

func (s *trySink) WriteBatch(frames []*Frame) error {
	for _, f := range frames {
		s.take(true)
		if err := s.sink.WriteBatch([]*Frame{f}); err != nil {
			return err
		}
	}
	return nil
}

func (s *trySink) TryWriteBatch(frames []*Frame) (int, error) {
	s.mu.Lock()
	s.tries++
	s.mu.Unlock()
	for i, f := range frames {
		if !s.take(false) {
			return i, nil
		}
		if err := s.sink.WriteBatch([]*Frame{f}); err != nil {
			return i, err
		}
	}
	return len(frames), nil
}

// seqOf is the frame number numbered put in b.
func seqOf(b []byte) uint32 { return binary.BigEndian.Uint32(b[18:]) }

// TestWriterOfferOnTryWriter: on a link whose writes can wait for the
// peer, OfferNow and OfferBatchNow write in place only what the peer has
// room for, never waiting, and queue the rest behind nothing, in order,
// for the writer goroutine, which waits for room as writers may.
func TestWriterOfferOnTryWriter(t *testing.T) {
	s := newTrySink(64, 0)
	w := NewWriter(s, 8)
	took := make(chan bool, 1)
	go func() { took <- w.OfferNow(numbered(0, 0)) }()
	select {
	case ok := <-took:
		if !ok {
			t.Fatal("OfferNow refused a frame with the queue empty")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OfferNow waited for the peer")
	}
	if s.tries != 1 {
		t.Fatalf("OfferNow on an idle link tried %d writes in place, want 1", s.tries)
	}
	batch := []*Frame{numbered(0, 1), numbered(0, 2)}
	if n := w.OfferBatchNow(batch); n != 2 || batch[0] != nil || batch[1] != nil {
		t.Fatalf("OfferBatchNow behind a queued frame took %d (%v)", n, batch)
	}
	if s.tries != 1 {
		t.Fatal("OfferBatchNow wrote in place past a queued frame")
	}
	select {
	case <-s.Frames():
		t.Fatal("a frame reached a peer without room")
	default:
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	defer func() { cancel(); s.give(-1 << 30); s.Close(); <-done }()
	s.give(3)
	for i := uint32(0); i < 3; i++ {
		if got := seqOf(s.ReadFrame()); got != i {
			t.Fatalf("frame %d arrived when %d was due", got, i)
		}
	}
	waitFor(t, "the writer goroutine to finish", func() bool { return w.Idle() })

	// Room for one of three: one written in place, two queued.
	s.give(1)
	batch = []*Frame{numbered(0, 3), numbered(0, 4), numbered(0, 5)}
	if n := w.OfferBatchNow(batch); n != 3 {
		t.Fatalf("OfferBatchNow with room for one took %d", n)
	}
	if got := seqOf(s.ReadFrame()); got != 3 {
		t.Fatalf("frame %d written in place, want 3", got)
	}
	s.give(2)
	for i := uint32(4); i < 6; i++ {
		if got := seqOf(s.ReadFrame()); got != i {
			t.Fatalf("frame %d arrived when %d was due", got, i)
		}
	}
	if got := w.Frames.Load(); got != 6 {
		t.Errorf("Frames = %d, want 6", got)
	}
}

// TestWriterOfferBatchKeepsOrder: producers mixing OfferBatchNow and
// OfferNow (queued with Send when refused) with SendNow on a link whose
// in-place writes take only part of a batch see their frames in order.
func TestWriterOfferBatchKeepsOrder(t *testing.T) {
	s := newTrySink(orderProducers*orderEach, -1)
	partial := &partialSink{trySink: s}
	producersKeepOrderOn(t, partial, s.sink, 8, func(ctx context.Context, w *Writer, p int) {
		var batch [3]*Frame
		for i := 0; i < orderEach; {
			switch {
			case i%5 == 0 && i+3 <= orderEach:
				for k := range batch {
					batch[k] = numbered(p, i+k)
				}
				n := w.OfferBatchNow(batch[:])
				for _, f := range batch[n:] {
					w.Send(f)
				}
				i += 3
			case i%2 == 0:
				if f := numbered(p, i); !w.OfferNow(f) {
					w.Send(f)
				}
				i++
			default:
				w.SendNow(ctx, numbered(p, i))
				i++
			}
		}
	})
}

// partialSink is a trySink whose in-place writes take, in turn, none,
// one, or all of a batch.
type partialSink struct {
	*trySink
	turn sync.Mutex
	n    int
}

func (s *partialSink) TryWriteBatch(frames []*Frame) (int, error) {
	s.turn.Lock()
	s.n++
	k := s.n % 3
	s.turn.Unlock()
	if k == 2 {
		k = len(frames)
	}
	k = min(k, len(frames))
	n, err := s.trySink.TryWriteBatch(frames[:k])
	return n, err
}
