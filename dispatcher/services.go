package dispatcher

import (
	"net/netip"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/nat"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// Well-known ports of the DHCP services.
const (
	dhcpServerPort   = 67
	dhcpClientPort   = 68
	dhcpv6ClientPort = 546
	dhcpv6ServerPort = 547
)

// infinite is the "forever" value of DHCP lease times and NDP lifetimes.
const infinite = 0xffffffff

// services is what the link services need, computed once from the
// configuration: what to advertise and from which addresses.
type services struct {
	cfg  *conf.Config
	peer *link.Peer

	ourMAC [6]byte
	// ll6 is our link-local address: the source of router advertisements
	// and DHCPv6 replies, hence the guest's default IPv6 gateway.
	ll6 netip.Addr

	dns4, dns6 []netip.Addr // resolvers to advertise
	search     []string     // search domains to advertise
	mtu        int          // MTU to advertise, 0 for none

	raEnabled bool
	ipv6Seen  bool
	nextRA    time.Time // zero: no unsolicited RA due

	nextStats time.Time
}

func (s *services) init(cfg *conf.Config, env *actors.Env) {
	s.cfg = cfg
	s.peer = env.Peer
	s.ourMAC = env.Peer.OurMAC
	if s.ourMAC == ([6]byte{}) {
		s.ourMAC = cfg.OurMAC
	}
	s.ll6 = nat.TapLinkLocal6(cfg.Gateway6, s.ourMAC)

	// DNS: advertise the configured resolvers, or the DNS forwarding
	// address when none is configured. As in pasta, only passt does so
	// by default: a VM has nobody else to tell it, while a container's
	// resolv.conf is written by its engine (podman) or shared with the
	// host, and a DHCP client in the namespace that is handed resolvers
	// it may not install (an unprivileged dhclient) declines the lease
	// and loops. --dhcp-dns (pasta) and --no-dhcp-dns (passt) change the
	// default; the search list likewise. Loopback resolvers (a host's
	// 127.0.0.53) mean nothing to the guest and are left out.
	advertise := advertiseByDefault(cfg, cfg.DHCPDNS)
	if advertise && !cfg.DNSNone {
		for _, a := range cfg.DNS {
			a = a.Unmap()
			switch {
			case a.IsLoopback() || a.IsUnspecified() || a.IsMulticast():
			case a.Is4():
				s.dns4 = append(s.dns4, a)
			case a.Is6():
				s.dns6 = append(s.dns6, a)
			}
		}
		if len(s.dns4) == 0 && cfg.DNSForward4.IsValid() && cfg.DNSForward4.Is4() {
			s.dns4 = append(s.dns4, cfg.DNSForward4)
		}
		if len(s.dns6) == 0 && cfg.DNSForward6.IsValid() && cfg.DNSForward6.Is6() {
			s.dns6 = append(s.dns6, cfg.DNSForward6)
		}
	}
	if !cfg.SearchNone && advertiseByDefault(cfg, cfg.DHCPSearch) {
		s.search = cfg.Search
	}
	if !(cfg.MTUSet && cfg.MTU == 0) {
		s.mtu = cfg.MTU
	}

	s.raEnabled = !cfg.NoNDP && !cfg.NoRA && !cfg.IPv4Only && cfg.Addr6.IsValid()
}

// advertiseByDefault is the DNS servers' or search list's --dhcp-* switch
// opt if given, else the mode's default: on in passt mode, off in pasta's.
func advertiseByDefault(cfg *conf.Config, opt *bool) bool {
	if opt != nil {
		return *opt
	}
	return cfg.Mode == conf.ModePasst
}

// isGuest4 reports whether a is the guest's own IPv4 address.
func (s *services) isGuest4(a netip.Addr) bool {
	return a == s.cfg.Addr4.Addr() || a == s.peer.Addr4()
}

// isGuest6 reports whether a is one of the guest's own IPv6 addresses.
func (s *services) isGuest6(a netip.Addr) bool {
	return a == s.cfg.Addr6 || a == s.peer.Addr6() || a == s.peer.LinkLocal6()
}

// guestSpeaksIPv6 is called for every valid IPv6 frame; the first one makes
// an unsolicited router advertisement due at once (the dispatcher looks
// after every batch, not only at its tick), so a guest
// that does not solicit (or whose solicitation we missed while starting)
// still learns its prefix and route promptly.
func (s *services) guestSpeaksIPv6(d *Dispatcher) {
	if s.ipv6Seen {
		return
	}
	s.ipv6Seen = true
	if s.raEnabled && s.nextRA.IsZero() {
		s.nextRA = time.Now()
	}
}

// raDue is when the next unsolicited router advertisement is due, if one
// is.
func (s *services) raDue() (time.Time, bool) {
	if !s.raEnabled || !s.ipv6Seen || s.nextRA.IsZero() {
		return time.Time{}, false
	}
	return s.nextRA, true
}

// periodicRA sends the unsolicited router advertisement when due.
func (s *services) periodicRA(d *Dispatcher, now time.Time) {
	if ra, ok := s.raDue(); !ok || now.Before(ra) {
		return
	}
	d.sendRA(allNodes, wire.MulticastMAC(allNodes))
	d.log.Debug("NDP: unsolicited router advertisement sent")
}
