package integration

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

// The guest configures itself from gopasta's link services when nobody
// copies the host's configuration into it: a DHCPv4 lease, and an IPv6
// address and default route from router advertisements (SLAAC) and DHCPv6.

func TestDHCPv4Lease(t *testing.T) {
	needTool(t, "dhclient")
	gp := LaunchGopasta(t, "-H", "vm1", "--fqdn", "vm1.example.org", "-t", "none", "-u", "none", "-T", "none", "-U", "none")
	g := gp.Guest
	g.Exec(t, "ip", "link", "set", HostIf, "up")
	// dhclient -1: one try, exit non-zero if no lease. -sf /bin/true would
	// skip configuring; we want the address configured, so keep the script.
	dir := t.TempDir()
	out, err := g.Try("timeout", "20", "dhclient", "-4", "-1", "-v", "-pf", dir+"/pid", "-lf", dir+"/leases", HostIf)
	t.Cleanup(func() { _, _ = g.Try("dhclient", "-x", "-pf", dir+"/pid") })
	if err != nil {
		t.Fatalf("dhclient: %v\n%s", err, out)
	}
	if !strings.Contains(out, "DHCPOFFER of "+HostAddr4) || !strings.Contains(out, "DHCPACK of "+HostAddr4) {
		t.Fatalf("no offer/ack of %s:\n%s", HostAddr4, out)
	}
	leases := readFile(t, dir+"/leases")
	for _, want := range []string{
		"fixed-address " + HostAddr4 + ";",
		"option subnet-mask 255.255.255.0;",
		"option routers " + HostGW4 + ";",
		"option interface-mtu 65520;",
		"option host-name \"vm1\";",
		"option fqdn.fqdn \"vm1.example.org\";",
	} {
		if !strings.Contains(leases, want) {
			t.Errorf("lease lacks %q:\n%s", want, leases)
		}
	}
	addrs := g.Exec(t, "ip", "-4", "-o", "addr", "show", "dev", HostIf)
	if !strings.Contains(addrs, HostAddr4+"/24") {
		t.Errorf("address not configured: %s", addrs)
	}
}

func TestIPv6FromRouterAdvertisement(t *testing.T) {
	// --config-net turns RAs off (pasta does the same: it configures the
	// routes itself), so run without it.
	// -m 9000 is advertised in the RA's MTU option; the link itself is
	// set larger by hand, as the kernel ignores an RA MTU above the link's.
	gp := LaunchGopasta(t, "-m", "9000", "-t", "none", "-u", "none", "-T", "none", "-U", "none")
	g := gp.Guest
	g.Exec(t, "sysctl", "-qw", "net.ipv6.conf."+HostIf+".accept_ra=2", "net.ipv6.conf."+HostIf+".accept_dad=0")
	g.Exec(t, "ip", "link", "set", HostIf, "mtu", "65520", "up")
	var route string
	ok := Eventually(10*time.Second, func() bool {
		out, _ := g.Try("ip", "-6", "-j", "route", "show", "default")
		var rs []struct {
			Gateway string `json:"gateway"`
			Dev     string `json:"dev"`
			Proto   string `json:"protocol"`
		}
		if json.Unmarshal([]byte(out), &rs) != nil || len(rs) == 0 {
			return false
		}
		route = out
		return rs[0].Dev == HostIf && strings.HasPrefix(rs[0].Gateway, "fe80::") && rs[0].Proto == "ra"
	})
	if !ok {
		t.Fatalf("no default route from an RA; routes: %s\n%s", route, g.Exec(t, "ip", "-6", "route"))
	}
	// SLAAC: an autoconfigured address in the host's /64.
	ok = Eventually(5*time.Second, func() bool {
		out, _ := g.Try("ip", "-6", "-o", "addr", "show", "dev", HostIf, "scope", "global")
		return strings.Contains(out, "2001:db8:1:0:")
	})
	if !ok {
		t.Errorf("no SLAAC address in 2001:db8:1::/64: %s", g.Exec(t, "ip", "-6", "addr"))
	}
	// The MTU option was applied.
	if mtu := strings.TrimSpace(g.Exec(t, "cat", "/proc/sys/net/ipv6/conf/"+HostIf+"/mtu")); mtu != "9000" {
		t.Errorf("IPv6 MTU from RA = %s, want 9000", mtu)
	}
}

func TestDHCPv6Lease(t *testing.T) {
	needTool(t, "dhclient")
	gp := LaunchGopasta(t, "--fqdn", "vm1.example.org", "-t", "none", "-u", "none", "-T", "none", "-U", "none")
	g := gp.Guest
	g.Exec(t, "sysctl", "-qw", "net.ipv6.conf."+HostIf+".accept_dad=0")
	g.Exec(t, "ip", "link", "set", HostIf, "up")
	// dhclient -6 needs a usable link-local address first.
	Eventually(3*time.Second, func() bool {
		out, _ := g.Try("ip", "-6", "-o", "addr", "show", "dev", HostIf, "scope", "link")
		return strings.Contains(out, "fe80::") && !strings.Contains(out, "tentative")
	})
	dir := t.TempDir()
	out, err := g.Try("timeout", "20", "dhclient", "-6", "-1", "-v", "-pf", dir+"/pid", "-lf", dir+"/leases", HostIf)
	t.Cleanup(func() { _, _ = g.Try("dhclient", "-6", "-x", "-pf", dir+"/pid") })
	if err != nil {
		t.Fatalf("dhclient -6: %v\n%s", err, out)
	}
	leases := readFile(t, dir+"/leases")
	if !strings.Contains(leases, "iaaddr "+HostAddr6) {
		t.Fatalf("lease lacks %s:\n%s\n%s", HostAddr6, leases, out)
	}
	if !strings.Contains(leases, `option fqdn.fqdn "vm1.example.org";`) {
		t.Errorf("lease lacks the FQDN:\n%s", leases)
	}
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
