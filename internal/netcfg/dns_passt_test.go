package netcfg

import (
	"net/netip"
	"testing"

	"github.com/gopasta/gopasta/conf"
)

// passt mode with a loopback resolver offers the gateway, which forwards
// to it; pasta mode (podman passes --dns-forward) and user choices are left
// alone.
func TestPasstLoopbackResolver(t *testing.T) {
	gw4, gw6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("fe80::1")
	mk := func(mode conf.Mode) *conf.Config {
		c := conf.Defaults(mode)
		c.Gateway4, c.Gateway6 = gw4, gw6
		return c
	}
	rc := resolvConf(t, "nameserver 127.0.0.53\nnameserver ::1\n")
	warn := func(string, ...any) {}

	c := mk(conf.ModePasst)
	resolveDNS(c, rc, warn)
	if c.DNSForward4 != gw4 || c.DNSForward6 != gw6 {
		t.Errorf("passt: dns-forward %v %v, want the gateways", c.DNSForward4, c.DNSForward6)
	}
	if len(c.DNS) != 2 || c.DNS[0] != gw4 || c.DNS[1] != gw6 {
		t.Errorf("passt: DNS offered %v, want the gateways", c.DNS)
	}
	n := NATFor(c)
	if got := n.Outbound(netip.MustParseAddrPort("192.0.2.1:53")); got != netip.MustParseAddrPort("127.0.0.53:53") {
		t.Errorf("gateway:53 goes to %v, want the host resolver", got)
	}
	if got := n.Outbound(netip.MustParseAddrPort("192.0.2.1:80")); got != netip.MustParseAddrPort("127.0.0.1:80") {
		t.Errorf("gateway:80 goes to %v, want host loopback", got)
	}

	c = mk(conf.ModePasta)
	resolveDNS(c, rc, warn)
	if c.DNSForward4.IsValid() || len(c.DNS) != 0 {
		t.Errorf("pasta: dns-forward %v DNS %v, want none", c.DNSForward4, c.DNS)
	}

	c = mk(conf.ModePasst)
	c.NoMapGW = true
	resolveDNS(c, rc, warn)
	if c.DNSForward4.IsValid() {
		t.Errorf("--no-map-gw: dns-forward %v", c.DNSForward4)
	}

	c = mk(conf.ModePasst)
	c.DNSForward4 = netip.MustParseAddr("169.254.1.1")
	resolveDNS(c, resolvConf(t, "nameserver 127.0.0.53\n"), warn)
	if c.DNSForward4 != netip.MustParseAddr("169.254.1.1") || len(c.DNS) != 1 || c.DNS[0] != c.DNSForward4 {
		t.Errorf("user dns-forward: %v, DNS %v", c.DNSForward4, c.DNS)
	}

	c = mk(conf.ModePasst)
	resolveDNS(c, resolvConf(t, "nameserver 10.0.0.53\nnameserver 127.0.0.53\n"), warn)
	if c.DNSForward4.IsValid() || len(c.DNS) != 1 {
		t.Errorf("reachable resolver: dns-forward %v DNS %v", c.DNSForward4, c.DNS)
	}
}
