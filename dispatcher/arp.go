package dispatcher

import (
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// handleARP answers ARP requests.
//
// gopasta is the guest's only neighbour: every address the guest may want
// to reach on its link (the gateway, other addresses of a copied host
// subnet, the DNS forwarding address) is reached through us, so we claim
// every IPv4 address with our MAC -- except the guest's own, which the
// guest probes to detect conflicts (RFC 5227) and must find free. Probes
// (sender 0.0.0.0) and announcements (sender == target) are never
// answered for the same reason.
func (d *Dispatcher) handleARP(b []byte) {
	a := wire.ARP(b[wire.EthernetLen:])
	if a.Op() != wire.ARPRequest {
		d.n[cARPIgnored].Add(1)
		return
	}
	spa, tpa := a.SenderIP(), a.TargetIP()
	if spa.IsUnspecified() || spa == tpa || d.svc.isGuest4(tpa) || tpa.IsUnspecified() {
		d.n[cARPIgnored].Add(1)
		return
	}
	sha := a.SenderMAC()
	if sha[0]&1 != 0 { // a multicast sender MAC cannot be answered
		d.n[cARPIgnored].Add(1)
		return
	}
	f := link.GetFrame(wire.EthernetLen + wire.ARPLen)
	wire.Ethernet(f.Data).Set(sha, d.svc.ourMAC, wire.EtherTypeARP)
	wire.ARP(f.Data[wire.EthernetLen:]).Set(wire.ARPReply, d.svc.ourMAC, tpa.As4(), sha, spa.As4())
	d.send(f)
	d.n[cARPReplies].Add(1)
	if d.trace {
		d.log.Tracef("ARP: %s is at %x, told %s", tpa, d.svc.ourMAC, spa)
	}
}
