package dispatcher

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/gopasta/gopasta/link/wire"
)

const icmpv6Redirect = 137

// routerLifetime is how long the guest keeps us as its default router
// after an advertisement: the largest value RFC 4861 6.2.1 allows.
const routerLifetime = 9000

// raHopLimit is the hop limit we suggest to the guest.
const raHopLimit = 64

// allNodes is ff02::1, where unsolicited advertisements go.
var allNodes = netip.AddrFrom16([16]byte{0xff, 0x02, 15: 1})

// handleNDP answers router and neighbour solicitations (RFC 4861) and
// ignores the other NDP messages: a guest's own advertisements and
// redirects have nothing to tell us.
//
// Like ARP, we claim every address but the guest's own. Duplicate address
// detection (a solicitation from ::) is never answered: the address being
// checked is one the guest wants for itself -- its configured address, or
// one it made up by SLAAC -- and an answer would make the guest give it up.
func (d *Dispatcher) handleNDP(b []byte, p *wire.Parsed) {
	m := wire.ICMP(b[p.L4:p.End])
	switch p.ICMPType {
	case wire.ICMPv6RouterSolicit:
		if !d.svc.raEnabled {
			d.n[cNDPIgnored].Add(1)
			return
		}
		if !d.validNDP(m, p, wire.RouterSolicitLen) {
			return
		}
		opts := m[wire.RouterSolicitLen:]
		sll := wire.NDPOption(opts, wire.NDPOptSourceLinkAddr)
		if p.Src.IsUnspecified() {
			if sll != nil { // RFC 4861 6.1.1
				d.n[cNDPInvalid].Add(1)
				return
			}
			d.sendRA(allNodes, wire.MulticastMAC(allNodes))
		} else {
			d.sendRA(p.Src, linkAddr(sll, p.SrcMAC))
		}
		d.log.WithField("guest", p.Src.String()).Debug("NDP: router advertisement sent")

	case wire.ICMPv6NeighborSolicit:
		if d.cfg.NoNDP {
			d.n[cNDPIgnored].Add(1)
			return
		}
		if !d.validNDP(m, p, wire.NeighborSolicitLen) {
			return
		}
		target := wire.NDPTarget(m)
		if target.IsMulticast() {
			d.n[cNDPInvalid].Add(1)
			return
		}
		sll := wire.NDPOption(m[wire.NeighborSolicitLen:], wire.NDPOptSourceLinkAddr)
		if p.Src.IsUnspecified() || d.svc.isGuest6(target) || target.IsUnspecified() || target.IsLoopback() {
			d.n[cNDPIgnored].Add(1)
			return
		}
		d.sendNA(target, p.Src, linkAddr(sll, p.SrcMAC))
		if d.trace {
			d.log.Tracef("NDP: %s is at %x, told %s", target, d.svc.ourMAC, p.Src)
		}

	default:
		d.n[cNDPIgnored].Add(1)
	}
}

// validNDP checks what RFC 4861 6.1 and 7.1 ask of a solicitation: hop
// limit 255 (it came from the link, not through a router), code 0, the
// fixed part present and well-formed options.
func (d *Dispatcher) validNDP(m wire.ICMP, p *wire.Parsed, fixed int) bool {
	if p.TTL != wire.NDPHopLimit || p.ICMPCode != 0 || len(m) < fixed || !wire.NDPOptions(m[fixed:]) {
		d.n[cNDPInvalid].Add(1)
		return false
	}
	return true
}

// linkAddr returns the MAC from a source link-layer address option, or
// def if there is none (or it is multicast).
func linkAddr(opt []byte, def [6]byte) [6]byte {
	if len(opt) >= 8 && opt[2]&1 == 0 {
		return [6]byte(opt[2:8])
	}
	return def
}

// sendNA sends a solicited neighbour advertisement for target to dst.
func (d *Dispatcher) sendNA(target, dst netip.Addr, dstMAC [6]byte) {
	f, m := newICMPv6(dstMAC, d.svc.ourMAC, target, dst, wire.NeighborAdvertLen+8)
	m[0] = wire.ICMPv6NeighborAdvert
	// We route for every address we answer for, so the router flag is
	// always true: a false one would make the guest drop us as its
	// default router (RFC 4861 7.2.5).
	m[4] = wire.NAFlagRouter | wire.NAFlagSolicited | wire.NAFlagOverride
	t := target.As16()
	copy(m[8:24], t[:])
	wire.PutNDPLinkAddr(m[24:], wire.NDPOptTargetLinkAddr, d.svc.ourMAC)
	finishICMPv6(f)
	d.send(f)
	d.n[cNDPAdverts].Add(1)
}

// sendRA sends a router advertisement to dst: our link-local address as
// the router, the /64 of the configured address for SLAAC, the MTU, DNS
// resolvers and search domains, and -- unless DHCPv6 is off -- the M and O
// flags so the guest also asks DHCPv6 for its configured address.
func (d *Dispatcher) sendRA(dst netip.Addr, dstMAC [6]byte) {
	s := &d.svc
	prefix := s.cfg.Addr6.IsValid() && !s.cfg.Addr6.IsLinkLocalUnicast()
	mtu := s.mtu >= 1280 && s.mtu <= 65535
	dnssl := wire.DNSSLLen(s.search)

	n := wire.RouterAdvertLen + 8
	if mtu {
		n += 8
	}
	if prefix {
		n += 32
	}
	if len(s.dns6) > 0 {
		n += 8 + 16*len(s.dns6)
	}
	n += dnssl

	f, m := newICMPv6(dstMAC, s.ourMAC, s.ll6, dst, n)
	m[0] = wire.ICMPv6RouterAdvert
	m[4] = raHopLimit
	if !s.cfg.NoDHCPv6 {
		m[5] = wire.RAFlagManaged | wire.RAFlagOther
	}
	binary.BigEndian.PutUint16(m[6:8], routerLifetime)
	off := wire.RouterAdvertLen
	off += wire.PutNDPLinkAddr(m[off:], wire.NDPOptSourceLinkAddr, s.ourMAC)
	if mtu {
		off += wire.PutNDPMTU(m[off:], uint32(s.mtu))
	}
	if prefix {
		off += wire.PutNDPPrefix(m[off:], netip.PrefixFrom(s.cfg.Addr6, 64),
			wire.PrefixFlagOnLink|wire.PrefixFlagAutonomous, infinite, infinite)
	}
	if len(s.dns6) > 0 {
		off += wire.PutNDPRDNSS(m[off:], infinite, s.dns6)
	}
	if dnssl > 0 {
		wire.PutNDPDNSSL(m[off:], infinite, s.search)
	}
	finishICMPv6(f)
	d.send(f)
	d.n[cRouterAdverts].Add(1)
	s.nextRA = time.Now().Add(raInterval)
}
