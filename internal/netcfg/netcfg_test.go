package netcfg

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link/netns"
)

// nsHandle returns a netlink handle in a new, empty network namespace.
func nsHandle(t *testing.T) (*netlink.Handle, int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	fd, err := netns.NewUnshared()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	h, err := Netlink(fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	lo, _ := h.LinkByName("lo")
	must(t, h.LinkSetUp(lo))
	return h, fd
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func addLink(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	// A veth pair with both ends here: the machine may lack the dummy
	// driver, and the peer being up gives the link a carrier.
	peer := name + "p"
	must(t, h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}))
	l, err := h.LinkByName(name)
	must(t, err)
	p, err := h.LinkByName(peer)
	must(t, err)
	must(t, h.LinkSetUp(p))
	must(t, h.LinkSetUp(l))
	return l
}

func addr(t *testing.T, h *netlink.Handle, l netlink.Link, p string) {
	t.Helper()
	must(t, h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix(p)), Flags: unix.IFA_F_NODAD}))
}

func route(t *testing.T, h *netlink.Handle, l netlink.Link, dst, gw string) {
	t.Helper()
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(netip.MustParsePrefix(dst)), Gw: net.IP(netip.MustParseAddr(gw).AsSlice())}
	must(t, h.RouteAdd(r))
}

// hostLike builds the integration harness's host: up0 with
// 198.51.100.2/24 and 2001:db8:1::2/64, default routes via .1 and ::1, and
// one more IPv4 route.
func hostLike(t *testing.T) *netlink.Handle {
	h, _ := nsHandle(t)
	l := addLink(t, h, "up0")
	addr(t, h, l, "198.51.100.2/24")
	addr(t, h, l, "198.51.100.3/24")
	addr(t, h, l, "2001:db8:1::2/64")
	route(t, h, l, "0.0.0.0/0", "198.51.100.1")
	route(t, h, l, "203.0.113.0/24", "198.51.100.254")
	route(t, h, l, "::/0", "2001:db8:1::1")
	other := addLink(t, h, "other0")
	addr(t, h, other, "192.0.2.2/24")
	return h
}

func resolvConf(t *testing.T, text string) string {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	must(t, os.WriteFile(p, []byte(text), 0o644))
	return p
}

func TestResolveFromTemplate(t *testing.T) {
	h := hostLike(t)
	cfg := &conf.Config{DNSForward4: netip.MustParseAddr("169.254.1.1"), MapGuestAddr4: netip.MustParseAddr("169.254.1.2"), NoMapGW: true}
	host, err := resolve(h, cfg, resolvConf(t, "# x\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver 2001:db8::53\nsearch example.org\n"), true)
	must(t, err)
	if len(host.Warnings) != 0 {
		t.Errorf("warnings: %q", host.Warnings)
	}
	check := func(what string, got, want any) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	check("Addr4", cfg.Addr4, netip.MustParsePrefix("198.51.100.2/24"))
	check("Gateway4", cfg.Gateway4, netip.MustParseAddr("198.51.100.1"))
	check("Addr6", cfg.Addr6, netip.MustParseAddr("2001:db8:1::2"))
	check("Gateway6", cfg.Gateway6, netip.MustParseAddr("2001:db8:1::1"))
	check("NSIfname", cfg.NSIfname, "up0")
	check("MTU", cfg.MTU, DefaultMTU)
	check("If4", host.If4, "up0")
	check("If6", host.If6, "up0")
	check("Addrs4", len(host.Addrs4), 2)
	check("Addrs6", len(host.Addrs6), 1)
	if !slices.Equal(cfg.DNSHost, []netip.Addr{netip.MustParseAddr("127.0.0.53"), netip.MustParseAddr("2001:db8::53")}) {
		t.Errorf("DNSHost = %v", cfg.DNSHost)
	}
	if !slices.Equal(cfg.DNS, []netip.Addr{netip.MustParseAddr("2001:db8::53")}) {
		t.Errorf("DNS = %v", cfg.DNS)
	}
	check("Search", strings.Join(cfg.Search, ","), "example.org")
	n := host.NAT
	check("NAT.HostLoopback4 (--no-map-gw)", n.HostLoopback4, netip.Addr{})
	check("NAT.GuestAddr4", n.GuestAddr4, netip.MustParseAddr("169.254.1.2"))
	check("NAT.HostAddr4", n.HostAddr4, netip.MustParseAddr("198.51.100.2"))
	check("NAT.DNSForward4", n.DNSForward4, netip.MustParseAddr("169.254.1.1"))
	check("NAT.DNSHost4", n.DNSHost4, netip.MustParseAddr("127.0.0.53"))
}

func TestResolveMapGateway(t *testing.T) {
	h := hostLike(t)
	cfg := &conf.Config{}
	host, err := resolve(h, cfg, resolvConf(t, "nameserver 192.0.2.53\n"), true)
	must(t, err)
	if host.NAT.HostLoopback4 != cfg.Gateway4 || host.NAT.HostLoopback6 != cfg.Gateway6 {
		t.Errorf("gateway not mapped to host loopback: %+v", host.NAT)
	}
	if !slices.Equal(cfg.DNS, []netip.Addr{netip.MustParseAddr("192.0.2.53")}) {
		t.Errorf("DNS = %v", cfg.DNS)
	}
}

func TestResolveInterfaceOption(t *testing.T) {
	h := hostLike(t)
	cfg := &conf.Config{Interface: "other0", IPv4Only: true}
	host, err := resolve(h, cfg, resolvConf(t, ""), true)
	must(t, err)
	if cfg.Addr4 != netip.MustParsePrefix("192.0.2.2/24") || cfg.NSIfname != "other0" {
		t.Errorf("-i other0: Addr4 %v NSIfname %q", cfg.Addr4, cfg.NSIfname)
	}
	// other0 has no default route: a gateway is still needed.
	if cfg.Gateway4 != LocalGateway4 || len(host.Warnings) == 0 {
		t.Errorf("Gateway4 %v, warnings %q", cfg.Gateway4, host.Warnings)
	}
}

func TestResolveLocalMode(t *testing.T) {
	h, _ := nsHandle(t)
	cfg := &conf.Config{}
	host, err := resolve(h, cfg, resolvConf(t, ""), true)
	must(t, err)
	if cfg.Addr4 != LocalAddr4 || cfg.Gateway4 != LocalGateway4 || cfg.Gateway6 != LocalGateway6 || cfg.Addr6.IsValid() {
		t.Errorf("local mode: %v via %v, %v via %v", cfg.Addr4, cfg.Gateway4, cfg.Addr6, cfg.Gateway6)
	}
	if cfg.NSIfname != "tap0" {
		t.Errorf("NSIfname %q", cfg.NSIfname)
	}
	joined := strings.Join(host.Warnings, "\n")
	if !strings.Contains(joined, "local mode") || !strings.Contains(joined, "nameserver") {
		t.Errorf("warnings %q", host.Warnings)
	}
}

func TestResolveNoIPv6(t *testing.T) {
	h := hostLike(t)
	cfg := &conf.Config{}
	host, err := resolve(h, cfg, resolvConf(t, "nameserver 192.0.2.53\n"), false)
	must(t, err)
	if !cfg.IPv4Only || cfg.Addr6.IsValid() || len(host.Warnings) != 1 {
		t.Errorf("IPv4Only %v Addr6 %v warnings %q", cfg.IPv4Only, cfg.Addr6, host.Warnings)
	}
	if _, err := resolve(h, &conf.Config{IPv6Only: true}, "", false); err == nil {
		t.Error("-6 without IPv6: no error")
	}
}

func TestResolveKeepsUserValues(t *testing.T) {
	h := hostLike(t)
	cfg := &conf.Config{Addr4: netip.PrefixFrom(netip.MustParseAddr("10.0.2.15"), 0), Gateway4: netip.MustParseAddr("10.0.2.2"), NSIfname: "eth0", MTU: 1500, MTUSet: true}
	host, err := resolve(h, cfg, resolvConf(t, ""), true)
	must(t, err)
	if cfg.Addr4 != netip.MustParsePrefix("10.0.2.15/8") || cfg.Gateway4 != netip.MustParseAddr("10.0.2.2") || cfg.NSIfname != "eth0" || cfg.MTU != 1500 {
		t.Errorf("user values changed: %+v", cfg)
	}
	if !host.UserAddr4 || !host.UserGW4 || host.UserAddr6 {
		t.Errorf("user flags %+v", host)
	}
}

type nsState struct {
	addrs  []string
	routes []string
	mtu    int
	mac    string
	up     bool
	loUp   bool
}

func readNS(t *testing.T, h *netlink.Handle, name string) nsState {
	t.Helper()
	l, err := h.LinkByName(name)
	must(t, err)
	lo, _ := h.LinkByName("lo")
	s := nsState{mtu: l.Attrs().MTU, mac: l.Attrs().HardwareAddr.String(), up: l.Attrs().Flags&net.FlagUp != 0, loUp: lo.Attrs().Flags&net.FlagUp != 0}
	addrs, _ := h.AddrList(l, netlink.FAMILY_ALL)
	for _, a := range addrs {
		if a.Scope == int(netlink.SCOPE_UNIVERSE) {
			f := a.IPNet.String()
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				f += " tentative"
			}
			s.addrs = append(s.addrs, f)
		}
	}
	routes, _ := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	for _, r := range routes {
		if r.Protocol != unix.RTPROT_KERNEL {
			s.routes = append(s.routes, routeString(r))
		}
	}
	slices.Sort(s.addrs)
	slices.Sort(s.routes)
	return s
}

func TestConfigureCopiesTemplate(t *testing.T) {
	hh := hostLike(t)
	cfg := &conf.Config{NSMAC: &[6]byte{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}}
	host, err := resolve(hh, cfg, resolvConf(t, ""), true)
	must(t, err)
	gh, gfd := nsHandle(t)
	addLink(t, gh, "up0")
	l, _ := gh.LinkByName("up0")
	must(t, gh.LinkSetDown(l))
	lo, _ := gh.LinkByName("lo")
	must(t, gh.LinkSetDown(lo))
	warns, err := Configure(gfd, cfg, "up0", host)
	must(t, err)
	if len(warns) != 0 {
		t.Errorf("warnings %q", warns)
	}
	s := readNS(t, gh, "up0")
	want := nsState{
		addrs:  []string{"198.51.100.2/24", "198.51.100.3/24", "2001:db8:1::2/64"},
		routes: []string{"203.0.113.0/24 via 198.51.100.254", "default via 198.51.100.1", "default via 2001:db8:1::1"},
		mtu:    DefaultMTU, mac: "02:11:22:33:44:55", up: true, loUp: true,
	}
	if !slices.Equal(s.addrs, want.addrs) || !slices.Equal(s.routes, want.routes) || s.mtu != want.mtu || s.mac != want.mac || !s.up || !s.loUp {
		t.Errorf("namespace state\n got %+v\nwant %+v", s, want)
	}
}

func TestConfigureUserAddresses(t *testing.T) {
	hh := hostLike(t)
	cfg := &conf.Config{
		Addr4: netip.MustParsePrefix("10.0.2.15/24"), Gateway4: netip.MustParseAddr("10.0.2.2"),
		Addr6: netip.MustParseAddr("fd00::15"), Gateway6: netip.MustParseAddr("fd00::2"),
		MTU: 1500, MTUSet: true,
	}
	host, err := resolve(hh, cfg, resolvConf(t, ""), true)
	must(t, err)
	gh, gfd := nsHandle(t)
	addLink(t, gh, "eth0")
	_, err = Configure(gfd, cfg, "eth0", host)
	must(t, err)
	s := readNS(t, gh, "eth0")
	if !slices.Equal(s.addrs, []string{"10.0.2.15/24", "fd00::15/64"}) || !slices.Equal(s.routes, []string{"default via 10.0.2.2", "default via fd00::2"}) || s.mtu != 1500 {
		t.Errorf("got %+v", s)
	}
}

func TestConfigureOnLinkGateway(t *testing.T) {
	gh, gfd := nsHandle(t)
	addLink(t, gh, "eth0")
	cfg := &conf.Config{Addr4: netip.MustParsePrefix("10.0.2.15/24"), Gateway4: netip.MustParseAddr("192.0.2.1"), IPv4Only: true}
	_, err := Configure(gfd, cfg, "eth0", &Host{UserAddr4: true, UserGW4: true})
	must(t, err)
	if s := readNS(t, gh, "eth0"); !slices.Equal(s.routes, []string{"default via 192.0.2.1"}) {
		t.Errorf("routes %q", s.routes)
	}
}

func TestReadResolvConf(t *testing.T) {
	p := resolvConf(t, "nameserver 1.1.1.1\n; comment\nnameserver bogus\nnameserver ::ffff:9.9.9.9\ndomain a.example\nsearch b.example c.example\nnameserver\n")
	s, search := readResolvConf(p)
	if !slices.Equal(s, []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("9.9.9.9")}) || strings.Join(search, " ") != "b.example c.example" {
		t.Errorf("servers %v search %v", s, search)
	}
	if s, _ := readResolvConf("/nonexistent"); s != nil {
		t.Error("missing file gave servers")
	}
}
