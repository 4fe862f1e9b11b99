package actors

// StatsSnapshot returns the counters env keeps by name, for the daemon's
// statistics log (SIGUSR1, --stats): the flow counts and events of env.
// Each Protocol adds its own (Protocol.AddStats, Protocols.AddStats), and
// the forwarder those of the loopback splice. Zero counters are included,
// so that a reader can tell "none" from "not counted".
//
// The drop counters to look at first when datagrams go missing:
// udp_inbox_dropped (a binding's inbox was full: its actor fell behind),
// udp_send_dropped (host socket buffer full), udp_too_big, udp_unmappable,
// udp_malformed, icmp_echo_dropped; the dispatcher's drop_inbox_full and the
// writer's "dropped" count the same kind of loss on their edges.
func StatsSnapshot(env *Env) map[string]uint64 {
	s := &env.Stats
	fdMax, fdUsed := env.Limits.FDBudget()
	m := map[string]uint64{
		"tcp_flows":            uint64(max(s.TCPFlows.Load(), 0)),
		"tcp_opened":           s.TCPOpened.Load(),
		"udp_flows":            uint64(max(s.UDPFlows.Load(), 0)),
		"udp_opened":           s.UDPOpened.Load(),
		"icmp_flows":           uint64(max(s.ICMPFlows.Load(), 0)),
		"icmp_opened":          s.ICMPOpened.Load(),
		"actor_panics":         s.Panics.Load(),
		"flows_refused":        s.Refused.Load(),
		"buffer_bytes":         uint64(max(s.BufferBytes.Load(), 0)),
		"tcp_beyond_window":    s.TCPBeyondWindow.Load(),
		"tcp_ooo_dropped":      s.TCPOOODropped.Load(),
		"tcp_guest_fault":      s.TCPGuestFault.Load(),
		"fd_budget":            uint64(max(fdMax, 0)),
		"fd_budget_used":       uint64(max(fdUsed, 0)),
		"fd_budget_refused":    env.Limits.FDRefused.Load(),
		"tcp_connecting":       uint64(max(env.Limits.Connecting(), 0)),
		"tcp_connect_limit":    uint64(env.Limits.ConnectLimit()),
		"tcp_connect_refused":  env.Limits.ConnectRefused.Load(),
		"tcp_connect_timeouts": env.Limits.ConnectTimeout.Load(),
	}
	return m
}
