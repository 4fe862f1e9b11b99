package udp

import "sync/atomic"

// Counters count what the UDP actors did and dropped, for logs
// and tests. They are process-wide: every Env adds to the same counters.
type Counters struct {
	// Sent and Received count datagrams guest -> host and host -> guest.
	Sent, Received atomic.Uint64
	// Malformed counts guest datagrams that could not be parsed or matched
	// (bad lengths, no flow); NoFlow the subset with no flow to send on.
	Malformed, NoFlow atomic.Uint64
	// InboxDropped counts datagrams dropped because an actor's inbox was
	// full when Start handed over the first one.
	InboxDropped atomic.Uint64
	// SendDropped counts datagrams dropped on a full host socket buffer;
	// SendErrors those the host refused otherwise.
	SendDropped, SendErrors atomic.Uint64
	// Segmented counts datagrams sent as part of a UDP_SEGMENT message.
	Segmented atomic.Uint64
	// Direct counts datagrams the dispatcher sent itself (sendDirect).
	Direct atomic.Uint64
	// TooBig counts host datagrams too large for the guest's link.
	TooBig atomic.Uint64
	// Unmappable counts host datagrams whose source the guest cannot be
	// shown (host loopback without a mapping), for which no guest address
	// is known, or which answer a guest datagram sent from port 0.
	Unmappable atomic.Uint64
	// ICMPErrors counts ICMP errors relayed to the guest.
	ICMPErrors atomic.Uint64
	// SocketErrors counts host sockets that could not be opened.
	SocketErrors atomic.Uint64
	// PortTranslated counts outbound bindings that could not use the
	// guest's own port on the host.
	PortTranslated atomic.Uint64
	// Bindings is the number of outbound bindings (host sockets) open.
	Bindings atomic.Int64
	// BindingsRefused counts guest datagrams dropped because a new
	// binding did not fit the descriptor budget.
	BindingsRefused atomic.Uint64
}

// Stats are the process-wide UDP counters.
var Stats Counters

// AddStats adds the UDP counters to m, by the names the statistics log uses.
func AddStats(m map[string]uint64) {
	m["udp_bindings"] = uint64(max(Stats.Bindings.Load(), 0))
	m["udp_bindings_refused"] = Stats.BindingsRefused.Load()
	m["udp_sent"] = Stats.Sent.Load()
	m["udp_received"] = Stats.Received.Load()
	m["udp_malformed"] = Stats.Malformed.Load()
	m["udp_no_flow"] = Stats.NoFlow.Load()
	m["udp_inbox_dropped"] = Stats.InboxDropped.Load()
	m["udp_send_dropped"] = Stats.SendDropped.Load()
	m["udp_segmented"] = Stats.Segmented.Load()
	m["udp_direct"] = Stats.Direct.Load()
	m["udp_send_errors"] = Stats.SendErrors.Load()
	m["udp_too_big"] = Stats.TooBig.Load()
	m["udp_unmappable"] = Stats.Unmappable.Load()
	m["udp_icmp_errors"] += Stats.ICMPErrors.Load()
	m["udp_socket_errors"] = Stats.SocketErrors.Load()
	m["udp_port_translated"] = Stats.PortTranslated.Load()
}
