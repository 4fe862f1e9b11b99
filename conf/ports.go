package conf

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Theory of operation
//
// A -t/-u/-T/-U argument (SPEC) is, as in pasta(1):
//
//	SPEC   := "none" | [ LISTEN "/" ] PORTS
//	LISTEN := [ ADDR | "[" ADDR "]" | "*" ] [ "%" IFNAME ]
//	PORTS  := ENTRY { "," ENTRY }
//	ENTRY  := "all" [ ":" TOADDR ]
//	        | "auto"
//	        | "~" RANGE                                   exclusion
//	        | RANGE [ ":" ( TOADDR "/" RANGE | RANGE | TOADDR ) ]
//	RANGE  := PORT [ "-" PORT ]                            PORT in 1..65535
//
// IPv6 listening addresses come bare ("::1/8080-8080:80-80", which is what
// podman writes for -p [::1]:8080:80) or bracketed ("[::1]/8080", which is
// what podman's pesto client writes). The address part is recognised by
// what precedes the first '%' or '/': if that is empty, "*" or an address,
// it is the listening part; otherwise the '/' belongs to a target address
// ("5000:192.0.2.5/6000") and there is no listening part.
//
// Parsing keeps the spec as written (PortSpec); Rules() turns it into
// concrete forwarding rules: included ranges with the exclusions cut out,
// or, when the spec has no included range ("all", "auto", "~22"), the whole
// port space minus the exclusions as "weak" rules whose consumers skip
// ephemeral ports and ignore bind failures, as pasta does.

// PortSpecError is a malformed port specification. Error() names the
// offending part and the option, e.g.
// "invalid port range '80-22' in option '-t 80-22'".
type PortSpecError struct {
	Option string // "-t"
	Raw    string // the whole argument
	Msg    string // "invalid port range '80-22'"
}

func (e *PortSpecError) Error() string {
	return fmt.Sprintf("%s in option '%s %s'", e.Msg, e.Option, e.Raw)
}

// ParsePortSpec parses one SPEC given with option (used in messages, e.g.
// "-t"). It checks the grammar and values only; which options accept which
// forms (no "auto" in passt, no listening address for -T/-U) is checked by
// the option parser.
func ParsePortSpec(option, raw string) (PortSpec, error) {
	s := PortSpec{Raw: raw, Option: option}
	bad := func(format string, a ...any) (PortSpec, error) {
		return PortSpec{}, &PortSpecError{Option: option, Raw: raw, Msg: fmt.Sprintf(format, a...)}
	}
	if raw == "none" {
		s.None = true
		return s, nil
	}
	ports := raw
	if cut := strings.IndexAny(raw, "%/"); cut >= 0 {
		head := raw[:cut]
		if head == "" || head == "*" || isAddrText(head) {
			slash := strings.IndexByte(raw, '/')
			if slash < 0 {
				return bad("missing '/' after listening address or interface")
			}
			if head != "" && head != "*" {
				h := head
				if strings.HasPrefix(h, "[") {
					h = h[1 : len(h)-1]
				}
				a, _ := parseIP(h) // isAddrText checked it
				s.Bind = a
			}
			if raw[cut] == '%' {
				s.Ifname = raw[cut+1 : slash]
				if err := validIfname(s.Ifname); err != nil {
					return bad("%v", err)
				}
			}
			ports = raw[slash+1:]
		}
	}
	if ports == "" {
		return bad("missing port list")
	}
	for _, chunk := range strings.Split(ports, ",") {
		switch {
		case chunk == "":
			return bad("empty entry in port list '%s'", ports)
		case chunk == "auto":
			s.Auto = true
		case chunk == "all" || strings.HasPrefix(chunk, "all:"):
			s.All = true
			if to, ok := strings.CutPrefix(chunk, "all:"); ok {
				a, err := parseTarget(to)
				if err != nil {
					return bad("%v", err)
				}
				s.AllToAddr = a
			}
		case chunk[0] == '~':
			r, err := parseRange(chunk[1:])
			if err != nil {
				return bad("%v", err)
			}
			r.To = r.First
			s.Excluded = append(s.Excluded, r)
		default:
			r, err := parseInclude(chunk)
			if err != nil {
				return bad("%v", err)
			}
			s.Ranges = append(s.Ranges, r)
		}
	}
	if p, dup := firstOverlap(s.Ranges, nil); dup {
		return bad("port %d forwarded twice", p)
	}
	for _, r := range s.Ranges {
		if r.ToAddr.IsValid() && s.Bind.IsValid() && r.ToAddr.Is4() != s.Bind.Is4() {
			return bad("target address %s and listening address %s are of different IP versions", r.ToAddr, s.Bind)
		}
	}
	if s.AllToAddr.IsValid() && s.Bind.IsValid() && s.AllToAddr.Is4() != s.Bind.Is4() {
		return bad("target address %s and listening address %s are of different IP versions", s.AllToAddr, s.Bind)
	}
	return s, nil
}

// firstOverlap reports the lowest port covered twice: within a, or (if b is
// not nil) by a range of a and a range of b. Sorting keeps this O(n log n)
// for specs with thousands of entries.
func firstOverlap(a, b []PortRange) (uint16, bool) {
	type iv struct {
		first, last uint16
		side        int
	}
	all := make([]iv, 0, len(a)+len(b))
	for _, r := range a {
		all = append(all, iv{r.First, r.Last, 0})
	}
	for _, r := range b {
		all = append(all, iv{r.First, r.Last, 1})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].first < all[j].first })
	// Track the furthest-reaching interval of each side seen so far.
	var reach [2]int
	reach[0], reach[1] = -1, -1
	for _, x := range all {
		other := 1 - x.side
		if b == nil {
			other = 0
		}
		if int(x.first) <= reach[other] {
			return x.first, true
		}
		if int(x.last) > reach[x.side] {
			reach[x.side] = int(x.last)
		}
	}
	return 0, false
}

// isAddrText says whether head (the text before the first '%' or '/') is a
// listening address rather than part of the port list.
func isAddrText(head string) bool {
	if strings.HasPrefix(head, "[") {
		if !strings.HasSuffix(head, "]") {
			return false
		}
		head = head[1 : len(head)-1]
	}
	_, err := parseIP(head)
	return err == nil
}

// parseTarget parses a target address (bare or bracketed).
func parseTarget(s string) (netip.Addr, error) {
	h := s
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	a, err := parseIP(h)
	if err != nil {
		return a, fmt.Errorf("invalid target address '%s'", s)
	}
	if a.IsMulticast() || a == broadcast4 {
		return netip.Addr{}, fmt.Errorf("invalid target address '%s': not unicast", s)
	}
	return a, nil
}

// parseInclude parses RANGE [ ":" ( TOADDR "/" RANGE | RANGE | TOADDR ) ].
func parseInclude(chunk string) (PortRange, error) {
	from, to, remap := strings.Cut(chunk, ":")
	r, err := parseRange(from)
	if err != nil {
		return r, err
	}
	r.To = r.First
	if !remap {
		return r, nil
	}
	if to == "" {
		return r, fmt.Errorf("missing target after ':' in '%s'", chunk)
	}
	var tr PortRange
	if slash := strings.LastIndexByte(to, '/'); slash >= 0 {
		a, err := parseTarget(to[:slash])
		if err != nil {
			return r, err
		}
		r.ToAddr = a
		if tr, err = parseRange(to[slash+1:]); err != nil {
			return r, err
		}
	} else if isPortText(to) {
		if tr, err = parseRange(to); err != nil {
			return r, err
		}
	} else {
		a, err := parseTarget(to)
		if err != nil {
			return r, err
		}
		r.ToAddr = a
		return r, nil
	}
	if tr.Last-tr.First != r.Last-r.First {
		return r, fmt.Errorf("port range '%s' and target range '%s' differ in size", rangeText(r), rangeText(tr))
	}
	r.To = tr.First
	return r, nil
}

func isPortText(s string) bool {
	for i := 0; i < len(s); i++ {
		if (s[i] < '0' || s[i] > '9') && s[i] != '-' {
			return false
		}
	}
	return s != ""
}

// parseRange parses PORT [ "-" PORT ].
func parseRange(s string) (PortRange, error) {
	first, last, isRange := strings.Cut(s, "-")
	f, err := parsePort(first, s)
	if err != nil {
		return PortRange{}, err
	}
	l := f
	if isRange {
		if l, err = parsePort(last, s); err != nil {
			return PortRange{}, err
		}
		if l < f {
			return PortRange{}, fmt.Errorf("invalid port range '%s'", s)
		}
	}
	return PortRange{First: f, Last: l, To: f}, nil
}

func parsePort(p, whole string) (uint16, error) {
	if p == "" || len(p) > 5 {
		return 0, fmt.Errorf("invalid port range '%s'", whole)
	}
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return 0, fmt.Errorf("invalid port range '%s'", whole)
		}
	}
	v, _ := strconv.Atoi(p)
	if v < 1 || v > 65535 {
		return 0, fmt.Errorf("invalid port '%s' (1..65535) in '%s'", p, whole)
	}
	return uint16(v), nil
}

func rangeText(r PortRange) string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return strconv.Itoa(int(r.First)) + "-" + strconv.Itoa(int(r.Last))
}

// String renders the spec in canonical SPEC syntax; parsing the result gives
// the same PortSpec (apart from Raw).
func (s PortSpec) String() string {
	if s.None {
		return "none"
	}
	var b strings.Builder
	if s.Bind.IsValid() || s.Ifname != "" {
		if s.Bind.IsValid() {
			if s.Bind.Is6() {
				b.WriteString("[" + s.Bind.String() + "]")
			} else {
				b.WriteString(s.Bind.String())
			}
		}
		if s.Ifname != "" {
			b.WriteString("%" + s.Ifname)
		}
		b.WriteByte('/')
	}
	var parts []string
	for _, r := range s.Ranges {
		p := rangeText(r)
		if r.ToAddr.IsValid() || r.To != r.First {
			p += ":"
			if r.ToAddr.IsValid() {
				p += targetText(r.ToAddr)
				if r.To == r.First {
					parts = append(parts, p)
					continue
				}
				p += "/"
			}
			p += rangeText(PortRange{First: r.To, Last: r.To + (r.Last - r.First)})
		}
		parts = append(parts, p)
	}
	for _, r := range s.Excluded {
		parts = append(parts, "~"+rangeText(r))
	}
	if s.All {
		p := "all"
		if s.AllToAddr.IsValid() {
			p += ":" + targetText(s.AllToAddr)
		}
		parts = append(parts, p)
	}
	if s.Auto {
		parts = append(parts, "auto")
	}
	b.WriteString(strings.Join(parts, ","))
	return b.String()
}

func targetText(a netip.Addr) string {
	if a.Is6() {
		return "[" + a.String() + "]"
	}
	return a.String()
}

// Rule is one concrete forwarding rule: listening ports First..Last (on Bind
// and Ifname; invalid Bind: any address, both IP versions) go to
// To..To+(Last-First) on the other side, at ToAddr if valid.
type Rule struct {
	PortRange
	Bind   netip.Addr
	Ifname string
	// Scan ("auto"): forward a port only while something is bound to it
	// on the other side.
	Scan bool
	// Weak rules come from "all", "auto" or exclusion-only specs: they
	// cover the whole port space, so consumers skip the ephemeral range
	// (/proc/sys/net/ipv4/ip_local_port_range) and ignore bind failures.
	Weak bool
	// Option and Raw name the argument the rule came from, for messages
	// such as "Failed to bind port 8000 (...) for option '-t 8000'".
	Option, Raw string
}

// Rules expands the spec into forwarding rules with the exclusions removed.
// A "none" spec has no rules.
func (s PortSpec) Rules() []Rule {
	if s.None {
		return nil
	}
	var excl [65536 / 64]uint64
	for _, r := range s.Excluded {
		for p := int(r.First); p <= int(r.Last); p++ {
			excl[p/64] |= 1 << (p % 64)
		}
	}
	isExcl := func(p int) bool { return excl[p/64]&(1<<(p%64)) != 0 }
	base := Rule{Bind: s.Bind, Ifname: s.Ifname, Scan: s.Auto, Option: s.Option, Raw: s.Raw}
	var out []Rule
	cut := func(r PortRange, weak bool) {
		for p := int(r.First); p <= int(r.Last); p++ {
			if isExcl(p) {
				continue
			}
			q := p
			for q < int(r.Last) && !isExcl(q+1) {
				q++
			}
			n := base
			n.Weak = weak
			n.PortRange = PortRange{First: uint16(p), Last: uint16(q), To: r.To + uint16(p-int(r.First)), ToAddr: r.ToAddr}
			out = append(out, n)
			p = q
		}
	}
	if len(s.Ranges) == 0 {
		cut(PortRange{First: 1, Last: 65535, To: 1, ToAddr: s.AllToAddr}, true)
		return out
	}
	for _, r := range s.Ranges {
		cut(r, false)
	}
	return out
}

// Forwards is Rules without the per-rule metadata: the concrete port ranges
// (First..Last -> To.., ToAddr) the spec forwards.
func (s PortSpec) Forwards() []PortRange {
	rules := s.Rules()
	out := make([]PortRange, len(rules))
	for i, r := range rules {
		out[i] = r.PortRange
	}
	return out
}

// PortMap answers "where does a connection to port P go" for the specs of
// one option (e.g. Config.TCPPorts). Explicit rules win over weak ones; among
// rules of the same strength the one given first wins. Lookup ignores
// listening addresses and interfaces: when specs bind different addresses,
// walk Rules() instead. Rule lists are short (one per range), so lookups are
// a linear scan.
type PortMap struct {
	rules []Rule // explicit rules first, each group in given order
	auto  bool
}

// NewPortMap builds the map of specs (nil or empty: nothing forwarded).
func NewPortMap(specs []PortSpec) *PortMap {
	m := &PortMap{}
	for _, s := range specs {
		m.auto = m.auto || s.Auto
		m.rules = append(m.rules, s.Rules()...)
	}
	sort.SliceStable(m.rules, func(i, j int) bool {
		return !m.rules[i].Weak && m.rules[j].Weak
	})
	return m
}

// Auto reports whether any spec asked for "auto" (scan-based) forwarding.
func (m *PortMap) Auto() bool { return m.auto }

// Rules returns all rules, explicit ones first.
func (m *PortMap) Rules() []Rule { return m.rules }

// Lookup returns the rule forwarding port, if any.
func (m *PortMap) Lookup(port uint16) (Rule, bool) {
	for _, r := range m.rules {
		if r.First <= port && port <= r.Last {
			return r, true
		}
	}
	return Rule{}, false
}

// To maps a listening port to the port on the other side.
func (m *PortMap) To(port uint16) (uint16, bool) {
	r, ok := m.Lookup(port)
	if !ok {
		return 0, false
	}
	return r.To + (port - r.First), true
}
