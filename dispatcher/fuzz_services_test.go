package dispatcher

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv6"

	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// The structured fuzz targets here do not mutate frames: they read the
// fuzzer's bytes as choices for a generator that builds a valid message of
// the service's protocol (right checksums, right lengths), with as many
// options of whatever kind the choices say. Mutating a seed frame never
// makes a SOLICIT with 1600 IA_NAs or a DISCOVER with 60 KB of option 82,
// a generator does it with a few bytes of input.

// choices reads a fuzz input as a sequence of decisions; past its end
// every decision is zero, so that any input builds a message.
type choices struct{ b []byte }

func (c *choices) u8() byte {
	if len(c.b) == 0 {
		return 0
	}
	v := c.b[0]
	c.b = c.b[1:]
	return v
}

func (c *choices) u16() uint16 { return uint16(c.u8())<<8 | uint16(c.u8()) }

// bytes returns n bytes: the first 16 (at most) taken from the input,
// then a pattern, so that a long option costs the fuzzer one length and
// does not swallow the decisions after it.
func (c *choices) bytes(n int) []byte {
	out := make([]byte, n)
	k := copy(out, c.b[:min(len(c.b), 16)])
	c.b = c.b[k:]
	for i := k; i < n; i++ {
		out[i] = byte(i)
	}
	return out
}

// fill returns n bytes of a pattern chosen by one byte of the input: the
// content of a long option, which costs the fuzzer one decision.
func (c *choices) fill(n int) []byte {
	out := make([]byte, n)
	v := c.u8()
	for i := range out {
		out[i] = v + byte(i)
	}
	return out
}

// maxServiceLen is the most a generated UDP payload may take: the harness
// link's MTU less the IPv6 and UDP headers.
const maxServiceLen = 65520 - wire.IPv6Len - wire.UDPLen

// genDHCPv4 builds a BOOTREQUEST from the guest: a message type, the
// fields a server looks at, and up to 255 option records, each a code, a
// length and a count of repeats (RFC 3396 concatenates repeats: that is
// how a client makes a 60 KB option 82).
func genDHCPv4(c *choices) []byte {
	m := make([]byte, 240, 1024)
	m[0], m[1], m[2] = 1, 1, 6 // BOOTREQUEST, Ethernet, hlen
	if c.u8()&1 != 0 {
		m[1] = c.u8() // another hardware type now and then
	}
	copy(m[4:8], c.bytes(4)) // xid
	if c.u8()&1 != 0 {
		m[10] = 0x80 // broadcast
	}
	switch c.u8() % 4 { // ciaddr
	case 1:
		copy(m[12:16], guest4.AsSlice())
	case 2:
		copy(m[12:16], c.bytes(4))
	}
	copy(m[28:34], guestMAC[:])
	binary.BigEndian.PutUint32(m[236:], 0x63825363)
	m = append(m, 53, 1, c.u8()%10)
	if c.u8()&1 != 0 { // server identifier: ours, or another
		sid := gw4.AsSlice()
		if c.u8()&1 != 0 {
			sid = c.bytes(4)
		}
		m = append(m, 54, 4)
		m = append(m, sid...)
	}
	if c.u8()&1 != 0 { // requested address
		m = append(m, 50, 4)
		m = append(m, c.bytes(4)...)
	}
	for n := int(c.u8()); n > 0 && len(c.b) > 0; n-- {
		code, l := c.u8(), int(c.u8())
		switch c.u8() % 4 { // favour the options a reply echoes
		case 0:
			code = byte(dhcpv4.OptionRelayAgentInformation)
		case 1:
			code = byte(dhcpv4.OptionClientIdentifier)
		}
		if code == 0 || code == 255 {
			code = 61
		}
		rep := int(c.u8()) + 1
		data := c.fill(l)
		for ; rep > 0 && len(m)+2+l+1 <= maxServiceLen; rep-- {
			m = append(m, code, byte(l))
			m = append(m, data...)
		}
	}
	if len(m)+1 > maxServiceLen {
		m = m[:maxServiceLen-1]
	}
	return append(m, 255)
}

// genDHCPv6 builds a client message: any type, a client DUID of any kind
// and length, our server ID or another or none, up to 4095 IA_NAs (each
// with up to three addresses), IA_TAs, rapid commit, an option request
// option, and other options of any code.
func genDHCPv6(c *choices) []byte {
	m := []byte{c.u8()%13 + 1, c.u8(), c.u8(), c.u8()}
	opt := func(code uint16, data []byte) bool {
		if len(m)+4+len(data) > maxServiceLen {
			return false
		}
		m = binary.BigEndian.AppendUint16(m, code)
		m = binary.BigEndian.AppendUint16(m, uint16(len(data)))
		m = append(m, data...)
		return true
	}
	switch k := c.u8(); k % 4 { // client ID
	case 0: // DUID-LL of the guest's MAC
		opt(1, append([]byte{0, 3, 0, 1}, guestMAC[:]...))
	case 1: // a DUID of any length
		opt(1, c.bytes(int(c.u16())%1024))
	case 2: // none
	case 3: // two
		opt(1, append([]byte{0, 3, 0, 1}, guestMAC[:]...))
		opt(1, c.bytes(int(c.u8())))
	}
	switch c.u8() % 3 { // server ID
	case 1:
		opt(2, append([]byte{0, 3, 0, 1}, ourMAC[:]...))
	case 2:
		opt(2, c.bytes(int(c.u8())))
	}
	nIA := int(c.u16()) % 4096
	addrs := int(c.u8()) % 4
	for i := 0; i < nIA; i++ {
		ia := binary.BigEndian.AppendUint32(nil, uint32(i))
		ia = append(ia, make([]byte, 8)...) // T1, T2
		for range addrs {
			ia = binary.BigEndian.AppendUint16(ia, 5)
			ia = binary.BigEndian.AppendUint16(ia, 24)
			ia = append(ia, guest6.AsSlice()...)
			ia = append(ia, make([]byte, 8)...)
		}
		if !opt(3, ia) {
			break
		}
	}
	for n := int(c.u8()) % 8; n > 0; n-- {
		opt(4, c.bytes(4+int(c.u8())%40)) // IA_TA
	}
	if c.u8()&1 != 0 {
		opt(14, nil) // rapid commit
	}
	if c.u8()&1 != 0 {
		opt(6, c.bytes(2*int(c.u8()))) // option request
	}
	for n := int(c.u8()); n > 0 && len(c.b) > 0; n-- {
		code, l, rep := c.u16(), int(c.u16())%2048, int(c.u8()%16)+1
		data := c.fill(l)
		for ; rep > 0; rep-- {
			if !opt(code, data) {
				break
			}
		}
	}
	return m
}

// genNDP builds an ICMPv6 message of the NDP range (router and neighbour
// solicitations and advertisements, redirects) from the unspecified, the
// guest's link-local or global address, to the all-routers, a
// solicited-node or our address, with a target and up to 63 options of
// any type and length (zero included, which is invalid).
func genNDP(c *choices) []byte {
	typ := 133 + c.u8()%5
	srcs := []netip.Addr{guestLL, guest6, netip.IPv6Unspecified(), netip.MustParseAddr("fe80::99")}
	src := srcs[c.u8()%4]
	var target netip.Addr
	switch c.u8() % 5 {
	case 0:
		target = gw6
	case 1:
		target = guest6
	case 2:
		target = dns6
	case 3:
		target = netip.AddrFrom16([16]byte(c.bytes(16)))
	default:
		target = guestLL
	}
	dsts := []netip.Addr{netip.MustParseAddr("ff02::2"), wiretest.SolicitedNode(target), gw6, netip.MustParseAddr("ff02::1")}
	dst := dsts[c.u8()%4]
	code := byte(0)
	if c.u8()%8 == 0 {
		code = c.u8()
	}
	b := []byte{typ, code, 0, 0}
	switch typ {
	case 133: // RS: reserved
		b = append(b, 0, 0, 0, 0)
	case 134: // RA
		b = append(b, c.bytes(12)...)
	case 135, 136: // NS, NA: flags, target
		b = append(b, c.u8(), 0, 0, 0)
		b = append(b, target.AsSlice()...)
	case 137: // redirect: target, destination
		b = append(b, 0, 0, 0, 0)
		b = append(b, target.AsSlice()...)
		b = append(b, c.bytes(16)...)
	}
	for n := int(c.u8()) % 64; n > 0; n-- {
		ot, ol := c.u8()%8+1, int(c.u8()%4)
		if ot == 1 && c.u8()&1 != 0 {
			b = append(b, 1, 1)
			b = append(b, guestMAC[:]...)
			continue
		}
		if ol == 0 && c.u8()&1 != 0 {
			ol = 1 // mostly valid lengths; now and then a zero one
		}
		if ol == 0 {
			b = append(b, ot, 0)
			continue
		}
		b = append(b, ot, byte(ol))
		b = append(b, c.bytes(ol*8-2)...)
	}
	dstMAC := ourMAC
	if dst.IsMulticast() {
		dstMAC = wire.MulticastMAC(dst)
	}
	return wiretest.IPFrom(guestMAC, dstMAC, src, dst, wire.ProtoICMPv6, b)
}

// serviceFuzz feeds the frame gen builds from each input to an offline
// dispatcher and checks what must hold for any input: no panic, every
// reply parses, fits the MTU, and passes check.
func serviceFuzz(f *testing.F, seeds [][]byte, gen func(*choices) []byte, check func(t *testing.T, reply []byte, p *wire.Parsed)) {
	for _, s := range seeds {
		f.Add(s)
	}
	d, guest, handles := offline(f)
	batch := make([]*link.Frame, 1)
	var p wire.Parsed
	f.Fuzz(func(t *testing.T, in []byte) {
		b := gen(&choices{b: in})
		if len(b) > link.MaxFrameSize {
			t.Fatalf("generator made a %d-byte frame", len(b))
		}
		if batch[0] == nil {
			batch[0] = link.GetFrame(link.MaxFrameSize)
		}
		fr := batch[0]
		fr.Data = fr.Data[:copy(fr.Data[:cap(fr.Data)], b)]
		d.handleBatch(batch)
		drainFakes(*handles)
		if n := d.Stats()["dispatcher_panics"]; n != 0 {
			t.Fatalf("handling panicked (%d)", n)
		}
		for !d.env.Out.Idle() {
			runtime.Gosched()
		}
		for {
			select {
			case out := <-guest.Frames():
				if err := wire.ParseFrame(out, &p); err != nil {
					t.Fatalf("reply does not parse (%v): %x", err, out)
				}
				if p.End-wire.EthernetLen > d.cfg.MTU {
					t.Fatalf("reply of %d bytes over the MTU", p.End-wire.EthernetLen)
				}
				check(t, out, &p)
				continue
			default:
			}
			break
		}
	})
}

// FuzzDHCPv4 drives the DHCPv4 server with generated requests (genDHCPv4):
// a reply never carries option 82, nor a client identifier longer than
// one option.
func FuzzDHCPv4(f *testing.F) {
	gen := func(c *choices) []byte {
		return dhcpFrame4(genDHCPv4(c))
	}
	// Hardware type flag, xid, broadcast, ciaddr, type, server ID flag,
	// requested address flag, option count, option records (code,
	// length, kind, repeats, fill).
	seeds := [][]byte{
		{},
		{0, 1, 2, 3, 4, 0, 0, 1, 0, 0, 2, 0, 255, 0, 120, 5, 0, 255, 1, 120, 6}, // DISCOVER, 30 KB each of 82 and 61
		{0, 1, 2, 3, 4, 1, 1, 3, 1, 0, 0, 1, 0, 7, 1, 0, 9},                     // REQUEST from a bound client, short 61
		{0, 1, 2, 3, 4, 0, 0, 8, 0, 0, 1, 12, 20, 3, 0, 7},                      // INFORM with a host name
	}
	serviceFuzz(f, seeds, gen, func(t *testing.T, out []byte, p *wire.Parsed) {
		if p.Proto != wire.ProtoUDP || p.SrcPort != dhcpServerPort {
			return
		}
		m, err := dhcpv4.FromBytes(out[p.Payload:p.End])
		if err != nil {
			t.Fatalf("reply: %v", err)
		}
		if m.Options.Has(dhcpv4.OptionRelayAgentInformation) {
			t.Fatal("option 82 echoed")
		}
		if id := m.Options.Get(dhcpv4.OptionClientIdentifier); len(id) > maxClientID {
			t.Fatalf("client identifier of %d bytes echoed", len(id))
		}
	})
}

// dhcpFrame4 is dhcpFrame for a raw message.
func dhcpFrame4(m []byte) []byte {
	return wiretest.IPFrom(guestMAC, bcastMAC, netip.IPv4Unspecified(), netip.MustParseAddr("255.255.255.255"),
		wire.ProtoUDP, wiretest.UDP(68, 67, m))
}

// FuzzDHCPv6 drives the DHCPv6 server with generated messages
// (genDHCPv6): a reply answers at most maxIANA IA_NAs.
func FuzzDHCPv6(f *testing.F) {
	gen := func(c *choices) []byte {
		dst := netip.MustParseAddr("ff02::1:2")
		return wiretest.IPFrom(guestMAC, wire.MulticastMAC(dst), guestLL, dst, wire.ProtoUDP, wiretest.UDP(546, 547, genDHCPv6(c)))
	}
	seeds := [][]byte{
		{},
		{0, 0, 0, 0, 0, 0, 0x06, 0x40, 0},    // SOLICIT, 1600 IA_NAs
		{2, 0, 0, 0, 0, 1, 0x0f, 0xff, 3, 0}, // REQUEST, 4095 IA_NAs with 3 addresses
		{0, 0, 0, 0, 1, 0xff, 0xff, 0, 0, 1, 0, 0, 1, 1, 4},
	}
	serviceFuzz(f, seeds, gen, func(t *testing.T, out []byte, p *wire.Parsed) {
		if p.Proto != wire.ProtoUDP || p.SrcPort != dhcpv6ServerPort {
			return
		}
		m, err := dhcpv6.MessageFromBytes(out[p.Payload:p.End])
		if err != nil {
			t.Fatalf("reply: %v", err)
		}
		if n := len(m.Options.IANA()); n > maxIANA {
			t.Fatalf("%d IA_NAs answered", n)
		}
	})
}

// FuzzNDP drives router and neighbour discovery with generated messages
// (genNDP).
func FuzzNDP(f *testing.F) {
	seeds := [][]byte{
		{},
		{2, 0, 0, 0, 0, 0, 1, 1},     // NS for the gateway with a SLL option
		{0, 0, 0, 0, 0, 63, 1, 1, 0}, // RS with many options
		{3, 2, 1, 0, 0, 0, 5, 0, 0},
	}
	serviceFuzz(f, seeds, genNDP, func(*testing.T, []byte, *wire.Parsed) {})
}
