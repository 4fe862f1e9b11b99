package dispatcher

import (
	"context"
	"strconv"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/flowtrace"
	"github.com/gopasta/gopasta/link/wire"
)

// A snapshot of the flow table, for `gopasta ctl flows`.
//
// The table is the dispatcher goroutine's alone, so other goroutines ask
// for it: Flows queues a reply channel on d.queries, and the dispatcher
// answers between batches with a copy of the table's Handles (a slice of
// pointers, its only work). The flows' numbers are then read from the
// Handles' atomics by the asker. On the tap the dispatcher may be asleep in
// its read for up to a tick, so the asker cuts the read short by moving
// its deadline to now (runInline sets it back); on the split reader the
// query is one more case of its select.

// queryDepth bounds the snapshots waiting for an answer.
const queryDepth = 16

// Flows returns a snapshot of every flow in the table, in no particular
// order. It fails if ctx ends before the dispatcher answers (it is not
// running, or ctx is too short for it to finish the batch in hand).
func (d *Dispatcher) Flows(ctx context.Context) ([]actors.FlowSnapshot, error) {
	reply := make(chan []*actors.Handle, 1)
	select {
	case d.queries <- reply:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	d.wake()
	var hs []*actors.Handle
	select {
	case hs = <-reply:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	now := time.Now()
	out := make([]actors.FlowSnapshot, len(hs))
	for i, h := range hs {
		out[i] = h.Snapshot(now)
	}
	return out, nil
}

// wake interrupts the inline dispatcher's wait in its read, so that it
// looks at its queries.
func (d *Dispatcher) wake() {
	if !d.inline.Load() {
		return
	}
	if dl, ok := d.dev.(readDeadliner); ok {
		_ = dl.SetReadDeadline(time.Now())
	}
}

// drainQueries answers every snapshot request queued.
func (d *Dispatcher) drainQueries() {
	for {
		select {
		case q := <-d.queries:
			d.answer(q)
		default:
			return
		}
	}
}

func (d *Dispatcher) answer(q chan<- []*actors.Handle) {
	hs := make([]*actors.Handle, 0, len(d.flows))
	for _, h := range d.flows {
		hs = append(hs, h)
	}
	q <- hs // buffered: never blocks
}

// traceOn reports whether a subscriber wants h's lines; subs is sampled
// once per batch.
func (d *Dispatcher) traceOn(h *actors.Handle) bool {
	return d.subs && h.Tap.On(d.env.Trace, h.Key.Proto, h.Key.Guest, h.Key.Far, h.ID, func() string {
		return flowtrace.Desc(h.ID, h.Key.Proto, h.Key.Guest, h.Key.Far)
	})
}

// traceFlow sends a line about h to the subscribers that want it. The
// dispatcher's lines are the story of the flows without an actor's own
// (UDP, ICMP) and what happens to any flow's frames before its actor sees
// them.
func (d *Dispatcher) traceFlow(h *actors.Handle, text string) {
	h.Tap.Emit(flowtrace.Stamp(time.Now()), text)
}

// traceEnd is a UDP or ICMP flow's closing line.
func (d *Dispatcher) traceEnd(h *actors.Handle) {
	if h.Key.Proto == wire.ProtoTCP || !d.env.Trace.Active() {
		return
	}
	d.subs = true
	if !d.traceOn(h) {
		return
	}
	s := h.Snapshot(time.Now())
	d.traceFlow(h, "end after "+s.Age.Round(time.Microsecond).String()+": from guest "+
		strconv.FormatUint(s.GuestBytes, 10)+" bytes in "+strconv.FormatUint(s.GuestSegs, 10)+" datagrams, to guest "+
		strconv.FormatUint(s.FarBytes, 10)+" bytes in "+strconv.FormatUint(s.FarSegs, 10)+" datagrams")
}
