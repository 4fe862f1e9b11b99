package handoff

import (
	"sync"
	"sync/atomic"
	"testing"
)

// TestTryEnter: a guest enters only an idle Gate that nobody holds.
func TestTryEnter(t *testing.T) {
	var g Gate
	if !g.Idle() || !g.TryEnter() {
		t.Fatal("an idle, free Gate refused a guest")
	}
	if g.TryEnter() {
		t.Fatal("a second guest entered a held Gate")
	}
	g.Leave()
	g.Queue(2)
	if g.Idle() || g.Backlog() != 2 {
		t.Fatalf("Backlog = %d after Queue(2)", g.Backlog())
	}
	if g.TryEnter() {
		t.Fatal("a guest entered with work queued for the owner")
	}
	g.Enter()
	if g.TryEnter() {
		t.Fatal("a guest entered while the owner runs")
	}
	g.Done(2)
	g.Leave()
	if !g.TryEnter() {
		t.Fatal("a guest refused once the backlog was done")
	}
	g.Leave()
}

// TestTryEnterRechecks: work queued between a guest's first look at the
// backlog and its lock (here: while the owner holds the Gate, which is
// when a producer queues) keeps the guest out once the owner leaves.
func TestTryEnterRechecks(t *testing.T) {
	var g Gate
	g.Enter()
	g.Queue(1)
	g.Leave()
	if g.TryEnter() {
		t.Fatal("a guest overtook queued work")
	}
}

// Producers each send numbered items, running them themselves when
// TryEnter lets them and queueing them for the owner otherwise, while the
// owner runs what is queued. Every item must be run once, each
// producer's in order, and never by two goroutines at once (the log is
// guarded by the Gate alone: the race detector sees any overlap, and so
// does the running count).
func TestGateOrderAndExclusion(t *testing.T) {
	const producers, each = 4, 20000
	var (
		g       Gate
		running atomic.Int32
		log     []uint64 // producer<<32 | item; the Gate's
		guests  atomic.Int64
	)
	run := func(v uint64) {
		if running.Add(1) != 1 {
			t.Error("two goroutines ran the flow at once")
		}
		log = append(log, v)
		running.Add(-1)
	}
	q := make(chan uint64, 64)
	ownerDone := make(chan struct{})
	go func() {
		defer close(ownerDone)
		for v := range q {
			g.Enter()
			run(v)
			// Take what else is queued now, as owners drain in batches.
			n := 1
		more:
			for ; n < 8; n++ {
				select {
				case v, ok := <-q:
					if !ok {
						break more
					}
					run(v)
				default:
					break more
				}
			}
			g.Done(n)
			g.Leave()
		}
	}()
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				v := uint64(p)<<32 | uint64(i)
				// Every fourth item is queued whatever the Gate says
				// (a burst, say), so that the next ones find a backlog.
				if i%4 != 0 && g.TryEnter() {
					run(v)
					g.Leave()
					guests.Add(1)
					continue
				}
				g.Queue(1)
				q <- v
			}
		}()
	}
	wg.Wait()
	close(q)
	<-ownerDone
	if len(log) != producers*each {
		t.Fatalf("%d items run, want %d", len(log), producers*each)
	}
	next := make([]uint64, producers)
	for _, v := range log {
		p, i := v>>32, v&0xffffffff
		if i != next[p] {
			t.Fatalf("producer %d: item %d ran when %d was due", p, i, next[p])
		}
		next[p]++
	}
	if !g.Idle() {
		t.Fatalf("Backlog = %d after everything ran", g.Backlog())
	}
	if guests.Load() == 0 {
		t.Fatal("no guest run: the test did not exercise TryEnter")
	}
}

// TestGateAllocs: entering and leaving, queueing and finishing allocate
// nothing: they are on every frame's path.
func TestGateAllocs(t *testing.T) {
	var g Gate
	if n := testing.AllocsPerRun(100, func() {
		if g.TryEnter() {
			g.Leave()
		}
		g.Queue(1)
		g.Enter()
		g.Done(1)
		g.Leave()
	}); n != 0 {
		t.Fatalf("%v allocations per run", n)
	}
}

// BenchmarkGateTryEnter: a guest run on an idle Gate, the fast path.
func BenchmarkGateTryEnter(b *testing.B) {
	var g Gate
	b.ReportAllocs()
	for b.Loop() {
		if g.TryEnter() {
			g.Leave()
		}
	}
}

// BenchmarkGateContended: guests on every P against an owner that runs
// queued work: most TryEnters fail and hand over.
func BenchmarkGateContended(b *testing.B) {
	var g Gate
	q := make(chan struct{}, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range q {
			g.Enter()
			g.Done(1)
			g.Leave()
		}
	}()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if g.TryEnter() {
				g.Leave()
				continue
			}
			g.Queue(1)
			q <- struct{}{}
		}
	})
	close(q)
	<-done
}
