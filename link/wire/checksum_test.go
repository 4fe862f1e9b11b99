package wire_test

import (
	"math/rand/v2"
	"testing"

	"github.com/gopasta/gopasta/link/wire"
)

// refChecksum is RFC 1071 done the slow, obvious way: 16-bit words, end
// around carry after every addition.
func refChecksum(parts ...[]byte) uint16 {
	var all []byte
	for _, p := range parts {
		all = append(all, p...)
	}
	if len(all)%2 == 1 {
		all = append(all, 0)
	}
	s := uint32(0)
	for i := 0; i < len(all); i += 2 {
		s += uint32(all[i])<<8 | uint32(all[i+1])
		s = (s & 0xffff) + (s >> 16)
	}
	return ^uint16(s)
}

// TestChecksumReference checks Checksum, PseudoHeaderSum and Fold against
// the reference, with all-ones addresses among the inputs: a pseudo-header
// to 255.255.255.255 once overflowed a uint32 and made every DHCP
// DISCOVER from a real client fail its UDP checksum.
func TestChecksumReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ones4 := []byte{255, 255, 255, 255}
	ones16 := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	for i := 0; i < 5000; i++ {
		n := r.IntN(3000)
		if i%3 == 0 {
			n = 65535 - r.IntN(10)
		}
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(r.Uint32())
			if i%5 == 0 {
				b[j] = 0xff
			}
		}
		src, dst := make([]byte, 4), make([]byte, 4)
		if i%2 == 1 {
			src, dst = make([]byte, 16), make([]byte, 16)
		}
		for j := range src {
			src[j], dst[j] = byte(r.Uint32()), byte(r.Uint32())
		}
		switch i % 4 {
		case 0:
			copy(dst, ones16)
		case 1:
			copy(src, ones16)
			copy(dst, ones16)
		case 2:
			copy(dst, ones4)
		}
		proto := uint8(17)
		pseudo := append(append(append([]byte(nil), src...), dst...), 0, proto, byte(len(b)>>8), byte(len(b)))
		want := refChecksum(pseudo, b)
		got := wire.Fold(wire.Checksum(b, wire.PseudoHeaderSum(src, dst, proto, len(b))))
		if got != want {
			t.Fatalf("case %d (len %d, src %x dst %x): got %04x want %04x", i, len(b), src, dst, got, want)
		}
		if got := wire.Fold(wire.Checksum(b, 0)); got != refChecksum(b) {
			t.Fatalf("case %d plain: got %04x want %04x", i, got, refChecksum(b))
		}
		// Chaining split at an even offset gives the same sum.
		if n > 2 {
			k := r.IntN(n/2) * 2
			if got := wire.Fold(wire.Checksum(b[k:], wire.Checksum(b[:k], 0))); got != refChecksum(b) {
				t.Fatalf("case %d chained at %d", i, k)
			}
		}
	}
}
