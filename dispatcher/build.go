package dispatcher

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// Builders for the frames the link services send. They run only for
// service replies (a handful per guest boot), so clarity wins over speed.

// replyTTL is the TTL/hop limit of service replies that are not NDP.
const replyTTL = 64

// buildUDP4 returns a frame carrying payload in UDP over IPv4, with both
// checksums set, or an error if it would not fit in a frame of at most
// mtu bytes of IP (the link's MTU: a reply sized by what the guest sent
// must be refused here, not by the device or by GetFrame).
func buildUDP4(mtu int, dstMAC, srcMAC [6]byte, src, dst netip.AddrPort, payload []byte) (*link.Frame, error) {
	ulen := wire.UDPLen + len(payload)
	if wire.IPv4MinLen+ulen > mtu {
		return nil, errReplyTooBig
	}
	n := wire.EthernetLen + wire.IPv4MinLen + ulen
	f, err := link.TryGetFrame(n)
	if err != nil {
		return nil, err
	}
	b := f.Data
	wire.Ethernet(b).Set(dstMAC, srcMAC, wire.EtherTypeIPv4)
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	wire.IPv4(b[wire.EthernetLen:]).SetHeader(wire.IPv4MinLen+ulen, 0, replyTTL, wire.ProtoUDP, s4, d4)
	u := wire.UDP(b[wire.EthernetLen+wire.IPv4MinLen:])
	u.Set(src.Port(), dst.Port(), ulen)
	copy(u[wire.UDPLen:], payload)
	u.SetChecksum(udpChecksum(wire.Checksum(u, wire.PseudoHeaderSum(s4[:], d4[:], wire.ProtoUDP, ulen))))
	return f, nil
}

// buildUDP6 is buildUDP4 for IPv6.
func buildUDP6(mtu int, dstMAC, srcMAC [6]byte, src, dst netip.AddrPort, payload []byte) (*link.Frame, error) {
	ulen := wire.UDPLen + len(payload)
	if wire.IPv6Len+ulen > mtu {
		return nil, errReplyTooBig
	}
	n := wire.EthernetLen + wire.IPv6Len + ulen
	f, err := link.TryGetFrame(n)
	if err != nil {
		return nil, err
	}
	b := f.Data
	wire.Ethernet(b).Set(dstMAC, srcMAC, wire.EtherTypeIPv6)
	s6, d6 := src.Addr().As16(), dst.Addr().As16()
	wire.IPv6(b[wire.EthernetLen:]).SetHeader(ulen, wire.ProtoUDP, replyTTL, s6, d6)
	u := wire.UDP(b[wire.EthernetLen+wire.IPv6Len:])
	u.Set(src.Port(), dst.Port(), ulen)
	copy(u[wire.UDPLen:], payload)
	u.SetChecksum(udpChecksum(wire.Checksum(u, wire.PseudoHeaderSum(s6[:], d6[:], wire.ProtoUDP, ulen))))
	return f, nil
}

// errReplyTooBig: a service's reply would be larger than the link's MTU.
var errReplyTooBig = errors.New("reply larger than the MTU")

// replyMTU is the most bytes of IP a service reply may take: the link's
// MTU, and never more than a frame holds.
func (d *Dispatcher) replyMTU() int {
	m := link.MaxFrameSize - wire.EthernetLen
	if mtu := d.dev.MTU(); mtu > 0 && mtu < m {
		m = mtu
	}
	return m
}

// udpChecksum folds a UDP checksum; zero means "none" on the wire, so a
// computed zero is sent as all ones (RFC 768).
func udpChecksum(sum uint32) uint16 {
	if c := wire.Fold(sum); c != 0 {
		return c
	}
	return 0xffff
}

// newICMPv6 returns a frame with Ethernet and IPv6 headers for an NDP
// message of icmpLen bytes (hop limit 255), and the ICMPv6 part to fill in;
// finishICMPv6 sets the checksum afterwards.
func newICMPv6(dstMAC, srcMAC [6]byte, src, dst netip.Addr, icmpLen int) (*link.Frame, []byte) {
	f := link.GetFrame(wire.EthernetLen + wire.IPv6Len + icmpLen)
	b := f.Data
	wire.Ethernet(b).Set(dstMAC, srcMAC, wire.EtherTypeIPv6)
	wire.IPv6(b[wire.EthernetLen:]).SetHeader(icmpLen, wire.ProtoICMPv6, wire.NDPHopLimit, src.As16(), dst.As16())
	m := b[wire.EthernetLen+wire.IPv6Len:]
	clear(m)
	return f, m
}

// finishICMPv6 computes the checksum of the ICMPv6 message in f.
func finishICMPv6(f *link.Frame) {
	ip := wire.IPv6(f.Data[wire.EthernetLen:])
	m := f.Data[wire.EthernetLen+wire.IPv6Len:]
	binary.BigEndian.PutUint16(m[2:4], 0)
	sum := wire.PseudoHeaderSum(ip[8:24], ip[24:40], wire.ProtoICMPv6, len(m))
	wire.ICMP(m).SetChecksum(wire.Fold(wire.Checksum(m, sum)))
}
