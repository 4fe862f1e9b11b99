package actors

import "testing"

// TestStatsSnapshot: the snapshot reads the live counters, under the names
// the statistics log documents.
func TestStatsSnapshot(t *testing.T) {
	env := &Env{}
	env.Stats.UDPFlows.Add(2)
	before := UDPStats.InboxDropped.Load()
	UDPStats.InboxDropped.Add(3)
	defer UDPStats.InboxDropped.Add(^uint64(2))
	m := StatsSnapshot(env)
	if m["udp_flows"] != 2 || m["udp_inbox_dropped"] != before+3 {
		t.Fatalf("snapshot %v", m)
	}
	for _, k := range []string{"tcp_flows", "icmp_echo_dropped", "udp_send_dropped", "splice_udp_datagrams"} {
		if _, ok := m[k]; !ok {
			t.Errorf("%s missing", k)
		}
	}
}
