package dispatcher

import (
	"net/netip"
	"testing"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// refusedDests is every spelling of a destination no guest frame may start
// a flow to, and the counter that must count it.
var refusedDests = []struct{ addr, counter string }{
	{"127.0.0.1", "drop_loopback"},
	{"127.9.9.9", "drop_loopback"},
	{"::1", "drop_loopback"},
	{"::ffff:127.0.0.1", "drop_loopback"},
	{"::127.0.0.1", "drop_loopback"},
	{"0.0.0.0", "drop_bad_dest"},
	{"::", "drop_bad_dest"},
	{"0.1.2.3", "drop_martian"},
	{"::ffff:0.0.0.0", "drop_martian"},
	{"::ffff:0.0.0.1", "drop_martian"},
	{"::ffff:198.51.100.2", "drop_martian"},
	{"::ffff:8.8.8.8", "drop_martian"},
	{"::8.8.8.8", "drop_martian"},
	{"::0.0.0.2", "drop_martian"},
}

// TestPolicyRefusesEverySpelling sends a TCP SYN, a UDP datagram and an
// echo request to every refused spelling, with --ipv6-only for the IPv6
// ones (an IPv4-mapped destination must not get around it): no flow may
// start, and each frame is counted under its reason.
func TestPolicyRefusesEverySpelling(t *testing.T) {
	for _, v6only := range []bool{false, true} {
		fa := &fakeActors{depth: 4}
		h := newHarness(t, func(c *conf.Config) { c.IPv6Only = v6only }, withFakes(fa))
		want := map[string]uint64{}
		for _, c := range refusedDests {
			a := netip.MustParseAddr(c.addr)
			guest := guest6
			if a.Is4() {
				if v6only {
					continue
				}
				guest = guest4
			}
			echo := uint8(wire.ICMPv6EchoRequest)
			proto := uint8(wire.ProtoICMPv6)
			if a.Is4() {
				echo, proto = wire.ICMPv4EchoRequest, wire.ProtoICMP
			}
			h.send(wiretest.IP(guest, a, wire.ProtoTCP, wiretest.TCP(40000, 22, 1, 0, wire.TCPSyn, nil)))
			h.send(wiretest.IP(guest, a, wire.ProtoUDP, wiretest.UDP(40000, 53, []byte("q"))))
			h.send(wiretest.IP(guest, a, proto, wiretest.ICMPEcho(echo, 7, 1, []byte("ping"))))
			want[c.counter] += 3
		}
		for name, n := range want {
			h.waitStat(name, n)
		}
		if n := fa.count(); n != 0 {
			t.Fatalf("ipv6-only %v: %d flows started, first to %v", v6only, n, fa.get(0).key.Far)
		}
		h.stop()
	}
}
