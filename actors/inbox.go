package actors

import (
	"sync"

	"github.com/gopasta/gopasta/link"
)

// Inbox is an actor's queue of guest frames whose memory follows the
// backlog: empty, it holds nothing; while the actor is behind, it grows up
// to a limit of frames and of bytes (the buffers the frames keep alive: a
// guest chooses the datagrams' sizes), and Push refuses beyond that.
//
// Why not a channel: the hand-over from the dispatcher to an actor is the
// one buffer on the datagram path that has no kernel behind it, and it must
// ride out the actor being off the CPU as long as the other buffers do.
// On a loaded machine a UDP actor falls thousands of frames (hundreds of
// milliseconds at 10k datagrams/s) behind the dispatcher, while the host
// socket buffers hold about 2,000 such datagrams and the tap's transmit
// queue 10,000 frames. A channel that deep costs its full size up front, per
// actor, for the actor's whole life (a UDP binding lives 180 s after its
// last datagram, and a guest's DNS resolver makes one per query); an Inbox
// costs a mutex and two slices that only grow while a backlog exists, and
// Shrink gives the memory back once the actor is idle.
//
// It also batches by construction: Take hands the actor everything queued
// at once, which becomes one sendmmsg.
//
// There is one producer (the dispatcher goroutine) and one consumer (the
// actor); Push may also be called by the actor's creator before the actor
// runs.
type Inbox struct {
	// Ready holds a value whenever frames were pushed that no Take has
	// returned yet (and, harmlessly, sometimes when none are left).
	Ready chan struct{}

	mu    sync.Mutex
	q     []*link.Frame
	limit int

	// With env set, the queue is also bounded by the bytes its frames
	// keep alive: at most maxBytes, charged to env's daemon-wide budget
	// (budget.go) until the consumer takes them.
	env      *Env
	maxBytes int64
	bytes    int64
}

// NewInbox returns an empty Inbox that holds at most limit frames.
func NewInbox(limit int) *Inbox {
	return &Inbox{Ready: make(chan struct{}, 1), limit: limit}
}

// NewBudgetInbox returns an empty Inbox that holds at most limit frames
// and maxBytes bytes of buffers, charged to env's budget.
func NewBudgetInbox(env *Env, limit int, maxBytes int64) *Inbox {
	ib := NewInbox(limit)
	ib.env, ib.maxBytes = env, maxBytes
	return ib
}

// Push queues f and reports whether it did; when the inbox is full the
// caller keeps f. It never blocks on the consumer.
func (ib *Inbox) Push(f *link.Frame) bool {
	size := int64(cap(f.Data))
	ib.mu.Lock()
	if len(ib.q) >= ib.limit || ib.env != nil && (ib.bytes+size > ib.maxBytes || !ib.env.Charge(size)) {
		ib.mu.Unlock()
		return false
	}
	if ib.env != nil {
		ib.bytes += size
	}
	ib.q = append(ib.q, f)
	first := len(ib.q) == 1
	ib.mu.Unlock()
	if first {
		// Only the empty -> non-empty edge needs a signal: until the
		// consumer has taken the queue, the value sent then is still
		// there (or being acted on).
		select {
		case ib.Ready <- struct{}{}:
		default:
		}
	}
	return true
}

// Take returns every queued frame, in order, and leaves spare[:0] as the
// new queue. The caller owns the frames; once done with them it passes the
// returned slice (cleared) as the next spare, so that two slices alternate
// and steady state allocates nothing.
func (ib *Inbox) Take(spare []*link.Frame) []*link.Frame {
	ib.mu.Lock()
	q := ib.q
	ib.q = spare[:0]
	if ib.bytes != 0 {
		ib.env.Uncharge(ib.bytes)
		ib.bytes = 0
	}
	ib.mu.Unlock()
	return q
}

// Len is the number of frames queued.
func (ib *Inbox) Len() int {
	ib.mu.Lock()
	n := len(ib.q)
	ib.mu.Unlock()
	return n
}

// InboxKeep is the capacity an idle Inbox may keep.
const InboxKeep = 64

// Shrink drops the queue's memory if it is empty and grew beyond what a
// quiet actor needs. The consumer calls it when idle, and drops its spare
// slice the same way.
func (ib *Inbox) Shrink() {
	ib.mu.Lock()
	if len(ib.q) == 0 && cap(ib.q) > InboxKeep {
		ib.q = nil
	}
	ib.mu.Unlock()
}

// Drain releases every queued frame (the actor is ending).
func (ib *Inbox) Drain() {
	for _, f := range ib.Take(nil) {
		f.Release()
	}
}
