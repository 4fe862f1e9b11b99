package dispatcher

import (
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/insomniacslk/dhcp/rfc1035label"

	"github.com/gopasta/gopasta/link/wire"
)

// infiniteDuration is 0xffffffff seconds, "forever" in DHCPv6 lifetimes.
const infiniteDuration = time.Duration(infinite) * time.Second

// handleDHCPv6 answers DHCPv6 (RFC 8415) as a stateless-looking stateful
// server with exactly one address to give, the configured one, for ever:
//
//   - SOLICIT gets an ADVERTISE (preference 255, so the client need not
//     wait for others), or a REPLY if it asked for rapid commit;
//   - REQUEST, RENEW and REBIND get a REPLY with the address in every
//     IA_NA the client asked about; CONFIRM a REPLY saying whether its
//     addresses are on our link; INFORMATION-REQUEST a REPLY with DNS
//     options only;
//   - messages for another server, relayed messages, RELEASE and DECLINE
//     are ignored (there is nothing to release).
//
// Replies come from our link-local address, port 547, to the client's
// address and port; the server DUID is DUID-LL of our MAC.
func (d *Dispatcher) handleDHCPv6(b []byte, p *wire.Parsed) {
	s := &d.svc
	if p.SrcPort == 0 {
		// UDP's "no reply": there is no port to answer to.
		d.n[cDHCPv6Invalid].Add(1)
		return
	}
	msg, err := dhcpv6.MessageFromBytes(b[p.Payload:p.End])
	if err != nil {
		d.n[cDHCPv6Invalid].Add(1)
		return
	}
	cid := msg.Options.ClientID()
	if cid == nil || len(cid.ToBytes()) > maxDUIDLen {
		// A DUID is at most 128 bytes and its type (RFC 8415 11.1);
		// the reply echoes it, so a longer one is refused, not sized.
		d.n[cDHCPv6Invalid].Add(1)
		return
	}
	serverID := &dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: net.HardwareAddr(s.ourMAC[:])}
	if sid := msg.Options.ServerID(); sid != nil && !sid.Equal(serverID) {
		d.n[cDHCPv6Ignored].Add(1)
		return
	}
	log := d.log.WithField("client", p.Src.String())

	mods := []dhcpv6.Modifier{dhcpv6.WithServerID(serverID)}
	if len(s.dns6) > 0 {
		mods = append(mods, dhcpv6.WithDNS(netIPs(s.dns6)...))
	}
	if len(s.search) > 0 {
		mods = append(mods, dhcpv6.WithOption(dhcpv6.OptDomainSearchList(&rfc1035label.Labels{Labels: s.search})))
	}
	if s.cfg.FQDN != "" {
		// RFC 4704: flag N, this server updates no DNS records.
		const flagN = 0x04
		mods = append(mods, dhcpv6.WithOption(&dhcpv6.OptFQDN{Flags: flagN, DomainName: &rfc1035label.Labels{Labels: []string{s.cfg.FQDN}}}))
	}

	var resp *dhcpv6.Message
	switch msg.MessageType {
	case dhcpv6.MessageTypeSolicit:
		if msg.Options.ServerID() != nil { // RFC 8415 16.2
			d.n[cDHCPv6Invalid].Add(1)
			return
		}
		mods = append(mods, d.iaNA(msg)...)
		if msg.GetOneOption(dhcpv6.OptionRapidCommit) != nil {
			resp, err = dhcpv6.NewReplyFromMessage(msg, mods...)
		} else {
			mods = append(mods, dhcpv6.WithOption(dhcpv6.OptPreference(255)))
			resp, err = dhcpv6.NewAdvertiseFromSolicit(msg, mods...)
		}
	case dhcpv6.MessageTypeRequest, dhcpv6.MessageTypeRenew:
		if msg.Options.ServerID() == nil { // RFC 8415 16.4, 16.6
			d.n[cDHCPv6Invalid].Add(1)
			return
		}
		mods = append(mods, d.iaNA(msg)...)
		resp, err = dhcpv6.NewReplyFromMessage(msg, mods...)
	case dhcpv6.MessageTypeRebind:
		mods = append(mods, d.iaNA(msg)...)
		resp, err = dhcpv6.NewReplyFromMessage(msg, mods...)
	case dhcpv6.MessageTypeConfirm:
		code, text := iana.StatusSuccess, "on link"
		for _, ia := range msg.Options.IANA() {
			for _, a := range ia.Options.Addresses() {
				if aa, ok := netip.AddrFromSlice(a.IPv6Addr); !ok || !s.onLink6(aa) {
					code, text = iana.StatusNotOnLink, "not on link"
				}
			}
		}
		mods = append(mods, dhcpv6.WithOption(&dhcpv6.OptStatusCode{StatusCode: code, StatusMessage: text}))
		resp, err = dhcpv6.NewReplyFromMessage(msg, mods...)
	case dhcpv6.MessageTypeInformationRequest:
		resp, err = dhcpv6.NewReplyFromMessage(msg, mods...)
	default:
		d.n[cDHCPv6Ignored].Add(1)
		return
	}
	if err != nil {
		d.n[cDHCPv6Invalid].Add(1)
		return
	}
	f, err := buildUDP6(d.replyMTU(), p.SrcMAC, s.ourMAC, netip.AddrPortFrom(s.ll6, dhcpv6ServerPort),
		netip.AddrPortFrom(p.Src, p.SrcPort), resp.ToBytes())
	if err != nil {
		d.n[cReplyTooBig].Add(1)
		return
	}
	d.send(f)
	if resp.MessageType == dhcpv6.MessageTypeAdvertise {
		d.n[cDHCPv6Advertises].Add(1)
		log.Debugf("DHCPv6: advertised %s", s.cfg.Addr6)
	} else {
		d.n[cDHCPv6Replies].Add(1)
		log.Debugf("DHCPv6: %s answered, address %s", msg.MessageType, s.cfg.Addr6)
	}
}

// Bounds on what a DHCPv6 reply echoes of the request, so that its size
// is known before it is built: a SOLICIT with 1600 IA_NAs would otherwise
// get a reply larger than any frame.
const (
	// maxDUIDLen is the longest client DUID, type included.
	maxDUIDLen = 130
	// maxIANA is how many IA_NAs of one message are answered; the rest
	// get nothing (RFC 8415 allows a server to leave an IA out). There
	// is one address to give, so more than one IA_NA is already odd;
	// pasta answers only the first.
	maxIANA = 8
)

// iaNA returns modifiers adding, for each of the first maxIANA IA_NAs in
// msg, an IA_NA with the same IAID holding our one address, or a
// NoAddrsAvail status if there is no IPv6 address to give.
func (d *Dispatcher) iaNA(msg *dhcpv6.Message) []dhcpv6.Modifier {
	addr := d.svc.cfg.Addr6
	var mods []dhcpv6.Modifier
	reqs := msg.Options.IANA()
	if len(reqs) > maxIANA {
		reqs = reqs[:maxIANA]
	}
	for _, req := range reqs {
		ia := &dhcpv6.OptIANA{IaId: req.IaId, T1: infiniteDuration, T2: infiniteDuration}
		if addr.IsValid() && addr.Is6() {
			ia.Options.Add(&dhcpv6.OptIAAddress{
				IPv6Addr:          net.IP(addr.AsSlice()),
				PreferredLifetime: infiniteDuration,
				ValidLifetime:     infiniteDuration,
			})
		} else {
			ia.T1, ia.T2 = 0, 0
			ia.Options.Add(&dhcpv6.OptStatusCode{StatusCode: iana.StatusNoAddrsAvail, StatusMessage: "no addresses"})
		}
		// Added, not updated: a client may ask about several IA_NAs.
		mods = append(mods, func(m dhcpv6.DHCPv6) { m.AddOption(ia) })
	}
	return mods
}

// onLink6 reports whether a is in the /64 of the configured address.
func (s *services) onLink6(a netip.Addr) bool {
	if !s.cfg.Addr6.IsValid() {
		return false
	}
	return netip.PrefixFrom(s.cfg.Addr6, 64).Masked().Contains(a)
}
