package nat

import (
	"fmt"
	"net/netip"
	"strings"
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

// TestNATFollowsHost: after SetHostAddrs the alias leads to the host's new
// address, and peers from either address appear from the alias.
func TestNATFollowsHost(t *testing.T) {
	ap := netip.MustParseAddrPort
	a := netip.MustParseAddr
	n := &NAT{GuestAddr4: a("169.254.1.2"), GuestAddr6: a("fd00::99"), HostAddr4: a("192.0.2.2"), HostAddr6: a("fd00::2")}
	if got := n.Outbound(ap("169.254.1.2:80")); got != ap("192.0.2.2:80") {
		t.Errorf("before: %s", got)
	}
	n.SetHostAddrs(a("198.51.100.7"), a("fd00::7"))
	if v4, v6 := n.HostAddrs(); v4 != a("198.51.100.7") || v6 != a("fd00::7") {
		t.Errorf("HostAddrs = %s %s", v4, v6)
	}
	if got := n.Outbound(ap("169.254.1.2:80")); got != ap("198.51.100.7:80") {
		t.Errorf("Outbound v4 after the move: %s", got)
	}
	if got := n.Outbound(ap("[fd00::99]:80")); got != ap("[fd00::7]:80") {
		t.Errorf("Outbound v6 after the move: %s", got)
	}
	for _, src := range []string{"192.0.2.2:5", "198.51.100.7:5"} {
		if got, ok := n.Inbound(ap(src)); !ok || got != ap("169.254.1.2:5") {
			t.Errorf("Inbound(%s) = %s, %v", src, got, ok)
		}
	}
	if got, ok := n.Inbound(ap("[fd00::7]:5")); !ok || got != ap("[fd00::99]:5") {
		t.Errorf("Inbound v6 = %s, %v", got, ok)
	}
}

// TestNATFollowsResolver: after SetDNSHosts new queries go to the new
// resolver, and replies from the one at start and the one just before
// still appear from the forward address (queries in flight), while the
// same addresses on other ports are left alone.
func TestNATFollowsResolver(t *testing.T) {
	ap := netip.MustParseAddrPort
	a := netip.MustParseAddr
	n := &NAT{DNSForward4: a("169.254.1.1"), DNSHost4: a("192.0.2.53"),
		DNSForward6: a("fd00::53"), DNSHost6: a("2001:db8::53")}
	out := func(far, want string) {
		t.Helper()
		if got := n.Outbound(ap(far)); got != ap(want) {
			t.Errorf("Outbound(%s) = %s, want %s", far, got, want)
		}
	}
	in := func(src, want string) {
		t.Helper()
		if got, ok := n.Inbound(ap(src)); !ok || got != ap(want) {
			t.Errorf("Inbound(%s) = %s %v, want %s", src, got, ok, want)
		}
	}
	out("169.254.1.1:53", "192.0.2.53:53")
	n.SetDNSHosts(a("198.51.100.53"), a("2001:db8::53"))
	out("169.254.1.1:53", "198.51.100.53:53")
	out("169.254.1.1:853", "198.51.100.53:853")
	out("[fd00::53]:53", "[2001:db8::53]:53")
	in("198.51.100.53:53", "169.254.1.1:53")
	in("192.0.2.53:53", "169.254.1.1:53") // the resolver at start
	n.SetDNSHosts(a("203.0.113.53"), a("2001:db8::99"))
	out("169.254.1.1:53", "203.0.113.53:53")
	out("[fd00::53]:53", "[2001:db8::99]:53")
	in("203.0.113.53:53", "169.254.1.1:53")
	in("198.51.100.53:853", "169.254.1.1:853") // the one before
	in("[2001:db8::53]:53", "[fd00::53]:53")
	in("203.0.113.53:80", "203.0.113.53:80") // not a DNS port
	in("198.51.100.7:53", "198.51.100.7:53") // never a resolver
	if v4, v6 := n.DNSHosts(); v4 != a("203.0.113.53") || v6 != a("2001:db8::99") {
		t.Errorf("DNSHosts() = %s %s", v4, v6)
	}
}

// TestNATTapFallback: with --no-map-gw (podman) a host peer on the host's
// own address, which the guest has too, or on loopback, appears from
// gopasta's own tap address as in pasta: the gateway for IPv4, our
// link-local address for IPv6, not refused (reset).
func TestNATTapFallback(t *testing.T) {
	ap := netip.MustParseAddrPort
	a := netip.MustParseAddr
	ll := TapLinkLocal6(a("2001:db8:1::1"), [6]byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55})
	if ll != a("fe80::9855:9aff:fe55:9a55") {
		t.Fatalf("TapLinkLocal6 = %s", ll)
	}
	if got := TapLinkLocal6(a("fe80::1"), [6]byte{}); got != a("fe80::1") {
		t.Errorf("TapLinkLocal6 with a link-local gateway = %s", got)
	}
	nomap := &NAT{ // podman without --map-guest-addr for IPv6
		GuestAddr4: a("169.254.1.2"), HostAddr4: a("192.0.2.2"), HostAddr6: a("2001:db8:1::2"),
		TapAddr4: a("192.0.2.1"), TapLL6: ll,
	}
	v6only := &NAT{HostAddr6: a("2001:db8:1::2"), TapLL6: ll} // -6: no IPv4 tap address
	for _, c := range []struct {
		n         *NAT
		src, want string
		ok        bool
	}{
		{nomap, "[2001:db8:1::2]:50700", "[" + ll.String() + "]:50700", true},
		{nomap, "192.0.2.2:50700", "169.254.1.2:50700", true}, // the alias first
		{nomap, "127.0.0.1:50700", "192.0.2.1:50700", true},   // --no-splice
		{nomap, "[::1]:50700", "[" + ll.String() + "]:50700", true},
		{nomap, "[2001:db8:1::7]:50700", "[2001:db8:1::7]:50700", true}, // another host: itself
		{v6only, "127.0.0.1:1", "", false},
		{&NAT{HostAddr4: a("192.0.2.2"), TapAddr4: a("192.0.2.1")}, "192.0.2.2:9", "192.0.2.1:9", true},
	} {
		got, ok := c.n.Inbound(ap(c.src))
		if ok != c.ok || (ok && got != ap(c.want)) {
			t.Errorf("Inbound(%s) = %s, %v; want %s, %v", c.src, got, ok, c.want, c.ok)
		}
	}
}

// TestNATString: the start-up log describes the mapping in words, not as
// a dump of the Go struct (with its atomics' insides).
func TestNATString(t *testing.T) {
	a := netip.MustParseAddr
	podman := &NAT{
		GuestAddr4: a("169.254.1.2"), HostAddr4: a("192.0.2.2"), HostAddr6: a("2001:db8::2"),
		DNSForward4: a("169.254.1.1"), DNSHost4: a("127.0.0.53"),
		TapAddr4: a("192.0.2.1"), TapLL6: a("fe80::1"),
	}
	want := "host loopback not mapped; 169.254.1.2 leads to the host's 192.0.2.2; DNS to 169.254.1.1 goes to 127.0.0.53; " +
		"host peers the guest cannot be shown as they are appear from 192.0.2.1 and fe80::1"
	if got := fmt.Sprintf("%+v", podman); got != want {
		t.Errorf("podman's:\n got %s\nwant %s", got, want)
	}
	plain := &NAT{HostLoopback4: a("192.0.2.1"), HostLoopback6: a("2001:db8::1"), HostAddr4: a("192.0.2.2")}
	if got, want := fmt.Sprintf("%+v", plain), "host loopback appears as 192.0.2.1 and 2001:db8::1"; got != want {
		t.Errorf("pasta's defaults:\n got %s\nwant %s", got, want)
	}
	plain.SetHostAddrs(a("192.0.2.7"), netip.Addr{})
	if got := fmt.Sprintf("%+v", plain); strings.ContainsAny(got, "{}&") {
		t.Errorf("after a move: %s", got)
	}
}

// TestNATInboundPolicy: a host-side peer in any loopback spelling is shown
// through the host-loopback mapping or not at all, and addresses the
// address policy refuses on the link are never shown.
func TestNATInboundPolicy(t *testing.T) {
	a := netip.MustParseAddr
	mapped := &NAT{HostLoopback4: a("192.0.2.1"), HostLoopback6: a("fd00::1")}
	none := &NAT{}
	for _, c := range []struct {
		n     *NAT
		src   string
		shown string // "" for not shown
	}{
		{mapped, "127.0.0.1", "192.0.2.1"},
		{mapped, "::ffff:127.0.0.1", "192.0.2.1"},
		{mapped, "127.1.2.3", "192.0.2.1"},
		{mapped, "::1", "fd00::1"},
		{mapped, "::127.0.0.1", "fd00::1"},
		{none, "127.0.0.1", ""},
		{none, "::ffff:127.0.0.1", ""},
		{none, "::1", ""},
		{none, "::127.0.0.1", ""},
		{mapped, "0.0.0.0", ""},
		{mapped, "::", ""},
		{mapped, "0.1.2.3", ""},
		{mapped, "::ffff:0.1.2.3", ""},
		{mapped, "::8.8.8.8", ""},
		{mapped, "::ffff:8.8.8.8", "8.8.8.8"}, // a dual-stack socket's IPv4 peer
		{mapped, "2001:db8::1", "2001:db8::1"},
	} {
		got, ok := c.n.Inbound(netip.AddrPortFrom(a(c.src), 80))
		if (c.shown == "") == ok || ok && got.Addr() != a(c.shown) {
			t.Errorf("Inbound(%s) = %v, %v; want %q", c.src, got, ok, c.shown)
		}
	}
}
