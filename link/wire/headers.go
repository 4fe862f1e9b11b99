package wire

import (
	"encoding/binary"
	"net/netip"
)

// Protocol numbers and EtherTypes gopasta handles.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeIPv6 = 0x86dd

	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58

	EthernetLen = 14
	IPv4MinLen  = 20
	IPv6Len     = 40
	TCPMinLen   = 20
	UDPLen      = 8
	ICMPLen     = 8
)

// Ethernet is a view of an Ethernet II header.
type Ethernet []byte

// Dst returns the destination MAC.
func (e Ethernet) Dst() [6]byte { return [6]byte(e[0:6]) }

// Src returns the source MAC.
func (e Ethernet) Src() [6]byte { return [6]byte(e[6:12]) }

// Type returns the EtherType.
func (e Ethernet) Type() uint16 { return binary.BigEndian.Uint16(e[12:14]) }

// Set writes the whole header.
func (e Ethernet) Set(dst, src [6]byte, etherType uint16) {
	copy(e[0:6], dst[:])
	copy(e[6:12], src[:])
	binary.BigEndian.PutUint16(e[12:14], etherType)
}

// IPv4 is a view of an IPv4 header (and what follows it).
type IPv4 []byte

// HeaderLen returns the header length in bytes (IHL*4).
func (h IPv4) HeaderLen() int { return int(h[0]&0x0f) * 4 }

// TotalLen returns the Total Length field.
func (h IPv4) TotalLen() int { return int(binary.BigEndian.Uint16(h[2:4])) }

// ID returns the Identification field.
func (h IPv4) ID() uint16 { return binary.BigEndian.Uint16(h[4:6]) }

// FragOff returns the fragment offset in 8-byte units and the MF flag.
func (h IPv4) FragOff() (off int, more bool) {
	v := binary.BigEndian.Uint16(h[6:8])
	return int(v & 0x1fff), v&0x2000 != 0
}

// TTL returns the Time To Live.
func (h IPv4) TTL() uint8 { return h[8] }

// Protocol returns the transport protocol number.
func (h IPv4) Protocol() uint8 { return h[9] }

// Src returns the source address.
func (h IPv4) Src() netip.Addr { return netip.AddrFrom4([4]byte(h[12:16])) }

// Dst returns the destination address.
func (h IPv4) Dst() netip.Addr { return netip.AddrFrom4([4]byte(h[16:20])) }

// SetHeader writes a 20-byte header without options and its checksum.
func (h IPv4) SetHeader(totalLen int, id uint16, ttl, proto uint8, src, dst [4]byte) {
	h[0] = 0x45
	h[1] = 0
	binary.BigEndian.PutUint16(h[2:4], uint16(totalLen))
	binary.BigEndian.PutUint16(h[4:6], id)
	binary.BigEndian.PutUint16(h[6:8], 0x4000) // DF
	h[8] = ttl
	h[9] = proto
	h[10], h[11] = 0, 0
	copy(h[12:16], src[:])
	copy(h[16:20], dst[:])
	binary.BigEndian.PutUint16(h[10:12], Fold(Checksum(h[:20], 0)))
}

// IPv6 is a view of an IPv6 fixed header (and what follows it).
type IPv6 []byte

// PayloadLen returns the Payload Length field.
func (h IPv6) PayloadLen() int { return int(binary.BigEndian.Uint16(h[4:6])) }

// NextHeader returns the Next Header field.
func (h IPv6) NextHeader() uint8 { return h[6] }

// HopLimit returns the Hop Limit field.
func (h IPv6) HopLimit() uint8 { return h[7] }

// Src returns the source address.
func (h IPv6) Src() netip.Addr { return netip.AddrFrom16([16]byte(h[8:24])) }

// Dst returns the destination address.
func (h IPv6) Dst() netip.Addr { return netip.AddrFrom16([16]byte(h[24:40])) }

// SetHeader writes the fixed header.
func (h IPv6) SetHeader(payloadLen int, next, hopLimit uint8, src, dst [16]byte) {
	binary.BigEndian.PutUint32(h[0:4], 6<<28)
	binary.BigEndian.PutUint16(h[4:6], uint16(payloadLen))
	h[6] = next
	h[7] = hopLimit
	copy(h[8:24], src[:])
	copy(h[24:40], dst[:])
}

// TCP flags.
const (
	TCPFin = 1 << 0
	TCPSyn = 1 << 1
	TCPRst = 1 << 2
	TCPPsh = 1 << 3
	TCPAck = 1 << 4
	TCPUrg = 1 << 5
	TCPEce = 1 << 6
	TCPCwr = 1 << 7
)

// TCP is a view of a TCP header (and what follows it).
type TCP []byte

// SrcPort returns the source port.
func (t TCP) SrcPort() uint16 { return binary.BigEndian.Uint16(t[0:2]) }

// DstPort returns the destination port.
func (t TCP) DstPort() uint16 { return binary.BigEndian.Uint16(t[2:4]) }

// Seq returns the sequence number.
func (t TCP) Seq() uint32 { return binary.BigEndian.Uint32(t[4:8]) }

// Ack returns the acknowledgement number.
func (t TCP) Ack() uint32 { return binary.BigEndian.Uint32(t[8:12]) }

// DataOffset returns the header length in bytes.
func (t TCP) DataOffset() int { return int(t[12]>>4) * 4 }

// Flags returns the flag bits (FIN..URG).
func (t TCP) Flags() uint8 { return t[13] & 0x3f }

// Window returns the raw (unscaled) window field.
func (t TCP) Window() uint16 { return binary.BigEndian.Uint16(t[14:16]) }

// Options returns the options bytes; t must hold DataOffset bytes.
func (t TCP) Options() []byte { return t[TCPMinLen:t.DataOffset()] }

// SetPorts writes the ports.
func (t TCP) SetPorts(src, dst uint16) {
	binary.BigEndian.PutUint16(t[0:2], src)
	binary.BigEndian.PutUint16(t[2:4], dst)
}

// SetSeqAck writes sequence and acknowledgement numbers.
func (t TCP) SetSeqAck(seq, ack uint32) {
	binary.BigEndian.PutUint32(t[4:8], seq)
	binary.BigEndian.PutUint32(t[8:12], ack)
}

// SetFlagsWindow writes the data offset (header length hlen), flags and window.
func (t TCP) SetFlagsWindow(hlen int, flags uint8, window uint16) {
	t[12] = uint8(hlen/4) << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:16], window)
	t[18], t[19] = 0, 0 // urgent pointer
}

// SetChecksum stores the checksum field.
func (t TCP) SetChecksum(c uint16) { binary.BigEndian.PutUint16(t[16:18], c) }

// TCPOptions are the options gopasta reads from a SYN.
type TCPOptions struct {
	MSS       uint16 // 0 if absent
	WScale    int    // -1 if absent
	SACKOK    bool
	Timestamp bool
}

// ParseTCPOptions reads MSS, window scale, SACK-permitted and timestamps from
// opts, stopping quietly at anything malformed.
func ParseTCPOptions(opts []byte) TCPOptions {
	o := TCPOptions{WScale: -1}
	for len(opts) > 0 {
		kind := opts[0]
		if kind == 0 {
			break
		}
		if kind == 1 {
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || int(opts[1]) < 2 || int(opts[1]) > len(opts) {
			break
		}
		l := int(opts[1])
		switch {
		case kind == 2 && l == 4:
			o.MSS = binary.BigEndian.Uint16(opts[2:4])
		case kind == 3 && l == 3:
			o.WScale = int(min(opts[2], 14))
		case kind == 4 && l == 2:
			o.SACKOK = true
		case kind == 8 && l == 10:
			o.Timestamp = true
		}
		opts = opts[l:]
	}
	return o
}

// UDP is a view of a UDP header (and what follows it).
type UDP []byte

// SrcPort returns the source port.
func (u UDP) SrcPort() uint16 { return binary.BigEndian.Uint16(u[0:2]) }

// DstPort returns the destination port.
func (u UDP) DstPort() uint16 { return binary.BigEndian.Uint16(u[2:4]) }

// Length returns the Length field.
func (u UDP) Length() int { return int(binary.BigEndian.Uint16(u[4:6])) }

// Checksum returns the checksum field.
func (u UDP) Checksum() uint16 { return binary.BigEndian.Uint16(u[6:8]) }

// Set writes ports and length and zeroes the checksum.
func (u UDP) Set(src, dst uint16, length int) {
	binary.BigEndian.PutUint16(u[0:2], src)
	binary.BigEndian.PutUint16(u[2:4], dst)
	binary.BigEndian.PutUint16(u[4:6], uint16(length))
	u[6], u[7] = 0, 0
}

// SetChecksum stores the checksum field.
func (u UDP) SetChecksum(c uint16) { binary.BigEndian.PutUint16(u[6:8], c) }

// ICMP is a view of an ICMP or ICMPv6 header (and what follows it).
type ICMP []byte

// Type returns the message type.
func (m ICMP) Type() uint8 { return m[0] }

// Code returns the message code.
func (m ICMP) Code() uint8 { return m[1] }

// Ident returns the echo identifier.
func (m ICMP) Ident() uint16 { return binary.BigEndian.Uint16(m[4:6]) }

// Seq returns the echo sequence number.
func (m ICMP) Seq() uint16 { return binary.BigEndian.Uint16(m[6:8]) }

// SetChecksum stores the checksum field.
func (m ICMP) SetChecksum(c uint16) { binary.BigEndian.PutUint16(m[2:4], c) }

// ICMP types gopasta uses.
const (
	ICMPv4EchoReply       = 0
	ICMPv4DestUnreach     = 3
	ICMPv4EchoRequest     = 8
	ICMPv4TimeExceeded    = 11
	ICMPv6DestUnreach     = 1
	ICMPv6PacketTooBig    = 2
	ICMPv6TimeExceeded    = 3
	ICMPv6EchoRequest     = 128
	ICMPv6EchoReply       = 129
	ICMPv6RouterSolicit   = 133
	ICMPv6RouterAdvert    = 134
	ICMPv6NeighborSolicit = 135
	ICMPv6NeighborAdvert  = 136
)
