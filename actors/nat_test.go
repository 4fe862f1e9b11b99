package actors

import (
	"net/netip"
	"testing"
)

func TestNAT(t *testing.T) {
	ap := netip.MustParseAddrPort
	a := netip.MustParseAddr
	podman := &NAT{ // podman's: --no-map-gw, --map-guest-addr, --dns-forward
		GuestAddr4: a("169.254.1.2"), HostAddr4: a("192.0.2.2"), HostAddr6: a("fd00::2"),
		DNSForward4: a("169.254.1.1"), DNSHost4: a("127.0.0.53"),
	}
	plain := &NAT{ // pasta's defaults: gateway stands for host loopback
		HostLoopback4: a("192.0.2.1"), HostLoopback6: a("fd00::1"),
		HostAddr4: a("192.0.2.2"), HostAddr6: a("fd00::2"),
	}
	none := &NAT{HostAddr4: a("192.0.2.2")} // no mapping at all

	out := []struct {
		n       *NAT
		far, to string
	}{
		{podman, "169.254.1.2:8080", "192.0.2.2:8080"},
		{podman, "169.254.1.1:53", "127.0.0.53:53"},
		{podman, "169.254.1.1:80", "169.254.1.1:80"}, // only DNS ports
		{podman, "192.0.2.1:80", "192.0.2.1:80"},     // --no-map-gw
		{plain, "192.0.2.1:80", "127.0.0.1:80"},
		{plain, "[fd00::1]:80", "[::1]:80"},
		{plain, "198.51.100.7:443", "198.51.100.7:443"},
	}
	for _, c := range out {
		if got := c.n.Outbound(ap(c.far)); got != ap(c.to) {
			t.Errorf("Outbound(%s) = %s, want %s", c.far, got, c.to)
		}
	}

	in := []struct {
		n      *NAT
		src    string
		shown  string
		showOK bool
	}{
		{podman, "127.0.0.53:53", "169.254.1.1:53", true},
		{podman, "192.0.2.2:40000", "169.254.1.2:40000", true}, // host's own address: the alias
		{podman, "127.0.0.1:40000", "0.0.0.0:40000", false},    // loopback, unmapped
		{plain, "127.0.0.1:40000", "192.0.2.1:40000", true},
		{plain, "[::1]:40000", "[fd00::1]:40000", true},
		{plain, "192.0.2.2:40000", "192.0.2.1:40000", true}, // no alias: from the gateway
		{plain, "[fd00::2]:40000", "[fd00::1]:40000", true},
		{plain, "[::ffff:198.51.100.7]:5", "198.51.100.7:5", true}, // v4-mapped unmapped
		{none, "192.0.2.2:40000", "", false},
	}
	for _, c := range in {
		got, ok := c.n.Inbound(ap(c.src))
		if ok != c.showOK || (ok && got != ap(c.shown)) {
			t.Errorf("Inbound(%s) = %s, %v; want %s, %v", c.src, got, ok, c.shown, c.showOK)
		}
	}
}
