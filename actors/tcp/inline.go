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
// the harvester for a socket event. The flow's handoff.Gate decides: the
// actor is its owner and holds it except while it waits (see tcpConn);
// the dispatcher and the harvester are its guests, which enter it with
// TryEnter and so never wait for a busy actor: a flow that is running, or
// has segments queued, gets the event the ordinary way (its inbox, or a
// wake-up). What keeps this correct:
//
//   - Order. A segment is run inline only if every segment queued before
//     it has been handled (the gate's backlog, which Handle.Offer counts,
//     is zero): the actor may have taken one from its inbox and be
//     waiting for the gate.
//   - Only established flows, so that the handshake and the end of a flow
//     stay in the actor's hands; a flow closed inline pokes the actor,
//     which sees it and ends it (finish) as always.
//   - An inline run never waits for the Writer. Its frames for the
//     guest are offered to the link Writer (Writer.OfferNow,
//     OfferBatchNow for a burst in the guest's own buffers, Offer),
//     which never waits for room. OfferNow on an idle Writer writes in
//     place: on vhost-user only as far as the guest has posted receive
//     buffers (link.TryWriter), the rest being queued; on a QEMU stream
//     socket that its reader leaves full that write waits, as every
//     writer there does (only the harvester runs flows inline in that
//     mode, and only that guest's traffic waits with it). Once the
//     Writer's queue is full the frame, and every frame after it in that
//     run, is parked on the flow, the run stops reading the socket, and
//     the actor is poked: it sends the parked frames, in order and before
//     anything else, waiting for room as actors may, and goes on where
//     the run stopped. A flow with parked frames is not run inline again
//     until the actor has sent them. The dispatcher also runs a flow only
//     while the link's writer has nothing queued, so that the frames the
//     flow produces go out at once; and only on the tap and vhost-user,
//     whose writes in place do not wait for a reader (a QEMU stream
//     socket's do: the dispatcher does not offer Direct there).
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

// tcpInline enables inline runs; see SetSerial. It is process-wide, not
// a Protocol's: it follows GOMAXPROCS, which is the process's.
var tcpInline atomic.Bool

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
	if !c.env.Out.Idle() || !c.enterInline(nil) {
		return false
	}
	defer c.inlineDone()
	took = true
	c.p.Inline.Segments.Add(1)
	c.tm.now = time.Now()
	c.tm.lastAct = c.tm.now
	c.onFrame(f)
	c.flush()
	c.output()
	return took
}

// sockInline runs the socket events of s's flow on the harvester, if the
// flow is idle, and reports whether it did (or started to: a panic
// closes the flow, and inlineDone pokes the actor).
func sockInline(s *tcpSock) (ran bool) {
	c := s.owner.Load()
	if c == nil || !c.enterInline(s) {
		return false
	}
	defer c.inlineDone()
	ran = true
	c.p.Inline.Events.Add(1)
	c.onSocket()
	return ran
}

// enterInline enters the gate as a guest for an inline run if inline runs
// are on, the actor is waiting with nothing queued (TryEnter), and the
// flow is established, open, has no parked frames and, for a socket
// event, still has sock s (checked with the gate held); it reports
// whether it did.
func (c *tcpConn) enterInline(s *tcpSock) bool {
	if !tcpInline.Load() || !c.gate.TryEnter() {
		return false
	}
	if c.state&tcpEstablished == 0 || c.state&tcpClosed != 0 || len(c.parked) > 0 || s != nil && c.sock != s {
		c.gate.Leave()
		return false
	}
	c.inline = true
	return true
}

// inlineDone ends an inline run: it contains a panic to this flow, leaves
// the timer right and the gate free, and tells the actor if the flow is
// over or frames are parked for it.
func (c *tcpConn) inlineDone() {
	if r := recover(); r != nil {
		c.crashed(r)
	}
	c.inline = false
	closed := c.state&tcpClosed != 0
	if !closed {
		c.publish()
		c.armTimer()
	}
	poke := closed || len(c.parked) > 0
	c.gate.Leave()
	if poke {
		select {
		case c.poke <- struct{}{}:
		default:
		}
	}
}

// offer hands f to the link Writer from an inline run, never waiting:
// written or queued if the Writer can take it, parked for the actor if
// not (or if frames are parked already, which f must not overtake). now:
// a lone frame (send), else part of a burst (sendBurst).
func (c *tcpConn) offer(f *link.Frame, now bool) {
	if len(c.parked) == 0 {
		if now && c.env.Out.OfferNow(f) || !now && c.env.Out.Offer(f) {
			return
		}
		c.p.Inline.Parked.Add(1)
	}
	c.parked = append(c.parked, f)
}

// offerBatch is offer for a burst, counted already, that should reach the
// link in one write (sendPeeked): it clears frames.
func (c *tcpConn) offerBatch(frames []*link.Frame) {
	k := 0
	if len(c.parked) == 0 {
		if k = c.env.Out.OfferBatchNow(frames); k < len(frames) {
			c.p.Inline.Parked.Add(1)
		}
	}
	for i, f := range frames[k:] {
		c.parked = append(c.parked, f)
		frames[k+i] = nil
	}
}

// unpark sends the frames an inline run parked, in order, waiting for
// room: the actor's, before it sends anything else.
func (c *tcpConn) unpark() {
	if len(c.parked) == 0 {
		return
	}
	for i, f := range c.parked {
		c.env.Out.SendCtx(c.env.Ctx, f)
		c.parked[i] = nil
	}
	c.parked = c.parked[:0]
}

// resume is the actor's answer to a poke: an inline run closed the flow,
// or stopped because the link was full. It sends what the run parked and
// goes on sending what the run left.
func (c *tcpConn) resume() {
	c.unpark()
	if c.state&tcpClosed == 0 {
		c.tm.now = time.Now()
		c.output()
	}
}
