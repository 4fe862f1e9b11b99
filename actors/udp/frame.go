package udp

import (
	"net/netip"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/link/wire"
)

// Frames towards the guest are built in place: the host datagram is received
// straight into a pooled frame at the offset where its payload belongs, and
// the Ethernet, IP and UDP headers are written in front of it afterwards, so
// the payload is never copied.

// udpHdrLen is the length of the Ethernet, IP and UDP headers in front of a
// UDP payload in a frame.
func udpHdrLen(v6 bool) int {
	if v6 {
		return wire.EthernetLen + wire.IPv6Len + wire.UDPLen
	}
	return wire.EthernetLen + wire.IPv4MinLen + wire.UDPLen
}

// maxUDPPayload is the largest UDP payload that fits the guest's link in
// one unfragmented packet.
func maxUDPPayload(env *actors.Env, v6 bool) int {
	n := env.Opts.MTU - (udpHdrLen(v6) - wire.EthernetLen)
	lim := 65535 - wire.UDPLen // the UDP length field
	if !v6 {
		lim -= wire.IPv4MinLen // the IPv4 total length field
	}
	return min(n, lim)
}

// writeUDPHeaders fills in the headers of a frame b whose payload of n bytes
// is already in place at udpHdrLen, for a datagram from src to dst.
func writeUDPHeaders(env *actors.Env, b []byte, src, dst netip.AddrPort, n int, id uint16) {
	v6 := dst.Addr().Is6()
	l4 := wire.UDPLen + n
	if !v6 {
		wire.Ethernet(b).Set(env.Peer.MAC(), env.Peer.OurMAC, wire.EtherTypeIPv4)
		s, d := src.Addr().As4(), dst.Addr().As4()
		wire.IPv4(b[wire.EthernetLen:]).SetHeader(wire.IPv4MinLen+l4, id, actors.DefaultTTL, wire.ProtoUDP, s, d)
		u := wire.UDP(b[wire.EthernetLen+wire.IPv4MinLen:])
		u.Set(src.Port(), dst.Port(), l4)
		sum := wire.PseudoHeaderSum(s[:], d[:], wire.ProtoUDP, l4)
		u.SetChecksum(wire.FoldUDP(wire.Checksum(u[:l4], sum)))
		return
	}
	wire.Ethernet(b).Set(env.Peer.MAC(), env.Peer.OurMAC, wire.EtherTypeIPv6)
	s, d := src.Addr().As16(), dst.Addr().As16()
	wire.IPv6(b[wire.EthernetLen:]).SetHeader(l4, wire.ProtoUDP, actors.DefaultTTL, s, d)
	u := wire.UDP(b[wire.EthernetLen+wire.IPv6Len:])
	u.Set(src.Port(), dst.Port(), l4)
	sum := wire.PseudoHeaderSum(s[:], d[:], wire.ProtoUDP, l4)
	u.SetChecksum(wire.FoldUDP(wire.Checksum(u[:l4], sum)))
}
