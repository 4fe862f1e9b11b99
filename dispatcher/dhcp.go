package dispatcher

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/insomniacslk/dhcp/rfc1035label"

	"github.com/gopasta/gopasta/link/wire"
)

// handleDHCP answers DHCPv4 (RFC 2131) with the one lease there is: the
// configured address, forever (there is nobody to hand the address to
// when the guest lets it go, so it never has to renew).
//
// DISCOVER gets an OFFER, REQUEST an ACK -- or a NAK if it asks for a
// different address -- and INFORM an ACK with the options only. A REQUEST
// naming another server is for that server. Everything else (RELEASE,
// DECLINE, replies from a confused guest) is ignored.
func (d *Dispatcher) handleDHCP(b []byte, p *wire.Parsed) {
	s := &d.svc
	req, err := dhcpv4.FromBytes(b[p.Payload:p.End])
	if err != nil || req.OpCode != dhcpv4.OpcodeBootRequest || req.HWType != iana.HWTypeEthernet ||
		len(req.ClientHWAddr) != 6 {
		d.n[cDHCPInvalid].Add(1)
		return
	}
	addr, server := s.cfg.Addr4.Addr(), s.cfg.Gateway4
	if !addr.Is4() || !server.Is4() {
		d.n[cDHCPIgnored].Add(1)
		return
	}
	log := d.log.WithField("client", req.ClientHWAddr.String())
	serverIP := net.IP(server.AsSlice())

	var typ dhcpv4.MessageType
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		typ = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(serverIP) {
			d.n[cDHCPIgnored].Add(1)
			return
		}
		want := req.RequestedIPAddress()
		if want == nil || want.IsUnspecified() {
			want = req.ClientIPAddr
		}
		typ = dhcpv4.MessageTypeAck
		if w, ok := netip.AddrFromSlice(want.To4()); ok && !w.IsUnspecified() && w != addr {
			typ = dhcpv4.MessageTypeNak
		}
	case dhcpv4.MessageTypeInform:
		typ = dhcpv4.MessageTypeAck
	default:
		d.n[cDHCPIgnored].Add(1)
		return
	}

	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(serverIP)),
	}
	inform := req.MessageType() == dhcpv4.MessageTypeInform
	if typ != dhcpv4.MessageTypeNak {
		if !inform {
			mods = append(mods,
				dhcpv4.WithYourIP(net.IP(addr.AsSlice())),
				dhcpv4.WithLeaseTime(infinite))
		}
		mods = append(mods,
			dhcpv4.WithNetmask(net.CIDRMask(s.cfg.Addr4.Bits(), 32)),
			dhcpv4.WithRouter(serverIP))
		if !s.cfg.Addr4.Masked().Contains(server) {
			// An off-link gateway (pasta's local mode, or a host
			// route to a gateway outside the subnet) needs a route
			// to it first; RFC 3442 clients then ignore option 3.
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptClasslessStaticRoute(
				&dhcpv4.Route{Dest: &net.IPNet{IP: serverIP, Mask: net.CIDRMask(32, 32)}, Router: net.IPv4zero},
				&dhcpv4.Route{Dest: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Router: serverIP},
			)))
		}
		if len(s.dns4) > 0 {
			mods = append(mods, dhcpv4.WithDNS(netIPs(s.dns4)...))
		}
		if len(s.search) > 0 {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDomainSearch(&rfc1035label.Labels{Labels: s.search})))
		}
		if s.mtu >= 68 && s.mtu <= 65535 {
			var v [2]byte
			binary.BigEndian.PutUint16(v[:], uint16(s.mtu))
			mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionInterfaceMTU, v[:]))
		}
		if s.cfg.Hostname != "" {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptHostName(s.cfg.Hostname)))
		}
		if s.cfg.FQDN != "" {
			mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionFQDN, fqdnOption4(s.cfg.FQDN)))
		}
	}
	resp, err := dhcpv4.New(dhcpv4.PrependModifiers(mods, replyTo(req))...)
	if err != nil {
		d.n[cDHCPInvalid].Add(1)
		return
	}
	resp.ServerIPAddr = net.IPv4zero

	// Where the reply goes (RFC 2131 4.1): a client that has an address
	// gets it unicast there; one that asked for broadcast, and every NAK,
	// gets it broadcast; otherwise it goes to the offered address, which
	// the client accepts before configuring it. The Ethernet destination
	// is the client's MAC in every case.
	dst := ipv4Broadcast
	switch ciaddr, _ := netip.AddrFromSlice(req.ClientIPAddr.To4()); {
	case typ == dhcpv4.MessageTypeNak:
	case ciaddr.Is4() && wire.ClassifyAddr(ciaddr) == wire.AddrOrdinary && !ciaddr.IsMulticast() && ciaddr != ipv4Broadcast:
		// Only an address a frame may carry: a client claiming
		// 127.0.0.1 or 0.1.2.3 is answered by broadcast.
		dst = ciaddr
	case req.IsBroadcast() || inform:
	default:
		dst = addr
	}
	f, err := buildUDP4(d.replyMTU(), [6]byte(req.ClientHWAddr), s.ourMAC,
		netip.AddrPortFrom(server, dhcpServerPort), netip.AddrPortFrom(dst, dhcpClientPort), resp.ToBytes())
	if err != nil {
		d.n[cReplyTooBig].Add(1)
		return
	}
	d.send(f)
	switch typ {
	case dhcpv4.MessageTypeOffer:
		d.n[cDHCPOffers].Add(1)
		log.Debugf("DHCP: offered %s", addr)
	case dhcpv4.MessageTypeAck:
		d.n[cDHCPAcks].Add(1)
		if inform {
			log.Debug("DHCP: answered INFORM")
		} else {
			log.Debugf("DHCP: lease of %s handed out", addr)
		}
	case dhcpv4.MessageTypeNak:
		d.n[cDHCPNaks].Add(1)
		log.Debugf("DHCP: NAK, client asked for another address than %s", addr)
	}
}

// maxClientID is the longest client identifier (option 61) a reply
// echoes: one option's worth. What a client sends may be concatenated from
// many (RFC 3396), up to the whole datagram, and echoing that would make
// the reply as large as the request plus ours.
const maxClientID = 255

// replyTo starts a reply to req as dhcpv4.NewReplyFromRequest does, except
// for what that echoes without bound: the client identifier only up to
// maxClientID bytes (RFC 6842 asks for it back; a longer one is no client
// identifier anyone needs), and the relay agent information (option 82)
// never: there is no relay between gopasta and its guest, and only a relay
// may add that option.
func replyTo(req *dhcpv4.DHCPv4) dhcpv4.Modifier {
	return func(r *dhcpv4.DHCPv4) {
		dhcpv4.WithReply(req)(r)
		r.GatewayIPAddr = req.GatewayIPAddr
		if id := req.Options.Get(dhcpv4.OptionClientIdentifier); id != nil && len(id) <= maxClientID {
			r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientIdentifier, id))
		}
	}
}

// fqdnOption4 is the value of the Client FQDN option (RFC 4702) that hands
// out --fqdn: flags E (the name in DNS wire format) and N (this server
// updates no DNS records), both RCODEs 255 as section 3.1 asks of servers,
// then the name.
func fqdnOption4(name string) []byte {
	const flagE, flagN = 0x04, 0x08
	labels := &rfc1035label.Labels{Labels: []string{name}}
	return append([]byte{flagE | flagN, 255, 255}, labels.ToBytes()...)
}

// netIPs converts addresses for the DHCP library, which takes net.IP.
func netIPs(as []netip.Addr) []net.IP {
	ips := make([]net.IP, len(as))
	for i, a := range as {
		ips[i] = net.IP(a.AsSlice())
	}
	return ips
}
