package udp

import "sync/atomic"

// Counters count what the UDP actors of one daemon (Protocol.Stats) did
// and dropped, for logs and tests.
type counters struct {
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
	// SpliceOnlyRefused counts datagrams of -u clients off loopback that
	// --splice-only refuses (reported with the splice's counter of the
	// same name).
	SpliceOnlyRefused atomic.Uint64
}

// AddStats adds the UDP counters to m, by the names the statistics log uses.
func (p *Protocol) AddStats(m map[string]uint64) {
	s := &p.stats
	m["udp_bindings"] = uint64(max(s.Bindings.Load(), 0))
	m["udp_bindings_refused"] = s.BindingsRefused.Load()
	m["udp_sent"] = s.Sent.Load()
	m["udp_received"] = s.Received.Load()
	m["udp_malformed"] = s.Malformed.Load()
	m["udp_no_flow"] = s.NoFlow.Load()
	m["udp_inbox_dropped"] = s.InboxDropped.Load()
	m["udp_send_dropped"] = s.SendDropped.Load()
	m["udp_segmented"] = s.Segmented.Load()
	m["udp_direct"] = s.Direct.Load()
	m["udp_send_errors"] = s.SendErrors.Load()
	m["udp_too_big"] = s.TooBig.Load()
	m["udp_unmappable"] = s.Unmappable.Load()
	m["udp_icmp_errors"] += s.ICMPErrors.Load()
	m["udp_socket_errors"] = s.SocketErrors.Load()
	m["udp_port_translated"] = s.PortTranslated.Load()
	m["splice_only_refused"] += s.SpliceOnlyRefused.Load()
}
