package dispatcher

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

func arpRequest(sender, target netip.Addr) []byte {
	return wiretest.ARP(wire.ARPRequest, bcastMAC, guestMAC, sender, [6]byte{}, target)
}

func TestARPReply(t *testing.T) {
	h := newHarness(t, nil, nil)
	for _, target := range []netip.Addr{gw4, dns4, netip.MustParseAddr("10.0.2.77"), far4} {
		h.send(arpRequest(guest4, target))
		b, _ := h.recv(isARP)
		if len(b) != wire.EthernetLen+wire.ARPLen {
			t.Fatalf("reply length %d", len(b))
		}
		e := wire.Ethernet(b)
		if e.Dst() != guestMAC || e.Src() != ourMAC || e.Type() != wire.EtherTypeARP {
			t.Fatalf("ethernet %x", b[:14])
		}
		a := wire.ARP(b[14:])
		if !a.IsEthernetIPv4() || a.Op() != wire.ARPReply {
			t.Fatalf("arp header %x", b[14:22])
		}
		if a.SenderMAC() != ourMAC || a.SenderIP() != target || a.TargetMAC() != guestMAC || a.TargetIP() != guest4 {
			t.Fatalf("reply %x: sender %x %s target %x %s", b, a.SenderMAC(), a.SenderIP(), a.TargetMAC(), a.TargetIP())
		}
	}
	h.waitStat("arp_replies", 4)
	if got := h.env.Peer.MAC(); got != guestMAC {
		t.Fatalf("guest MAC learned as %x", got)
	}
}

func TestARPNotAnswered(t *testing.T) {
	h := newHarness(t, nil, nil)
	other := netip.MustParseAddr("10.0.2.101")
	h.send(arpRequest(guest4, guest4))                           // gratuitous announcement
	h.send(arpRequest(netip.IPv4Unspecified(), guest4))          // RFC 5227 probe
	h.send(arpRequest(netip.IPv4Unspecified(), gw4))             // probe, even for ours
	h.send(arpRequest(other, guest4))                            // someone asking for the guest
	h.send(wiretest.ARP(wire.ARPReply, ourMAC, guestMAC, guest4, // a reply, not a request
		ourMAC, gw4))
	// The probe below must be the first thing answered.
	h.send(arpRequest(guest4, gw4))
	b, _ := h.recv(nil)
	if a := wire.ARP(b[14:]); wire.Ethernet(b).Type() != wire.EtherTypeARP || a.SenderIP() != gw4 {
		t.Fatalf("first answer is %x", b)
	}
	h.waitStat("arp_ignored", 5)
	h.waitStat("arp_replies", 1)
}

func TestARPLearnedAddressNotAnswered(t *testing.T) {
	// A guest that configured another address than the one we gave it:
	// once seen as a source, that address is the guest's.
	h := newHarness(t, nil, nil)
	mine := netip.MustParseAddr("10.0.2.150")
	h.send(wiretest.IP(mine, far4, wire.ProtoUDP, wiretest.UDP(5000, 9, nil)))
	h.waitStat("frames_in", 1)
	h.send(arpRequest(gw4, mine))
	h.send(arpRequest(mine, gw4))
	b, _ := h.recv(isARP)
	if wire.ARP(b[14:]).TargetIP() != mine {
		t.Fatalf("answer %x", b)
	}
	h.waitStat("arp_ignored", 1)
}

func ns(src, dst, target netip.Addr, withSLL bool) []byte {
	var mac *[6]byte
	if withSLL {
		mac = &guestMAC
	}
	dstMAC := wire.MulticastMAC(dst)
	if !dst.IsMulticast() {
		dstMAC = ourMAC
	}
	return wiretest.IPFrom(guestMAC, dstMAC, src, dst, wire.ProtoICMPv6, wiretest.NeighborSolicit(target, mac))
}

func TestNeighborAdvert(t *testing.T) {
	h := newHarness(t, nil, nil)
	for _, target := range []netip.Addr{gw6, dns6, far6} {
		h.send(ns(guestLL, wiretest.SolicitedNode(target), target, true))
		b, p := h.recv(isICMPv6(wire.ICMPv6NeighborAdvert))
		e := wire.Ethernet(b)
		if e.Dst() != guestMAC || e.Src() != ourMAC {
			t.Fatalf("ethernet %x", b[:14])
		}
		if p.Src != target || p.Dst != guestLL || p.TTL != 255 || p.ICMPCode != 0 {
			t.Fatalf("ip %+v", p)
		}
		m := b[p.L4:p.End]
		if len(m) != 32 {
			t.Fatalf("NA length %d", len(m))
		}
		if m[4] != wire.NAFlagRouter|wire.NAFlagSolicited|wire.NAFlagOverride || m[5]|m[6]|m[7] != 0 {
			t.Fatalf("flags %x", m[4:8])
		}
		if wire.NDPTarget(m) != target {
			t.Fatalf("target %s", wire.NDPTarget(m))
		}
		if opt := wire.NDPOption(m[24:], wire.NDPOptTargetLinkAddr); len(opt) != 8 || [6]byte(opt[2:8]) != ourMAC {
			t.Fatalf("target link-layer option %x", m[24:])
		}
	}
	// No source link-layer option: answer the Ethernet source.
	h.send(ns(guestLL, gw6, gw6, false))
	b, _ := h.recv(isICMPv6(wire.ICMPv6NeighborAdvert))
	if wire.Ethernet(b).Dst() != guestMAC {
		t.Fatalf("ethernet %x", b[:14])
	}
	h.waitStat("ndp_neighbor_adverts", 4)
}

func TestNeighborSolicitNotAnswered(t *testing.T) {
	h := newHarness(t, nil, nil)
	slaac := netip.MustParseAddr("2001:db8::9855:9aff:fe55:1")
	// DAD for the configured address, a SLAAC address and the
	// link-local address: never answered, or the guest loses them.
	for _, a := range []netip.Addr{guest6, slaac, guestLL} {
		h.send(ns(netip.IPv6Unspecified(), wiretest.SolicitedNode(a), a, false))
	}
	// The guest's own configured address, asked by the guest.
	h.send(ns(guestLL, wiretest.SolicitedNode(guest6), guest6, true))
	// Hop limit below 255: forwarded by a router, invalid.
	bad := ns(guestLL, gw6, gw6, true)
	bad[14+7] = 64
	h.send(bad)
	// A multicast target is invalid.
	h.send(ns(guestLL, wiretest.SolicitedNode(gw6), netip.MustParseAddr("ff02::1"), true))
	// Then one that must be answered, first.
	h.send(ns(guestLL, gw6, gw6, true))
	b, p := h.recv(func(b []byte, p *wire.Parsed) bool {
		return p.Proto == wire.ProtoICMPv6 && p.ICMPType != wire.ICMPv6RouterAdvert
	})
	if p.ICMPType != wire.ICMPv6NeighborAdvert || wire.NDPTarget(b[p.L4:]) != gw6 {
		t.Fatalf("first answer %x", b)
	}
	h.waitStat("ndp_ignored", 4)
	h.waitStat("drop_ndp_invalid", 2)
	h.waitStat("ndp_neighbor_adverts", 1)
}

// raOptions decodes the options of a router advertisement.
type raInfo struct {
	hopLimit, flags uint8
	lifetime        uint16
	sll             []byte
	mtu             uint32
	hasMTU          bool
	prefix          netip.Prefix
	prefixFlags     uint8
	valid, pref     uint32
	rdnss           []netip.Addr
	rdnssLife       uint32
	dnssl           []string
}

func decodeRA(t *testing.T, m []byte) raInfo {
	t.Helper()
	if len(m) < 16 || m[0] != wire.ICMPv6RouterAdvert {
		t.Fatalf("not an RA: %x", m)
	}
	r := raInfo{hopLimit: m[4], flags: m[5], lifetime: binary.BigEndian.Uint16(m[6:8])}
	if binary.BigEndian.Uint64(m[8:16]) != 0 {
		t.Fatalf("reachable/retrans %x", m[8:16])
	}
	opts := m[16:]
	if !wire.NDPOptions(opts) {
		t.Fatalf("malformed options %x", opts)
	}
	for len(opts) > 0 {
		l := int(opts[1]) * 8
		o := opts[:l]
		switch o[0] {
		case wire.NDPOptSourceLinkAddr:
			r.sll = o[2:8]
		case wire.NDPOptMTU:
			r.hasMTU, r.mtu = true, binary.BigEndian.Uint32(o[4:8])
		case wire.NDPOptPrefixInfo:
			r.prefix = netip.PrefixFrom(netip.AddrFrom16([16]byte(o[16:32])), int(o[2]))
			r.prefixFlags = o[3]
			r.valid, r.pref = binary.BigEndian.Uint32(o[4:8]), binary.BigEndian.Uint32(o[8:12])
		case wire.NDPOptRDNSS:
			r.rdnssLife = binary.BigEndian.Uint32(o[4:8])
			for a := o[8:]; len(a) >= 16; a = a[16:] {
				r.rdnss = append(r.rdnss, netip.AddrFrom16([16]byte(a[:16])))
			}
		case wire.NDPOptDNSSL:
			b := o[8:]
			name := ""
			for len(b) > 0 && (b[0] != 0 || name != "") {
				if b[0] == 0 {
					r.dnssl = append(r.dnssl, name)
					name = ""
					b = b[1:]
					continue
				}
				if name != "" {
					name += "."
				}
				name += string(b[1 : 1+b[0]])
				b = b[1+b[0]:]
			}
		default:
			t.Fatalf("unexpected option %d", o[0])
		}
		opts = opts[l:]
	}
	return r
}

func rs(src netip.Addr, withSLL bool) []byte {
	var mac *[6]byte
	if withSLL {
		mac = &guestMAC
	}
	allRouters := netip.MustParseAddr("ff02::2")
	return wiretest.IPFrom(guestMAC, wire.MulticastMAC(allRouters), src, allRouters, wire.ProtoICMPv6, wiretest.RouterSolicit(mac))
}

func TestRouterAdvert(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.send(rs(guestLL, true))
	b, p := h.recv(isICMPv6(wire.ICMPv6RouterAdvert))
	if e := wire.Ethernet(b); e.Dst() != guestMAC || e.Src() != ourMAC {
		t.Fatalf("ethernet %x", b[:14])
	}
	// Source: the link-local gateway, so the default route matches.
	if p.Src != gw6 || p.Dst != guestLL || p.TTL != 255 || p.ICMPCode != 0 {
		t.Fatalf("ip %+v", p)
	}
	r := decodeRA(t, b[p.L4:p.End])
	if r.hopLimit != 64 || r.flags != wire.RAFlagManaged|wire.RAFlagOther || r.lifetime != 9000 {
		t.Fatalf("header %+v", r)
	}
	if [6]byte(r.sll) != ourMAC {
		t.Fatalf("source link-layer %x", r.sll)
	}
	if !r.hasMTU || r.mtu != 65520 {
		t.Fatalf("mtu %v %d", r.hasMTU, r.mtu)
	}
	if r.prefix != netip.MustParsePrefix("2001:db8::/64") || r.prefixFlags != wire.PrefixFlagOnLink|wire.PrefixFlagAutonomous ||
		r.valid != 0xffffffff || r.pref != 0xffffffff {
		t.Fatalf("prefix %s flags %x lifetimes %d %d", r.prefix, r.prefixFlags, r.valid, r.pref)
	}
	if !slices.Equal(r.rdnss, []netip.Addr{dns6}) || r.rdnssLife == 0 {
		t.Fatalf("rdnss %v life %d", r.rdnss, r.rdnssLife)
	}
	if !slices.Equal(r.dnssl, []string{"example.com", "corp.example.org"}) {
		t.Fatalf("dnssl %q", r.dnssl)
	}
	h.waitStat("ndp_router_adverts", 1)
}

func TestRouterAdvertVariants(t *testing.T) {
	h := newHarness(t, func(c *conf.Config) {
		c.Gateway6 = netip.MustParseAddr("2001:db8::1") // global: RA from our EUI-64 address
		c.NoDHCPv6 = true
		c.MTUSet, c.MTU = true, 0
		c.DNS, c.DNSForward6 = nil, netip.MustParseAddr("2001:db8::3")
		c.SearchNone = true
	}, nil)
	// From :: the answer goes to all nodes.
	h.send(rs(netip.IPv6Unspecified(), false))
	b, p := h.recv(isICMPv6(wire.ICMPv6RouterAdvert))
	if p.Src != wire.LinkLocalFromMAC(ourMAC) || p.Dst != allNodes || wire.Ethernet(b).Dst() != [6]byte{0x33, 0x33, 0, 0, 0, 1} {
		t.Fatalf("addresses %s -> %s, %x", p.Src, p.Dst, b[:6])
	}
	r := decodeRA(t, b[p.L4:p.End])
	if r.flags != 0 || r.hasMTU || r.dnssl != nil || !slices.Equal(r.rdnss, []netip.Addr{netip.MustParseAddr("2001:db8::3")}) {
		t.Fatalf("ra %+v", r)
	}
	// A source link-layer option with source :: is invalid.
	h.send(rs(netip.IPv6Unspecified(), true))
	h.waitStat("drop_ndp_invalid", 1)
}

func TestNoNDP(t *testing.T) {
	h := newHarness(t, func(c *conf.Config) { c.NoNDP = true }, nil)
	h.send(rs(guestLL, true))
	h.send(ns(guestLL, gw6, gw6, true))
	h.waitStat("ndp_ignored", 2)
	h.send(arpRequest(guest4, gw4))
	b, _ := h.recv(nil)
	if wire.Ethernet(b).Type() != wire.EtherTypeARP {
		t.Fatalf("got %x", b)
	}
}

func TestUnsolicitedRA(t *testing.T) {
	h := newHarness(t, nil, nil)
	// Any IPv6 frame (here DAD, which is not answered) makes one due.
	h.send(ns(netip.IPv6Unspecified(), wiretest.SolicitedNode(guestLL), guestLL, false))
	b, p := h.recv(isICMPv6(wire.ICMPv6RouterAdvert))
	if p.Dst != allNodes || wire.Ethernet(b).Dst() != wire.MulticastMAC(allNodes) {
		t.Fatalf("unsolicited RA to %s", p.Dst)
	}
	if r := decodeRA(t, b[p.L4:p.End]); r.prefix.Addr() != netip.MustParseAddr("2001:db8::") {
		t.Fatalf("prefix %s", r.prefix)
	}
	// Just one: the next is minutes away.
	select {
	case b := <-h.guest.Frames():
		t.Fatalf("unexpected frame %x", b)
	case <-time.After(1500 * time.Millisecond):
	}
}

// dhcpFrame wraps a DHCPv4 message as a client sends it before it has an
// address: 0.0.0.0:68 -> 255.255.255.255:67, Ethernet broadcast.
func dhcpFrame(m *dhcpv4.DHCPv4) []byte {
	return wiretest.IPFrom(guestMAC, bcastMAC, netip.IPv4Unspecified(), netip.MustParseAddr("255.255.255.255"),
		wire.ProtoUDP, wiretest.UDP(68, 67, m.ToBytes()))
}

func recvDHCP(t *testing.T, h *harness) (*dhcpv4.DHCPv4, *wire.Parsed, []byte) {
	t.Helper()
	b, p := h.recv(isUDPTo(68))
	if p.Src != gw4 || p.SrcPort != 67 {
		t.Fatalf("from %s:%d", p.Src, p.SrcPort)
	}
	if e := wire.Ethernet(b); e.Dst() != guestMAC || e.Src() != ourMAC {
		t.Fatalf("ethernet %x", b[:14])
	}
	m, err := dhcpv4.FromBytes(b[p.Payload:p.End])
	if err != nil {
		t.Fatal(err)
	}
	return m, p, b
}

func checkLease(t *testing.T, m *dhcpv4.DHCPv4, typ dhcpv4.MessageType, xid dhcpv4.TransactionID) {
	t.Helper()
	if m.OpCode != dhcpv4.OpcodeBootReply || m.MessageType() != typ || m.TransactionID != xid {
		t.Fatalf("%s", m.Summary())
	}
	if !m.YourIPAddr.Equal(net.IP(guest4.AsSlice())) {
		t.Fatalf("yiaddr %s", m.YourIPAddr)
	}
	if !slices.Equal(m.ClientHWAddr, guestMAC[:]) {
		t.Fatalf("chaddr %s", m.ClientHWAddr)
	}
	if ones, bits := m.SubnetMask().Size(); ones != 24 || bits != 32 {
		t.Fatalf("mask %s", m.SubnetMask())
	}
	if r := m.Router(); len(r) != 1 || !r[0].Equal(net.IP(gw4.AsSlice())) {
		t.Fatalf("router %v", r)
	}
	if dns := m.DNS(); len(dns) != 1 || !dns[0].Equal(net.IP(dns4.AsSlice())) {
		t.Fatalf("dns %v (127.0.0.53 must be left out)", dns)
	}
	if l := m.IPAddressLeaseTime(0); l != 0xffffffff*time.Second {
		t.Fatalf("lease %v", l)
	}
	if !m.ServerIdentifier().Equal(net.IP(gw4.AsSlice())) {
		t.Fatalf("server id %s", m.ServerIdentifier())
	}
	if mtu := m.Options.Get(dhcpv4.OptionInterfaceMTU); len(mtu) != 2 || binary.BigEndian.Uint16(mtu) != 65520 {
		t.Fatalf("mtu option %x", mtu)
	}
	if s := m.DomainSearch(); s == nil || !slices.Equal(s.Labels, []string{"example.com", "corp.example.org"}) {
		t.Fatalf("search %v", s)
	}
	if m.Options.Has(dhcpv4.OptionClasslessStaticRoute) {
		t.Fatal("static routes for an on-link gateway")
	}
}

func TestDHCPv4(t *testing.T) {
	h := newHarness(t, nil, nil)
	disc, err := dhcpv4.NewDiscovery(net.HardwareAddr(guestMAC[:]), dhcpv4.WithBroadcast(true))
	if err != nil {
		t.Fatal(err)
	}
	h.send(dhcpFrame(disc))
	offer, p, _ := recvDHCP(t, h)
	checkLease(t, offer, dhcpv4.MessageTypeOffer, disc.TransactionID)
	if p.Dst != ipv4Broadcast {
		t.Fatalf("offer to %s with the broadcast flag", p.Dst)
	}

	req, err := dhcpv4.NewRequestFromOffer(offer, dhcpv4.WithBroadcast(false))
	if err != nil {
		t.Fatal(err)
	}
	h.send(dhcpFrame(req))
	ack, p, _ := recvDHCP(t, h)
	checkLease(t, ack, dhcpv4.MessageTypeAck, req.TransactionID)
	if p.Dst != guest4 {
		t.Fatalf("ack to %s without the broadcast flag", p.Dst)
	}

	// A request for another address is refused, broadcast.
	bad, _ := dhcpv4.NewRequestFromOffer(offer, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 0, 2, 50))))
	h.send(dhcpFrame(bad))
	nak, p, _ := recvDHCP(t, h)
	if nak.MessageType() != dhcpv4.MessageTypeNak || !nak.YourIPAddr.IsUnspecified() || p.Dst != ipv4Broadcast {
		t.Fatalf("nak %s to %s", nak.Summary(), p.Dst)
	}

	// A request to another server is not ours to answer; an INFORM
	// from a configured client gets options, unicast, no lease.
	other, _ := dhcpv4.NewRequestFromOffer(offer, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 0, 2, 9))))
	h.send(dhcpFrame(other))
	inf, _ := dhcpv4.NewInform(net.HardwareAddr(guestMAC[:]), net.IP(guest4.AsSlice()))
	h.send(dhcpFrame(inf))
	ack, p, _ = recvDHCP(t, h)
	if ack.MessageType() != dhcpv4.MessageTypeAck || ack.TransactionID != inf.TransactionID || !ack.YourIPAddr.IsUnspecified() ||
		ack.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || p.Dst != guest4 || len(ack.DNS()) != 1 {
		t.Fatalf("inform ack %s to %s", ack.Summary(), p.Dst)
	}
	h.waitStat("dhcp_offers", 1)
	h.waitStat("dhcp_acks", 2)
	h.waitStat("dhcp_naks", 1)
	h.waitStat("dhcp_ignored", 1)
}

func TestDHCPv4OffLinkGatewayNoMTU(t *testing.T) {
	h := newHarness(t, func(c *conf.Config) {
		c.Addr4 = netip.MustParsePrefix("169.254.2.1/16")
		c.Gateway4 = netip.MustParseAddr("192.168.9.1")
		c.MTUSet, c.MTU = true, 0
		c.DNS = nil
		f := false
		c.DHCPSearch = &f
	}, nil)
	disc, _ := dhcpv4.NewDiscovery(net.HardwareAddr(guestMAC[:]))
	h.send(dhcpFrame(disc))
	b, p := h.recv(isUDPTo(68))
	m, err := dhcpv4.FromBytes(b[p.Payload:p.End])
	if err != nil {
		t.Fatal(err)
	}
	if m.Options.Has(dhcpv4.OptionInterfaceMTU) || m.Options.Has(dhcpv4.OptionDomainNameServer) || m.DomainSearch() != nil {
		t.Fatalf("options %s", m.Summary())
	}
	routes := m.ClasslessStaticRoute()
	if len(routes) != 2 || routes[0].Dest.String() != "192.168.9.1/32" || routes[1].Dest.String() != "0.0.0.0/0" ||
		!routes[1].Router.Equal(net.IPv4(192, 168, 9, 1)) {
		t.Fatalf("routes %v", routes)
	}
	if ones, _ := m.SubnetMask().Size(); ones != 16 {
		t.Fatalf("mask %s", m.SubnetMask())
	}
}

func TestNoDHCP(t *testing.T) {
	fa := &fakeActors{depth: 1}
	h := newHarness(t, func(c *conf.Config) { c.NoDHCP = true }, withFakes(fa))
	disc, _ := dhcpv4.NewDiscovery(net.HardwareAddr(guestMAC[:]))
	h.send(dhcpFrame(disc))
	// Not answered; as ordinary UDP to the broadcast address, dropped.
	h.waitStat("drop_bad_dest", 1)
	if h.d.Stats()["dhcp_offers"] != 0 || fa.count() != 0 {
		t.Fatal("offer or flow with --no-dhcp")
	}
}

func dhcpv6Frame(m dhcpv6.DHCPv6) []byte {
	dst := netip.MustParseAddr("ff02::1:2")
	return wiretest.IPFrom(guestMAC, wire.MulticastMAC(dst), guestLL, dst, wire.ProtoUDP, wiretest.UDP(546, 547, m.ToBytes()))
}

func recvDHCPv6(t *testing.T, h *harness) *dhcpv6.Message {
	t.Helper()
	b, p := h.recv(isUDPTo(546))
	if p.Src != gw6 || p.SrcPort != 547 || p.Dst != guestLL {
		t.Fatalf("%s:%d -> %s", p.Src, p.SrcPort, p.Dst)
	}
	if e := wire.Ethernet(b); e.Dst() != guestMAC || e.Src() != ourMAC {
		t.Fatalf("ethernet %x", b[:14])
	}
	m, err := dhcpv6.MessageFromBytes(b[p.Payload:p.End])
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func checkDHCPv6(t *testing.T, m *dhcpv6.Message, typ dhcpv6.MessageType, req *dhcpv6.Message, wantIA bool) {
	t.Helper()
	if m.MessageType != typ || m.TransactionID != req.TransactionID {
		t.Fatalf("%s", m.Summary())
	}
	sid := m.Options.ServerID()
	if !sid.Equal(&dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: ourMAC[:]}) {
		t.Fatalf("server id %v", sid)
	}
	if !m.Options.ClientID().Equal(req.Options.ClientID()) {
		t.Fatalf("client id %v", m.Options.ClientID())
	}
	if dns := m.Options.DNS(); len(dns) != 1 || !dns[0].Equal(net.IP(dns6.AsSlice())) {
		t.Fatalf("dns %v", dns)
	}
	if s := m.Options.DomainSearchList(); s == nil || !slices.Equal(s.Labels, []string{"example.com", "corp.example.org"}) {
		t.Fatalf("search %v", s)
	}
	ia := m.Options.OneIANA()
	if !wantIA {
		if ia != nil {
			t.Fatalf("unexpected IA_NA %v", ia)
		}
		return
	}
	if ia == nil || ia.IaId != req.Options.OneIANA().IaId {
		t.Fatalf("IA_NA %v", ia)
	}
	a := ia.Options.OneAddress()
	if a == nil || !a.IPv6Addr.Equal(net.IP(guest6.AsSlice())) ||
		a.PreferredLifetime != 0xffffffff*time.Second || a.ValidLifetime != 0xffffffff*time.Second {
		t.Fatalf("address %v", a)
	}
}

func TestDHCPv6(t *testing.T) {
	h := newHarness(t, nil, nil)
	sol, err := dhcpv6.NewSolicit(net.HardwareAddr(guestMAC[:]))
	if err != nil {
		t.Fatal(err)
	}
	h.send(dhcpv6Frame(sol))
	adv := recvDHCPv6(t, h)
	checkDHCPv6(t, adv, dhcpv6.MessageTypeAdvertise, sol, true)
	if adv.Options.Preference() != 255 {
		t.Fatalf("preference %d", adv.Options.Preference())
	}

	req, err := dhcpv6.NewRequestFromAdvertise(adv)
	if err != nil {
		t.Fatal(err)
	}
	h.send(dhcpv6Frame(req))
	checkDHCPv6(t, recvDHCPv6(t, h), dhcpv6.MessageTypeReply, req, true)

	// Rapid commit: straight to REPLY, with the rapid commit option.
	rc, _ := dhcpv6.NewSolicit(net.HardwareAddr(guestMAC[:]), dhcpv6.WithRapidCommit)
	h.send(dhcpv6Frame(rc))
	rep := recvDHCPv6(t, h)
	checkDHCPv6(t, rep, dhcpv6.MessageTypeReply, rc, true)
	if rep.GetOneOption(dhcpv6.OptionRapidCommit) == nil {
		t.Fatal("no rapid commit option")
	}

	// A request for another server is ignored; an information request
	// is answered without addresses.
	other, _ := dhcpv6.NewRequestFromAdvertise(adv, dhcpv6.WithServerID(&dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: net.HardwareAddr{2, 2, 2, 2, 2, 2}}))
	h.send(dhcpv6Frame(other))
	info, _ := dhcpv6.NewMessage(func(d dhcpv6.DHCPv6) {
		m := d.(*dhcpv6.Message)
		m.MessageType = dhcpv6.MessageTypeInformationRequest
		m.AddOption(dhcpv6.OptClientID(&dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: guestMAC[:]}))
	})
	h.send(dhcpv6Frame(info))
	checkDHCPv6(t, recvDHCPv6(t, h), dhcpv6.MessageTypeReply, info, false)

	// CONFIRM of an address off our link.
	conf6, _ := dhcpv6.NewMessage(func(d dhcpv6.DHCPv6) {
		m := d.(*dhcpv6.Message)
		m.MessageType = dhcpv6.MessageTypeConfirm
		m.AddOption(dhcpv6.OptClientID(&dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: guestMAC[:]}))
		m.AddOption(&dhcpv6.OptIANA{Options: dhcpv6.IdentityOptions{Options: dhcpv6.Options{&dhcpv6.OptIAAddress{IPv6Addr: net.ParseIP("2001:db9::1")}}}})
	})
	h.send(dhcpv6Frame(conf6))
	rep = recvDHCPv6(t, h)
	if st := rep.Options.Status(); rep.MessageType != dhcpv6.MessageTypeReply || st == nil || st.StatusCode != iana.StatusNotOnLink {
		t.Fatalf("confirm reply %s", rep.Summary())
	}
	h.waitStat("dhcpv6_advertises", 1)
	h.waitStat("dhcpv6_replies", 4)
	h.waitStat("dhcpv6_ignored", 1)

	// From source port 0 there is no port to answer (the fuzzer found
	// a reply to port 0): counted, not answered.
	h.send(dhcpv6FromPort(sol, 0))
	h.waitStat("drop_dhcpv6_invalid", 1)
	if n := h.d.Stats()["dhcpv6_advertises"]; n != 1 {
		t.Errorf("%d advertises, want 1", n)
	}
}

// dhcpv6FromPort is dhcpv6Frame from another client port.
func dhcpv6FromPort(m dhcpv6.DHCPv6, port uint16) []byte {
	dst := netip.MustParseAddr("ff02::1:2")
	return wiretest.IPFrom(guestMAC, wire.MulticastMAC(dst), guestLL, dst, wire.ProtoUDP, wiretest.UDP(port, 547, m.ToBytes()))
}

// TestFQDN: --fqdn goes out as DHCPv4 option 81 (flags E and N, RCODEs
// 255, the name in wire format) and DHCPv6 option 39 (flag N), and
// neither is sent without it.
func TestFQDN(t *testing.T) {
	const name = "vm1.example.org"
	wire81 := append([]byte{0x0c, 255, 255}, 3, 'v', 'm', '1', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'o', 'r', 'g', 0)
	for _, fqdn := range []string{name, ""} {
		h := newHarness(t, func(c *conf.Config) { c.FQDN = fqdn }, nil)
		disc, err := dhcpv4.NewDiscovery(net.HardwareAddr(guestMAC[:]))
		if err != nil {
			t.Fatal(err)
		}
		h.send(dhcpFrame(disc))
		offer, _, _ := recvDHCP(t, h)
		got := offer.Options.Get(dhcpv4.OptionFQDN)
		if fqdn == "" && got != nil || fqdn != "" && !bytes.Equal(got, wire81) {
			t.Errorf("--fqdn %q: option 81 %x, want %x", fqdn, got, wire81)
		}

		sol, err := dhcpv6.NewSolicit(net.HardwareAddr(guestMAC[:]))
		if err != nil {
			t.Fatal(err)
		}
		h.send(dhcpv6Frame(sol))
		adv := recvDHCPv6(t, h)
		o := adv.GetOneOption(dhcpv6.OptionFQDN)
		if fqdn == "" {
			if o != nil {
				t.Errorf("option 39 without --fqdn: %v", o)
			}
			continue
		}
		f, ok := o.(*dhcpv6.OptFQDN)
		if !ok || f.Flags != 0x04 || f.DomainName == nil || !slices.Equal(f.DomainName.Labels, []string{name}) {
			t.Errorf("option 39 %v", o)
		}
	}
}

// TestDNSAdvertisedPerMode: DNS servers and the search list go into DHCP,
// router advertisements and DHCPv6 by default in passt mode only, as
// pasta has it; --dhcp-dns/--dhcp-search (pasta) and --no-dhcp-dns/
// --no-dhcp-search (passt) turn them on and off. An unprivileged dhclient
// in a pasta namespace that is offered resolvers it cannot install
// declines the lease and loops.
func TestDNSAdvertisedPerMode(t *testing.T) {
	for _, c := range []struct {
		name      string
		mode      conf.Mode
		dns, srch *bool
		want      bool
	}{
		{"pasta", conf.ModePasta, nil, nil, false},
		{"pasta --dhcp-dns --dhcp-search", conf.ModePasta, boolPtr(true), boolPtr(true), true},
		{"passt", conf.ModePasst, nil, nil, true},
		{"passt --no-dhcp-dns --no-dhcp-search", conf.ModePasst, boolPtr(false), boolPtr(false), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, func(cfg *conf.Config) { cfg.Mode, cfg.DHCPDNS, cfg.DHCPSearch = c.mode, c.dns, c.srch }, nil)

			disc, err := dhcpv4.NewDiscovery(net.HardwareAddr(guestMAC[:]))
			if err != nil {
				t.Fatal(err)
			}
			h.send(dhcpFrame(disc))
			offer, _, _ := recvDHCP(t, h)
			if got := offer.Options.Has(dhcpv4.OptionDomainNameServer); got != c.want {
				t.Errorf("DHCPv4 DNS option present: %v, want %v", got, c.want)
			}
			if got := offer.Options.Has(dhcpv4.OptionDNSDomainSearchList); got != c.want {
				t.Errorf("DHCPv4 search option present: %v, want %v", got, c.want)
			}

			h.send(rs(guestLL, true))
			b, p := h.recv(isICMPv6(wire.ICMPv6RouterAdvert))
			r := decodeRA(t, b[p.L4:p.End])
			if got := len(r.rdnss) > 0; got != c.want {
				t.Errorf("RA RDNSS %v, want present: %v", r.rdnss, c.want)
			}
			if got := len(r.dnssl) > 0; got != c.want {
				t.Errorf("RA DNSSL %v, want present: %v", r.dnssl, c.want)
			}

			sol, err := dhcpv6.NewSolicit(net.HardwareAddr(guestMAC[:]))
			if err != nil {
				t.Fatal(err)
			}
			h.send(dhcpv6Frame(sol))
			adv := recvDHCPv6(t, h)
			if got := len(adv.Options.DNS()) > 0; got != c.want {
				t.Errorf("DHCPv6 DNS %v, want present: %v", adv.Options.DNS(), c.want)
			}
			if got := adv.Options.DomainSearchList() != nil; got != c.want {
				t.Errorf("DHCPv6 search list %v, want present: %v", adv.Options.DomainSearchList(), c.want)
			}
		})
	}
}
