// Package actors holds gopasta's flows: one goroutine per TCP connection, UDP
// flow or ICMP echo flow. Each actor owns its host socket, its timers and its
// protocol state; it receives the guest's frames for its flow from the
// dispatcher on its inbox channel and sends frames towards the guest through
// the link Writer. No actor shares mutable state with another.
//
// # Protocols
//
// What the flows of one protocol share (TCP's and ICMP's pollers, UDP's registry of
// outbound bindings, every protocol's counters) belongs to a Protocol
// value per daemon (tcp.Protocol, udp.Protocol, icmp.Protocol; the
// loopback splice's to the forwarder's splice.Splicer), never to a
// package variable: each flow is handed a pointer to its protocol when it
// starts, so two daemons in one process, as tests run them, share
// nothing. The daemon makes them once with its Env, gives them to the
// dispatcher (Protocols) and the forwarder, reports their counters and
// closes them at shutdown. What stays process-wide is what is the
// process's: GOMAXPROCS (tcp.SetSerial), the flow ID counter, the host's
// sysctls read once; and the rate limits of a few warnings (tcp.RefusedLog,
// the forwarder's accept errors).
//
// # Lifecycle
//
// The dispatcher starts an outbound actor on a flow-table miss
// (Protocol.Start). Inbound actors are started by forwarders (listening
// sockets for -t/-u) and handed to the dispatcher on Env.Reg.Register, which
// puts them into the flow table. Every actor, when it ends, sends its Handle
// on Env.Reg.Ended exactly once; the dispatcher then removes it from the table if
// the table still points at that Handle, and releases the frames still
// queued in its inbox (which may hold guest memory, link.Frame.Ext).
//
// # Limits
//
// The guest is not trusted. Every flow takes the host descriptors it holds
// from Env.Limits, a budget derived from RLIMIT_NOFILE in which no one kind
// of flow takes more than three quarters, and connects in progress are
// capped and have a deadline of their own (limits.go). What does not fit
// is refused alone and counted. Warnings an event can repeat go through a
// RateLog.
//
// What a guest can make the host's port space look like: each guest UDP
// (address, source port) with a live flow holds one host UDP socket, bound
// to the guest's own port where the host has it free (else an ephemeral
// one) on the outbound address, receiving from any far end, and closed
// with its last flow (udp/udp.go). The guest cannot take a port a host program
// has, keep one past its flows, bind any host TCP port, or hold more
// sockets than its share of the budget.
//
// # Locks
//
// The dispatcher runs an idle flow's work on its own goroutine
// (Handle.Direct), and the TCP harvester does too (tcp/inline.go), so a
// flow's state is guarded by locks rather than owned by one goroutine.
// Who may run a flow is decided by one primitive, the flow's handoff.Gate
// (internal/handoff): the actor is its owner and holds it while it runs;
// the dispatcher and the harvester are its guests, which enter only a flow
// that nobody runs and that has nothing queued (TryEnter), and which never
// wait while inside: what they cannot finish at once they hand to the
// actor. The link Writer's direct writes follow the same rule, with the
// writer goroutine as owner. Where several locks are taken, they are taken
// in this order, never the other way:
//
//	tcp.tcpConn.gate            everything in a tcpConn; the actor holds it except while it
//	                            waits, the dispatcher and the harvester only TryEnter it
//	  poll.Poller.mu            a protocol's epoll registrations (a closing flow removes its socket)
//
//	udp.Binding.tx.gate | rx.mu the send path (udpTx), held by the actor, or by the dispatcher
//	                            in sendDirect (TryEnter); the receiver's buffers (udpRx), held
//	                            by the receiver, the sweep only TryLocks it. Never both.
//	  udp.Binding.errq.mu       the error queue buffers, from either path, while one entry is
//	                            read; never while its frame is handed to the Writer
//	    udp.Binding.tab.mu      the flow tables and every udpFlow's fields; held for lookups
//	                            only, never across a syscall
//	      udp.Protocol.reg      the registry of outbound bindings and each binding's pending list
//	        Inbox.mu            a binding's queue of guest datagrams (a leaf)
//
// The link Writer's gate and the buffer budget's lock are leaves below all
// of these: they take no flow's lock and never wait for the dispatcher.
//
// The rule, which the dispatcher's liveness rests on: no channel send and
// no Registrar call (Env.RegisterFlow, Env.EndFlow) while holding a flow's lock.
// The dispatcher alone drains Env.Reg.Register and Env.Reg.Ended, and it waits for
// udp.Binding.tab.mu in sendDirect; a flow that waited for room in either
// channel while holding a lock the dispatcher can wait for would stop the
// daemon's data path. So what a flow has to report under a lock is
// collected there and reported after the lock is released
// (udp.Binding.tab.endedQ, the new-flow result of newInboundFlow). The one
// exception is handing frames to the link Writer, a leaf, which an actor
// does under its own locks (the UDP receiver under rx.mu, a TCP actor under
// its gate): the Writer's goroutine needs none of them to make room. A
// guest of a flow's gate does not even wait for the Writer: it offers its
// frames (Writer.OfferNow, Offer, TrySend) and parks for the actor, or
// drops and counts, what the Writer's full queue cannot take.
package actors

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/actors/flowtrace"
	"github.com/gopasta/gopasta/actors/nat"
	"github.com/gopasta/gopasta/internal/handoff"
	"github.com/gopasta/gopasta/link"
)

// Key identifies a flow as the guest sees it. It is comparable and allocation
// free, so it is the flow table's map key.
type Key struct {
	// Proto is wire.ProtoTCP, ProtoUDP, ProtoICMP or ProtoICMPv6.
	Proto uint8
	// Guest is the guest's address and port (the echo identifier for ICMP).
	Guest netip.AddrPort
	// Far is the other end as the guest sees it (port 0 for ICMP).
	Far netip.AddrPort
}

// String formats the key for logs: "tcp 10.0.2.100:40000 -> 93.184.216.34:80".
func (k Key) String() string {
	p := "ip"
	switch k.Proto {
	case 6:
		p = "tcp"
	case 17:
		p = "udp"
	case 1:
		p = "icmp"
	case 58:
		p = "icmpv6"
	}
	return fmt.Sprintf("%s %s -> %s", p, k.Guest, k.Far)
}

// InboxDepth is the capacity of an actor's inbox. When it is full the
// dispatcher drops the frame and counts it; TCP retransmits, UDP is lossy.
const InboxDepth = 256

// Handle is the dispatcher's reference to a running actor.
type Handle struct {
	Key Key
	// ID numbers the flow for the operator (flows, trace id N); unique in
	// the process, never 0.
	ID uint64
	// Inbound: the host side opened the flow (a -t/-u forward).
	Inbound bool
	// Stats are the flow's counters (flowstats.go).
	Stats FlowStats
	// StateName, if set, names the protocol state the flow keeps in
	// Stats.State (TCP's); flows without one are "ACTIVE".
	StateName func(uint16) string
	// Tap is the dispatcher's view of the trace subscribers for this
	// flow, owned by the dispatcher goroutine.
	Tap flowtrace.Tap
	// In carries frames from the guest for this flow. Each frame sent is
	// owned by the actor from then on.
	In chan *link.Frame
	// Q, if set, is the flow's inbox instead of In: a queue that grows
	// with the backlog (UDP bindings, see Inbox).
	Q *Inbox
	// Direct, if set, lets the dispatcher do the actor's work for f on its
	// own goroutine when the actor has nothing queued: it reports whether
	// it took f (and with it, ownership). The dispatcher calls it only for
	// a frame that came alone in its read batch, so that nothing the actor
	// would have coalesced is sent apart. Direct enters Gate as a guest
	// (handoff.Gate.TryEnter) and declines when it cannot.
	Direct func(f *link.Frame) bool
	// Gate, set with Direct, is the flow's run-here-or-hand-over gate:
	// Offer counts every frame it queues in its backlog, which the actor
	// counts done once it has handled it, so that Direct never overtakes
	// a queued frame.
	Gate *handoff.Gate
}

// Offer hands f to the actor without blocking and reports whether it did;
// if not (the inbox is full) the caller still owns f.
func (h *Handle) Offer(f *link.Frame) bool {
	if h.Gate != nil {
		h.Gate.Queue(1) // before the frame can be seen: see handoff
	}
	var ok bool
	if h.Q != nil {
		ok = h.Q.Push(f)
	} else {
		select {
		case h.In <- f:
			ok = true
		default:
		}
	}
	if !ok && h.Gate != nil {
		h.Gate.Done(1)
	}
	return ok
}

// Backlog is the number of frames waiting in the actor's inbox.
func (h *Handle) Backlog() int {
	if h.Q != nil {
		return h.Q.Len()
	}
	return len(h.In)
}

// NewHandle returns a Handle with an inbox of InboxDepth frames.
func NewHandle(k Key) *Handle {
	return InitHandle(&Handle{Key: k, In: make(chan *link.Frame, InboxDepth)})
}

// Env is what all actors share. Fields are set once before the dispatcher
// starts and are read-only afterwards (the pointed-to Peer, Writer and Stats
// are safe for concurrent use).
type Env struct {
	Ctx  context.Context // cancelled at shutdown: every actor ends
	Opts Options         // the flows' options, defaults resolved (OptionsFrom)
	Out  *link.Writer
	Peer *link.Peer
	Log  *logrus.Logger
	NAT  *nat.NAT

	// Reg carries the flows' starts and ends to the dispatcher. Whoever
	// builds the Env makes it (NewRegistrar); the dispatcher drains it.
	Reg *Registrar

	Stats Stats

	// Trace, if set, streams the trace lines of the flows its
	// subscribers select (gopasta ctl trace); nil traces nothing.
	Trace *flowtrace.Hub

	BudgetFlows atomic.Int64 // TCP flows with a share of the buffer budget
	// Limits are the descriptor budget and the cap on pending connects
	// (limits.go); the zero value limits nothing.
	Limits Limits
	// TableFlows is the number of flows in the dispatcher's table, which
	// the dispatcher keeps up to date, so that inbound flows accepted on
	// listeners are held to the same --flow-limit as the guest's.
	TableFlows atomic.Int64
}

// Stats are counters for the actors, reported in logs and by tests.
type Stats struct {
	TCPFlows, UDPFlows, ICMPFlows    atomic.Int64 // currently running
	TCPOpened, UDPOpened, ICMPOpened atomic.Uint64
	Panics                           atomic.Uint64
	Refused                          atomic.Uint64 // over the flow limit

	// BufferBytes is what flows hold or have reserved of the daemon-wide
	// buffer budget (budget.go).
	BufferBytes atomic.Int64
	// TCPBeyondWindow counts guest segments whose data, or part of it,
	// was dropped for lying beyond the window we advertised; TCPOOODropped
	// out-of-order segments dropped because TCPMaxOOO were held already.
	TCPBeyondWindow, TCPOOODropped atomic.Uint64
	// TCPGuestFault counts guest segments lost because the guest's
	// memory holding their payload (link.Frame.Ext) could not be read.
	TCPGuestFault atomic.Uint64
}

// Registrar is how a flow tells the dispatcher it has started (an
// inbound flow, to be put into the table) or ended. Each call waits for
// room in the dispatcher's channel, or until the daemon stops; the
// dispatcher drains them without blocking on anything a flow holds, so the
// wait is short, unless the caller holds a lock the dispatcher may wait
// for. Hence the rule in the package comment: no flow calls them with any
// of its locks held.
type Registrar struct {
	// Register receives inbound flows to be put into the flow table,
	// Ended each flow's Handle once, when it ends. The dispatcher
	// goroutine alone receives from them; flows send only through
	// Env.RegisterFlow and Env.EndFlow.
	Register, Ended chan *Handle
}

// Depths of the Registrar's channels. Generous, so that a burst of flows
// ending at once (shutdown, a timeout sweep) does not make them wait for
// the dispatcher.
const (
	RegisterDepth = 256
	EndedDepth    = 1024
)

// NewRegistrar returns a Registrar with channels of the default depths.
func NewRegistrar() *Registrar {
	return &Registrar{Register: make(chan *Handle, RegisterDepth), Ended: make(chan *Handle, EndedDepth)}
}

// RegisterFlow hands the inbound flow h to the dispatcher; false if the
// daemon is stopping.
func (e *Env) RegisterFlow(h *Handle) bool {
	select {
	case e.Reg.Register <- h:
		return true
	case <-e.Ctx.Done():
		return false
	}
}

// EndFlow tells the dispatcher that h's flow has ended, exactly once per
// Handle.
func (e *Env) EndFlow(h *Handle) {
	select {
	case e.Reg.Ended <- h:
	case <-e.Ctx.Done():
	}
}

// FlowLog returns a log entry carrying the flow's key, for every line an
// actor logs.
func (e *Env) FlowLog(k Key) *logrus.Entry {
	return e.Log.WithField("flow", k.String())
}
