package icmperr

import (
	"encoding/binary"
	"net/netip"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// ICMP error quoting limits: RFC 1812 (576-byte IPv4 datagram) and RFC 4443
// (the IPv6 minimum MTU).
const (
	MaxLen4 = 576
	MaxLen6 = 1280
)

// Error describes an ICMP error for the guest about a packet it sent.
type Error struct {
	Type, Code uint8
	Info       uint32     // next-hop MTU for "fragmentation needed" / "packet too big"
	From       netip.Addr // source of the error as the guest sees it
	Guest, Far netip.Addr // the guest's original packet: source and destination
	Proto      uint8      // its transport protocol
	L4Len      int        // its transport length (header and payload)
	L4         []byte     // its transport header and as much payload as known
}

// Frame builds the error frame, quoting the guest's original packet
// rebuilt from the flow: an IP header as the guest sent it and the transport
// bytes, truncated to the quoting limit. It returns nil if the families of
// the addresses disagree.
func Frame(env *actors.Env, e *Error) *link.Frame {
	v6 := e.Guest.Is6()
	if e.Far.Is6() != v6 || e.From.Is6() != v6 || !e.From.IsValid() {
		return nil
	}
	ipLen, maxLen, etype, proto := wire.IPv4MinLen, MaxLen4, uint16(wire.EtherTypeIPv4), uint8(wire.ProtoICMP)
	if v6 {
		ipLen, maxLen, etype, proto = wire.IPv6Len, MaxLen6, wire.EtherTypeIPv6, wire.ProtoICMPv6
	}
	quote := min(len(e.L4), maxLen-ipLen-wire.ICMPLen-ipLen)
	icmpLen := wire.ICMPLen + ipLen + quote
	f := link.GetFrame(wire.EthernetLen + ipLen + icmpLen)
	b := f.Data
	wire.Ethernet(b).Set(env.Peer.MAC(), env.Peer.OurMAC, etype)
	m := b[wire.EthernetLen+ipLen:]
	m[0], m[1] = e.Type, e.Code
	clear(m[2:8])
	switch {
	case !v6 && e.Type == wire.ICMPv4DestUnreach && e.Code == 4:
		binary.BigEndian.PutUint16(m[6:8], uint16(min(e.Info, 0xffff)))
	case v6 && e.Type == wire.ICMPv6PacketTooBig:
		binary.BigEndian.PutUint32(m[4:8], e.Info)
	}
	inner := m[wire.ICMPLen:]
	copy(inner[ipLen:], e.L4[:quote])
	if !v6 {
		g, fa := e.Guest.As4(), e.Far.As4()
		wire.IPv4(inner).SetHeader(ipLen+e.L4Len, 0, actors.DefaultTTL, e.Proto, g, fa)
		from, guest := e.From.As4(), e.Guest.As4()
		binary.BigEndian.PutUint16(m[2:4], wire.Fold(wire.Checksum(m[:icmpLen], 0)))
		wire.IPv4(b[wire.EthernetLen:]).SetHeader(ipLen+icmpLen, 0, actors.DefaultTTL, proto, from, guest)
		return f
	}
	g, fa := e.Guest.As16(), e.Far.As16()
	wire.IPv6(inner).SetHeader(e.L4Len, e.Proto, actors.DefaultTTL, g, fa)
	from, guest := e.From.As16(), e.Guest.As16()
	wire.IPv6(b[wire.EthernetLen:]).SetHeader(icmpLen, proto, actors.DefaultTTL, from, guest)
	sum := wire.PseudoHeaderSum(from[:], guest[:], proto, icmpLen)
	binary.BigEndian.PutUint16(m[2:4], wire.Fold(wire.Checksum(m[:icmpLen], sum)))
	return f
}
