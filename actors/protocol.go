package actors

import "github.com/gopasta/gopasta/link"

// Protocol is one transport protocol of one daemon (TCP, UDP, ICMP echo),
// in the manner of gVisor's stack.TransportProtocol: the value that owns
// what the protocol's flows share — a registry of host sockets, a poller,
// counters — so that two daemons in one process (tests do this) share
// nothing but the process. Each flow is given a pointer to its protocol
// when it starts and reaches that state through it, never through a
// package variable.
//
// The dispatcher holds the protocols (Protocols) and calls Start on a
// flow-table miss; the daemon reports their counters with AddStats and
// closes them at shutdown.
//
// There is no Flow interface beside it: the flow table keeps *Handle,
// whose Offer and Backlog are what the dispatcher needs of a flow (hand a
// frame over without blocking, report the backlog), and whose other fields
// (ID, Stats, Tap) are the dispatcher's own bookkeeping about the flow. An
// interface would add an indirect call per frame and nothing a second
// implementation needs.
type Protocol interface {
	// Start is called by the dispatcher goroutine for a frame of this
	// protocol that matches no flow. It starts a flow and returns its
	// Handle, which the dispatcher puts into the flow table (f belongs
	// to the flow), or returns nil after consuming f itself (answered,
	// or dropped and counted). It must not block: the whole link waits.
	Start(k Key, f *link.Frame) *Handle
	// AddStats adds the protocol's counters to m, by the names the
	// statistics log shows (see StatsSnapshot).
	AddStats(m map[string]uint64)
	// Close releases what the protocol holds for its flows and waits for
	// the goroutines it owns (not its flows: they end with Env.Ctx).
	// Call it once Env.Ctx is done; Start must not be called after.
	Close()
}

// Protocols are the transport protocols of one daemon, by the frames the
// dispatcher hands them: TCP, UDP, and ICMP with ICMPv6 (echo). A nil one
// means the daemon has none: the dispatcher drops its frames.
type Protocols struct {
	TCP, UDP, ICMP Protocol
}

// All returns the protocols that are set, in a fixed order.
func (ps Protocols) All() []Protocol {
	all := make([]Protocol, 0, 3)
	for _, p := range [...]Protocol{ps.TCP, ps.UDP, ps.ICMP} {
		if p != nil {
			all = append(all, p)
		}
	}
	return all
}

// AddStats adds every protocol's counters to m.
func (ps Protocols) AddStats(m map[string]uint64) {
	for _, p := range ps.All() {
		p.AddStats(m)
	}
}

// Close closes every protocol.
func (ps Protocols) Close() {
	for _, p := range ps.All() {
		p.Close()
	}
}
