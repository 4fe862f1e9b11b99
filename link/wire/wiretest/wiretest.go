// Package wiretest builds the frames a guest would send, with correct
// lengths and checksums, for tests of anything that reads the link. It
// allocates freely and is not for production paths.
package wiretest

import (
	"encoding/binary"
	"net/netip"

	"github.com/gopasta/gopasta/link/wire"
)

// GuestMAC is the source MAC the builders use unless told otherwise.
var GuestMAC = [6]byte{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}

// OurMAC is the default destination MAC (gopasta's default MAC).
var OurMAC = [6]byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}

// Eth returns an Ethernet frame around payload.
func Eth(dst, src [6]byte, etherType uint16, payload []byte) []byte {
	b := make([]byte, wire.EthernetLen+len(payload))
	wire.Ethernet(b).Set(dst, src, etherType)
	copy(b[wire.EthernetLen:], payload)
	return b
}

// IP returns a whole frame from GuestMAC to OurMAC carrying an IPv4 or IPv6
// packet (by the family of src) with transport header and payload l4, whose
// checksum (TCP, UDP, ICMP, ICMPv6) is filled in.
func IP(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	return IPFrom(GuestMAC, OurMAC, src, dst, proto, l4)
}

// IPFrom is IP with explicit MACs.
func IPFrom(srcMAC, dstMAC [6]byte, src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	l4 = append([]byte(nil), l4...)
	FixChecksum(src, dst, proto, l4)
	if src.Is4() {
		ip := make([]byte, wire.IPv4MinLen+len(l4))
		wire.IPv4(ip).SetHeader(len(ip), 1, 64, proto, src.As4(), dst.As4())
		copy(ip[wire.IPv4MinLen:], l4)
		return Eth(dstMAC, srcMAC, wire.EtherTypeIPv4, ip)
	}
	ip := make([]byte, wire.IPv6Len+len(l4))
	hop := uint8(64)
	if proto == wire.ProtoICMPv6 && len(l4) > 0 && l4[0] >= 133 && l4[0] <= 137 {
		hop = wire.NDPHopLimit
	}
	wire.IPv6(ip).SetHeader(len(l4), proto, hop, src.As16(), dst.As16())
	copy(ip[wire.IPv6Len:], l4)
	return Eth(dstMAC, srcMAC, wire.EtherTypeIPv6, ip)
}

// FixChecksum computes and stores the transport checksum of l4.
func FixChecksum(src, dst netip.Addr, proto uint8, l4 []byte) {
	var s, d []byte
	if src.Is4() {
		a, b := src.As4(), dst.As4()
		s, d = a[:], b[:]
	} else {
		a, b := src.As16(), dst.As16()
		s, d = a[:], b[:]
	}
	off := -1
	switch proto {
	case wire.ProtoTCP:
		off = 16
	case wire.ProtoUDP:
		off = 6
	case wire.ProtoICMP, wire.ProtoICMPv6:
		off = 2
	}
	if off < 0 || len(l4) < off+2 {
		return
	}
	l4[off], l4[off+1] = 0, 0
	var sum uint32
	if proto != wire.ProtoICMP {
		sum = wire.PseudoHeaderSum(s, d, proto, len(l4))
	}
	c := wire.Fold(wire.Checksum(l4, sum))
	if proto == wire.ProtoUDP && c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[off:], c)
}

// TCP returns a TCP header (20 bytes, no options) and payload; the checksum
// is left for IP to fill in.
func TCP(srcPort, dstPort uint16, seq, ack uint32, flags uint8, payload []byte) []byte {
	b := make([]byte, wire.TCPMinLen+len(payload))
	t := wire.TCP(b)
	t.SetPorts(srcPort, dstPort)
	t.SetSeqAck(seq, ack)
	t.SetFlagsWindow(wire.TCPMinLen, flags, 65535)
	copy(b[wire.TCPMinLen:], payload)
	return b
}

// UDP returns a UDP header and payload.
func UDP(srcPort, dstPort uint16, payload []byte) []byte {
	b := make([]byte, wire.UDPLen+len(payload))
	wire.UDP(b).Set(srcPort, dstPort, len(b))
	copy(b[wire.UDPLen:], payload)
	return b
}

// ICMPEcho returns an ICMP (typ 8) or ICMPv6 (typ 128) echo request or reply.
func ICMPEcho(typ uint8, id, seq uint16, payload []byte) []byte {
	b := make([]byte, wire.ICMPLen+len(payload))
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:6], id)
	binary.BigEndian.PutUint16(b[6:8], seq)
	copy(b[wire.ICMPLen:], payload)
	return b
}

// ARP returns a whole ARP frame from GuestMAC; dst is the Ethernet
// destination (broadcast for requests).
func ARP(op uint16, dst [6]byte, senderMAC [6]byte, senderIP netip.Addr, targetMAC [6]byte, targetIP netip.Addr) []byte {
	a := make([]byte, wire.ARPLen)
	wire.ARP(a).Set(op, senderMAC, senderIP.As4(), targetMAC, targetIP.As4())
	return Eth(dst, senderMAC, wire.EtherTypeARP, a)
}

// NeighborSolicit returns an ICMPv6 neighbour solicitation for target, with
// a source link-layer address option if mac is not nil.
func NeighborSolicit(target netip.Addr, mac *[6]byte) []byte {
	b := make([]byte, wire.NeighborSolicitLen, wire.NeighborSolicitLen+8)
	b[0] = wire.ICMPv6NeighborSolicit
	t := target.As16()
	copy(b[8:24], t[:])
	if mac != nil {
		b = b[:len(b)+8]
		wire.PutNDPLinkAddr(b[24:], wire.NDPOptSourceLinkAddr, *mac)
	}
	return b
}

// RouterSolicit returns an ICMPv6 router solicitation, with a source
// link-layer address option if mac is not nil.
func RouterSolicit(mac *[6]byte) []byte {
	b := make([]byte, wire.RouterSolicitLen, wire.RouterSolicitLen+8)
	b[0] = wire.ICMPv6RouterSolicit
	if mac != nil {
		b = b[:len(b)+8]
		wire.PutNDPLinkAddr(b[8:], wire.NDPOptSourceLinkAddr, *mac)
	}
	return b
}

// SolicitedNode returns the solicited-node multicast address of a.
func SolicitedNode(a netip.Addr) netip.Addr {
	b := a.As16()
	return netip.AddrFrom16([16]byte{0xff, 0x02, 10: 0, 11: 1, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
}
