package tcp

import (
	"crypto/rand"
	"encoding/binary"
	"math/bits"
	"net/netip"
	"time"
)

// Sequence numbers live in a 32-bit circle: a comes before b when the signed
// distance from b to a is negative. This is only meaningful for numbers less
// than 2^31 apart, which every window we deal with is.

func seqLT(a, b uint32) bool { return int32(a-b) < 0 }
func seqLE(a, b uint32) bool { return int32(a-b) <= 0 }
func seqGT(a, b uint32) bool { return int32(a-b) > 0 }
func seqGE(a, b uint32) bool { return int32(a-b) >= 0 }

// seqInRange reports whether lo <= s <= hi on the circle.
func seqInRange(s, lo, hi uint32) bool { return s-lo <= hi-lo }

// isnKey is the secret of RFC 6528's F(): random per process, so that
// initial sequence numbers cannot be predicted from outside, while the 4 µs
// clock M keeps them increasing for a reused 4-tuple.
var isnKey = func() (k [2]uint64) {
	var b [16]byte
	_, _ = rand.Read(b[:])
	k[0] = binary.LittleEndian.Uint64(b[:8])
	k[1] = binary.LittleEndian.Uint64(b[8:])
	return k
}()

var isnEpoch = time.Now()

// tcpISN returns the initial sequence number gopasta uses towards the guest
// for the connection (local = what the guest sees as the far end, remote =
// the guest): ISN = M + F(localip, localport, remoteip, remoteport, key), RFC
// 6528, with F = SipHash-2-4 and M a 4-microsecond clock.
func tcpISN(local, remote netip.AddrPort) uint32 {
	var b [36]byte
	l16, r16 := local.Addr().As16(), remote.Addr().As16()
	copy(b[0:16], l16[:])
	copy(b[16:32], r16[:])
	binary.BigEndian.PutUint16(b[32:], local.Port())
	binary.BigEndian.PutUint16(b[34:], remote.Port())
	h := sipHash24(isnKey[0], isnKey[1], b[:])
	m := uint32(time.Since(isnEpoch).Microseconds() / 4)
	return uint32(h) + m
}

// sipHash24 is SipHash-2-4 (Aumasson and Bernstein) of msg under the key
// (k0, k1), both little-endian halves of the 128-bit key.
func sipHash24(k0, k1 uint64, msg []byte) uint64 {
	v0 := k0 ^ 0x736f6d6570736575
	v1 := k1 ^ 0x646f72616e646f6d
	v2 := k0 ^ 0x6c7967656e657261
	v3 := k1 ^ 0x7465646279746573
	round := func() {
		v0 += v1
		v1 = bits.RotateLeft64(v1, 13)
		v1 ^= v0
		v0 = bits.RotateLeft64(v0, 32)
		v2 += v3
		v3 = bits.RotateLeft64(v3, 16)
		v3 ^= v2
		v0 += v3
		v3 = bits.RotateLeft64(v3, 21)
		v3 ^= v0
		v2 += v1
		v1 = bits.RotateLeft64(v1, 17)
		v1 ^= v2
		v2 = bits.RotateLeft64(v2, 32)
	}
	n := len(msg)
	for len(msg) >= 8 {
		m := binary.LittleEndian.Uint64(msg)
		v3 ^= m
		round()
		round()
		v0 ^= m
		msg = msg[8:]
	}
	last := uint64(n) << 56
	for i, c := range msg {
		last |= uint64(c) << (8 * i)
	}
	v3 ^= last
	round()
	round()
	v0 ^= last
	v2 ^= 0xff
	round()
	round()
	round()
	round()
	return v0 ^ v1 ^ v2 ^ v3
}
