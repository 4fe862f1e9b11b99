// Package netcfg derives gopasta's addresses from the host and, with
// --config-net, configures the namespace's interface to match.
//
// # Theory of operation
//
// pasta gives the namespace the host's own addresses: the guest believes it
// is the host, so that servers it talks to see the same address whether the
// connection came from the host or from the guest (it did come from a host
// socket). The "template" interface is the one the host's default route
// leaves through (or -i); its addresses become the guest's, its gateway the
// guest's gateway, its name the tap's name. IPv4 and IPv6 are looked up
// separately because they may leave through different interfaces.
//
// A host without a default route is not an error (a laptop offline, a CI
// runner in an isolated namespace): gopasta then runs in "local mode" with
// link-local addresses, as pasta does, and says so in a warning.
//
// Resolve runs in the host's network namespace, where the daemon's sockets
// are; Configure switches into the target namespace for its netlink socket.
// All of it happens before the daemon reports readiness, because podman
// reads the namespace's addresses back the moment the front process exits.
package netcfg

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors/nat"
	"github.com/gopasta/gopasta/conf"
)

// Local-mode addresses, used when the host has no default route.
var (
	LocalAddr4    = netip.MustParsePrefix("169.254.2.1/16")
	LocalGateway4 = netip.MustParseAddr("169.254.2.2")
	LocalGateway6 = netip.MustParseAddr("fe80::1")
)

// DefaultMTU is the tap MTU unless -m says otherwise: as big as a tap takes,
// so that bulk transfers cost few frames.
const DefaultMTU = 65520

// Host is what Resolve learned about the host, for Configure.
type Host struct {
	// If4 and If6 are the template interfaces ("" if none).
	If4, If6 string
	// Addrs4 and Addrs6 are the template's addresses (IPv6: global only).
	Addrs4, Addrs6 []netip.Prefix
	// Routes4 and Routes6 are the template's main-table routes.
	Routes4, Routes6 []netlink.Route
	// UserAddr4 etc. say which of cfg's addresses came from the command
	// line: then only those are configured, nothing is copied.
	UserAddr4, UserAddr6, UserGW4, UserGW6 bool
	// UserDNSHost says that --dns-host was given: the resolver is not
	// the host's resolv.conf's, and is not followed.
	UserDNSHost bool
	// NAT is the address mapping for the actors.
	NAT *nat.NAT
	// Warnings are for the user: local mode, no IPv6, no resolver.
	Warnings []string
}

// Resolve fills the fields of cfg that default to the host's configuration
// (addresses, gateways, tap name, MTU, DNS) and returns what Configure
// needs. Fields already set are kept. It only fails if the host cannot be
// read at all.
func Resolve(cfg *conf.Config) (*Host, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	return resolve(h, cfg, ResolvConf, ipv6Enabled())
}

// ResolvConf is the host's resolver configuration.
const ResolvConf = "/etc/resolv.conf"

// ipv6Enabled reports whether the kernel has IPv6 and it is not disabled.
func ipv6Enabled() bool {
	if _, err := os.Stat("/proc/net/if_inet6"); err != nil {
		return false
	}
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	return err != nil || strings.TrimSpace(string(b)) != "1"
}

func resolve(h *netlink.Handle, cfg *conf.Config, resolvConf string, have6 bool) (*Host, error) {
	host := &Host{
		UserAddr4: cfg.Addr4.IsValid(),
		UserAddr6: cfg.Addr6.IsValid(),
		UserGW4:   cfg.Gateway4.IsValid(),
		UserGW6:   cfg.Gateway6.IsValid(),

		UserDNSHost: len(cfg.DNSHost) > 0,
	}
	warn := func(f string, a ...any) { host.Warnings = append(host.Warnings, fmt.Sprintf(f, a...)) }

	if cfg.MTU == 0 && !cfg.MTUSet {
		cfg.MTU = DefaultMTU
	}
	if !have6 {
		if cfg.IPv6Only {
			return nil, errors.New("IPv6 only requested, but IPv6 is not available on this host")
		}
		if !cfg.IPv4Only {
			warn("IPv6 is not available on this host, using IPv4 only")
		}
		cfg.IPv4Only = true
	}

	if !cfg.IPv6Only {
		ifname := firstNonEmpty(cfg.Interface, cfg.OutboundIf4)
		t, err := template(h, unix.AF_INET, ifname)
		if err != nil {
			return nil, err
		}
		host.If4, host.Routes4 = t.name, t.routes
		for _, a := range t.addrs {
			if a.Addr().Is4() {
				host.Addrs4 = append(host.Addrs4, a)
			}
		}
		if !cfg.Addr4.IsValid() && len(host.Addrs4) > 0 {
			cfg.Addr4 = host.Addrs4[0]
		}
		if !cfg.Gateway4.IsValid() {
			cfg.Gateway4 = t.gw
		}
		switch {
		case !cfg.Addr4.IsValid() && !cfg.Gateway4.IsValid():
			warn("no IPv4 default route on the host, using local mode: %s via %s", LocalAddr4, LocalGateway4)
			cfg.Addr4, cfg.Gateway4 = LocalAddr4, LocalGateway4
			host.If4, host.Addrs4, host.Routes4 = "", nil, nil
		case !cfg.Addr4.IsValid():
			warn("no IPv4 address on %s, using %s", host.If4, LocalAddr4)
			cfg.Addr4 = LocalAddr4
		case !cfg.Gateway4.IsValid():
			warn("no IPv4 gateway on the host, using %s", LocalGateway4)
			cfg.Gateway4 = LocalGateway4
		}
		if cfg.Addr4.Bits() <= 0 {
			cfg.Addr4 = netip.PrefixFrom(cfg.Addr4.Addr(), prefixFor(cfg.Addr4.Addr(), host.Addrs4))
		}
	}

	if !cfg.IPv4Only {
		ifname := firstNonEmpty(cfg.Interface, cfg.OutboundIf6)
		t, err := template(h, unix.AF_INET6, ifname)
		if err != nil {
			return nil, err
		}
		host.If6, host.Routes6 = t.name, t.routes
		for _, a := range t.addrs {
			if a.Addr().Is6() && a.Addr().IsGlobalUnicast() && !a.Addr().IsLinkLocalUnicast() {
				host.Addrs6 = append(host.Addrs6, a)
			}
		}
		if !cfg.Addr6.IsValid() && len(host.Addrs6) > 0 {
			cfg.Addr6 = host.Addrs6[0].Addr()
		}
		if !cfg.Gateway6.IsValid() {
			cfg.Gateway6 = t.gw
		}
		if !cfg.Gateway6.IsValid() {
			if host.If6 == "" && !cfg.IPv6Only {
				warn("no IPv6 default route on the host, IPv6 link-local only (gateway %s)", LocalGateway6)
			}
			cfg.Gateway6 = LocalGateway6
			if host.If6 == "" {
				host.Addrs6, host.Routes6 = nil, nil
			}
		}
	}

	if cfg.NSIfname == "" {
		cfg.NSIfname = firstNonEmpty(host.If4, host.If6, "tap0")
	}

	resolveDNS(cfg, resolvConf, warn)
	host.NAT = NATFor(cfg)
	return host, nil
}

// prefixFor returns the prefix length for a user-given IPv4 address without
// one: the template's, if the address is in one of its subnets, else the
// address class's, as pasta does.
func prefixFor(a netip.Addr, tmpl []netip.Prefix) int {
	for _, p := range tmpl {
		if p.Masked().Contains(a) {
			return p.Bits()
		}
	}
	switch b := a.As4()[0]; {
	case b < 128:
		return 8
	case b < 192:
		return 16
	default:
		return 24
	}
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

type tmpl struct {
	name   string
	addrs  []netip.Prefix
	gw     netip.Addr
	routes []netlink.Route
}

// template finds the template interface of a family: ifname if given, else
// the interface of the default route with the lowest metric.
func template(h *netlink.Handle, family int, ifname string) (tmpl, error) {
	var t tmpl
	all, err := h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return t, fmt.Errorf("read host routes: %w", err)
	}
	var link netlink.Link
	if ifname != "" {
		link, err = h.LinkByName(ifname)
		if err != nil {
			return t, fmt.Errorf("interface %s: %w", ifname, err)
		}
	}
	best := -1
	for i, r := range all {
		if !isDefault(r) {
			continue
		}
		idx, gw := r.LinkIndex, r.Gw
		if len(r.MultiPath) > 0 {
			idx, gw = r.MultiPath[0].LinkIndex, r.MultiPath[0].Gw
		}
		if link != nil && idx != link.Attrs().Index {
			continue
		}
		if best >= 0 && r.Priority >= all[best].Priority {
			continue
		}
		best = i
		if link == nil || link.Attrs().Index != idx {
			if link, err = h.LinkByIndex(idx); err != nil {
				return t, fmt.Errorf("default route interface %d: %w", idx, err)
			}
		}
		t.gw = netip.Addr{}
		if a, ok := netip.AddrFromSlice(gw); ok {
			t.gw = a.Unmap()
		}
	}
	if link == nil {
		return t, nil
	}
	t.name = link.Attrs().Name
	addrs, err := h.AddrList(link, family)
	if err != nil {
		return t, fmt.Errorf("addresses of %s: %w", t.name, err)
	}
	for _, a := range addrs {
		if a.IPNet == nil || a.Scope != int(netlink.SCOPE_UNIVERSE) {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		t.addrs = append(t.addrs, netip.PrefixFrom(ip.Unmap(), ones))
	}
	for _, r := range all {
		if r.LinkIndex == link.Attrs().Index && len(r.MultiPath) == 0 {
			t.routes = append(t.routes, r)
		}
	}
	return t, nil
}

func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0 && r.Dst.IP.IsUnspecified()
}

// NATFor computes the actors' address mapping from a resolved cfg.
func NATFor(cfg *conf.Config) *nat.NAT {
	n := &nat.NAT{}
	if !cfg.MapHostLoopbackNone {
		n.HostLoopback4, n.HostLoopback6 = cfg.MapHostLoopback4, cfg.MapHostLoopback6
		if !cfg.NoMapGW {
			if !n.HostLoopback4.IsValid() {
				n.HostLoopback4 = cfg.Gateway4
			}
			if !n.HostLoopback6.IsValid() {
				n.HostLoopback6 = cfg.Gateway6
			}
		}
	}
	if !cfg.MapGuestAddrNone {
		n.GuestAddr4, n.GuestAddr6 = cfg.MapGuestAddr4, cfg.MapGuestAddr6
	}
	// The guest's address is the host's own: the alias leads there.
	if cfg.Addr4.IsValid() {
		n.HostAddr4 = cfg.Addr4.Addr()
	}
	n.HostAddr6 = cfg.Addr6
	n.DNSForward4, n.DNSForward6 = cfg.DNSForward4, cfg.DNSForward6
	if !cfg.IPv6Only {
		n.TapAddr4 = cfg.Gateway4
	}
	if !cfg.IPv4Only {
		n.TapLL6 = nat.TapLinkLocal6(cfg.Gateway6, cfg.OurMAC)
	}
	for _, a := range cfg.DNSHost {
		switch {
		case a.Is4() && !n.DNSHost4.IsValid():
			n.DNSHost4 = a
		case a.Is6() && !n.DNSHost6.IsValid():
			n.DNSHost6 = a
		}
	}
	return n
}

// ipNet converts a prefix to the netlink form.
func ipNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}
