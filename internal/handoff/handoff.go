// Package handoff decides who runs a piece of work for a flow: the
// goroutine that holds it, when the flow is idle, or the flow's owner
// goroutine, to which it is handed over otherwise.
//
// # Theory of operation
//
// Several parts of gopasta have one goroutine that owns some state (the
// link Writer's goroutine owns the device's write side, a TCP actor its
// flow, a UDP binding's actor its send path) and other goroutines that
// produce work for it (actors with frames for the guest, the dispatcher
// with the guest's segments and datagrams, the TCP poller's harvester
// with socket events). Handing each piece over costs a goroutine wake-up,
// often a thread's on the other CPU; for request/response traffic that is
// most of the cost of a transaction. So when the owner has nothing to do,
// the producer does the work itself, on its own goroutine, as gVisor's TCP
// does with LockUser and its processors. A Gate is the one rule for that.
//
// The owner queues work where it waits for it (a channel, an Inbox): the
// Gate holds no work itself. It holds a mutex, which whoever runs the
// flow holds, and the backlog: how many pieces have been handed to the
// owner and not yet done.
//
//   - Producers call Queue(n) before they put n pieces where the owner
//     looks, and Done(n) if they could not put them there after all.
//   - The owner runs under the mutex (Enter, Leave) and calls Done(n)
//     once it has finished n queued pieces, before it calls Leave.
//   - A guest, a goroutine that is not the owner, calls TryEnter: it
//     succeeds only if the mutex is free and the backlog is zero, checked
//     again once the mutex is held. Then the guest runs the work and
//     Leaves; otherwise it queues the work for the owner.
//
// What that guarantees:
//
//   - No reordering. A guest runs only when every piece queued before
//     its TryEnter (Queue happened before it) has been done: the backlog
//     counted it, and the owner counts it Done only once it is finished,
//     under the mutex. So a producer that queues some pieces and runs the
//     next one itself never sees that one overtake the queued ones, and
//     the link sees the frames of each producer in the order it sent them.
//   - No lost work. Work that is not run by a guest is in the owner's
//     queue, and the owner waits on that queue; the Gate never holds work
//     that only a later event would find.
//   - Mutual exclusion. The owner and at most one guest at a time hold
//     the mutex, so what it guards needs no other lock between them.
//
// Why it never blocks: TryEnter never waits, and a guest that holds the
// Gate must not wait either, for anything (room in a full queue, a lock
// the owner may hold, a peer that reads slowly): what it cannot finish at
// once it queues for the owner, as if it had not entered, or leaves for
// the owner to find. The owner's Enter therefore waits at most for one
// guest run, which is short and cannot wait for the owner, so no cycle of
// waits can go through a Gate. Owners may block (that is the
// back-pressure that stops a flow reading its socket while the guest is
// behind); guests, which are the dispatcher and the harvester that every
// flow depends on, may not.
//
// A Gate has no dependencies but the standard library, so that the link
// and the flows can share it.
package handoff

import (
	"sync"
	"sync/atomic"
)

// Gate is a flow's run-here-or-hand-over lock; see the package comment.
// The zero value is an open Gate with nothing queued. A Gate must not be
// copied after first use.
type Gate struct {
	mu      sync.Mutex
	backlog atomic.Int64
}

// Queue records that n pieces of work are about to be queued for the
// owner. Producers call it before they queue them, so that no guest
// run can overtake them.
func (g *Gate) Queue(n int) { g.backlog.Add(int64(n)) }

// Done records that n queued pieces are finished (the owner, under the
// Gate) or were not queued after all (the producer that called Queue).
func (g *Gate) Done(n int) { g.backlog.Add(-int64(n)) }

// Backlog is the number of pieces queued and not yet done.
func (g *Gate) Backlog() int64 { return g.backlog.Load() }

// Idle reports whether nothing is queued for the owner: work handed to
// it now would be the next it does.
func (g *Gate) Idle() bool { return g.backlog.Load() == 0 }

// TryEnter takes the Gate for a guest run if nobody runs the flow and
// nothing is queued for the owner, without ever waiting; it reports
// whether it did. A guest that entered must Leave, and must not wait for
// anything before it does.
func (g *Gate) TryEnter() bool {
	if g.backlog.Load() != 0 || !g.mu.TryLock() {
		return false
	}
	// The backlog may have grown between the first look and the lock:
	// an owner that took the mutex meanwhile and let go of it again, or
	// a producer that queued, would otherwise be overtaken.
	if g.backlog.Load() != 0 {
		g.mu.Unlock()
		return false
	}
	return true
}

// Enter takes the Gate for the owner, waiting for a guest run (never for
// anything longer) to end.
func (g *Gate) Enter() { g.mu.Lock() }

// Leave lets go of the Gate, taken by Enter or TryEnter.
func (g *Gate) Leave() { g.mu.Unlock() }
