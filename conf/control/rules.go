package control

import (
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/gopasta/gopasta/conf"
)

// dualAny is the address of a dual-stack rule (::, all zeros on the wire).
var dualAny = netip.IPv6Unspecified()

// listenAddr is the address a rule matches; ok is false for a dual-stack
// rule, which matches every address.
func (r Rule) listenAddr() (netip.Addr, bool) {
	if r.Flags&FlagDualStack != 0 {
		return netip.Addr{}, false
	}
	return addrOrAny(r.Addr), true
}

func addrOrAny(a netip.Addr) netip.Addr {
	if !a.IsValid() {
		return dualAny
	}
	return a
}

// unspecified is inany_is_unspecified: :: or 0.0.0.0.
func unspecified(a netip.Addr) bool { return !a.IsValid() || a.IsUnspecified() }

// ntop spells an address as inet_ntop(3) does: IPv4 (and IPv4-mapped)
// dotted, IPv6 compressed, with glibc's dotted tail for ::a.b.c.d.
func ntop(a netip.Addr) string {
	a = addrOrAny(a).Unmap()
	if a.Is6() {
		b := a.As16()
		zero := true
		for _, x := range b[:12] {
			zero = zero && x == 0
		}
		if zero && b[12]|b[13] != 0 {
			return "::" + netip.AddrFrom4([4]byte(b[12:])).String()
		}
	}
	return a.String()
}

func protoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case 1:
		return "ICMP"
	case 58:
		return "ICMPv6"
	}
	return "<unknown protocol>"
}

// String formats the rule as pasta and pesto list it, e.g.
// "TCP [*]:8080  =>  8080 " or
// "TCP [*]%lo:1-32767  =>  1-32767  (best effort) (auto-scan)".
func (r Rule) String() string {
	var b strings.Builder
	b.WriteString(protoName(r.Proto))
	b.WriteString(" [")
	if a, ok := r.listenAddr(); ok {
		b.WriteString(ntop(a))
	} else {
		b.WriteString("*")
	}
	b.WriteString("]")
	if r.Ifname != "" {
		b.WriteString("%" + r.Ifname)
	}
	b.WriteString(":" + strconv.Itoa(int(r.First)))
	if r.First != r.Last {
		b.WriteString("-" + strconv.Itoa(int(r.Last)))
	}
	b.WriteString("  =>  ")
	if !unspecified(r.Target) {
		b.WriteString(ntop(r.Target) + ":")
	}
	b.WriteString(strconv.Itoa(int(r.To)))
	if r.First != r.Last {
		b.WriteString("-" + strconv.Itoa(int(r.Last-r.First+r.To)))
	}
	b.WriteString(" ")
	if r.Flags&FlagWeak != 0 {
		b.WriteString(" (best effort)")
	}
	if r.Flags&FlagScan != 0 {
		b.WriteString(" (auto-scan)")
	}
	return b.String()
}

// matches is inany_matches for two rules' listening addresses: a
// dual-stack rule matches everything, an unspecified address every
// address of its IP version.
func (r Rule) matches(o Rule) bool {
	a, aok := r.listenAddr()
	b, bok := o.listenAddr()
	if !aok || !bok {
		return true
	}
	if a.IsUnspecified() || b.IsUnspecified() {
		return a.Is4() == b.Is4()
	}
	return a == b
}

// conflicts: same protocol, overlapping addresses and ports.
func (r Rule) conflicts(o Rule) bool {
	return r.Proto == o.Proto && r.matches(o) && r.First <= o.Last && o.First <= r.Last
}

// Check validates a rule against a table's capabilities, as pasta does
// before accepting it.
func (t *Table) Check(r Rule) error {
	switch {
	case r.First > r.Last:
		return fmt.Errorf("rule has invalid port range %d-%d", r.First, r.Last)
	case r.First == 0:
		return fmt.Errorf("forwarding rule attempts to map from port 0")
	case r.To == 0 || uint32(r.To)+uint32(r.Last-r.First) > 65535:
		return fmt.Errorf("forwarding rule attempts to map to port 0")
	case r.Flags&^flagsAll != 0:
		return fmt.Errorf("rule has invalid flags 0x%x", r.Flags&^flagsAll)
	}
	if r.Flags&FlagDualStack != 0 {
		if addrOrAny(r.Addr) != dualAny {
			return fmt.Errorf("dual stack rule has non-wildcard address %s", ntop(r.Addr))
		}
		if t.Caps&CapIPv4 == 0 {
			return fmt.Errorf("dual stack forward, but IPv4 not enabled")
		}
		if t.Caps&CapIPv6 == 0 {
			return fmt.Errorf("dual stack forward, but IPv6 not enabled")
		}
	} else if addrOrAny(r.Addr).Is4() && t.Caps&CapIPv4 == 0 {
		return fmt.Errorf("IPv4 forward, but IPv4 not enabled")
	} else if addrOrAny(r.Addr).Is6() && t.Caps&CapIPv6 == 0 {
		return fmt.Errorf("IPv6 forward, but IPv6 not enabled")
	}
	switch r.Proto {
	case ProtoTCP:
		if t.Caps&CapTCP == 0 {
			return fmt.Errorf("can't add TCP forwarding rule, TCP not enabled")
		}
	case ProtoUDP:
		if t.Caps&CapUDP == 0 {
			return fmt.Errorf("can't add UDP forwarding rule, UDP not enabled")
		}
	default:
		return fmt.Errorf("unsupported protocol 0x%x (%s) for forwarding rule", r.Proto, protoName(r.Proto))
	}
	if r.Flags&FlagScan != 0 && t.Caps&CapScan == 0 {
		return fmt.Errorf("'auto' port forwarding is only allowed for pasta")
	}
	if r.Ifname != "" && t.Caps&CapIfname == 0 {
		return fmt.Errorf("device binding unsupported")
	}
	if !unspecified(r.Target) {
		tgt := r.Target
		switch {
		case tgt.IsMulticast() || tgt == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return fmt.Errorf("multicast target address %s for forwarding rule", ntop(tgt))
		case r.Flags&FlagDualStack != 0:
			return fmt.Errorf("dual stack forward to %s address %s unsupported", ipv(tgt), ntop(tgt))
		case addrOrAny(r.Addr).Is4() != tgt.Is4():
			return fmt.Errorf("forward from %s (%s) to %s (%s) unsupported", ipv(addrOrAny(r.Addr)), ntop(r.Addr), ipv(tgt), ntop(tgt))
		}
	}
	return nil
}

func ipv(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// Add validates r and appends it, refusing a rule that conflicts with one
// already in the table ("Forwarding configuration conflict").
func (t *Table) Add(r Rule) error {
	if err := t.Check(r); err != nil {
		return err
	}
	for _, o := range t.Rules {
		if r.conflicts(o) {
			return fmt.Errorf("forwarding configuration conflict: %s versus %s", r, o)
		}
	}
	if len(t.Rules) >= MaxRules {
		return fmt.Errorf("too many rules (maximum %d)", MaxRules)
	}
	n := int(r.Last-r.First) + 1
	for _, o := range t.Rules {
		n += int(o.Last-o.First) + 1
	}
	if n > MaxListeners {
		return fmt.Errorf("rules require too many listening sockets (maximum %d)", MaxListeners)
	}
	t.Rules = append(t.Rules, r)
	return nil
}

// Delete removes the rule equal to r. A rule that overlaps r without
// being equal to it is an error, as in pesto: deleting part of a rule is
// not possible.
func (t *Table) Delete(r Rule) error {
	want := r.Bytes()
	for i, o := range t.Rules {
		if o.Bytes() == want {
			t.Rules = append(t.Rules[:i:i], t.Rules[i+1:]...)
			return nil
		}
		if r.conflicts(o) {
			return fmt.Errorf("specifier %s conflicts with rule %s, but doesn't match it, can't delete", r, o)
		}
	}
	return fmt.Errorf("couldn't find forwarding rule to delete: %s", r)
}

// Ephemeral is the host's ephemeral port range, which "all" and
// exclusion-only specs leave out (RFC 6335's range if unreadable).
func Ephemeral() [2]uint16 {
	eph := [2]uint16{49152, 65535}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return eph
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return eph
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || lo > hi {
		return eph
	}
	return [2]uint16{uint16(lo), uint16(hi)}
}

// SpecRules turns one -t/-u/-T/-U spec into the rules pasta makes of it
// for a table with capabilities caps: included ranges minus exclusions,
// in order; or, without included ranges, the whole port space minus
// exclusions and the ephemeral range eph, as weak rules. opt is "-t",
// "-u", "-T" or "-U". "none" gives no rules.
func SpecRules(opt string, s conf.PortSpec, caps uint32, eph [2]uint16) ([]Rule, error) {
	if s.None {
		return nil, nil
	}
	proto := uint8(ProtoTCP)
	if opt == "-u" || opt == "-U" {
		proto = ProtoUDP
	}
	out := opt == "-T" || opt == "-U"
	var flags uint8
	if s.Auto {
		if caps&CapScan == 0 {
			return nil, fmt.Errorf("'auto' port forwarding is only allowed for pasta")
		}
		flags |= FlagScan
	}
	base := Rule{Proto: proto, Ifname: s.Ifname}
	addrs := []netip.Addr{s.Bind} // invalid: dual stack
	if out {
		if s.Bind.IsValid() || s.Ifname != "" {
			return nil, fmt.Errorf("listening address not allowed for %s %s", opt, s.Raw)
		}
		if caps&CapIfname != 0 {
			base.Ifname = "lo"
		} else {
			addrs = addrs[:0]
			if caps&CapIPv4 != 0 {
				addrs = append(addrs, netip.AddrFrom4([4]byte{127, 0, 0, 1}))
			}
			if caps&CapIPv6 != 0 {
				addrs = append(addrs, netip.IPv6Loopback())
			}
		}
	}
	if base.Ifname == "." || base.Ifname == ".." {
		return nil, fmt.Errorf("invalid interface name: %s", base.Ifname)
	}
	if base.Ifname != "" && caps&CapIfname == 0 {
		return nil, fmt.Errorf("device binding for '%s %s' unsupported (requires kernel 5.7+)", opt, s.Raw)
	}
	var excl [65536 / 64]uint64
	set := func(p int) { excl[p/64] |= 1 << (p % 64) }
	isSet := func(p int) bool { return excl[p/64]&(1<<(p%64)) != 0 }
	for _, r := range s.Excluded {
		for p := int(r.First); p <= int(r.Last); p++ {
			set(p)
		}
	}
	var rules []Rule
	for _, a := range addrs {
		r := base
		r.Flags = flags
		switch {
		case a.IsValid():
			r.Addr = a.Unmap()
		case caps&CapIPv4 == 0:
			r.Addr = dualAny
		case caps&CapIPv6 == 0:
			r.Addr = netip.IPv4Unspecified()
		default:
			r.Addr = dualAny
			r.Flags |= FlagDualStack
		}
		cut := func(first, last, to int, target netip.Addr, weak bool) {
			for p := first; p <= last; p++ {
				if isSet(p) {
					continue
				}
				q := p
				for q < last && !isSet(q+1) {
					q++
				}
				n := r
				n.First, n.Last, n.To = uint16(p), uint16(q), uint16(to+p-first)
				n.Target = addrOrAny(target) // as decoded from the wire
				if weak {
					n.Flags |= FlagWeak
				}
				rules = append(rules, n)
				p = q
			}
		}
		if len(s.Ranges) > 0 {
			for _, pr := range s.Ranges {
				cut(int(pr.First), int(pr.Last), int(pr.To), pr.ToAddr, false)
			}
			continue
		}
		saved := excl
		for p := int(eph[0]); p <= int(eph[1]); p++ {
			set(p)
		}
		cut(1, 65535, 1, s.AllToAddr, true)
		excl = saved
	}
	return rules, nil
}

// Names of the tables.
const (
	NameHost   = "HOST"
	NameSplice = "SPLICE"
)

// ConfigCaps is what gopasta can forward with configuration c.
func ConfigCaps(c *conf.Config) uint32 {
	caps := uint32(CapIfname)
	if !c.IPv6Only {
		caps |= CapIPv4
	}
	if !c.IPv4Only {
		caps |= CapIPv6
	}
	if !c.NoTCP {
		caps |= CapTCP
	}
	if !c.NoUDP {
		caps |= CapUDP
	}
	if c.Mode == conf.ModePasta {
		caps |= CapScan
	}
	return caps
}

// ConfigTables builds the tables pasta would have for configuration c:
// HOST from -t and -u, SPLICE (pasta mode) from -T and -U, each in the
// order the options were given.
func ConfigTables(c *conf.Config, eph [2]uint16) ([]Table, error) {
	caps := ConfigCaps(c)
	type item struct {
		opt  string
		spec conf.PortSpec
	}
	collect := func(lists map[string][]conf.PortSpec) []item {
		var items []item
		for opt, l := range lists {
			for _, s := range l {
				items = append(items, item{opt, s})
			}
		}
		sort.SliceStable(items, func(i, j int) bool {
			if items[i].spec.Seq != items[j].spec.Seq {
				return items[i].spec.Seq < items[j].spec.Seq
			}
			return items[i].opt > items[j].opt // -t before -u without order
		})
		return items
	}
	build := func(pif uint8, name string, items []item) (Table, error) {
		t := Table{PIF: pif, Name: name, Caps: caps}
		for _, it := range items {
			rules, err := SpecRules(it.opt, it.spec, caps, eph)
			if err != nil {
				return t, err
			}
			for _, r := range rules {
				if r.Flags&FlagDualStack != 0 && !unspecified(r.Target) {
					// gopasta forwards such a spec in the target's IP
					// version only, where pasta refuses it: say so.
					r.Flags &^= FlagDualStack
					r.Addr = netip.IPv6Unspecified()
					if r.Target.Is4() {
						r.Addr = netip.IPv4Unspecified()
					}
				}
				if err := t.Check(r); err != nil {
					return t, fmt.Errorf("option '%s %s': %v", it.opt, it.spec.Raw, err)
				}
				// No conflict check: the option parser has its own, and
				// a daemon that started with these rules keeps them.
				t.Rules = append(t.Rules, r)
			}
		}
		return t, nil
	}
	host, err := build(PIFHost, NameHost, collect(map[string][]conf.PortSpec{"-t": c.TCPPorts, "-u": c.UDPPorts}))
	if err != nil {
		return nil, err
	}
	ts := []Table{host}
	if c.Mode == conf.ModePasta {
		sp, err := build(PIFSplice, NameSplice, collect(map[string][]conf.PortSpec{"-T": c.TCPNSPorts, "-U": c.UDPNSPorts}))
		if err != nil {
			return nil, err
		}
		ts = append(ts, sp)
	}
	return ts, nil
}

// Edit applies one pesto-style command to the table: add (or, with del,
// delete) the rules of spec given with opt ("-t" ...). "none" adds
// nothing, and is refused while the table has rules of its protocol.
func (t *Table) Edit(opt, spec string, del bool, eph [2]uint16) error {
	s, err := conf.ParsePortSpec(opt, spec)
	if err != nil {
		return err
	}
	if s.None {
		proto := uint8(ProtoTCP)
		if opt == "-u" || opt == "-U" {
			proto = ProtoUDP
		}
		for _, r := range t.Rules {
			if r.Proto == proto {
				return fmt.Errorf("%s none conflicts with previous options", opt)
			}
		}
		return nil
	}
	rules, err := SpecRules(opt, s, t.Caps, eph)
	if err != nil {
		return err
	}
	for _, r := range rules {
		op, what := t.Add, "add"
		if del {
			op, what = t.Delete, "delete"
		}
		if err := op(r); err != nil {
			return fmt.Errorf("unable to %s rule %s: %v", what, r, err)
		}
	}
	return nil
}
