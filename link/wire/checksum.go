// Package wire reads and writes the headers gopasta sees on the link:
// Ethernet, ARP, IPv4, IPv6, TCP, UDP, ICMP and ICMPv6. Headers are views
// over byte slices (type IPv4 []byte and so on), in the manner of gVisor's
// header package: no copies, no allocations, and every accessor assumes the
// caller validated the length first (the Parse functions do).
package wire

import (
	"encoding/binary"
	"math/bits"
)

// Checksum adds b to the running one's-complement sum initial (RFC 1071) and
// returns the partial sum, so that partial sums over a pseudo-header, a
// header and a payload can be chained without re-reading any byte. The
// result is at most 0x1fffe, so a handful of partial sums may be added
// together before Fold without overflowing.
//
// The one's-complement sum does not depend on byte order (RFC 1071 2(B)):
// b is summed as little-endian 64-bit words with add-with-carry, eight
// bytes per instruction, and the folded 16-bit result is byte-swapped once
// at the end. This is the one loop that touches every payload byte of every
// TCP segment, in both directions.
func Checksum(b []byte, initial uint32) uint32 {
	var sum, carries, c uint64
	for len(b) >= 64 {
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b[0:]), 0)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b[8:]), c)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b[16:]), c)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b[24:]), c)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b[32:]), c)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b[40:]), c)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b[48:]), c)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b[56:]), c)
		carries += c
		b = b[64:]
	}
	for len(b) >= 8 {
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b), 0)
		carries += c
		b = b[8:]
	}
	if len(b) > 0 {
		// The tail as a zero-padded little-endian word: a lone last byte
		// lands in the low half of its 16-bit word, which is the high
		// half in network order, as RFC 1071 pads it.
		var t uint64
		for i, v := range b {
			t |= uint64(v) << (8 * i)
		}
		sum, c = bits.Add64(sum, t, 0)
		carries += c
	}
	sum, c = bits.Add64(sum, carries, 0)
	sum += c // cannot carry again: sum is now below carries
	// Fold to 16 bits, back to network byte order, then add initial.
	sum = (sum >> 32) + (sum & 0xffffffff)
	sum = (sum >> 32) + (sum & 0xffffffff)
	sum = (sum >> 16) + (sum & 0xffff)
	sum = (sum >> 16) + (sum & 0xffff)
	return fold64(uint64(bits.ReverseBytes16(uint16(sum))) + uint64(initial))
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

// FoldUDP folds a UDP checksum: zero means "none" on the wire, so a
// computed zero is sent as all ones (RFC 768).
func FoldUDP(sum uint32) uint16 {
	c := Fold(sum)
	if c == 0 {
		return 0xffff
	}
	return c
}
