// Package dispatcher is gopasta's hub: one goroutine that reads frames from
// the link, answers the link-level services itself (ARP, NDP, DHCP, DHCPv6)
// and hands TCP, UDP and ICMP to flow actors by their 4-tuple. It alone owns
// the flow table.
//
// # Theory of operation
//
// On a device that can interrupt a blocked read with a deadline (the tap,
// the vhost-user back end: readDeadliner), Run is a single goroutine that
// calls Device.ReadBatch itself. For request/response traffic every
// hand-over between goroutines costs a wake-up, often of a sleeping thread
// on another core, and a frame
// from the guest already needs one (dispatcher to actor); a separate reader
// goroutine would add a second on the way in. The other things the
// dispatcher waits for fit around the read: Env.Ended and Env.Register are
// drained without blocking before every batch, which is when they matter
// (an inbound actor registers before it sends its SYN, so the guest's
// answer is always in a later batch; a flow's Ended is queued before the
// guest can see it gone); the tick for periodic work is the read's
// deadline; and the context closes the device, which ends the read. An
// ended flow may thus stay in the table for up to a tick while the link is
// idle, which costs nothing but a map entry.
//
// The tick is a second while the table has flows, so that a crowd of
// actors ending at once while the guest is silent waits at most that long
// for room in Env.Ended. With an empty table it is idleTick, or sooner when
// periodic work is due: every tick wakes an idle daemon, and the runtime's
// sysmon thread with it, and idle containers are many.
//
// On other devices (the QEMU stream socket of passt mode, which replaces
// its connection underneath) two goroutines belong to Run. The reader
// blocks in Device.ReadBatch and passes each batch of frames to the dispatcher
// goroutine over a channel; the dispatcher goroutine selects on those
// batches, on actors ending (Env.Ended), on inbound actors to register
// (Env.Register), on a timer for periodic work (due at idleTick at the
// latest) and on the context. Either way the table is only ever touched by
// one goroutine.
//
// The single goroutine owns one batch slice and the large frames in it. The
// split reader owns a fixed set of batch slices (two) and the large frames
// in them; the slices travel to the dispatcher and back on two channels.
// Either way steady-state reading allocates nothing. The dispatcher treats each frame
// in one of three ways: it drops it (counted), answers it inline (ARP, NDP,
// DHCP: the reply is a fresh small frame queued with Writer.TrySend, never a
// blocking Send), or hands it to a flow actor. Frames that fit the small
// size class are copied into a small pooled frame before the hand-over, so a
// queue of ACKs in an actor's inbox does not pin 64 KiB buffers and the
// reader's large buffers stay where they are; only large frames themselves
// change owner, and the reader takes a fresh one from the pool in their
// place.
//
// The dispatcher never blocks on an actor: a full inbox means the frame is
// dropped and counted (TCP retransmits, UDP is lossy). On the tap and on
// vhost-user, a frame that came alone in its batch is first offered to
// the flow's Handle.Direct (never on the split reader: see
// Dispatcher.direct): an idle UDP binding sends it at once, an idle established TCP flow runs it on the
// dispatcher's goroutine (actors/tcp/inline.go), which saves waking the
// actor for request/response traffic (counter frames_direct). Direct is a
// guest of the flow's handoff.Gate: it never waits for a busy actor, nor
// for anything while it runs; the frame then takes the inbox like any
// other.
//
// # Shutdown
//
// When the context is done, Run closes the Device so that ReadBatch
// returns, waits for the reader (if any) to exit, releases every frame it
// still holds and returns ctx.Err(). The caller may Close the device again
// (Device.Close must tolerate that). When ReadBatch fails (link.ErrClosed:
// the peer went away) Run returns that error. Actors still running after
// Run returned must not block sending on Env.Ended or Env.Register: those
// channels are buffered, and senders should also select on Env.Ctx.
package dispatcher

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// Timing of periodic work.
const (
	// raInterval is how often an unsolicited router advertisement is sent
	// once the guest has shown it speaks IPv6, well inside routerLifetime
	// so the guest never loses its default route.
	raInterval = 5 * time.Minute
	// tick is the longest wait for periodic work while there are flows,
	// idleTick while there are none: see the package comment.
	tick     = time.Second
	idleTick = 10 * time.Second
)

// Dispatcher reads the link and routes frames. Create it with New and run
// it with Run.
type Dispatcher struct {
	// Tee, if set before Run, sees every frame read from the link, before
	// it is handled (pcap). It runs on the dispatcher goroutine while the
	// dispatcher owns the frame, and must not keep it.
	Tee func(*link.Frame)
	// Capturing, if set with Tee, reports whether Tee records anything
	// now: while it does not, frames whose payload is in guest memory
	// (link.Frame.Ext) skip Tee instead of being copied for it.
	Capturing func() bool

	cfg *conf.Config
	dev link.Device
	env *actors.Env
	log *logrus.Logger

	ended    <-chan *actors.Handle // env.Reg's
	register <-chan *actors.Handle
	queries  chan chan<- []*actors.Handle // Flows (flows.go)
	inline   atomic.Bool                  // runInline: wake moves the read deadline

	// Owned by the dispatcher goroutine.
	flows  map[actors.Key]*actors.Handle
	parsed wire.Parsed
	trace  bool // tracing enabled, sampled once per batch
	subs   bool // trace subscribers (env.Trace), sampled once per batch
	// direct: lone frames are offered to Handle.Direct. Only when Run
	// reads the link itself (runInline: the tap, vhost-user), whose
	// writes in place never wait (the tap drops what it cannot queue; the
	// vhost-user device is a link.TryWriter): an inline run writes to the
	// link from this goroutine, and the QEMU stream socket of runSplit
	// can block a writer for as long as QEMU does not read, which must
	// not stop the dispatcher.
	direct bool

	// protos start the flows of a table miss: the daemon's protocols in
	// production; tests put their own to watch what the dispatcher
	// starts.
	protos actors.Protocols

	// Link services state, also the dispatcher goroutine's.
	svc services

	// Rate limiting of the flow limit warning.
	limitLog actors.RateLog

	// panicSites are the call sites whose panic was logged: see
	// recovered. The dispatcher goroutine's.
	panicSites map[uintptr]struct{}

	n         counters
	inboxHigh uint64       // cInboxHighWater's value, kept here to compare cheaply
	active    atomic.Int64 // len(flows), for Stats
}

// New returns a dispatcher for dev that starts the flows of protos (made
// for env; the caller owns and closes them). env.Out must write to dev;
// the dispatcher drains env.Reg (which must be set), and changes nothing
// in env.
func New(cfg *conf.Config, dev link.Device, env *actors.Env, log *logrus.Logger, protos actors.Protocols) *Dispatcher {
	d := &Dispatcher{
		cfg:      cfg,
		dev:      dev,
		env:      env,
		log:      log,
		ended:    env.Reg.Ended,
		register: env.Reg.Register,
		queries:  make(chan chan<- []*actors.Handle, queryDepth),
		flows:    make(map[actors.Key]*actors.Handle),
		protos:   protos,
	}
	d.svc.init(cfg, env)
	return d
}

// Run reads and dispatches frames until ctx is done (it then returns
// ctx.Err()) or the link fails (it returns ReadBatch's error, link.ErrClosed
// when the peer went away). See the package comment for what Run does with
// the device on the way out.
func (d *Dispatcher) Run(ctx context.Context) error {
	if dl, ok := d.dev.(readDeadliner); ok && dl.SetReadDeadline(time.Time{}) == nil {
		return d.runInline(ctx, dl)
	}
	return d.runSplit(ctx)
}

// readDeadliner is implemented by devices whose blocked ReadBatch returns
// an error matching os.ErrDeadlineExceeded once the deadline set here has
// passed (the tap, through the runtime poller).
type readDeadliner interface {
	SetReadDeadline(t time.Time) error
}

// runInline is Run on a single goroutine: see the package comment.
func (d *Dispatcher) runInline(ctx context.Context, dl readDeadliner) error {
	d.direct = true
	d.inline.Store(true)
	defer d.inline.Store(false)
	s := make([]*link.Frame, link.BatchSize)
	defer link.ReleaseAll(s)
	stop := context.AfterFunc(ctx, func() { d.dev.Close() })
	defer stop()
	if d.cfg.Stats > 0 {
		d.svc.nextStats = time.Now().Add(time.Duration(d.cfg.Stats) * time.Second)
	}
	next := d.nextTick(time.Now())
	if err := dl.SetReadDeadline(next); err != nil {
		return err
	}
	lr, loops := d.dev.(loopReader)
	// handle is the per-batch work for ReadLoop, which keeps waiting in
	// the poller between batches; it hands control back at each tick.
	handle := func(n int) bool {
		d.drainEnded()
		d.drainRegister()
		d.handleBatch(s[:n])
		refill(s)
		d.drainQueries()
		return !d.periodicDue(time.Now(), next)
	}
	for {
		refill(s)
		var n int
		var err error
		if loops {
			err = lr.ReadLoop(s, handle)
		} else {
			n, err = d.dev.ReadBatch(s)
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		// Ended first: a registration may reuse the 4-tuple of a flow
		// that has just ended.
		d.drainEnded()
		d.drainRegister()
		if n > 0 {
			d.handleBatch(s[:n])
		}
		now := time.Now()
		due := d.periodicDue(now, next)
		if due {
			d.periodic(now)
			next = d.nextTick(now)
		}
		if due || err != nil {
			// A deadline that passed early was Flows waking us (wake):
			// set it back before answering, so that a query queued
			// after the answer wakes us again.
			if err := dl.SetReadDeadline(next); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return err
			}
		}
		d.drainQueries()
	}
}

// loopReader is implemented by devices that can hand batches to a callback
// while they stay in the poller's read loop (the tap: see Tap.ReadLoop).
type loopReader interface {
	ReadLoop(frames []*link.Frame, handle func(n int) bool) error
}

// drainEnded removes every ended actor already queued, without blocking.
func (d *Dispatcher) drainEnded() {
	for {
		select {
		case h := <-d.ended:
			d.endFlow(h)
		default:
			return
		}
	}
}

// runSplit is Run with a separate reader goroutine, for devices that
// cannot interrupt a read: see the package comment.
func (d *Dispatcher) runSplit(ctx context.Context) error {
	batches := make(chan []*link.Frame, 1)
	free := make(chan []*link.Frame, 2)
	for range cap(free) {
		free <- make([]*link.Frame, link.BatchSize)
	}
	errc := make(chan error, 1)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.read(batches, free, errc, done)
	}()

	stop := func() {
		close(done)
		wg.Wait()
		// The reader is gone: every frame is in a slice in one of the
		// two channels.
		for {
			select {
			case s := <-batches:
				link.ReleaseAll(s[:cap(s)])
			case s := <-free:
				link.ReleaseAll(s)
			default:
				return
			}
		}
	}

	if d.cfg.Stats > 0 {
		d.svc.nextStats = time.Now().Add(time.Duration(d.cfg.Stats) * time.Second)
	}
	// The flows' Ended and Register have their own cases here: the timer is
	// for periodic work alone.
	next := d.nextTick(time.Now())
	timer := time.NewTimer(time.Until(next))
	defer timer.Stop()
	rearm := func(now time.Time) {
		d.periodic(now)
		next = d.nextTick(now)
		timer.Reset(next.Sub(now))
	}
	for {
		select {
		case s := <-batches:
			// An inbound actor registers itself and then sends its SYN to
			// the guest; the guest's SYN,ACK may already be in this batch.
			// Take every pending registration first, or that answer would
			// find no flow.
			d.drainRegister()
			d.handleBatch(s)
			free <- s[:cap(s)]
			if now := time.Now(); d.periodicDue(now, next) {
				rearm(now)
			}
		case h := <-d.ended:
			d.endFlow(h)
		case h := <-d.register:
			d.registerFlow(h)
		case q := <-d.queries:
			d.answer(q)
		case now := <-timer.C:
			rearm(now)
		case err := <-errc:
			stop()
			return err
		case <-ctx.Done():
			d.dev.Close()
			stop()
			return ctx.Err()
		}
	}
}

// drainRegister registers every inbound actor already queued, without
// blocking.
func (d *Dispatcher) drainRegister() {
	for {
		select {
		case h := <-d.register:
			d.registerFlow(h)
		default:
			return
		}
	}
}

// refill makes every slot of a read batch a whole large frame again: slots
// whose frame was handed to an actor get a new one from the pool, the
// others are resliced to their full buffer.
func refill(s []*link.Frame) {
	for i, f := range s {
		if f == nil {
			s[i] = link.GetFrame(link.MaxFrameSize)
		} else {
			f.Data = f.Data[:cap(f.Data)]
		}
	}
}

// read is the reader goroutine. It fills each free slice's empty slots
// with large frames, reads a batch into it and hands it on.
func (d *Dispatcher) read(batches chan<- []*link.Frame, free <-chan []*link.Frame, errc chan<- error, done <-chan struct{}) {
	for {
		var s []*link.Frame
		select {
		case s = <-free:
		case <-done:
			return
		}
		refill(s)
		n, err := d.dev.ReadBatch(s)
		if err != nil {
			link.ReleaseAll(s)
			errc <- err
			return
		}
		select {
		case batches <- s[:n]:
		case <-done:
			link.ReleaseAll(s)
			return
		}
	}
}

// handleBatch dispatches every frame of s. Frames it hands over leave nil
// slots behind; the others stay for the reader to reuse.
func (d *Dispatcher) handleBatch(s []*link.Frame) {
	d.trace = d.log.IsLevelEnabled(logrus.TraceLevel)
	d.subs = d.env.Trace.Active()
	d.n[cBatches].Add(1)
	d.n[cFramesIn].Add(uint64(len(s)))
	if d.Tee != nil {
		// Before handleFrame, which may hand the frame to an actor. A
		// capture sees whole frames: tails in guest memory are copied,
		// while one runs.
		capturing := d.Capturing == nil || d.Capturing()
		for _, f := range s {
			if f.Ext != nil {
				if !capturing {
					continue
				}
				if !f.Flatten() {
					f.Data = f.Data[:0] // parsed as too short: dropped
				}
			}
			d.Tee(f)
		}
	}
	toFlows := uint64(0)
	for i := 0; i < len(s); {
		i = d.handleFrames(s, i, &toFlows)
	}
	if toFlows > 0 {
		d.n[cToFlows].Add(toFlows)
	}
	// Frames left in their slots are dropped or answered: the guest
	// memory of any still holding some goes back now, not when the
	// reader gets to the slot again.
	for _, f := range s {
		if f != nil {
			f.ReleaseExt()
		}
	}
}

// handleFrames handles s[i:], counting in toFlows the frames that went to
// flows, and returns len(s); or, when handling a frame panicked (a bug,
// which some guest frame made reachable), it turns that into a dropped,
// counted frame and returns the index of the next one, for handleBatch to
// go on from: one frame must not end every container's network. The
// frame's slot needs no care: it holds the frame still or nil, and
// refill handles both. One deferred recover per batch, not per frame,
// keeps it off the per-frame path.
func (d *Dispatcher) handleFrames(s []*link.Frame, i int, toFlows *uint64) (next int) {
	defer func() {
		if r := recover(); r != nil {
			d.recovered(r, s[next])
			next++
		}
	}()
	for ; i < len(s); i++ {
		next = i
		if d.handleFrame(s, i) {
			*toFlows++
		}
	}
	return len(s)
}

// maxPanicSites bounds panicSites: past it, new sites are counted but not
// logged.
const maxPanicSites = 64

// recovered counts a panic r that handling frame f (nil if it changed
// hands) raised, and logs it with its stack and the frame the first time
// it happens at its call site: a guest that found the bug can repeat it at
// line rate, and one stack per site says all there is to say. Called
// from the deferred function, so that the stack is still the panic's.
func (d *Dispatcher) recovered(r any, f *link.Frame) {
	d.n[cPanics].Add(1)
	// The site is the first frame below runtime.gopanic that is not the
	// runtime's own (a bounds check or a nil dereference panics from
	// runtime helpers).
	var pcs [64]uintptr
	n := runtime.Callers(2, pcs[:])
	site := uintptr(0)
	frames := runtime.CallersFrames(pcs[:n])
	for inPanic := false; ; {
		fr, more := frames.Next()
		switch {
		case fr.Function == "runtime.gopanic":
			inPanic = true
		case inPanic && !strings.HasPrefix(fr.Function, "runtime."):
			site = fr.PC
		}
		if site != 0 || !more {
			break
		}
	}
	if _, seen := d.panicSites[site]; seen || len(d.panicSites) >= maxPanicSites {
		return
	}
	if d.panicSites == nil {
		d.panicSites = make(map[uintptr]struct{})
	}
	d.panicSites[site] = struct{}{}
	e := d.log.WithField("panic", fmt.Sprint(r))
	if f != nil {
		e = e.WithField("frame", hex.EncodeToString(f.Data[:min(len(f.Data), 256)]))
	}
	e.Errorf("frame handling panicked, frame dropped (only counted from now on at this site)\n%s", debug.Stack())
}

// familyOn reports whether a frame of a family may pass: false, counted,
// when -4 or -6 turned the family off.
func (d *Dispatcher) familyOn(off bool) bool {
	if off {
		d.n[cDropFamily].Add(1)
	}
	return !off
}

// handleFrame parses s[i] and acts on it. It reports whether the frame went
// to a flow's inbox.
func (d *Dispatcher) handleFrame(s []*link.Frame, i int) bool {
	b := s[i].Data
	p := &d.parsed
	parse := wire.ParseFrame
	if s[i].Ext != nil {
		// Only the headers are in b (see link.Frame.Ext).
		parse = wire.ParseFrameTrustedL4
	}
	err := parse(b, p)
	if s[i].Ext != nil && (err != nil || p.Proto != wire.ProtoTCP) {
		// Only a TCP segment's payload is used where it is: anything
		// else is copied in and parsed whole (and so is what the
		// headers alone did not pass, to drop it for the right reason).
		if !s[i].Flatten() {
			return d.drop(cDropGuestFault)
		}
		err = wire.ParseFrame(b, p)
	}
	if err != nil {
		r, _ := err.(wire.Reason)
		d.n[r].Add(1)
		if d.trace {
			d.log.WithField("frame", frameString(p)).Tracef("frame in, %d bytes: dropped, %v", len(b), err)
		}
		return false
	}
	b = b[:p.End]
	s[i].Data = b

	if p.SrcMAC[0]&1 == 0 && p.SrcMAC != ([6]byte{}) && d.env.Peer.MAC() != p.SrcMAC {
		d.env.Peer.SetMAC(p.SrcMAC)
	}

	switch p.EtherType {
	case wire.EtherTypeARP:
		if !d.familyOn(d.cfg.IPv6Only) {
			return false
		}
		d.traceFrame(p, len(b))
		d.handleARP(b)
		return false
	case wire.EtherTypeIPv4:
		if !d.familyOn(d.cfg.IPv6Only) {
			return false
		}
		d.learn(p.Src)
		if p.Proto == wire.ProtoUDP && p.DstPort == dhcpServerPort && !d.cfg.NoDHCP {
			d.traceFrame(p, len(b))
			d.handleDHCP(b, p)
			return false
		}
	case wire.EtherTypeIPv6:
		if !d.familyOn(d.cfg.IPv4Only) {
			return false
		}
		d.learn(p.Src)
		d.svc.guestSpeaksIPv6(d)
		switch {
		case p.Proto == wire.ProtoICMPv6 && p.ICMPType >= wire.ICMPv6RouterSolicit && p.ICMPType <= icmpv6Redirect:
			d.traceFrame(p, len(b))
			d.handleNDP(b, p)
			return false
		case p.Proto == wire.ProtoUDP && p.DstPort == dhcpv6ServerPort && !d.cfg.NoDHCPv6:
			d.traceFrame(p, len(b))
			d.handleDHCPv6(b, p)
			return false
		}
	}
	return d.demux(s, i, p)
}

// learn records a as the guest's address of its kind. Peer.Set* store a
// new pointer (an allocation), so they are only called on a change, which
// keeps the per-frame path allocation free.
func (d *Dispatcher) learn(a netip.Addr) {
	pe := d.env.Peer
	switch {
	case a.IsUnspecified() || a.IsMulticast():
		return
	case a.Is4():
		if pe.Addr4() == a {
			return
		}
	case a.IsLinkLocalUnicast():
		if pe.LinkLocal6() == a {
			return
		}
	case a.IsGlobalUnicast():
		if pe.Addr6() == a {
			return
		}
	default:
		return
	}
	pe.SetAddr(a)
}

// traceFrame logs a frame that is not for a flow, if tracing.
func (d *Dispatcher) traceFrame(p *wire.Parsed, n int) {
	if d.trace {
		d.log.WithField("frame", frameString(p)).Tracef("frame in, %d bytes", n)
	}
}

// nextTick is when periodic work must run next, at the latest, after it
// ran at now: a tick away (idleTick with no flows), or sooner if a router
// advertisement or the --stats line is due before that.
func (d *Dispatcher) nextTick(now time.Time) time.Time {
	next := now.Add(idleTick)
	if len(d.flows) > 0 {
		next = now.Add(tick)
	}
	if d.cfg.Stats > 0 && d.svc.nextStats.Before(next) {
		next = d.svc.nextStats
	}
	if ra, ok := d.svc.raDue(); ok && ra.Before(next) {
		next = ra
	}
	return next
}

// periodicDue reports whether periodic work is due at now, the tick being
// next. A router advertisement can become due between ticks (the guest's
// first IPv6 frame makes one due at once), so it is checked on its own; and
// a tick set long for an empty table is cut short when flows appear.
func (d *Dispatcher) periodicDue(now, next time.Time) bool {
	if !now.Before(next) || (len(d.flows) > 0 && next.Sub(now) > tick) {
		return true
	}
	ra, ok := d.svc.raDue()
	return ok && !now.Before(ra)
}

// periodic runs once a tick: unsolicited router advertisements and the
// --stats log line.
func (d *Dispatcher) periodic(now time.Time) {
	d.svc.periodicRA(d, now)
	if d.cfg.Stats > 0 && !now.Before(d.svc.nextStats) {
		d.svc.nextStats = now.Add(time.Duration(d.cfg.Stats) * time.Second)
		st := d.Stats()
		f := logrus.Fields{}
		for k, v := range st {
			if v != 0 {
				f[k] = v
			}
		}
		d.log.WithFields(f).Info("dispatcher statistics")
	}
}

// send queues a reply frame without blocking, counting a full queue.
func (d *Dispatcher) send(f *link.Frame) {
	if !d.env.Out.TrySend(f) {
		d.n[cDropOutFull].Add(1)
	}
}
