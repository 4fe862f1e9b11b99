package udp

import (
	"testing"

	"github.com/gopasta/gopasta/actors"
)

// TestStatsSnapshot: the snapshot reads the live counters, under the names
// the statistics log documents.
func TestStatsSnapshot(t *testing.T) {
	env := &actors.Env{}
	env.Stats.UDPFlows.Add(2)
	proto := New(env)
	proto.stats.InboxDropped.Add(3)
	m := actors.StatsSnapshot(env)
	proto.AddStats(m)
	if m["udp_flows"] != 2 || m["udp_inbox_dropped"] != 3 {
		t.Fatalf("snapshot %v", m)
	}
	for _, k := range []string{"tcp_flows", "udp_send_dropped", "udp_icmp_errors"} {
		if _, ok := m[k]; !ok {
			t.Errorf("%s missing", k)
		}
	}
}
