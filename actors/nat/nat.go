package nat

import (
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/gopasta/gopasta/link/wire"
)

// NAT is the fixed address mapping between what the guest sees and what the
// host sockets use. gopasta does not translate addresses in general (the
// guest shares the host's addresses); these few special addresses are the
// exception, exactly as pasta has them:
//
//   - the --map-host-loopback address (the gateway by default, none with
//     --no-map-gw) stands for the host's loopback: guest connections to it
//     go to 127.0.0.1 / ::1, and host loopback clients appear from it;
//   - the --map-guest-addr address stands for the host's own address (the
//     one the guest was given), which is how podman's
//     host.containers.internal reaches services bound to it. When the
//     host's address changes (DHCP, a VPN coming up) the guest keeps the
//     old one, but the alias follows the host (SetHostAddrs, from
//     netcfg.FollowHostAddrs): pasta keeps leading it to the address that
//     is gone, and the host becomes unreachable from the container;
//   - a host-side peer the guest cannot be shown as itself (the host's own
//     address without an alias or a host-loopback address, as with
//     podman's --no-map-gw; loopback without a host-loopback address)
//     appears from gopasta's own address on the tap, as in pasta: the
//     gateway for IPv4 (TapAddr4), our link-local address for IPv6
//     (TapLL6), which the guest reaches on the link whatever its routes;
//   - the --dns-forward address, for ports 53 and 853, stands for the host's
//     resolver (--dns-host). Unless --dns-host was given, that is the first
//     nameserver of the host's resolv.conf, and it follows the file
//     (SetDNSHosts, from netcfg.FollowResolvConf): a laptop that joins
//     another network gets another resolver, and pasta would go on
//     forwarding every container's queries to the one that is gone.
type NAT struct {
	HostLoopback4, HostLoopback6 netip.Addr // guest-side address of host loopback
	GuestAddr4, GuestAddr6       netip.Addr // guest-side alias of the host's address
	HostAddr4, HostAddr6         netip.Addr // the host's address that alias means, at start: the guest's
	DNSForward4, DNSForward6     netip.Addr
	DNSHost4, DNSHost6           netip.Addr
	// TapAddr4 and TapLL6 are gopasta's own addresses on the tap: the
	// guest's IPv4 gateway, and the link-local address router
	// advertisements come from (TapLinkLocal6). Invalid: none.
	TapAddr4, TapLL6 netip.Addr

	// moved is the host's address now, once it is not HostAddr4/6
	// any more. Written by SetHostAddrs, read by every new flow; an
	// atomic pointer so that reading costs no lock.
	moved atomic.Pointer[[2]netip.Addr]

	// dns is the host's resolver now and the one before, once it is not
	// DNSHost4/6 any more. Written by SetDNSHosts, read by every new flow
	// and every datagram from a resolver.
	dns atomic.Pointer[dnsHosts]
}

// dnsHosts is where the --dns-forward addresses lead (cur), and where they
// led before the last change (prev): replies to queries sent before it
// still come from there, and must still appear from the forward address.
type dnsHosts struct{ cur, prev [2]netip.Addr }

// SetDNSHosts makes the --dns-forward addresses lead to v4 and v6 from now
// on (flows already open keep their sockets). It has one caller at a
// time: the resolv.conf follower.
func (n *NAT) SetDNSHosts(v4, v6 netip.Addr) {
	o4, o6 := n.DNSHosts()
	n.dns.Store(&dnsHosts{cur: [2]netip.Addr{v4, v6}, prev: [2]netip.Addr{o4, o6}})
}

// DNSHosts returns the host resolvers the --dns-forward addresses lead to
// now.
func (n *NAT) DNSHosts() (v4, v6 netip.Addr) {
	if p := n.dns.Load(); p != nil {
		return p.cur[0], p.cur[1]
	}
	return n.DNSHost4, n.DNSHost6
}

// isDNSHost reports whether a is a host resolver the forward addresses
// lead to: at start, now, or before the last change.
func (n *NAT) isDNSHost(a netip.Addr) bool {
	if a == n.DNSHost4 || a == n.DNSHost6 {
		return a.IsValid()
	}
	if p := n.dns.Load(); p != nil {
		for _, h := range [...]netip.Addr{p.cur[0], p.cur[1], p.prev[0], p.prev[1]} {
			if h.IsValid() && a == h {
				return true
			}
		}
	}
	return false
}

// SetHostAddrs makes the alias of the host's own address lead to v4 and
// v6 from now on (flows already open keep their sockets).
func (n *NAT) SetHostAddrs(v4, v6 netip.Addr) {
	n.moved.Store(&[2]netip.Addr{v4, v6})
}

// HostAddrs returns the host's own addresses the alias leads to now.
func (n *NAT) HostAddrs() (v4, v6 netip.Addr) {
	if p := n.moved.Load(); p != nil {
		return p[0], p[1]
	}
	return n.HostAddr4, n.HostAddr6
}

// Outbound returns where a host socket must connect or send to for a guest
// flow to far.
func (n *NAT) Outbound(far netip.AddrPort) netip.AddrPort {
	a, port := far.Addr(), far.Port()
	host4, host6 := n.HostAddrs()
	dns4, dns6 := n.DNSHosts()
	switch {
	case a.Is4() && a == n.DNSForward4 && isDNSPort(port) && dns4.IsValid():
		return netip.AddrPortFrom(dns4, port)
	case a.Is6() && a == n.DNSForward6 && isDNSPort(port) && dns6.IsValid():
		return netip.AddrPortFrom(dns6, port)
	case a.Is4() && a == n.HostLoopback4:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port)
	case a.Is6() && a == n.HostLoopback6:
		return netip.AddrPortFrom(netip.IPv6Loopback(), port)
	case a.Is4() && a == n.GuestAddr4 && host4.IsValid():
		return netip.AddrPortFrom(host4, port)
	case a.Is6() && a == n.GuestAddr6 && host6.IsValid():
		return netip.AddrPortFrom(host6, port)
	}
	return far
}

// Inbound returns the address the guest must see for a host-side peer at
// src (an inbound client, or the source of a datagram): host loopback
// becomes the host-loopback address, the host's own address its alias, and
// the DNS host the forward address. The host's own address is the one
// the guest was given and, after a change, also the host's new one. ok is
// false when the guest cannot be shown the peer at all (loopback in any
// spelling, or the host's own address, with no address to show it from;
// an address the policy of wire.ClassifyAddr refuses on the link).
func (n *NAT) Inbound(src netip.AddrPort) (netip.AddrPort, bool) {
	a, port := src.Addr().Unmap(), src.Port()
	host4, host6 := n.HostAddrs()
	cls := wire.ClassifyAddr(a)
	switch {
	case a.Is4() && isDNSPort(port) && n.DNSForward4.IsValid() && n.isDNSHost(a):
		return netip.AddrPortFrom(n.DNSForward4, port), true
	case a.Is6() && isDNSPort(port) && n.DNSForward6.IsValid() && n.isDNSHost(a):
		return netip.AddrPortFrom(n.DNSForward6, port), true
	case cls == wire.AddrLoopback && a.Is4():
		return n.firstOf(port, n.HostLoopback4, n.TapAddr4)
	case cls == wire.AddrLoopback:
		return n.firstOf(port, n.HostLoopback6, n.TapLL6)
	case cls != wire.AddrOrdinary:
		// The address policy's other refusals: the guest would
		// answer a martian it must not send.
		return netip.AddrPortFrom(a, port), false
	case a.Is4() && (a == n.HostAddr4 || a == host4):
		return n.firstOf(port, n.GuestAddr4, n.HostLoopback4, n.TapAddr4)
	case a.Is6() && (a == n.HostAddr6 || a == host6):
		return n.firstOf(port, n.GuestAddr6, n.HostLoopback6, n.TapLL6)
	}
	return netip.AddrPortFrom(a, port), true
}

// firstOf shows a host-side peer the guest cannot see as itself -- the
// host's own address, which is also the guest's (the guest would answer
// its own address and the connection would hang), or loopback -- from the
// first valid address of choices; ok is false if there is none (the
// caller refuses the peer at once).
func (n *NAT) firstOf(port uint16, choices ...netip.Addr) (netip.AddrPort, bool) {
	for _, a := range choices {
		if a.IsValid() {
			return netip.AddrPortFrom(a, port), true
		}
	}
	return netip.AddrPortFrom(netip.Addr{}, port), false
}

// TapLinkLocal6 is gopasta's link-local address on the tap given the
// guest's IPv6 gateway gw6 and our MAC: the gateway itself if it is
// link-local (then the guest's default route already leads to it), else
// the modified EUI-64 address of our MAC. Router advertisements come from
// it, and host peers the guest cannot see as themselves appear from it.
func TapLinkLocal6(gw6 netip.Addr, mac [6]byte) netip.Addr {
	if gw6.IsLinkLocalUnicast() {
		return gw6
	}
	return wire.LinkLocalFromMAC(mac)
}

func isDNSPort(p uint16) bool { return p == 53 || p == 853 }

// String describes the mapping for the start-up log, in words: which
// addresses stand for what, leaving out what is not mapped.
func (n *NAT) String() string {
	var parts []string
	both := func(a, b netip.Addr) string {
		var s []string
		for _, x := range []netip.Addr{a, b} {
			if x.IsValid() {
				s = append(s, x.String())
			}
		}
		return strings.Join(s, " and ")
	}
	if s := both(n.HostLoopback4, n.HostLoopback6); s != "" {
		parts = append(parts, "host loopback appears as "+s)
	} else {
		parts = append(parts, "host loopback not mapped")
	}
	host4, host6 := n.HostAddrs()
	for _, m := range [][2]netip.Addr{{n.GuestAddr4, host4}, {n.GuestAddr6, host6}} {
		if m[0].IsValid() {
			to := "nowhere yet"
			if m[1].IsValid() {
				to = "the host's " + m[1].String()
			}
			parts = append(parts, m[0].String()+" leads to "+to)
		}
	}
	dns4, dns6 := n.DNSHosts()
	for _, m := range [][2]netip.Addr{{n.DNSForward4, dns4}, {n.DNSForward6, dns6}} {
		if m[0].IsValid() && m[1].IsValid() {
			parts = append(parts, "DNS to "+m[0].String()+" goes to "+m[1].String())
		}
	}
	if s := both(n.TapAddr4, n.TapLL6); s != "" {
		parts = append(parts, "host peers the guest cannot be shown as they are appear from "+s)
	}
	return strings.Join(parts, "; ")
}
