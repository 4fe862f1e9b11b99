package netcfg

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link/netns"
)

// Configure sets up the namespace nsFD for --config-net: loopback up, the
// tap's MAC, MTU and state, then the addresses and routes. Without -a/-g for
// a family it copies the template interface's addresses (IPv6 ones with
// "nodad", so they are usable at once) and routes; with them, it configures
// exactly what was given. Routes that cannot apply in the namespace are
// skipped and reported in the returned warnings.
func Configure(nsFD int, cfg *conf.Config, tapName string, host *Host) (warnings []string, err error) {
	h, err := Netlink(nsFD)
	if err != nil {
		return nil, fmt.Errorf("netlink in namespace: %w", err)
	}
	defer h.Close()
	if host == nil {
		host = &Host{}
	}

	lo, err := h.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("namespace loopback: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return nil, fmt.Errorf("bring up lo: %w", err)
	}
	tap, err := h.LinkByName(tapName)
	if err != nil {
		return nil, fmt.Errorf("tap %s: %w", tapName, err)
	}
	if cfg.NSMAC != nil {
		if err := h.LinkSetHardwareAddr(tap, net.HardwareAddr(cfg.NSMAC[:])); err != nil {
			return nil, fmt.Errorf("set MAC of %s: %w", tapName, err)
		}
	}
	if cfg.MTU > 0 {
		if err := h.LinkSetMTU(tap, cfg.MTU); err != nil {
			return nil, fmt.Errorf("set MTU %d on %s: %w", cfg.MTU, tapName, err)
		}
	}
	if err := h.LinkSetUp(tap); err != nil {
		return nil, fmt.Errorf("bring up %s: %w", tapName, err)
	}
	idx := tap.Attrs().Index

	c := configurer{h: h, idx: idx, tap: tap, name: tapName}
	if !cfg.IPv6Only {
		if err := c.family4(cfg, host); err != nil {
			return c.warnings, err
		}
	}
	if !cfg.IPv4Only {
		if err := c.family6(cfg, host); err != nil {
			return c.warnings, err
		}
	}
	c.gatewayNeighbours(cfg)
	return c.warnings, nil
}

// gatewayNeighbours makes the gateways' link-layer addresses permanent
// neighbour entries, so that the guest never has to resolve them. Its first
// datagrams to the gateway would otherwise wait in the neighbour's
// unresolved queue (unres_qlen_bytes, some 200 KiB with overheads, which is
// a few milliseconds of traffic at 10k datagrams/s) until our ARP or NDP
// answer arrives, and on a loaded machine the surplus was dropped without
// any counter the application sees. Every address on the link answers with
// our MAC anyway (dispatcher ARP/NDP), so the entry says nothing new.
func (c *configurer) gatewayNeighbours(cfg *conf.Config) {
	for _, gw := range []netip.Addr{cfg.Gateway4, cfg.Gateway6} {
		if !gw.IsValid() || (gw.Is4() && cfg.IPv6Only) || (gw.Is6() && cfg.IPv4Only) {
			continue
		}
		fam := unix.AF_INET
		if gw.Is6() {
			fam = unix.AF_INET6
		}
		n := &netlink.Neigh{
			LinkIndex: c.idx, Family: fam, State: netlink.NUD_PERMANENT,
			IP: net.IP(gw.AsSlice()), HardwareAddr: net.HardwareAddr(cfg.OurMAC[:]),
		}
		if err := c.h.NeighSet(n); err != nil {
			c.warn("neighbour entry for gateway %s: %v", gw, err)
		}
	}
}

type configurer struct {
	h        *netlink.Handle
	idx      int
	tap      netlink.Link
	name     string
	warnings []string
}

func (c *configurer) warn(f string, a ...any) {
	c.warnings = append(c.warnings, fmt.Sprintf(f, a...))
}

func (c *configurer) addAddr(p netip.Prefix, flags int) error {
	a := &netlink.Addr{IPNet: ipNet(p), Flags: flags}
	if err := c.h.AddrAdd(c.tap, a); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add address %s to %s: %w", p, c.name, err)
	}
	return nil
}

func (c *configurer) family4(cfg *conf.Config, host *Host) error {
	copyAll := !host.UserAddr4 && !cfg.NoCopyAddrs && len(host.Addrs4) > 0
	addrs := []netip.Prefix{cfg.Addr4}
	if copyAll {
		addrs = host.Addrs4
	}
	for _, p := range addrs {
		if p.IsValid() {
			if err := c.addAddr(p, 0); err != nil {
				return err
			}
		}
	}
	if !host.UserAddr4 && !host.UserGW4 && !cfg.NoCopyRoutes && len(host.Routes4) > 0 {
		return c.copyRoutes(host.Routes4, unix.AF_INET)
	}
	return c.defaultRoute(cfg.Gateway4)
}

func (c *configurer) family6(cfg *conf.Config, host *Host) error {
	copyAll := !host.UserAddr6 && !cfg.NoCopyAddrs && len(host.Addrs6) > 0
	var addrs []netip.Prefix
	switch {
	case copyAll:
		addrs = host.Addrs6
	case cfg.Addr6.IsValid():
		addrs = []netip.Prefix{netip.PrefixFrom(cfg.Addr6, 64)}
	}
	for _, p := range addrs {
		// No duplicate address detection: the address is the host's and
		// nobody else is on this link; DAD would only make podman read
		// back a tentative address.
		if err := c.addAddr(p, unix.IFA_F_NODAD); err != nil {
			return err
		}
	}
	if !host.UserAddr6 && !host.UserGW6 && !cfg.NoCopyRoutes && len(host.Routes6) > 0 {
		return c.copyRoutes(host.Routes6, unix.AF_INET6)
	}
	if !cfg.Gateway6.IsValid() {
		return nil
	}
	return c.defaultRoute(cfg.Gateway6)
}

// defaultRoute adds "default via gw dev tap", on-link if gw is outside every
// subnet of the tap (a -g that does not match -a, or an -a outside the host
// gateway's prefix), as pasta does: the gateway is gopasta, which answers on
// the link whatever the guest's prefix. The kernel says so with
// ENETUNREACH for IPv4 and EHOSTUNREACH for IPv6.
func (c *configurer) defaultRoute(gw netip.Addr) error {
	if !gw.IsValid() {
		return nil
	}
	fam, bits := unix.AF_INET, 32
	if gw.Is6() {
		fam, bits = unix.AF_INET6, 128
	}
	r := &netlink.Route{
		LinkIndex: c.idx,
		Dst:       &net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)},
		Gw:        net.IP(gw.AsSlice()),
		Family:    fam,
	}
	err := c.h.RouteAdd(r)
	if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) {
		r.Flags |= int(netlink.FLAG_ONLINK)
		err = c.h.RouteAdd(r)
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add default route via %s: %w", gw, err)
	}
	return nil
}

// copyRoutes recreates the template's routes on the tap. Routes the kernel
// made for the addresses (proto kernel) appear by themselves. Direct routes
// go first, since gateway routes may depend on them; a route that still
// fails is skipped with a warning, except the default route.
func (c *configurer) copyRoutes(routes []netlink.Route, family int) error {
	var direct, via []netlink.Route
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL || r.Type != unix.RTN_UNICAST {
			continue
		}
		nr := netlink.Route{
			LinkIndex: c.idx,
			Dst:       r.Dst,
			Gw:        r.Gw,
			Src:       r.Src,
			Scope:     r.Scope,
			Priority:  r.Priority,
			Protocol:  r.Protocol,
			Flags:     r.Flags & int(netlink.FLAG_ONLINK),
			MTU:       r.MTU,
			AdvMSS:    r.AdvMSS,
			Family:    family,
		}
		if nr.Dst == nil {
			bits := 32
			if family == unix.AF_INET6 {
				bits = 128
			}
			nr.Dst = &net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)}
		}
		if len(r.Gw) == 0 {
			direct = append(direct, nr)
		} else {
			via = append(via, nr)
		}
	}
	for _, r := range append(direct, via...) {
		err := c.h.RouteAdd(&r)
		if err != nil && errors.Is(err, unix.EINVAL) && r.Src != nil {
			// The preferred source is not ours in the namespace.
			r.Src = nil
			err = c.h.RouteAdd(&r)
		}
		if err == nil || errors.Is(err, unix.EEXIST) {
			continue
		}
		if isDefault(r) {
			return fmt.Errorf("copy default route via %s: %w", r.Gw, err)
		}
		c.warn("couldn't copy route %s: %v", routeString(r), err)
	}
	return nil
}

func routeString(r netlink.Route) string {
	s := "default"
	if r.Dst != nil && !isDefault(r) {
		s = r.Dst.String()
	}
	if len(r.Gw) > 0 {
		s += " via " + r.Gw.String()
	}
	return s
}

// SetPingGroupRange lets every group in the namespace use ICMP echo
// ("ping") sockets, as pasta does for namespaces it creates. Best effort:
// the caller decides whether a failure matters.
func SetPingGroupRange(nsFD int) error {
	// /proc/sys/net shows the namespace of the thread that opens it.
	return netns.Do(nsFD, func() error {
		const path = "/proc/sys/net/ipv4/ping_group_range"
		if os.WriteFile(path, []byte("0 2147483647"), 0) == nil {
			return nil
		}
		// In a user namespace only the mapped groups can be named.
		return os.WriteFile(path, []byte("0 0"), 0)
	})
}

// Netlink returns a netlink handle whose socket lives in the namespace
// nsFD, so that it can be used from any thread. (netlink.NewHandleAt does
// the same but switches its thread back without checking that it could.)
func Netlink(nsFD int) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := netns.Do(nsFD, func() (err error) {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	return h, err
}
