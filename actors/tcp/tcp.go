package tcp

// # TCP translation: theory of operation
//
// gopasta has no TCP stack. Each guest connection is mirrored by one
// ordinary host socket, and one actor goroutine translates between the
// guest's segments and that socket, in the manner of passt's tcp.c:
//
//   - The host kernel does the real TCP towards the far end: congestion
//     control, retransmission, buffering. The guest's kernel does it on the
//     other side. The actor only keeps the two sequence spaces in step.
//
//   - Host -> guest: data stays in the socket's receive queue until the
//     guest acknowledges it. The actor peeks it (MSG_PEEK, starting at the
//     kernel-kept SO_PEEK_OFF) straight into pooled frames whose headers are
//     pre-built, within the guest's window, and discards from the queue only
//     what the guest ACKs. Retransmission is rewinding the peek offset.
//
//   - Guest -> host: the guest's segments are written to the socket, and
//     the guest is acknowledged for what the socket took. The window we
//     advertise is bounded by the room in the socket's send buffer, and
//     whatever the guest sends inside it is kept (the frames are held in the
//     actor) until the socket takes it: no byte inside an advertised window
//     is ever dropped. Dropping the tail of a partial write is what makes
//     pasta collapse namespace->host on small machines. What is held costs
//     memory the guest chooses the shape of, so it is counted by the bytes
//     it keeps alive against a per-flow and a daemon-wide budget, and the
//     window shrinks before the budget could be exceeded (budget.go).
//
//   - The actor waits in one select on its inbox, its socket's readiness
//     (from the protocol's edge-triggered epoll, internal/poll/poll.go, armed only when it
//     has hit EAGAIN), one timer and the daemon's context, like a gVisor
//     endpoint's protocol goroutine. While it waits there, the goroutine
//     that received an event for it may run it instead, as a guest of its
//     handoff.Gate (inline.go): the state is the actor's, the thread need
//     not be.
//
// States are kept as event bits, as passt does, because closing is two
// independent half-closes: the guest's FIN turns into shutdown(SHUT_WR) once
// everything before it is written, and the socket's end of stream turns
// into a FIN to the guest once everything before it is acknowledged.

import (
	"fmt"
	"net/netip"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/flowtrace"
	"github.com/gopasta/gopasta/actors/internal/sockutil"
	"github.com/gopasta/gopasta/internal/handoff"
	"github.com/gopasta/gopasta/internal/nbsys"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// Connection events (state bits).
const (
	tcpConnecting  = 1 << iota // outbound: host connect() in progress
	tcpSynSent                 // inbound: SYN sent to the guest
	tcpSynRcvd                 // outbound: SYN,ACK sent to the guest
	tcpEstablished             // handshake done on both sides
	tcpGuestFin                // FIN received from the guest, in order
	tcpSockShut                // shutdown(SHUT_WR) done on the socket
	tcpHostEOF                 // end of stream read from the socket
	tcpFinSent                 // FIN sent to the guest (at snd.finSeq)
	tcpFinAcked                // the guest acknowledged our FIN
	tcpClosed                  // the flow is over
)

var tcpStateNames = []string{"CONNECTING", "SYN_SENT", "SYN_RCVD", "ESTABLISHED",
	"GUEST_FIN", "SOCK_SHUT", "HOST_EOF", "FIN_SENT", "FIN_ACKED", "CLOSED"}

func stateString(s uint16) string {
	var b strings.Builder
	for i, n := range tcpStateNames {
		if s&(1<<i) != 0 {
			if b.Len() > 0 {
				b.WriteByte('|')
			}
			b.WriteString(n)
		}
	}
	if b.Len() == 0 {
		return "NONE"
	}
	return b.String()
}

// Timeouts, as passt lists them.
const (
	tcpHandshakeTimeout = 10 * time.Second
	tcpActTimeout       = 2 * time.Hour
	tcpRTOInit          = time.Second
	tcpRTOMin           = 200 * time.Millisecond
	tcpRTOMax           = 60 * time.Second
	tcpMaxRetries       = 8
	tcpDrain            = 64 // inbox frames handled before writing and ACKing
	tcpSendBatches      = 4  // peeks per wakeup before yielding to the inbox
	tcpSendFrames       = 32 // frames per peek
)

// tcpSeg is a piece of guest payload held in its frame.
type tcpSeg struct {
	f   *link.Frame
	b   []byte
	seq uint32
	fin bool
	own bool // a packed buffer of ours (compact): b ends at len(f.Data)
}

// tcpConn is one TCP flow's actor.
//
// Lock rule: gate guards everything below it and is held by whoever runs
// the flow: the actor goroutine, its owner, at all times except while it
// waits in its select, or, while it waits there, the dispatcher or the
// harvester running the flow inline as its guests (inline.go). The actor
// holds gate from its first instruction (newConn enters it for the
// goroutine about to start) to its end; it lets go of it only to wait, to
// register an inbound flow and once the flow is closed, to report its end
// (the Registrar is never called with gate held). An inline run enters
// gate only for an established, open flow, so the flow is never run
// inline before it is established or after it has ended. The gate's
// backlog counts the guest segments queued in the inbox (Handle.Offer)
// and not yet handled.
type tcpConn struct {
	gate handoff.Gate
	poke chan struct{} // an inline run closed the flow or parked frames: the actor must look
	// parked are frames an inline run could not hand to the full link
	// Writer (it must not wait); the actor sends them, before anything
	// else, once poked.
	parked []*link.Frame
	inline bool // an inline run holds gate

	p       *Protocol // the daemon's TCP: poller, counters
	env     *actors.Env
	h       *actors.Handle
	key     actors.Key
	inbound bool
	sock    *tcpSock
	tmpl    tcpTemplate
	state   uint16
	linkMTU int

	snd tcpSender   // host -> guest: our sequence space
	rcv tcpReceiver // guest -> host: the guest's sequence space
	ack tcpAcker    // what we acknowledge, and when
	tm  tcpTimers   // deadlines behind one timer
	rtt tcpRTT      // the round-trip estimate the retransmission timeout follows

	// Limits (limits.go): descriptors taken from the budget, to give back
	// at the end, and whether the flow counts as a pending connect.
	fds            int
	fdKind         int
	pendingConnect bool

	// Observability (trace.go): counters kept plainly here and
	// published to h.Stats once per wake-up, the flow's view of the trace
	// subscribers, and why the flow closed.
	obs tcpObs
}

// The parts of a tcpConn, by concern. All are guarded by the conn's gate,
// like the rest of it: a flow has one lock (see tcpConn).

// tcpSender is the host -> guest direction: our sequence space, whose
// retransmission buffer is the socket's receive queue (snd.go).
type tcpSender struct {
	iss      uint32
	una      uint32 // oldest byte not acknowledged by the guest
	nxt      uint32 // next byte to peek and send (peek offset = nxt-una+acked)
	acked    int    // acknowledged bytes still in the receive queue (consume)
	high     uint32 // highest data sequence ever sent, plus one
	finSeq   uint32
	finEver  bool // a FIN was sent at snd.finSeq (maybe to be resent)
	wnd      uint32
	ws       uint8
	mss      int // payload per segment to the guest
	dupAcks  int
	sockData bool // the socket may have unread data: peek before arming

	frames [tcpMaxIov]*link.Frame
	fcap   [tcpSendFrames]int // payload room of frames[i] in sendBatch
}

// tcpReceiver is the guest -> host direction: the guest's sequence space,
// what it sent that the socket has not taken yet, and the window that
// bounds it (rcv.go, the byte budget in actors/budget.go).
type tcpReceiver struct {
	irs       uint32
	nxt       uint32 // next byte expected from the guest
	ws        int    // our window scale, -1 when the guest does not scale
	edge      uint32 // right edge of the window last advertised
	max       int    // largest window we advertise
	guestMSS  int
	pend      []tcpSeg // accepted, not yet written to the socket
	pendBytes int
	pendNew   int      // pend[rcv.pendNew:] is not compacted yet
	ooo       []tcpSeg // beyond a hole, sorted by sequence
	held      int      // capacity of the buffers of pend and ooo (actors/budget.go)
	charge    int64    // this flow's share of Stats.BufferBytes
	winCap    int      // largest window the guest has shown it needs (actors/budget.go)
	capEdge   uint32   // edge when rcv.winCap last grew
	sndbuf    int
	outqEst   int // upper bound of the socket's send queue (see rcvWindowRaw)
	outqAge   int // bytes written since the send queue was last measured
}

// tcpAcker is what the guest was last told and what it is owed: delayed
// and forced ACKs, duplicate ACKs for its fast retransmit.
type tcpAcker struct {
	lastWin uint16    // window field last sent
	due     bool      // something to acknowledge, if the ACK says anything new
	force   bool      // send the ACK even if it repeats the last one
	sent    uint32    // acknowledgement number of the last segment sent
	winSent uint16    // window field of the last segment sent
	dupDue  int       // duplicate ACKs to send (for the guest's fast retransmit)
	at      time.Time // when a delayed ACK is due (see output)
	quick   int       // ACKs still to send at once after one waited in vain
}

// tcpTimers are the flow's deadlines: one time.Timer set to the earliest
// of them, lazily.
type tcpTimers struct {
	timer     *time.Timer
	timerAt   time.Time
	now       time.Time
	rto       time.Duration
	rtoAt     time.Time
	retries   int
	persistAt time.Time
	hsAt      time.Time // handshake deadline
	budgetAt  time.Time // look again for budget to reopen a starved window
	budgetDly time.Duration
	lastAct   time.Time
}

// tcpRTT is one round-trip measurement in flight and the smoothed
// estimate (RFC 6298) the retransmission timeout is computed from.
type tcpRTT struct {
	on     bool
	seq    uint32
	at     time.Time
	srtt   time.Duration
	rttvar time.Duration
}

// tcpObs is the flow's observability (trace.go).
type tcpObs struct {
	inBytes, inSegs, outBytes, outSegs, retrans uint64
	tap                                         flowtrace.Tap
	closeReason                                 string
	heldTraced                                  bool // a full socket's hold was traced
}

// tcpISNFunc picks initial sequence numbers; tests replace it to exercise
// wrap-around.
var tcpISNFunc = tcpISN

// tcpTestHook, when set (by tests, before any actor starts), is called for
// every frame an actor handles.
var tcpTestHook atomic.Pointer[func(k actors.Key, f *link.Frame)]

// Start is called by the dispatcher for a TCP frame from the guest that
// matches no flow. It starts an actor and returns its Handle (the dispatcher
// puts it into the flow table; f is already consumed by the actor), or
// returns nil after consuming f itself (answered with RST, or dropped).
//
// Only a SYN opens a connection. Anything else for an unknown flow is
// answered with a reset (so that a guest whose connection we forgot learns
// at once), except a reset or a SYN,ACK, which are dropped.
func (p *Protocol) Start(k actors.Key, f *link.Frame) *actors.Handle {
	env := p.env
	th := wire.TCP(f.Data[f.L4:])
	flags := th.Flags()
	switch {
	case flags&wire.TCPRst != 0, flags&(wire.TCPSyn|wire.TCPAck) == wire.TCPSyn|wire.TCPAck:
		// A SYN,ACK for no flow is dropped, not reset: it may answer an
		// inbound actor's SYN that raced ahead of its registration, and
		// the guest repeats it (as we repeat our SYN) once the flow is in.
		f.Release()
		return nil
	case flags&(wire.TCPSyn|wire.TCPAck) != wire.TCPSyn:
		env.Out.TrySend(tcpRSTFor(env, k, th, segEnd(f)-f.Payload))
		f.Release()
		return nil
	}
	if !env.Limits.TakeFDs(actors.FDGuestTCP, actors.FDsTCP) {
		RefusedLog.Warnf(env.FlowLog(k), "tcp: descriptor budget spent (%d), resetting new connections", env.Limits.FDMax.Load())
		env.Out.TrySend(tcpRSTFor(env, k, th, segEnd(f)-f.Payload))
		f.Release()
		return nil
	}
	if !env.Limits.StartConnect() {
		env.Limits.GiveFDs(actors.FDGuestTCP, actors.FDsTCP)
		RefusedLog.Warnf(env.FlowLog(k), "tcp: %d connects pending, resetting new connections", env.Limits.ConnectLimit())
		env.Out.TrySend(tcpRSTFor(env, k, th, segEnd(f)-f.Payload))
		f.Release()
		return nil
	}
	h := actors.NewHandle(k)
	h.StateName = stateString
	c := newConn(p, h, k, false)
	c.fds, c.fdKind, c.pendingConnect = actors.FDsTCP, actors.FDGuestTCP, true
	env.Stats.TCPFlows.Add(1)
	env.Stats.TCPOpened.Add(1)
	go c.runOutbound(f)
	return h
}

// RefusedLog rate-limits the warnings about connections refused for
// want of descriptors or over the cap on pending connects.
var RefusedLog actors.RateLog

// connectDone ends the flow's share of the pending connects, once.
func (c *tcpConn) connectDone() {
	if c.pendingConnect {
		c.pendingConnect = false
		c.env.Limits.EndConnect()
	}
}

func newConn(p *Protocol, h *actors.Handle, k actors.Key, inbound bool) *tcpConn {
	env := p.env
	c := &tcpConn{p: p, env: env, h: h, key: k, inbound: inbound}
	c.tm.rto = tcpRTOInit
	c.rcv.ws, c.rcv.winCap = -1, actors.TCPInitWindow
	c.tmpl.init(env.Peer.OurMAC, k.Far, k.Guest)
	c.linkMTU = env.Opts.MTU
	c.snd.iss = tcpISNFunc(k.Far, k.Guest)
	c.tm.now = time.Now()
	c.tm.lastAct = c.tm.now
	c.poke = make(chan struct{}, 1)
	c.gate.Enter() // the actor's, from its start: see tcpConn
	h.Direct, h.Gate = c.direct, &c.gate
	return c
}

// ourMSS is the MSS we announce to the guest: what the link carries.
func (c *tcpConn) ourMSS() int {
	m := c.linkMTU - (c.tmpl.l4 - wire.EthernetLen) - wire.TCPMinLen
	return min(m, link.MaxFrameSize-c.tmpl.hlen, 0xffff)
}

// setGuestOpts records what the guest's SYN or SYN,ACK says.
func (c *tcpConn) setGuestOpts(th wire.TCP, f *link.Frame) {
	var o wire.TCPOptions
	o.WScale = -1
	if f.Payload > f.L4+wire.TCPMinLen && f.Payload <= len(f.Data) {
		o = wire.ParseTCPOptions(f.Data[f.L4+wire.TCPMinLen : f.Payload])
	}
	c.rcv.guestMSS = int(o.MSS)
	if c.rcv.guestMSS == 0 {
		c.rcv.guestMSS = 536
		if c.tmpl.v6 {
			c.rcv.guestMSS = 1220
		}
	}
	c.snd.mss = max(min(c.rcv.guestMSS, c.ourMSS()), 64)
	if o.WScale >= 0 {
		c.snd.ws = uint8(o.WScale)
		if c.rcv.ws < 0 {
			wmem, _ := SysMax()
			c.rcv.ws = windowScale(wmem + wmem/2)
		}
	} else {
		c.snd.ws = 0
		c.rcv.ws = -1
	}
	// The window we offer: the socket's buffer with headroom, at most what
	// the scale expresses, and never more than the dispatcher can queue in
	// our inbox while we are busy, which would be a drop inside the window.
	ws := max(c.rcv.ws, 0)
	c.rcv.max = min(0xffff<<ws, tcpMaxWindow, (actors.InboxDepth-actors.InboxDepth/4)*c.snd.mss)
}

func (c *tcpConn) log() *logrus.Entry { return c.env.FlowLog(c.key) }

func (c *tcpConn) debugf(format string, args ...any) {
	if c.env.Log.IsLevelEnabled(logrus.DebugLevel) {
		c.log().Debugf(format, args...)
	}
}

// runOutbound is the actor of a connection the guest opened with syn.
func (c *tcpConn) runOutbound(syn *link.Frame) {
	defer c.finish()
	c.tm.timer = time.NewTimer(time.Hour)
	th := wire.TCP(syn.Data[syn.L4:])
	c.rcv.irs = th.Seq()
	c.obs.inSegs++
	if c.tracing() {
		c.traceSeg(true, syn, syn.L4)
	}
	c.rcv.nxt = c.rcv.irs + 1
	c.snd.wnd = uint32(th.Window())
	c.setGuestOpts(th, syn)
	syn.Release()
	if err := c.connect(); err != nil {
		c.debugf("connect: %v", err)
		c.sendRST()
		c.obs.closeReason = "connect: " + err.Error()
		c.setState(tcpClosed, c.obs.closeReason)
		return
	}
	c.loop()
}

// runInbound is the actor of a connection accepted on a forwarder: it puts
// itself into the flow table, then opens the connection to the guest.
func (c *tcpConn) runInbound() {
	defer c.finish()
	c.tm.timer = time.NewTimer(time.Hour)
	// Not yet established, so nobody runs the flow inline while the
	// actor lets go of gate to register (the lock rule, see the package
	// comment).
	c.gate.Leave()
	ok := c.env.RegisterFlow(c.h)
	c.gate.Enter()
	if !ok {
		c.sock.Close(true)
		c.obs.closeReason = "shutting down"
		c.setState(tcpClosed, c.obs.closeReason)
		return
	}
	c.setState(tcpSynSent, "connection accepted on the host, SYN to the guest")
	wmem, _ := SysMax()
	c.rcv.ws = windowScale(wmem + wmem/2)
	c.snd.mss = c.ourMSS()
	c.rcv.max = min(0xffff, tcpMaxWindow)
	c.sendSyn()
	c.tm.hsAt = c.tm.now.Add(tcpHandshakeTimeout)
	c.tm.rtoAt = c.tm.now.Add(c.tm.rto)
	c.loop()
}

// loop runs the flow until it is closed, gate held except while it waits.
func (c *tcpConn) loop() {
	for c.state&tcpClosed == 0 {
		c.publish()
		c.armTimer()
		wake := c.sock.wake // c.sock may change once gate is released
		c.gate.Leave()
		select {
		case f := <-c.h.In:
			c.gate.Enter()
			c.onFrames(f)
		case <-wake:
			c.gate.Enter()
			if c.state&tcpClosed == 0 {
				c.onSocket()
			}
		case <-c.tm.timer.C:
			c.gate.Enter()
			c.tm.timerAt = time.Time{}
			c.tm.now = time.Now()
			if c.state&tcpClosed == 0 {
				c.onTimer()
			}
		case <-c.poke:
			c.gate.Enter()
			c.resume()
		case <-c.env.Ctx.Done():
			c.gate.Enter()
			c.reset("shutting down")
		}
	}
}

// onSocket handles the socket events the poller reported.
func (c *tcpConn) onSocket() {
	ev := c.sock.fired()
	c.tm.now = time.Now()
	if ev&sockReadable != 0 {
		c.tm.lastAct = c.tm.now
		c.snd.sockData = true
		c.output()
	}
	if ev&sockWritable != 0 && c.state&tcpClosed == 0 {
		c.onWritable()
	}
}

// armTimer points the timer at the earliest deadline, also when that
// moved later: a timer left to fire early and be re-armed would, with
// delayed ACKs, wake an idle process every millisecond of request/response
// traffic, and a Reset costs far less than that.
func (c *tcpConn) armTimer() {
	next := c.tm.lastAct.Add(tcpActTimeout)
	for _, t := range [...]time.Time{c.tm.rtoAt, c.tm.persistAt, c.tm.hsAt, c.ack.at, c.tm.budgetAt} {
		if !t.IsZero() && t.Before(next) {
			next = t
		}
	}
	if !next.Equal(c.tm.timerAt) {
		c.tm.timer.Reset(time.Until(next))
		c.tm.timerAt = next
	}
}

// onFrames handles f, taken from the inbox, and what else is queued there
// (up to tcpDrain frames), then writes and answers.
func (c *tcpConn) onFrames(f *link.Frame) {
	c.tm.now = time.Now()
	c.tm.lastAct = c.tm.now
	c.onFrame(f)
	c.gate.Done(1)
	for i := 0; i < tcpDrain && c.state&tcpClosed == 0; i++ {
		select {
		case f = <-c.h.In:
			c.onFrame(f)
			c.gate.Done(1)
			continue
		default:
		}
		break
	}
	c.flush()
	c.output()
}

// output does what the flow can do now: send data the guest has room for,
// acknowledge, finish closing.
func (c *tcpConn) output() {
	if c.state&tcpClosed != 0 {
		return
	}
	if c.state&tcpEstablished != 0 {
		c.trySend()
	}
	if c.state&tcpClosed != 0 || !c.consume() {
		return
	}
	for ; c.ack.dupDue > 0; c.ack.dupDue-- {
		c.sendFlags(wire.TCPAck, c.ack.lastWin)
		c.ack.due = false
	}
	if c.ack.due {
		if c.ackDelayable() {
			if c.ack.at.IsZero() {
				c.ack.at = c.tm.now.Add(tcpDelAck)
			}
		} else {
			if c.ack.quick > 0 {
				c.ack.quick--
			}
			c.sendAck()
		}
	}
	if c.state&(tcpSockShut|tcpFinAcked) == tcpSockShut|tcpFinAcked {
		c.closeFlow("closed", false)
	}
}

// Delayed acknowledgements.
//
// When a small segment from the guest has gone into the socket, its ACK
// waits up to tcpDelAck for the host's answer to carry it: for
// request/response traffic (RPCs, HTTP, interactive sessions) the answer
// almost always comes first, which saves a frame to the guest, its
// system call and a wake-up of the guest's stack per exchange (pasta ACKs
// every write at once). What is never delayed: ACKs of a full segment or
// more (bulk transfers and slow start run on ACK clocking), window
// updates, duplicate ACKs, and anything after our own FIN. The guest's FIN
// is delayed too, once it reached the socket: the host's FIN usually
// follows at once and carries it (Linux does the same, entering its
// "pingpong" mode on a FIN), which saves a frame per connection of a
// connect/request/response/close workload.
//
// How long to wait is a trade. A guest with Nagle's algorithm holds its
// next small write until this ACK comes, and a host that answers only
// after that write (a request in two writes) leaves the flow stalled for
// the whole delay: the delay should be short. But the deadline is also
// how long the daemon's next sleep may be, and a sleep of a millisecond
// before every answer is not free on a VM: with 1 ms, TCP_RR on this
// project's 2-vCPU machine ran at 0.9 times the rate it has with 5 ms
// (median ratio over 20 alternating runs, 14 of them faster with 5 ms),
// and the machine took more cross-CPU wake-ups per exchange; a timer that
// rarely fires saves nothing by being short. So the delay is 5 ms, and a
// flow whose delayed ACK went out alone -- the answer did not come in
// time, perhaps because the guest is waiting for this very ACK -- sends
// its next tcpQuickAcks ACKs at once, so that such a guest stalls once in
// that many exchanges, not at every one (Linux's quick-ACK mode does the
// same for its own delayed ACKs).
const (
	tcpDelAckBytes = 4096
	tcpQuickAcks   = 16
)

// tcpDelAck is the longest an ACK waits (a variable for tests).
var tcpDelAck = 5 * time.Millisecond

// ackDelayable reports whether the ACK now due may wait for data to carry
// it.
func (c *tcpConn) ackDelayable() bool {
	switch {
	case c.ack.force || c.ack.dupDue != 0 || c.state&tcpEstablished == 0 || c.state&tcpFinSent != 0:
		return false
	case c.ack.quick > 0 && c.state&tcpGuestFin == 0:
		return false // data after an ACK that waited in vain (see above)
	case c.state&tcpGuestFin != 0 && c.state&tcpSockShut == 0:
		return false // the FIN waits for data the socket has not taken
	}
	d := c.ackNum() - c.ack.sent
	return d != 0 && d < tcpDelAckBytes
}

func (c *tcpConn) onTimer() {
	now := c.tm.now
	if !c.tm.hsAt.IsZero() && !now.Before(c.tm.hsAt) {
		if c.state&tcpConnecting != 0 {
			c.env.Limits.ConnectTimeout.Add(1)
			c.reset("connect timeout after " + actors.TCPConnectTimeoutFor().String())
			return
		}
		c.reset("handshake timeout after " + tcpHandshakeTimeout.String())
		return
	}
	if !c.tm.rtoAt.IsZero() && !now.Before(c.tm.rtoAt) {
		c.onRTO()
	}
	if c.state&tcpClosed == 0 && !c.ack.at.IsZero() && !now.Before(c.ack.at) {
		c.ack.at = time.Time{}
		c.sendAck()
		c.ack.quick = tcpQuickAcks
	}
	if c.state&tcpClosed == 0 && !c.tm.persistAt.IsZero() && !now.Before(c.tm.persistAt) {
		// The guest's window is closed: a segment just below the window
		// makes it answer with an ACK carrying its current window.
		c.tracef(func() string { return "window probe: the guest's window is closed" })
		c.sendFlagsSeq(c.snd.una-1, wire.TCPAck, c.ack.lastWin)
		c.tm.persistAt = now.Add(min(c.tm.rto*2, tcpRTOMax))
	}
	if c.state&tcpClosed == 0 && !c.tm.budgetAt.IsZero() && !now.Before(c.tm.budgetAt) {
		// Our window was held small for want of budget, and nothing the
		// guest sends may come to reopen it: see whether budget is free.
		c.tm.budgetAt = time.Time{}
		if c.state&tcpEstablished != 0 {
			if w := c.rcvWindow(); w > c.ack.winSent {
				c.ack.due, c.ack.force = true, true
				c.output()
			}
		}
	}
	if c.state&tcpClosed == 0 && now.Sub(c.tm.lastAct) >= tcpActTimeout {
		c.reset("inactivity timeout")
	}
}

func (c *tcpConn) onRTO() {
	c.tm.retries++
	c.tracef(func() string {
		return "retransmission timeout after " + c.tm.rto.String() + ", retry " + strconv.Itoa(c.tm.retries) + " of " + strconv.Itoa(tcpMaxRetries)
	})
	if c.tm.retries > tcpMaxRetries {
		c.reset("retransmission timeout")
		return
	}
	c.tm.rto = min(c.tm.rto*2, tcpRTOMax)
	c.tm.rtoAt = c.tm.now.Add(c.tm.rto)
	switch {
	case c.state&tcpSynSent != 0:
		c.sendSyn()
	case c.state&tcpSynRcvd != 0:
		c.sendSynAck()
	case c.state&tcpEstablished != 0:
		if !c.outstanding() {
			c.tm.rtoAt = time.Time{}
			c.tm.retries = 0
			return
		}
		c.retransmit("timeout")
		c.output()
	}
}

// reset ends the flow abortively both ways.
func (c *tcpConn) reset(reason string) {
	if c.state&tcpClosed != 0 {
		return
	}
	c.tracef(func() string { return "reset: " + reason })
	c.sendRST()
	c.closeFlow(reason, true)
}

// closeFlow closes the socket (with a reset towards the host peer if reset)
// and marks the flow over.
func (c *tcpConn) closeFlow(reason string, reset bool) {
	if c.state&tcpClosed != 0 {
		return
	}
	if c.env.Log.IsLevelEnabled(logrus.DebugLevel) || reset && reason != "shutting down" {
		lvl := logrus.DebugLevel
		c.log().Logf(lvl, "%s in %s", reason, stateString(c.state))
	}
	if c.sock != nil {
		c.sock.Close(reset)
		c.sock = nil
	}
	c.obs.closeReason = reason
	c.setState(c.state|tcpClosed, reason)
}

// finish runs when the actor returns, normally or by panic: whatever
// happened, the socket is closed, held frames are released and the
// dispatcher is told, exactly once.
func (c *tcpConn) finish() {
	if r := recover(); r != nil {
		c.crashed(r)
	}
	if c.sock != nil {
		c.sock.Close(true)
		c.sock = nil
	}
	for _, s := range c.rcv.pend {
		s.f.Release()
	}
	for _, s := range c.rcv.ooo {
		s.f.Release()
	}
	c.rcv.pend, c.rcv.ooo = nil, nil
	c.unpark()
	c.rcv.held = 0
	c.setCharge(0)
	if c.tm.timer != nil {
		c.tm.timer.Stop()
	}
	c.connectDone()
	c.env.Limits.GiveFDs(c.fdKind, c.fds)
	c.fds = 0
	c.publish()
	c.traceEnd()
	c.env.Stats.TCPFlows.Add(-1)
	// The flow is closed, so an inline run that enters gate now finds
	// nothing to do (enterInline): let go of it before telling the
	// dispatcher (the lock rule, see the package comment).
	c.state |= tcpClosed
	c.gate.Leave()
	c.env.EndFlow(c.h)
}

// crashed resets a flow whose handling panicked with r: the guest and the
// host peer both see a reset, and the flow is closed. gate held.
func (c *tcpConn) crashed(r any) {
	c.env.Stats.Panics.Add(1)
	c.env.FlowLog(c.key).WithField("panic", fmt.Sprint(r)).Errorf("TCP flow crashed, resetting it\n%s", debug.Stack())
	func() {
		defer func() { _ = recover() }()
		if c.state&tcpClosed == 0 {
			c.sendRST()
		}
	}()
	if c.sock != nil {
		c.sock.Close(true)
		c.sock = nil
	}
	c.obs.closeReason = "crashed: " + fmt.Sprint(r)
	c.state |= tcpClosed
}

// connect opens the host socket of an outbound flow and starts connecting.
func (c *tcpConn) connect() error {
	dst := c.env.NAT.Outbound(c.key.Far)
	// The family is the destination's as spelt, never unmapped: an IPv4
	// address spelt as IPv6 (which the address policy keeps from getting
	// here) then fails to connect, as sockutil.PutSockaddr writes it as IPv4, where
	// an AF_INET socket would reach it (and ::ffff:0.0.0.0 the host's
	// loopback).
	v6 := dst.Addr().Is6()
	fam := unix.AF_INET
	if v6 {
		fam = unix.AF_INET6
	}
	// The lifecycle calls are nbsys's: none of them waits (see there),
	// and through x/sys each would wake the runtime's sysmon thread on a
	// connection-per-request workload.
	fd, e := nbsys.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return e
	}
	_ = nbsys.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if c.rcv.guestMSS > 0 && c.rcv.guestMSS <= tcpMaxSegOpt {
		_ = nbsys.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_MAXSEG, c.rcv.guestMSS)
	}
	if c.rcv.ws < 0 {
		// The guest cannot take more than 64 KiB in flight; neither
		// should the far end send us more than that ahead.
		_ = nbsys.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_WINDOW_CLAMP, 0xffff)
	}
	if err := bindOutbound(fd, c.env, v6); err != nil {
		nbsys.Close(fd)
		return err
	}
	s, err := newSock(c.p, fd, true)
	if err != nil {
		nbsys.Close(fd)
		return err
	}
	c.sock = s
	s.owner.Store(c)
	var sa unix.RawSockaddrInet6
	salen := sockutil.PutSockaddr(&sa, dst)
	if e := nbsys.Connect(fd, unsafe.Pointer(&sa), salen); e != 0 {
		err = e
	}
	if err == nil || err == unix.EINPROGRESS {
		// Registered only now: see NewSock.
		if rerr := s.register(); rerr != nil {
			err = rerr
		}
	}
	switch err {
	case nil:
		c.onConnected()
		return nil
	case unix.EINPROGRESS:
		c.setState(tcpConnecting, "connecting to "+dst.String())
		// The kernel would retry its SYN for minutes; the guest's own
		// connect is long given up by then.
		c.tm.hsAt = c.tm.now.Add(actors.TCPConnectTimeoutFor())
		// To a local or loopback peer the handshake has usually
		// completed by the time connect returns: answer the guest now
		// rather than after a round through the poller.
		if nbsys.Connected(fd) {
			c.onConnected()
			return nil
		}
		c.sock.arm(sockWritable)
		return nil
	}
	s.Close(false)
	c.sock = nil
	return err
}

// bindOutbound applies -o and --outbound-if4/6 to a new socket.
func bindOutbound(fd int, env *actors.Env, v6 bool) error {
	addr, ifname := env.Opts.Outbound(v6)
	if ifname != "" {
		if err := unix.BindToDevice(fd, ifname); err != nil {
			return fmt.Errorf("bind to %s: %w", ifname, err)
		}
	}
	if !addr.IsUnspecified() {
		if err := unix.Bind(fd, sockutil.SockaddrOf(netip.AddrPortFrom(addr, 0))); err != nil {
			return fmt.Errorf("bind to %s: %w", addr, err)
		}
	}
	return nil
}

// onConnected answers the guest's SYN once the host connection is up.
func (c *tcpConn) onConnected() {
	c.connectDone()
	c.setState(tcpSynRcvd, "host connected, SYN,ACK to the guest")
	c.snd.una, c.snd.nxt, c.snd.high = c.snd.iss, c.snd.iss+1, c.snd.iss+1
	c.sendSynAck()
	c.tm.hsAt = c.tm.now.Add(tcpHandshakeTimeout)
	c.tm.rtoAt = c.tm.now.Add(c.tm.rto)
}

func (c *tcpConn) onWritable() {
	if c.state&tcpConnecting != 0 {
		if err := c.sock.soError(); err != nil {
			c.debugf("connect: %v", err)
			c.sendRST()
			c.closeFlow("connect: "+err.Error(), false)
			return
		}
		if !nbsys.Connected(c.sock.fd) {
			c.sock.arm(sockWritable) // not connected yet: a spurious event
			return
		}
		c.onConnected()
		return
	}
	old := c.ack.lastWin
	c.flush()
	if c.state&tcpClosed != 0 {
		return
	}
	// A window update is worth a segment when the window was closed or
	// small; otherwise the next ACK carries it.
	if c.state&tcpEstablished != 0 && int(old)<<max(c.rcv.ws, 0) < c.rcv.max/4 {
		c.rcv.outqAge = tcpOutqStale // room appeared: measure it now
		if w := c.rcvWindow(); w > old {
			c.ack.due, c.ack.force = true, true
		}
	}
	c.output()
}

// establish moves to ESTABLISHED once the three-way handshake is done.
func (c *tcpConn) establish(cause string) {
	c.setState(tcpEstablished, cause)
	c.tm.hsAt = time.Time{}
	c.tm.rtoAt = time.Time{}
	c.tm.retries = 0
	c.tm.rto = tcpRTOInit
	c.snd.una, c.snd.nxt, c.snd.high = c.snd.iss+1, c.snd.iss+1, c.snd.iss+1
	c.snd.sockData = true
	c.rcv.sndbuf = c.sock.getInt(unix.SOL_SOCKET, unix.SO_SNDBUF)
}

// onFrame handles one segment from the guest.
func (c *tcpConn) onFrame(f *link.Frame) {
	keep := false
	defer func() {
		if !keep {
			f.Release()
		}
	}()
	if h := tcpTestHook.Load(); h != nil {
		(*h)(c.key, f)
	}
	if f.L4+wire.TCPMinLen > len(f.Data) || f.Payload < f.L4+wire.TCPMinLen {
		return
	}
	th := wire.TCP(f.Data[f.L4:])
	end := segEnd(f)
	payload := f.Data[f.Payload:end]
	c.obs.inSegs++
	c.obs.inBytes += uint64(len(payload))
	if c.tracing() {
		c.traceSeg(true, f, f.L4)
	}
	flags := th.Flags()
	seq := th.Seq()

	if flags&wire.TCPRst != 0 {
		c.onRST(th)
		return
	}
	switch {
	case c.state&tcpConnecting != 0:
		return // the guest repeats its SYN; nothing to say until connected
	case c.state&tcpSynSent != 0:
		if flags&(wire.TCPSyn|wire.TCPAck) == wire.TCPSyn|wire.TCPAck && th.Ack() == c.snd.iss+1 {
			c.rcv.irs = seq
			c.rcv.nxt = seq + 1
			c.rcv.edge = c.rcv.nxt
			c.setGuestOpts(th, f)
			c.snd.wnd = uint32(th.Window())
			c.establish("SYN,ACK from the guest")
			c.ack.due, c.ack.force = true, true
		}
		return
	case c.state&tcpSynRcvd != 0:
		if flags&wire.TCPSyn != 0 {
			if seq == c.rcv.irs {
				c.sendSynAck() // ours was lost
			}
			return
		}
		if flags&wire.TCPAck == 0 || th.Ack() != c.snd.iss+1 {
			return
		}
		c.establish("the guest acknowledged our SYN,ACK")
	}
	if flags&wire.TCPSyn != 0 {
		c.ack.due, c.ack.force = true, true
		return
	}
	if flags&wire.TCPAck == 0 {
		return
	}
	c.onAck(th, len(payload))
	if f.Ext != nil && len(payload) > 0 {
		done, kept := c.onExtData(f, seq, payload, flags&wire.TCPFin != 0)
		if keep = kept; done {
			return
		}
	}
	if len(payload) > 0 || flags&wire.TCPFin != 0 {
		keep = c.onData(f, seq, payload, flags&wire.TCPFin != 0)
	}
}

// onRST ends the flow if the guest's reset is plausible (in the window we
// offered), closing the socket abortively so that the host peer sees a
// reset too.
//
// Except while the guest's own handshake is unfinished (CONNECTING,
// SYN_RCVD): there the reset means the guest gave up on connecting (an
// application closing a socket still in SYN-SENT makes its kernel answer
// our SYN,ACK with one). Between real hosts the far end would drop a
// half-open connection that no application has seen; ours has, since the
// host side connected first, and the nearest thing we can show it is a
// connection closed before any data: a FIN, as passt's plain close() gives.
// A reset there surfaces as ECONNRESET in a server that did nothing wrong.
func (c *tcpConn) onRST(th wire.TCP) {
	switch {
	case c.state&tcpConnecting != 0:
	case c.state&tcpSynSent != 0:
		if th.Flags()&wire.TCPAck == 0 || th.Ack() != c.snd.iss+1 {
			return
		}
	default:
		if !seqInRange(th.Seq(), c.ackNum()-1, c.rcv.edge+1) {
			return
		}
	}
	c.tracef(func() string { return "reset by the guest in " + stateString(c.state) })
	if c.state&(tcpConnecting|tcpSynRcvd) != 0 {
		c.closeFlow("reset by guest during handshake", false)
		return
	}
	c.closeFlow("reset by guest", true)
}

// segEnd returns where the TCP payload of f ends (the IP length, not the
// frame's, which may carry Ethernet padding).
func segEnd(f *link.Frame) int {
	d := f.Data
	end := len(d)
	if f.L3+wire.IPv6Len <= len(d) && d[f.L3]>>4 == 6 {
		end = f.L3 + wire.IPv6Len + wire.IPv6(d[f.L3:]).PayloadLen()
	} else if f.L3+wire.IPv4MinLen <= len(d) && d[f.L3]>>4 == 4 {
		end = f.L3 + wire.IPv4(d[f.L3:]).TotalLen()
	}
	if end > len(d) {
		end = len(d)
	}
	if end < f.Payload {
		end = f.Payload
	}
	return end
}

// sendSyn opens an inbound connection towards the guest.
func (c *tcpConn) sendSyn() {
	win := uint16(min(c.rcvWindowRaw(), 0xffff))
	f := link.GetFrame(c.tmpl.hlen + tcpSynOptsLen)
	n := putSynOpts(f.Data[c.tmpl.hlen:], uint16(c.snd.mss), c.rcv.ws)
	c.tmpl.fill(f, c.env.Peer.MAC(), c.snd.iss, 0, wire.TCPSyn, win, n, 0)
	c.ack.lastWin = win
	c.send(f)
}

// sendSynAck answers the guest's SYN.
func (c *tcpConn) sendSynAck() {
	win := uint16(min(c.rcvWindowRaw(), 0xffff))
	f := link.GetFrame(c.tmpl.hlen + tcpSynOptsLen)
	n := putSynOpts(f.Data[c.tmpl.hlen:], uint16(c.ourMSS()), c.rcv.ws)
	c.tmpl.fill(f, c.env.Peer.MAC(), c.snd.iss, c.rcv.nxt, wire.TCPSyn|wire.TCPAck, win, n, 0)
	c.ack.lastWin = win
	c.rcv.edge = c.rcv.nxt + uint32(win)
	c.noteSent(c.rcv.nxt, win)
	c.send(f)
}

// sendRST resets the guest's side of the connection.
func (c *tcpConn) sendRST() {
	f := link.GetFrame(c.tmpl.hlen)
	if c.state == 0 || c.state&tcpConnecting != 0 {
		c.tmpl.fill(f, c.env.Peer.MAC(), 0, c.rcv.nxt, wire.TCPRst|wire.TCPAck, 0, 0, 0)
	} else {
		c.tmpl.fill(f, c.env.Peer.MAC(), c.sndSeq(), c.ackNum(), wire.TCPRst|wire.TCPAck, 0, 0, 0)
	}
	c.send(f)
}

// send hands a frame to the link writer, blocking while its queue is full
// (back-pressure), but not past shutdown. A lone frame (control segments,
// a request's answer) is written from the actor itself when the link is
// idle, which saves a hop through the writer goroutine on every exchange
// of request/response traffic; bursts are queued (sendBurst), so that
// the writer writes while the actor goes on peeking.
//
// An inline run must not wait for room (see inline.go): it offers the
// frame instead, and parks it for the actor when the queue is full.
func (c *tcpConn) send(f *link.Frame) { c.sendTo(f, true) }

// sendBurst is send for a frame of a burst: the Writer may hold it to
// coalesce it with the next ones.
func (c *tcpConn) sendBurst(f *link.Frame) { c.sendTo(f, false) }

// sendTo is send (now) or sendBurst.
func (c *tcpConn) sendTo(f *link.Frame, now bool) {
	c.countOut(f)
	if c.inline {
		c.offer(f, now)
		return
	}
	c.unpark()
	if now {
		c.env.Out.SendNow(c.env.Ctx, f)
	} else {
		c.env.Out.SendCtx(c.env.Ctx, f)
	}
}

// sendAck sends a pure ACK with the current window, unless it would repeat
// the last segment's acknowledgement and window and nothing forces it. A
// repeated ACK is a duplicate ACK to the guest: while the socket is full
// and we hold what the guest sent, every inbox drain would send one, and
// three of them make the guest retransmit and halve its window for
// nothing lost.
func (c *tcpConn) sendAck() {
	w := c.rcvWindow()
	if !c.ack.force && c.ackNum() == c.ack.sent && w == c.ack.winSent {
		c.ack.due = false
		return
	}
	c.sendFlags(wire.TCPAck, w)
}

// noteSent records what a segment to the guest acknowledged and offered.
func (c *tcpConn) noteSent(ack uint32, win uint16) {
	c.ack.sent, c.ack.winSent = ack, win
	c.ack.due, c.ack.force = false, false
	c.ack.at = time.Time{}
}

func (c *tcpConn) sendFlags(flags uint8, win uint16) {
	c.sendFlagsSeq(c.sndSeq(), flags, win)
}

func (c *tcpConn) sendFlagsSeq(seq uint32, flags uint8, win uint16) {
	f := link.GetFrame(c.tmpl.hlen)
	ack := c.ackNum()
	c.tmpl.fill(f, c.env.Peer.MAC(), seq, ack, flags, win, 0, 0)
	c.noteSent(ack, win)
	c.send(f)
}

// sndSeq is the sequence number of our next segment without data.
func (c *tcpConn) sndSeq() uint32 {
	if c.state&tcpFinSent != 0 {
		return c.snd.finSeq + 1
	}
	return c.snd.nxt
}

// ackNum acknowledges what the socket took, and the guest's FIN once the
// socket is shut down for writing.
func (c *tcpConn) ackNum() uint32 {
	a := c.rcv.nxt - uint32(c.rcv.pendBytes)
	if c.state&tcpSockShut != 0 {
		a++
	}
	return a
}

// hostError turns a socket error into a reset of the guest's side.
func (c *tcpConn) hostError(op string, err error) {
	c.debugf("%s: %v", op, err)
	c.reset(op + ": " + err.Error())
}

// StartInbound runs the flow k of a host client a forwarder accepted on
// fd (non-blocking, its descriptors already taken from the budget as
// actors.FDInbound): the guest is sent a SYN. On failure it closes fd and
// gives the descriptors back.
func (p *Protocol) StartInbound(k actors.Key, fd int) {
	env := p.env
	s, err := newSock(p, fd, false)
	if err != nil {
		env.Limits.GiveFDs(actors.FDInbound, actors.FDsTCP)
		unix.Close(fd)
		return
	}
	h := actors.NewHandle(k)
	h.StateName = stateString
	h.Inbound = true
	c := newConn(p, h, k, true)
	c.fds, c.fdKind = actors.FDsTCP, actors.FDInbound
	c.sock = s
	s.owner.Store(c)
	env.Stats.TCPFlows.Add(1)
	env.Stats.TCPOpened.Add(1)
	go c.runInbound()
}
