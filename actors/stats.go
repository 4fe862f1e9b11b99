package actors

// StatsSnapshot returns every actor counter by name, for the daemon's
// statistics log (SIGUSR1, --stats): the flow counts and events of env, the
// process-wide UDP and ICMP counters (UDPStats) and the loopback splice
// counters (SpliceStats). Zero counters are included, so that a reader can
// tell "none" from "not counted".
//
// The drop counters to look at first when datagrams go missing:
// udp_inbox_dropped (a binding's inbox was full: its actor fell behind),
// udp_send_dropped (host socket buffer full), udp_too_big, udp_unmappable,
// udp_malformed, icmp_echo_dropped; the dispatcher's drop_inbox_full and the
// writer's "dropped" count the same kind of loss on their edges.
func StatsSnapshot(env *Env) map[string]uint64 {
	s, u := &env.Stats, &UDPStats
	fdMax, fdUsed := env.Limits.FDBudget()
	return map[string]uint64{
		"tcp_flows":              uint64(max(s.TCPFlows.Load(), 0)),
		"tcp_opened":             s.TCPOpened.Load(),
		"udp_flows":              uint64(max(s.UDPFlows.Load(), 0)),
		"udp_opened":             s.UDPOpened.Load(),
		"icmp_flows":             uint64(max(s.ICMPFlows.Load(), 0)),
		"icmp_opened":            s.ICMPOpened.Load(),
		"actor_panics":           s.Panics.Load(),
		"flows_refused":          s.Refused.Load(),
		"buffer_bytes":           uint64(max(s.BufferBytes.Load(), 0)),
		"tcp_beyond_window":      s.TCPBeyondWindow.Load(),
		"tcp_ooo_dropped":        s.TCPOOODropped.Load(),
		"fd_budget":              uint64(max(fdMax, 0)),
		"fd_budget_used":         uint64(max(fdUsed, 0)),
		"fd_budget_refused":      env.Limits.FDRefused.Load(),
		"tcp_connecting":         uint64(max(env.Limits.Connecting(), 0)),
		"tcp_connect_limit":      uint64(env.Limits.ConnectLimit()),
		"tcp_connect_refused":    env.Limits.ConnectRefused.Load(),
		"tcp_connect_timeouts":   env.Limits.ConnectTimeout.Load(),
		"udp_bindings":           uint64(max(u.Bindings.Load(), 0)),
		"udp_bindings_refused":   u.BindingsRefused.Load(),
		"udp_sent":               u.Sent.Load(),
		"udp_received":           u.Received.Load(),
		"udp_malformed":          u.Malformed.Load(),
		"udp_no_flow":            u.NoFlow.Load(),
		"udp_inbox_dropped":      u.InboxDropped.Load(),
		"udp_send_dropped":       u.SendDropped.Load(),
		"udp_segmented":          u.Segmented.Load(),
		"udp_direct":             u.Direct.Load(),
		"tcp_inline_segments":    TCPInline.Segments.Load(),
		"tcp_inline_events":      TCPInline.Events.Load(),
		"udp_send_errors":        u.SendErrors.Load(),
		"udp_too_big":            u.TooBig.Load(),
		"udp_unmappable":         u.Unmappable.Load(),
		"udp_icmp_errors":        u.ICMPErrors.Load(),
		"udp_socket_errors":      u.SocketErrors.Load(),
		"udp_port_translated":    u.PortTranslated.Load(),
		"icmp_echo_sent":         u.EchoSent.Load(),
		"icmp_echo_replies":      u.EchoReplies.Load(),
		"icmp_echo_dropped":      u.EchoDropped.Load(),
		"splice_tcp_opened":      uint64(max(SpliceStats.TCPOpened.Load(), 0)),
		"splice_tcp_active":      uint64(max(SpliceStats.TCPActive.Load(), 0)),
		"splice_tcp_resets":      uint64(max(SpliceStats.TCPResets.Load(), 0)),
		"splice_tcp_empty_reads": uint64(max(SpliceStats.TCPEmptyReads.Load(), 0)),
		"splice_udp_flows":       uint64(max(SpliceStats.UDPFlows.Load(), 0)),
		"splice_udp_datagrams":   uint64(max(SpliceStats.UDPDatagrams.Load(), 0)),
		"splice_only_refused":    uint64(max(SpliceStats.OnlyRefused.Load(), 0)),
	}
}
