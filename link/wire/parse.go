package wire

import (
	"encoding/binary"
	"net/netip"
)

// Parsed is what ParseFrame learned about a frame: where each layer starts,
// the addresses, ports and protocol. The caller owns it and reuses it from
// frame to frame, so parsing allocates nothing.
//
// All offsets are from the start of the frame (the destination MAC).
type Parsed struct {
	// EtherType is EtherTypeIPv4, EtherTypeIPv6 or EtherTypeARP.
	EtherType uint16
	// SrcMAC and DstMAC are the Ethernet addresses.
	SrcMAC, DstMAC [6]byte

	// L3 is where the IP (or ARP) header starts: always EthernetLen.
	L3 int
	// L4 is where the transport header starts, after IPv4 options or
	// IPv6 extension headers.
	L4 int
	// Payload is where the transport payload starts (L4 plus the TCP data
	// offset, the UDP header, or the 8-byte ICMP header). For protocols
	// ParseFrame does not know it equals L4.
	Payload int
	// End is where the IP datagram ends. Ethernet pads short frames to 60
	// bytes, and that padding is not part of the datagram: callers should
	// trim the frame to End. For ARP it is the end of the ARP packet.
	End int

	// Proto is the transport protocol (ProtoTCP, ProtoUDP, ProtoICMP,
	// ProtoICMPv6 or anything else for other protocols); zero for ARP.
	Proto uint8
	// Src and Dst are the IP addresses (for ARP: sender and target
	// protocol addresses).
	Src, Dst netip.Addr
	// SrcPort and DstPort are the TCP or UDP ports.
	SrcPort, DstPort uint16
	// TTL is the IPv4 TTL or IPv6 hop limit.
	TTL uint8
	// TCPFlags are the TCP flag bits.
	TCPFlags uint8
	// ICMPType and ICMPCode are the ICMP or ICMPv6 type and code.
	ICMPType, ICMPCode uint8

	trustL4 bool // ParseFrameTrustedL4: no transport checksum to verify
}

// ParseFrame validates the Ethernet frame b and fills p. It checks every
// length field against the bytes actually present, the IPv4 header checksum
// and the TCP, UDP, ICMP and ICMPv6 checksums, and refuses fragments,
// the addresses the address policy refuses (GuestAddrReason: loopback in
// any spelling, 0.0.0.0/8, IPv4 spelt as IPv6) and multicast or broadcast
// sources. The error, if any, is a Reason.
//
// A frame that ParseFrame accepts can be read through the header views at
// the offsets in p without further length checks: the transport header is
// whole and its length fields agree with the frame.
func ParseFrame(b []byte, p *Parsed) error {
	*p = Parsed{}
	return parseFrame(b, p)
}

// ParseFrameTrustedL4 is ParseFrame for a frame whose link vouches for its
// transport checksum and whose transport payload may not be in b at all
// (a vhost-user frame whose tail stayed in guest memory, link.Frame.Ext):
// the transport checksum is not verified, so no payload byte is read. The
// link is shared memory, nothing can corrupt a frame on the way, and a
// guest that offloads its checksums leaves them for us to fill anyway.
func ParseFrameTrustedL4(b []byte, p *Parsed) error {
	*p = Parsed{trustL4: true}
	return parseFrame(b, p)
}

func parseFrame(b []byte, p *Parsed) error {
	if len(b) < EthernetLen {
		return ReasonShort
	}
	eth := Ethernet(b)
	p.DstMAC, p.SrcMAC, p.EtherType = eth.Dst(), eth.Src(), eth.Type()
	p.L3 = EthernetLen
	switch p.EtherType {
	case EtherTypeARP:
		return parseARP(b, p)
	case EtherTypeIPv4:
		return parseIPv4(b, p)
	case EtherTypeIPv6:
		return parseIPv6(b, p)
	}
	return ReasonEtherType
}

func parseARP(b []byte, p *Parsed) error {
	if len(b) < EthernetLen+ARPLen {
		return ReasonShort
	}
	a := ARP(b[EthernetLen:])
	if !a.IsEthernetIPv4() {
		return ReasonARP
	}
	p.Src, p.Dst = a.SenderIP(), a.TargetIP()
	p.L4, p.Payload, p.End = EthernetLen+ARPLen, EthernetLen+ARPLen, EthernetLen+ARPLen
	return nil
}

func parseIPv4(b []byte, p *Parsed) error {
	if len(b) < EthernetLen+IPv4MinLen {
		return ReasonShort
	}
	h := IPv4(b[EthernetLen:])
	if h[0]>>4 != 4 {
		return ReasonIPVersion
	}
	hlen := h.HeaderLen()
	if hlen < IPv4MinLen {
		return ReasonIPHeader
	}
	if hlen > len(h) {
		return ReasonShort
	}
	total := h.TotalLen()
	if total < hlen {
		return ReasonIPLength
	}
	if total > len(h) {
		return ReasonShort
	}
	if Fold(Checksum(h[:hlen], 0)) != 0 {
		return ReasonIPChecksum
	}
	if off, more := h.FragOff(); off != 0 || more {
		return ReasonFragment
	}
	p.Src, p.Dst = h.Src(), h.Dst()
	// Only 0/8 and 127/8 can be special (ClassifyAddr): the policy is
	// asked about those alone, which keeps it off the per-frame path.
	if s, d := h[12], h[16]; s == 0 || s == 127 || d == 0 || d == 127 {
		if r := addrPolicy(p); r != ReasonNone {
			return r
		}
	}
	if h[12] >= 224 { // multicast 224/4, reserved 240/4, broadcast
		return ReasonBadSource
	}
	p.TTL = h.TTL()
	p.Proto = h.Protocol()
	p.L4 = EthernetLen + hlen
	p.End = EthernetLen + total
	return parseL4(b, p, h[12:16], h[16:20])
}

// IPv6 extension headers ParseFrame walks past.
const (
	ipv6HopByHop = 0
	ipv6Routing  = 43
	ipv6Fragment = 44
	ipv6DestOpts = 60
)

func parseIPv6(b []byte, p *Parsed) error {
	if len(b) < EthernetLen+IPv6Len {
		return ReasonShort
	}
	h := IPv6(b[EthernetLen:])
	if h[0]>>4 != 6 {
		return ReasonIPVersion
	}
	plen := h.PayloadLen()
	if IPv6Len+plen > len(h) {
		return ReasonShort
	}
	p.Src, p.Dst = h.Src(), h.Dst()
	// Only addresses in ::/80 can be special (ClassifyAddr).
	if binary.BigEndian.Uint64(h[8:16]) == 0 || binary.BigEndian.Uint64(h[24:32]) == 0 {
		if r := addrPolicy(p); r != ReasonNone {
			return r
		}
	}
	if h[8] == 0xff {
		return ReasonBadSource
	}
	p.TTL = h.HopLimit()
	p.End = EthernetLen + IPv6Len + plen

	// Walk the extension headers. Each is at least 8 bytes long, so the
	// loop ends within the datagram; hop-by-hop options are only allowed
	// first (RFC 8200 4.1).
	next, off := h.NextHeader(), EthernetLen+IPv6Len
	for first := true; ; first = false {
		switch next {
		case ipv6HopByHop, ipv6Routing, ipv6DestOpts:
			if next == ipv6HopByHop && !first {
				return ReasonIPHeader
			}
			if off+8 > p.End {
				return ReasonShort
			}
			l := (int(b[off+1]) + 1) * 8
			if off+l > p.End {
				return ReasonShort
			}
			// A routing header with segments left would make us a
			// hop on a source route, which we are not.
			if next == ipv6Routing && b[off+3] != 0 {
				return ReasonIPHeader
			}
			next = b[off]
			off += l
			continue
		case ipv6Fragment:
			return ReasonFragment
		}
		break
	}
	p.Proto = next
	p.L4 = off
	return parseL4(b, p, h[8:24], h[24:40])
}

// addrPolicy applies GuestAddrReason to both addresses; a loopback one
// wins, whichever it is, so that drop_loopback counts every loopback frame.
func addrPolicy(p *Parsed) Reason {
	rs, rd := GuestAddrReason(p.Src), GuestAddrReason(p.Dst)
	if rs == ReasonLoopback || rd == ReasonLoopback {
		return ReasonLoopback
	}
	if rs != ReasonNone {
		return rs
	}
	return rd
}

// parseL4 checks the transport header at p.L4..p.End, whose pseudo-header
// addresses are src and dst (4 or 16 bytes each).
func parseL4(b []byte, p *Parsed, src, dst []byte) error {
	l4 := b[p.L4:p.End]
	p.Payload = p.L4
	switch p.Proto {
	case ProtoTCP:
		if len(l4) < TCPMinLen {
			return ReasonShort
		}
		t := TCP(l4)
		if doff := t.DataOffset(); doff < TCPMinLen || doff > len(l4) {
			return ReasonL4Header
		}
		p.SrcPort, p.DstPort, p.TCPFlags = t.SrcPort(), t.DstPort(), t.Flags()
		if p.SrcPort == 0 || p.DstPort == 0 {
			return ReasonL4Header
		}
		if !p.trustL4 && Fold(Checksum(l4, PseudoHeaderSum(src, dst, ProtoTCP, len(l4)))) != 0 {
			return ReasonL4Checksum
		}
		p.Payload = p.L4 + t.DataOffset()
	case ProtoUDP:
		if len(l4) < UDPLen {
			return ReasonShort
		}
		u := UDP(l4)
		ulen := u.Length()
		if ulen < UDPLen {
			return ReasonL4Header
		}
		if ulen > len(l4) {
			return ReasonShort
		}
		// The UDP length rules: bytes after it (inside the IP datagram)
		// are not part of the datagram.
		l4 = l4[:ulen]
		p.End = p.L4 + ulen
		p.SrcPort, p.DstPort = u.SrcPort(), u.DstPort()
		if p.DstPort == 0 { // a zero source port is allowed: "no reply"
			return ReasonL4Header
		}
		if u.Checksum() == 0 {
			// Optional over IPv4 only (RFC 768, RFC 8200 8.1).
			if len(src) == 16 {
				return ReasonL4Checksum
			}
		} else if Fold(Checksum(l4, PseudoHeaderSum(src, dst, ProtoUDP, len(l4)))) != 0 {
			return ReasonL4Checksum
		}
		p.Payload = p.L4 + UDPLen
	case ProtoICMP:
		if len(src) != 4 {
			return nil // ICMPv4 over IPv6: unknown protocol
		}
		if len(l4) < ICMPLen {
			return ReasonShort
		}
		p.ICMPType, p.ICMPCode = l4[0], l4[1]
		if Fold(Checksum(l4, 0)) != 0 {
			return ReasonL4Checksum
		}
		p.Payload = p.L4 + ICMPLen
	case ProtoICMPv6:
		if len(src) != 16 {
			return nil
		}
		if len(l4) < ICMPLen {
			return ReasonShort
		}
		p.ICMPType, p.ICMPCode = l4[0], l4[1]
		if Fold(Checksum(l4, PseudoHeaderSum(src, dst, ProtoICMPv6, len(l4)))) != 0 {
			return ReasonL4Checksum
		}
		p.Payload = p.L4 + ICMPLen
	}
	return nil
}
