package wire_test

import (
	"net/netip"
	"testing"

	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// policyCases is every spelling of the addresses the address policy
// singles out, with what ClassifyAddr must make of it.
var policyCases = []struct {
	addr string
	want wire.AddrClass
}{
	{"127.0.0.1", wire.AddrLoopback},
	{"127.255.255.254", wire.AddrLoopback},
	{"127.0.0.53", wire.AddrLoopback},
	{"::1", wire.AddrLoopback},
	{"::ffff:127.0.0.1", wire.AddrLoopback},
	{"::ffff:127.1.2.3", wire.AddrLoopback},
	{"::127.0.0.1", wire.AddrLoopback},
	{"::7f00:2", wire.AddrLoopback},
	{"0.0.0.0", wire.AddrUnspecified},
	{"::", wire.AddrUnspecified},
	{"0.0.0.1", wire.AddrThisNetwork},
	{"0.255.255.255", wire.AddrThisNetwork},
	{"::ffff:0.0.0.0", wire.AddrEmbeddedV4},
	{"::ffff:0.0.0.1", wire.AddrEmbeddedV4},
	{"::ffff:10.0.2.2", wire.AddrEmbeddedV4},
	{"::ffff:198.51.100.2", wire.AddrEmbeddedV4},
	{"::ffff:169.254.1.2", wire.AddrEmbeddedV4},
	{"::ffff:8.8.8.8", wire.AddrEmbeddedV4},
	{"::ffff:255.255.255.255", wire.AddrEmbeddedV4},
	{"::0.0.0.2", wire.AddrEmbeddedV4},
	{"::10.0.2.2", wire.AddrEmbeddedV4},
	{"::8.8.8.8", wire.AddrEmbeddedV4},
	{"1.2.3.4", wire.AddrOrdinary},
	{"10.0.2.2", wire.AddrOrdinary},
	{"2001:db8::1", wire.AddrOrdinary},
	{"fe80::1", wire.AddrOrdinary},
	{"::ffff:0:7f00:1", wire.AddrOrdinary}, // IPv4-translated: plain IPv6 to the kernel
	{"64:ff9b::7f00:1", wire.AddrOrdinary}, // NAT64: routed as IPv6
	{"1::1", wire.AddrOrdinary},
	{"0:0:0:1::1", wire.AddrOrdinary},
}

func TestClassifyAddr(t *testing.T) {
	for _, c := range policyCases {
		if got := wire.ClassifyAddr(netip.MustParseAddr(c.addr)); got != c.want {
			t.Errorf("%s: class %d, want %d", c.addr, got, c.want)
		}
	}
	if got := wire.ClassifyAddr(netip.Addr{}); got != wire.AddrUnspecified {
		t.Errorf("zero Addr: class %d", got)
	}
}

// TestParsePolicy sends a TCP SYN and a UDP datagram from and to every
// spelling, in a frame of the spelling's own IP version: each refused
// class is refused by ParseFrame with its reason, as a source and as a
// destination (an unspecified address passes: see GuestAddrReason).
func TestParsePolicy(t *testing.T) {
	for _, c := range policyCases {
		a := netip.MustParseAddr(c.addr)
		guest, far := guest6, far6
		if a.Is4() {
			guest, far = guest4, far4
		}
		want := wire.ReasonNone
		switch c.want {
		case wire.AddrLoopback:
			want = wire.ReasonLoopback
		case wire.AddrThisNetwork, wire.AddrEmbeddedV4:
			want = wire.ReasonMartian
		}
		for _, l4 := range []struct {
			proto uint8
			b     []byte
		}{
			{wire.ProtoTCP, wiretest.TCP(40000, 22, 1, 0, wire.TCPSyn, nil)},
			{wire.ProtoUDP, wiretest.UDP(40000, 53, []byte("q"))},
		} {
			if _, err := parse(t, wiretest.IP(guest, a, l4.proto, append([]byte(nil), l4.b...))); err != nil && err != want || err == nil && want != wire.ReasonNone {
				t.Errorf("to %s, proto %d: %v, want %v", c.addr, l4.proto, err, want)
			}
			wantSrc := want
			if c.want == wire.AddrUnspecified || (a.Is4() && a.As4()[0] >= 224) {
				wantSrc = wire.ReasonNone
			}
			if _, err := parse(t, wiretest.IP(a, far, l4.proto, append([]byte(nil), l4.b...))); err != nil && err != wantSrc || err == nil && wantSrc != wire.ReasonNone {
				t.Errorf("from %s, proto %d: %v, want %v", c.addr, l4.proto, err, wantSrc)
			}
		}
	}
}
