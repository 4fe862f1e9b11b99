package tcp

import (
	"sync/atomic"
	"time"

	"github.com/gopasta/gopasta/link"
)

// Running a flow inline, theory of operation.
//
// A TCP flow's work comes from two places: the guest's segments, which
// the dispatcher hands to the actor, and its socket's readiness, which the
// harvester (internal/poll/poll.go) hands to the actor. Each hand-over is a
// goroutine wake-up: for request/response traffic, where every exchange
// is a lone segment one way and a lone answer the other, that is two
// wake-ups per transaction on top of the two the kernel forces (the tap
// and the socket becoming readable), and it is most of what separated
// gopasta's TCP_RR from pasta's, whose one thread does the work where the
// event arrives.
//
// So when the actor is idle, the goroutine that holds the event does the
// actor's work itself: the dispatcher for a segment that arrived alone,
// the harvester for a socket event. The actor's state is guarded by its
// mutex, which the actor releases only while it waits (see tcpConn); the
// other goroutine takes it with TryLock, so it never waits for a busy
// actor: a flow that is already running gets the event the ordinary way.
// What keeps this correct:
//
//   - Order. A segment is run inline only if every segment queued before
//     it has been handled (Handle.inflight is zero): the actor may have
//     taken one from its inbox and be waiting for the mutex.
//   - Only established flows, so that the handshake and the end of a flow
//     stay in the actor's hands; a flow closed inline pokes the actor,
//     which sees it and ends it (finish) as always.
//   - Nobody blocks for long on a foreign flow: the dispatcher runs a flow
//     only while the link's writer has nothing queued, so the frames the
//     flow produces go out at once rather than waiting for queue room, and
//     only on the tap, whose writes do not wait for a reader (a QEMU
//     socket does: the dispatcher does not offer Direct in passt mode).
//   - A panic resets that flow only, as in the actor.
//   - Only while the daemon runs on one P (SetSerial): there the actor
//     could not run in parallel with the goroutine that woke it anyway,
//     and the hand-over is pure cost. With several Ps it buys parallelism
//     (bulk flows on both CPUs), and the actor does its own work.
//
// Timers stay the actor's: a run inline re-arms the flow's timer to its
// new earliest deadline (time.Timer is safe to Reset from any goroutine),
// and the actor, waking for a deadline that moved meanwhile, finds
// nothing due (onTimer checks every deadline against the clock).

// tcpInline enables inline runs; see SetSerial.
var tcpInline atomic.Bool

// Inline counts inline runs: guest segments the dispatcher handled
// (Segments) and socket events the harvester handled (Events). They are
// process-wide, reported with the other actor counters.
var Inline struct{ Segments, Events atomic.Uint64 }

func init() { tcpInline.Store(true) }

// SetSerial tells the actors whether the daemon's goroutines run one at a
// time (GOMAXPROCS=1), which is when the goroutine that receives an event
// for an idle flow should handle it itself. The default is true.
func SetSerial(serial bool) { tcpInline.Store(serial) }

// direct is the flow's Handle.Direct: the dispatcher offers it a segment
// that came alone in its read batch. It reports whether it took f, which
// it has once it starts handling it, even if that panics (the result is
// named so that a recovered panic still says so: f may be released).
func (c *tcpConn) direct(f *link.Frame) (took bool) {
	if !c.env.Out.Idle() || !c.lockIdle(func() bool { return c.h.Inflight.Load() == 0 }) {
		return false
	}
	defer c.inlineDone()
	took = true
	Inline.Segments.Add(1)
	c.now = time.Now()
	c.lastAct = c.now
	c.onFrame(f)
	c.flush()
	c.output()
	return took
}

// sockInline runs the socket events of s's flow on the harvester, if the
// flow is idle, and reports whether it did (or started to: a panic
// closes the flow, and inlineDone pokes the actor).
func sockInline(s *tcpSock) (ran bool) {
	c := s.Owner.Load()
	if c == nil || !c.lockIdle(func() bool { return c.Sock == s }) {
		return false
	}
	defer c.inlineDone()
	ran = true
	Inline.Events.Add(1)
	c.onSocket()
	return ran
}

// lockIdle takes mu for an inline run if inline runs are on, the actor is
// waiting (TryLock) and the flow is established, open and passes ok
// (checked with mu held); it reports whether it did.
func (c *tcpConn) lockIdle(ok func() bool) bool {
	if !tcpInline.Load() || !c.mu.TryLock() {
		return false
	}
	if c.state&tcpEstablished == 0 || c.state&tcpClosed != 0 || !ok() {
		c.mu.Unlock()
		return false
	}
	return true
}

// inlineDone ends an inline run: it contains a panic to this flow, leaves
// the timer right and the mutex free, and tells the actor if the flow is
// over.
func (c *tcpConn) inlineDone() {
	if r := recover(); r != nil {
		c.crashed(r)
	}
	closed := c.state&tcpClosed != 0
	if !closed {
		c.publish()
		c.armTimer()
	}
	c.mu.Unlock()
	if closed {
		select {
		case c.poke <- struct{}{}:
		default:
		}
	}
}

// AddStats adds the TCP counters to m, by the names the statistics log uses.
func AddStats(m map[string]uint64) {
	m["tcp_inline_segments"] = Inline.Segments.Load()
	m["tcp_inline_events"] = Inline.Events.Load()
}
