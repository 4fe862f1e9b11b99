package link

import (
	"net/netip"
	"sync/atomic"
)

// Peer is what gopasta knows about the guest at the other end of the link:
// its MAC and the addresses it actually uses, learned by the dispatcher from
// the guest's frames and read by actors when they build frames. Writes come
// from the dispatcher goroutine only; reads from anywhere.
type Peer struct {
	// OurMAC is the MAC gopasta uses as source towards the guest. Fixed.
	OurMAC [6]byte

	mac   atomic.Pointer[[6]byte]
	addr4 atomic.Pointer[netip.Addr]
	addr6 atomic.Pointer[netip.Addr]
	ll6   atomic.Pointer[netip.Addr]
}

// Broadcast is the Ethernet broadcast address, used as the guest's MAC until
// the guest's first frame tells us its real one.
var Broadcast = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// MAC returns the guest's MAC, or Broadcast if it has not been seen yet.
func (p *Peer) MAC() [6]byte {
	if m := p.mac.Load(); m != nil {
		return *m
	}
	return Broadcast
}

// SetMAC records the guest's MAC if it changed.
func (p *Peer) SetMAC(m [6]byte) {
	if old := p.mac.Load(); old == nil || *old != m {
		p.mac.Store(&m)
	}
}

// Addr4 returns the IPv4 address the guest uses (configured until seen).
func (p *Peer) Addr4() netip.Addr {
	if a := p.addr4.Load(); a != nil {
		return *a
	}
	return netip.Addr{}
}

// Addr6 returns the global IPv6 address the guest uses.
func (p *Peer) Addr6() netip.Addr {
	if a := p.addr6.Load(); a != nil {
		return *a
	}
	return netip.Addr{}
}

// LinkLocal6 returns the guest's IPv6 link-local address, once seen.
func (p *Peer) LinkLocal6() netip.Addr {
	if a := p.ll6.Load(); a != nil {
		return *a
	}
	return netip.Addr{}
}

// SetAddr records an address the guest used as a source, if it changed.
func (p *Peer) SetAddr(a netip.Addr) {
	var slot *atomic.Pointer[netip.Addr]
	switch {
	case a.Is4():
		slot = &p.addr4
	case a.IsLinkLocalUnicast():
		slot = &p.ll6
	case a.Is6() && a.IsGlobalUnicast():
		slot = &p.addr6
	default:
		return
	}
	if old := slot.Load(); old == nil || *old != a {
		slot.Store(&a)
	}
}
