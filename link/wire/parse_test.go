package wire_test

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

var (
	guest4 = netip.MustParseAddr("10.0.2.100")
	far4   = netip.MustParseAddr("93.184.216.34")
	guest6 = netip.MustParseAddr("2001:db8::100")
	far6   = netip.MustParseAddr("2001:db8:1::1")
)

func parse(t *testing.T, b []byte) (wire.Parsed, error) {
	t.Helper()
	var p wire.Parsed
	err := wire.ParseFrame(b, &p)
	return p, err
}

func TestParseTCP4(t *testing.T) {
	b := wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 1, 0, wire.TCPSyn, []byte("hello")))
	// Ethernet padding after the datagram must be ignored.
	b = append(b, make([]byte, 7)...)
	p, err := parse(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if p.Proto != wire.ProtoTCP || p.Src != guest4 || p.Dst != far4 || p.SrcPort != 40000 || p.DstPort != 80 {
		t.Fatalf("parsed %+v", p)
	}
	if p.L3 != 14 || p.L4 != 34 || p.Payload != 54 || p.End != 59 || p.TCPFlags != wire.TCPSyn {
		t.Fatalf("offsets %+v", p)
	}
	if string(b[p.Payload:p.End]) != "hello" {
		t.Fatalf("payload %q", b[p.Payload:p.End])
	}
}

func TestParseIPv4Options(t *testing.T) {
	// Rebuild a UDP datagram with 8 bytes of IPv4 options (IHL 7).
	l4 := wiretest.UDP(5000, 53, []byte("q"))
	wiretest.FixChecksum(guest4, far4, wire.ProtoUDP, l4)
	ip := make([]byte, 28+len(l4))
	wire.IPv4(ip).SetHeader(len(ip), 1, 64, wire.ProtoUDP, guest4.As4(), far4.As4())
	ip[0] = 0x47
	ip[20] = 1 // NOPs
	ip[21], ip[22], ip[23] = 1, 1, 0
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], wire.Fold(wire.Checksum(ip[:28], 0)))
	copy(ip[28:], l4)
	b := wiretest.Eth(wiretest.OurMAC, wiretest.GuestMAC, wire.EtherTypeIPv4, ip)
	p, err := parse(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if p.L4 != 14+28 || p.Payload != 14+36 || p.DstPort != 53 {
		t.Fatalf("parsed %+v", p)
	}
}

func TestParseIPv6ExtHeaders(t *testing.T) {
	l4 := wiretest.UDP(5000, 53, []byte("query"))
	wiretest.FixChecksum(guest6, far6, wire.ProtoUDP, l4)
	// Hop-by-hop (8 bytes) then destination options (16 bytes) then UDP.
	ext := make([]byte, 24)
	ext[0], ext[1] = 60, 0 // next: dest opts, 8 bytes
	ext[2] = 1             // PadN
	ext[3] = 4
	ext[8], ext[9] = wire.ProtoUDP, 1 // next: UDP, 16 bytes
	ext[10], ext[11] = 1, 12
	ip := make([]byte, 40+len(ext)+len(l4))
	wire.IPv6(ip).SetHeader(len(ext)+len(l4), 0, 64, guest6.As16(), far6.As16())
	copy(ip[40:], ext)
	copy(ip[64:], l4)
	b := wiretest.Eth(wiretest.OurMAC, wiretest.GuestMAC, wire.EtherTypeIPv6, ip)
	p, err := parse(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if p.Proto != wire.ProtoUDP || p.L4 != 14+64 || p.Payload != 14+72 || string(b[p.Payload:p.End]) != "query" {
		t.Fatalf("parsed %+v", p)
	}

	// A fragment header is refused, as is hop-by-hop in second place.
	ip = b[14:]
	ip[6] = 44
	if _, err := parse(t, b); err != wire.ReasonFragment {
		t.Fatalf("fragment: %v", err)
	}
	ip[6], ip[40] = 60, 0
	if _, err := parse(t, b); err != wire.ReasonIPHeader {
		t.Fatalf("late hop-by-hop: %v", err)
	}
}

func TestParseRejects(t *testing.T) {
	good4 := func() []byte {
		return wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(5000, 53, []byte("abcd")))
	}
	good6 := func() []byte {
		return wiretest.IP(guest6, far6, wire.ProtoTCP, wiretest.TCP(5000, 80, 1, 2, wire.TCPAck, []byte("abcd")))
	}
	fixIP := func(b []byte) []byte {
		h := b[14:]
		h[10], h[11] = 0, 0
		binary.BigEndian.PutUint16(h[10:], wire.Fold(wire.Checksum(h[:h[0]&15*4], 0)))
		return b
	}
	cases := []struct {
		name string
		b    []byte
		want wire.Reason
	}{
		{"empty", nil, wire.ReasonShort},
		{"ethertype", wiretest.Eth(wiretest.OurMAC, wiretest.GuestMAC, 0x88cc, make([]byte, 40)), wire.ReasonEtherType},
		{"arp-ipx", func() []byte {
			b := wiretest.ARP(1, [6]byte{}, wiretest.GuestMAC, guest4, [6]byte{}, far4)
			b[16] = 0x81
			return b
		}(), wire.ReasonARP},
		{"version", func() []byte { b := good4(); b[14] = 0x65; return b }(), wire.ReasonIPVersion},
		{"ihl", func() []byte { b := good4(); b[14] = 0x44; return fixIP(b) }(), wire.ReasonIPHeader},
		{"ihl-long", func() []byte { b := good4(); b[14] = 0x4f; return b }(), wire.ReasonShort},
		{"totlen-short", func() []byte { b := good4(); b[17] = 10; return fixIP(b) }(), wire.ReasonIPLength},
		{"totlen-long", func() []byte { b := good4(); b[17] += 10; return fixIP(b) }(), wire.ReasonShort},
		{"ip-checksum", func() []byte { b := good4(); b[24] ^= 1; return b }(), wire.ReasonIPChecksum},
		{"frag-mf", func() []byte { b := good4(); b[20] = 0x20; return fixIP(b) }(), wire.ReasonFragment},
		{"frag-off", func() []byte { b := good4(); b[21] = 0x08; return fixIP(b) }(), wire.ReasonFragment},
		{"loopback-src", wiretest.IP(netip.MustParseAddr("127.0.0.1"), far4, wire.ProtoUDP, wiretest.UDP(1, 2, nil)), wire.ReasonLoopback},
		{"loopback-dst", wiretest.IP(guest4, netip.MustParseAddr("127.0.0.53"), wire.ProtoUDP, wiretest.UDP(1, 53, nil)), wire.ReasonLoopback},
		{"loopback6", wiretest.IP(guest6, netip.IPv6Loopback(), wire.ProtoUDP, wiretest.UDP(1, 53, nil)), wire.ReasonLoopback},
		{"mapped-loopback6", wiretest.IP(netip.MustParseAddr("::ffff:127.0.0.1"), far6, wire.ProtoUDP, wiretest.UDP(1, 53, nil)), wire.ReasonLoopback},
		{"multicast-src", wiretest.IP(netip.MustParseAddr("224.0.0.1"), far4, wire.ProtoUDP, wiretest.UDP(1, 2, nil)), wire.ReasonBadSource},
		{"broadcast-src", wiretest.IP(netip.MustParseAddr("255.255.255.255"), far4, wire.ProtoUDP, wiretest.UDP(1, 2, nil)), wire.ReasonBadSource},
		{"multicast-src6", wiretest.IP(netip.MustParseAddr("ff02::1"), far6, wire.ProtoUDP, wiretest.UDP(1, 2, nil)), wire.ReasonBadSource},
		{"udp-checksum", func() []byte { b := good4(); b[len(b)-1] ^= 0x55; return b }(), wire.ReasonL4Checksum},
		{"udp-len-short", func() []byte { b := good4(); b[14+20+5] = 4; return b }(), wire.ReasonL4Header},
		{"udp-len-long", func() []byte { b := good4(); b[14+20+5] = 200; return b }(), wire.ReasonShort},
		{"udp-port0", wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(1, 0, nil)), wire.ReasonL4Header},
		{"udp6-zero-checksum", func() []byte {
			b := wiretest.IP(guest6, far6, wire.ProtoUDP, wiretest.UDP(1, 2, nil))
			b[14+40+6], b[14+40+7] = 0, 0
			return b
		}(), wire.ReasonL4Checksum},
		{"tcp-checksum", func() []byte { b := good6(); b[len(b)-2] ^= 0x10; return b }(), wire.ReasonL4Checksum},
		{"tcp-doff-small", func() []byte { b := good6(); b[14+40+12] = 0x40; return b }(), wire.ReasonL4Header},
		{"tcp-doff-big", func() []byte { b := good6(); b[14+40+12] = 0xf0; return b }(), wire.ReasonL4Header},
		{"ipv6-plen-long", func() []byte { b := good6(); b[14+5] += 8; return b }(), wire.ReasonShort},
		{"icmp-checksum", func() []byte {
			b := wiretest.IP(guest4, far4, wire.ProtoICMP, wiretest.ICMPEcho(8, 1, 1, []byte("ping")))
			b[len(b)-1]++
			return b
		}(), wire.ReasonL4Checksum},
		{"icmpv6-checksum", func() []byte {
			b := wiretest.IP(guest6, far6, wire.ProtoICMPv6, wiretest.ICMPEcho(128, 1, 1, []byte("ping")))
			b[len(b)-1]++
			return b
		}(), wire.ReasonL4Checksum},
		{"icmp-short", wiretest.IP(guest4, far4, wire.ProtoICMP, []byte{8, 0, 0, 0}), wire.ReasonShort},
	}
	for _, c := range cases {
		if _, err := parse(t, c.b); err != c.want {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

// TestParseTruncated cuts valid frames of every kind at every length: each
// cut must be refused (or, where the cut only removes Ethernet padding or
// lands on a valid shorter frame, accepted consistently), never panic.
func TestParseTruncated(t *testing.T) {
	frames := [][]byte{
		wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 1, 0, wire.TCPSyn, []byte("x"))),
		wiretest.IP(guest6, far6, wire.ProtoUDP, wiretest.UDP(4000, 53, []byte("abc"))),
		wiretest.IP(guest4, far4, wire.ProtoICMP, wiretest.ICMPEcho(8, 7, 1, []byte("p"))),
		wiretest.IP(guest6, far6, wire.ProtoICMPv6, wiretest.NeighborSolicit(far6, &wiretest.GuestMAC)),
		wiretest.ARP(1, link6Broadcast, wiretest.GuestMAC, guest4, [6]byte{}, far4),
	}
	for fi, b := range frames {
		for n := 0; n < len(b); n++ {
			if _, err := parse(t, b[:n]); err == nil {
				t.Errorf("frame %d cut to %d bytes accepted", fi, n)
			}
		}
		if _, err := parse(t, b); err != nil {
			t.Errorf("frame %d whole: %v", fi, err)
		}
	}
}

var link6Broadcast = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func TestParseAllocs(t *testing.T) {
	b := wiretest.IP(guest6, far6, wire.ProtoTCP, wiretest.TCP(5000, 80, 1, 2, wire.TCPAck, make([]byte, 1400)))
	var p wire.Parsed
	n := testing.AllocsPerRun(100, func() {
		if err := wire.ParseFrame(b, &p); err != nil {
			t.Fatal(err)
		}
		b[14] = 0x70 // a wrong version: the error must not allocate either
		if err := wire.ParseFrame(b, &p); err != wire.ReasonIPVersion {
			t.Fatal(err)
		}
		b[14] = 0x60
	})
	if n != 0 {
		t.Fatalf("%v allocs per parse", n)
	}
}

func TestDNSSL(t *testing.T) {
	var b [64]byte
	n := wire.PutNDPDNSSL(b[:], 100, []string{"example.com", "", "a..b", "x."})
	// 8 header + "\x07example\x03com\x00" (13) + "\x01x\x00" (3) = 24.
	if n != 24 || b[1] != 3 {
		t.Fatalf("len %d opt len %d", n, b[1])
	}
	want := "\x07example\x03com\x00\x01x\x00"
	if string(b[8:8+len(want)]) != want {
		t.Fatalf("encoded %q", b[8:n])
	}
}

func TestLinkLocalFromMAC(t *testing.T) {
	got := wire.LinkLocalFromMAC([6]byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55})
	if got != netip.MustParseAddr("fe80::9855:9aff:fe55:9a55") {
		t.Fatal(got)
	}
}

func FuzzParseFrame(f *testing.F) {
	f.Add(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 1, 0, wire.TCPSyn, []byte("x"))))
	f.Add(wiretest.IP(guest6, far6, wire.ProtoUDP, wiretest.UDP(4000, 53, []byte("abc"))))
	f.Add(wiretest.IP(guest4, far4, wire.ProtoICMP, wiretest.ICMPEcho(8, 7, 1, []byte("p"))))
	f.Add(wiretest.IP(guest6, far6, wire.ProtoICMPv6, wiretest.RouterSolicit(&wiretest.GuestMAC)))
	f.Add(wiretest.ARP(1, link6Broadcast, wiretest.GuestMAC, guest4, [6]byte{}, far4))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p, tp wire.Parsed
		// The trusted parse accepts what the strict one does, and
		// reads no byte of a TCP payload: scrambling it changes nothing.
		terr := wire.ParseFrameTrustedL4(b, &tp)
		if err := wire.ParseFrame(b, &p); err == nil && (terr != nil || tp.Payload != p.Payload || tp.End != p.End) {
			t.Fatalf("trusted parse: %v, payload %d end %d; strict: payload %d end %d", terr, tp.Payload, tp.End, p.Payload, p.End)
		}
		if terr == nil && tp.Proto == wire.ProtoTCP {
			c := append([]byte(nil), b...)
			for i := tp.Payload; i < tp.End; i++ {
				c[i] ^= 0xa5
			}
			var tp2 wire.Parsed
			if err := wire.ParseFrameTrustedL4(c, &tp2); err != nil || tp2.Payload != tp.Payload || tp2.End != tp.End {
				t.Fatalf("trusted parse read the payload: %v", err)
			}
		}
		if err := wire.ParseFrame(b, &p); err != nil {
			if _, ok := err.(wire.Reason); !ok {
				t.Fatalf("error of type %T", err)
			}
			return
		}
		// Accepted frames must have consistent offsets that the views
		// can be used on without bounds panics.
		if !(p.L3 == wire.EthernetLen && p.L3 <= p.L4 && p.L4 <= p.Payload && p.Payload <= p.End && p.End <= len(b)) {
			t.Fatalf("offsets %+v len %d", p, len(b))
		}
		switch p.Proto {
		case wire.ProtoTCP:
			// The options of a SYN are what a flow takes MSS and window
			// scale from.
			_ = wire.ParseTCPOptions(wire.TCP(b[p.L4:p.End]).Options())
		case wire.ProtoICMP, wire.ProtoICMPv6:
			_ = wire.ICMP(b[p.L4:p.End]).Seq()
		}
	})
}

// ParseFrameTrustedL4 takes a TCP segment whatever its checksum says
// (the payload need not be there), and checks everything else as
// ParseFrame does: a datagram's checksum too.
func TestParseFrameTrustedL4(t *testing.T) {
	seg := wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 1, 0, wire.TCPAck, []byte("payload")))
	seg[len(seg)-1] ^= 1
	var p wire.Parsed
	if err := wire.ParseFrame(seg, &p); err != wire.ReasonL4Checksum {
		t.Fatalf("strict parse of a bad TCP checksum: %v", err)
	}
	if err := wire.ParseFrameTrustedL4(seg, &p); err != nil || p.Proto != wire.ProtoTCP || p.Payload != 54 {
		t.Fatalf("trusted parse of a TCP segment: %v, payload at %d", err, p.Payload)
	}
	udp := wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(4000, 53, []byte("abc")))
	udp[len(udp)-1] ^= 1
	if err := wire.ParseFrameTrustedL4(udp, &p); err != wire.ReasonL4Checksum {
		t.Fatalf("trusted parse of a bad UDP checksum: %v", err)
	}
	if err := wire.ParseFrameTrustedL4(seg[:40], &p); err == nil {
		t.Fatal("trusted parse of a truncated segment succeeded")
	}
}

func BenchmarkChecksum(b *testing.B) {
	for _, size := range []int{64, 1500, 65535} {
		buf := make([]byte, size)
		for i := range buf {
			buf[i] = byte(i * 7)
		}
		b.Run(itoa(size), func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			var s uint32
			for b.Loop() {
				s = wire.Checksum(buf, s)
			}
			_ = s
		})
	}
}

func BenchmarkParseFrameTCP(b *testing.B) {
	f := wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(5000, 80, 1, 2, wire.TCPAck, make([]byte, 1460)))
	var p wire.Parsed
	b.SetBytes(int64(len(f)))
	b.ReportAllocs()
	for b.Loop() {
		if err := wire.ParseFrame(f, &p); err != nil {
			b.Fatal(err)
		}
	}
}

func itoa(n int) string {
	s := ""
	for {
		s = string(rune('0'+n%10)) + s
		n /= 10
		if n == 0 {
			return s
		}
	}
}
