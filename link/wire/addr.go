package wire

import "net/netip"

// AddrClass is what the address policy makes of one IP address. Every check
// of a guest's source or destination address, and of a host peer's address
// before the guest is shown it, goes through ClassifyAddr, so that each
// spelling of a special address gets the same answer everywhere.
type AddrClass uint8

// Address classes.
const (
	// AddrOrdinary: nothing special; routing decides.
	AddrOrdinary AddrClass = iota
	// AddrUnspecified: 0.0.0.0 or ::. Only a source, only for the link
	// services (a DHCP client, duplicate address detection).
	AddrUnspecified
	// AddrThisNetwork: 0.0.0.0/8 other than 0.0.0.0 itself ("this host on
	// this network", RFC 1122 3.2.1.3): never on the wire.
	AddrThisNetwork
	// AddrLoopback: 127.0.0.0/8 or ::1, in any spelling (IPv4-mapped or
	// IPv4-compatible included). Reached only through the host-loopback
	// mapping (--map-host-loopback), never by its own name.
	AddrLoopback
	// AddrEmbeddedV4: an IPv4 address spelt as IPv6, IPv4-mapped
	// (::ffff:a.b.c.d) or IPv4-compatible (::a.b.c.d). The kernel turns
	// the mapped form into IPv4 on a dual-stack socket (and
	// ::ffff:0.0.0.0 into 127.0.0.1), which would make an IPv6 frame an
	// IPv4 connection, past --ipv6-only and past the checks of the IPv4
	// address it hides. Neither form is valid on a link (RFC 4291
	// 2.5.5).
	AddrEmbeddedV4
)

// ClassifyAddr classifies a as the address policy sees it, looking through
// IPv4-mapped and IPv4-compatible spellings: a loopback address hidden in
// one is AddrLoopback, any other one (::ffff:0.0.0.0 included, which the
// kernel connects to 127.0.0.1) AddrEmbeddedV4. Only 0.0.0.0 and :: are
// AddrUnspecified. It allocates nothing.
func ClassifyAddr(a netip.Addr) AddrClass {
	if a.Is4() {
		return classify4(a.As4())
	}
	if !a.Is6() {
		return AddrUnspecified // the zero Addr: no address at all
	}
	b := a.As16()
	var z [10]byte
	if [10]byte(b[:10]) != z {
		return AddrOrdinary
	}
	switch {
	case b[10] == 0xff && b[11] == 0xff:
		// IPv4-mapped.
	case b[10] == 0 && b[11] == 0:
		// IPv4-compatible, or :: and ::1.
		switch lo := [4]byte(b[12:]); lo {
		case [4]byte{}:
			return AddrUnspecified
		case [4]byte{0, 0, 0, 1}:
			return AddrLoopback
		}
	default:
		return AddrOrdinary
	}
	if classify4([4]byte(b[12:])) == AddrLoopback {
		return AddrLoopback
	}
	return AddrEmbeddedV4
}

func classify4(a [4]byte) AddrClass {
	switch {
	case a == [4]byte{}:
		return AddrUnspecified
	case a[0] == 0:
		return AddrThisNetwork
	case a[0] == 127:
		return AddrLoopback
	}
	return AddrOrdinary
}

// GuestAddrReason is the address policy for a frame from the guest: why
// ParseFrame refuses a source (src true) or destination address a, or
// ReasonNone. Loopback in any spelling is ReasonLoopback; 0.0.0.0/8 and
// IPv4 addresses spelt as IPv6 are ReasonMartian. An unspecified address
// passes here: as a source the link services need it (DHCP, DAD) and the
// dispatcher refuses it for flows; as a destination the dispatcher counts
// it as a bad destination.
func GuestAddrReason(a netip.Addr) Reason {
	switch ClassifyAddr(a) {
	case AddrLoopback:
		return ReasonLoopback
	case AddrThisNetwork, AddrEmbeddedV4:
		return ReasonMartian
	}
	return ReasonNone
}
