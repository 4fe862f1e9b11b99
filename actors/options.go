package actors

import (
	"net/netip"
	"time"

	"github.com/gopasta/gopasta/conf"
)

// Options are what flows take from the configuration. Every default is
// resolved once, by OptionsFrom or WithDefaults, so that no flow tests for
// a zero value; the daemon builds them once, tests from the few fields
// they set.
type Options struct {
	// MTU is the IP MTU of the link to the guest (-m).
	MTU int
	// Addr4 and Addr6 are the guest's configured addresses (-a), used
	// until the guest has been seen using one; invalid if none.
	Addr4 netip.Prefix
	Addr6 netip.Addr
	// Outbound4/6 and OutboundIf4/6 are where host sockets of outbound
	// flows bind: -o, --outbound-if4, --outbound-if6 (zero: anywhere).
	Outbound4, Outbound6     netip.Addr
	OutboundIf4, OutboundIf6 string

	// FlowLimit is --flow-limit, the most flows at once.
	FlowLimit int64
	// FlowBuffer is what one flow may hold of TotalBuffer, the bytes all
	// flows may hold (--flow-buffer, --total-buffer; budget.go). It is
	// never more than an eighth of TotalBuffer, so that the few flows that
	// reserve first leave something to the others.
	FlowBuffer, TotalBuffer int64
	// UDPTimeout and ICMPTimeout end idle flows (--udp-timeout,
	// --icmp-timeout).
	UDPTimeout, ICMPTimeout time.Duration

	NoUDP, NoICMP      bool // --no-udp, --no-icmp: no flows of the kind
	IPv4Only, IPv6Only bool // -4, -6: listeners of one family only
	SpliceOnly         bool // --splice-only: no guest to take flows to
	Freebind           bool // --freebind: listeners may bind absent addresses
}

// OptionsFrom returns the flows' options from c with every default
// resolved; a nil c gives the defaults.
func OptionsFrom(c *conf.Config) Options {
	if c == nil {
		return Options{}.WithDefaults()
	}
	return Options{
		MTU:   c.MTU,
		Addr4: c.Addr4, Addr6: c.Addr6,
		Outbound4: c.Outbound4, Outbound6: c.Outbound6,
		OutboundIf4: c.OutboundIf4, OutboundIf6: c.OutboundIf6,
		FlowLimit:  int64(c.FlowLimit),
		FlowBuffer: c.FlowBuffer, TotalBuffer: c.TotalBuffer,
		UDPTimeout: c.UDPTimeout, ICMPTimeout: c.ICMPTimeout,
		NoUDP: c.NoUDP, NoICMP: c.NoICMP,
		IPv4Only: c.IPv4Only, IPv6Only: c.IPv6Only,
		SpliceOnly: c.SpliceOnly, Freebind: c.Freebind,
	}.WithDefaults()
}

// WithDefaults returns o with each zero (or negative) number replaced by
// its default, and FlowBuffer capped at an eighth of TotalBuffer.
func (o Options) WithDefaults() Options {
	if o.MTU <= 0 {
		o.MTU = conf.DefaultMTU
	}
	if o.FlowLimit <= 0 {
		o.FlowLimit = conf.DefaultFlowLimit
	}
	if o.TotalBuffer <= 0 {
		o.TotalBuffer = DefaultTotalBuffer
	}
	if o.FlowBuffer <= 0 {
		o.FlowBuffer = DefaultFlowBuffer
	}
	o.FlowBuffer = min(o.FlowBuffer, o.TotalBuffer/8)
	if o.UDPTimeout <= 0 {
		o.UDPTimeout = conf.DefaultUDPTimeout
	}
	if o.ICMPTimeout <= 0 {
		o.ICMPTimeout = conf.DefaultICMPTimeout
	}
	return o
}

// Outbound returns where a host socket of family v6 for a guest flow
// binds (-o/--outbound, or the family's unspecified address) and the
// interface it is bound to (--outbound-if4/6, or "").
func (o *Options) Outbound(v6 bool) (bind netip.Addr, ifname string) {
	if v6 {
		bind, ifname = o.Outbound6, o.OutboundIf6
		if !bind.IsValid() {
			bind = netip.IPv6Unspecified()
		}
		return bind, ifname
	}
	bind, ifname = o.Outbound4, o.OutboundIf4
	if !bind.IsValid() {
		bind = netip.IPv4Unspecified()
	}
	return bind, ifname
}
