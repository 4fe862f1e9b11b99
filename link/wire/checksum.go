// Package wire reads and writes the headers gopasta sees on the link:
// Ethernet, ARP, IPv4, IPv6, TCP, UDP, ICMP and ICMPv6. Headers are views
// over byte slices (type IPv4 []byte and so on), in the manner of gVisor's
// header package: no copies, no allocations, and every accessor assumes the
// caller validated the length first (the Parse functions do).
package wire

import "encoding/binary"

// Checksum adds b to the running one's-complement sum initial (RFC 1071) and
// returns the partial sum, so that partial sums over a pseudo-header, a
// header and a payload can be chained without re-reading any byte. The
// result is at most 0x1fffe, so a handful of partial sums may be added
// together before Fold without overflowing.
func Checksum(b []byte, initial uint32) uint32 {
	s := uint64(initial)
	for len(b) >= 32 {
		s += uint64(binary.BigEndian.Uint32(b[0:])) + uint64(binary.BigEndian.Uint32(b[4:])) +
			uint64(binary.BigEndian.Uint32(b[8:])) + uint64(binary.BigEndian.Uint32(b[12:])) +
			uint64(binary.BigEndian.Uint32(b[16:])) + uint64(binary.BigEndian.Uint32(b[20:])) +
			uint64(binary.BigEndian.Uint32(b[24:])) + uint64(binary.BigEndian.Uint32(b[28:]))
		b = b[32:]
	}
	for len(b) >= 4 {
		s += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	return fold64(s)
}

// fold64 folds a 64-bit one's-complement sum to 16 bits (plus at most a
// carry bit), so that callers may add a few partial sums and small values
// with plain uint32 arithmetic without overflowing (2^32 is congruent to 1
// modulo 0xffff, so a lost carry out of bit 31 would corrupt the sum).
func fold64(s uint64) uint32 {
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 16) + (s & 0xffff)
	s = (s >> 16) + (s & 0xffff)
	return uint32(s)
}

// Fold folds a partial sum into the 16-bit one's-complement checksum value
// to store in a header (already complemented).
func Fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = (sum >> 16) + (sum & 0xffff)
	}
	return ^uint16(sum)
}

// PseudoHeaderSum returns the partial sum of the IPv4 or IPv6 pseudo-header
// for protocol proto and an L4 length of length bytes. src and dst must both
// be 4 or both be 16 bytes long.
func PseudoHeaderSum(src, dst []byte, proto uint8, length int) uint32 {
	s := Checksum(src, 0)
	s = Checksum(dst, s)
	return fold64(uint64(s) + uint64(proto) + uint64(length))
}
