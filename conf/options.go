package conf

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Theory of operation
//
// One table describes every option once: its names, whether it takes an
// argument, in which mode it is valid, its TOML key, and how it changes the
// Config. The command line and the TOML file both go through apply, so a
// value means the same thing wherever it is written, and the example-file
// test can check that every key is documented by walking this table.

// modeOnly restricts an option to one mode.
type modeOnly int

const (
	bothModes modeOnly = iota
	pastaOnly
	passtOnly
	vhostUserOnly // passt with --vhost-user
)

// tomlKind says which TOML value types a key takes.
type tomlKind int

const (
	tomlNone   tomlKind = iota // not settable from TOML (actions)
	tomlBool                   // flag: true applies it, false leaves the default
	tomlString                 // one value
	tomlInt                    // one value, integer or string
	tomlList                   // repeatable: string or array of strings
)

// option is one command-line option and its TOML key.
type option struct {
	long   []string // long names; long[0] is canonical and the TOML key
	short  byte     // 0: long only
	hasArg bool
	mode   modeOnly
	toml   tomlKind
	// apply changes the configuration; name is the option as written
	// ("-m", "--mtu"), for mode messages. Errors describe the value.
	apply func(p *parser, name, arg string) error
	// reset clears what a list option accumulated, so that the command
	// line replaces the file's list instead of appending to it.
	reset func(c *Config)
	// argName and help feed Usage().
	argName string
	help    string
}

// key is the TOML key of the option.
func (o *option) key() string { return o.long[0] }

// parser carries state that spans several options.
type parser struct {
	c *Config
	// modeSet: --mode was given on the command line, which overrides the
	// file's "mode" key.
	modeSet bool
	// a4Prefix: the IPv4 -a carried /PLEN (so -n is redundant).
	a4Prefix bool
	// portSeq numbers port specs in the order given (PortSpec.Seq).
	portSeq int
}

// errAction is returned by apply for --help/--version.
var (
	// ErrHelp is returned by Parse for -h/--help: print Usage(mode) to
	// stdout and exit 0.
	ErrHelp = errors.New("help requested")
	// ErrVersion is returned by Parse for --version: print
	// "gopasta " + Version and exit 0.
	ErrVersion = errors.New("version requested")
	// ErrPrintCapabilities is returned by Parse for --print-capabilities,
	// in any mode: print Capabilities to stdout and exit 0, as a
	// vhost-user back-end does when its front-end asks what it is.
	ErrPrintCapabilities = errors.New("capabilities requested")
)

// Capabilities is what --print-capabilities prints: the vhost-user
// back-end capabilities, in the JSON layout of passt's.
const Capabilities = "{\n  \"type\": \"net\"\n}\n"

func flag(set func(c *Config)) func(*parser, string, string) error {
	return func(p *parser, _, _ string) error { set(p.c); return nil }
}

func str(check func(string) error, set func(c *Config, v string)) func(*parser, string, string) error {
	return func(p *parser, _, arg string) error {
		if check != nil {
			if err := check(arg); err != nil {
				return err
			}
		}
		set(p.c, arg)
		return nil
	}
}

func path(what string) func(string) error {
	return func(s string) error { return validPath(s, what) }
}

// portOption handles -t/-u/-T/-U.
func portOption(short string, list func(c *Config) *[]PortSpec) func(*parser, string, string) error {
	return func(p *parser, _, arg string) error {
		spec, err := ParsePortSpec(short, arg)
		if err != nil {
			return err
		}
		l := list(p.c)
		if spec.None {
			for _, s := range *l {
				if !s.None {
					return fmt.Errorf("%s none conflicts with previous options", short)
				}
			}
		}
		if spec.Auto && p.c.Mode == ModePasst {
			return fmt.Errorf("'auto' port forwarding is only allowed for pasta (option '%s %s')", short, arg)
		}
		if (short == "-T" || short == "-U") && (spec.Bind.IsValid() || spec.Ifname != "" || strings.Contains(arg, "/")) {
			return fmt.Errorf("listening address not allowed for %s %s", short, arg)
		}
		if err := conflicts(*l, spec); err != nil {
			return err
		}
		p.portSeq++
		spec.Seq = p.portSeq
		*l = append(*l, spec)
		return nil
	}
}

// conflicts rejects a spec explicitly forwarding a port that an earlier
// spec of the same option already forwards from the same address and
// interface, as pasta does ("Forwarding configuration conflict").
func conflicts(prev []PortSpec, spec PortSpec) error {
	if len(spec.Ranges) == 0 {
		return nil
	}
	mine := spec.Forwards()
	for _, old := range prev {
		if old.Bind != spec.Bind || old.Ifname != spec.Ifname || len(old.Ranges) == 0 {
			continue
		}
		if port, dup := firstOverlap(mine, old.Forwards()); dup {
			return fmt.Errorf("forwarding conflict: port %d in '%s %s' is already forwarded by '%s %s'",
				port, spec.Option, spec.Raw, old.Option, old.Raw)
		}
	}
	return nil
}

// perFamily handles options taking one address per IP version.
func perFamily(r addrRules, v4, v6 func(c *Config) *netip.Addr) func(*parser, string, string) error {
	return func(p *parser, _, arg string) error {
		a, err := parseHostAddr(arg, r)
		if err != nil {
			return err
		}
		if a.Is4() {
			*v4(p.c) = a
		} else {
			*v6(p.c) = a
		}
		return nil
	}
}

func applyAddress(p *parser, _, arg string) error {
	addr, plen, hasPlen := strings.Cut(arg, "/")
	a, err := parseHostAddr(addr, addrRules{noLoopback: true, noMulticast: true, noBroadcast: true})
	if err != nil {
		return err
	}
	bits := -1
	if hasPlen {
		max := uint64(32)
		if a.Is6() {
			max = 128
		}
		v, err := strconv.ParseUint(plen, 10, 8)
		if err != nil || v > max {
			return fmt.Errorf("invalid prefix length in '%s' (0..%d)", arg, max)
		}
		bits = int(v)
	}
	if a.Is6() {
		p.c.Addr6 = a
		p.c.Addr6Bits = max(bits, 0)
		return nil
	}
	if hasPlen && p.c.Netmask4 != 0 {
		return errors.New("redundant prefix length specification (-a with /PLEN and -n)")
	}
	p.a4Prefix = hasPlen
	switch {
	case hasPlen:
	case p.c.Netmask4 != 0:
		bits = p.c.Netmask4
	default:
		bits = classfulBits(a)
	}
	p.c.Addr4 = netip.PrefixFrom(a, bits)
	return nil
}

func applyNetmask(p *parser, _, arg string) error {
	if p.a4Prefix {
		return errors.New("redundant prefix length specification (-a with /PLEN and -n)")
	}
	n, err := parseNetmask(arg)
	if err != nil {
		return err
	}
	p.c.Netmask4 = n
	if p.c.Addr4.IsValid() && n != 0 {
		p.c.Addr4 = netip.PrefixFrom(p.c.Addr4.Addr(), n)
	}
	return nil
}

func applyMapHostLoopback(p *parser, _, arg string) error {
	if arg == "none" {
		p.c.MapHostLoopback4, p.c.MapHostLoopback6 = netip.Addr{}, netip.Addr{}
		p.c.MapHostLoopbackNone = true
		p.c.NoMapGW = true
		return nil
	}
	a, err := parseHostAddr(arg, addrRules{noLoopback: true, noMulticast: true})
	if err != nil {
		return err
	}
	p.c.MapHostLoopbackNone = false
	if a.Is4() {
		p.c.MapHostLoopback4 = a
	} else {
		p.c.MapHostLoopback6 = a
	}
	return nil
}

func applyMapGuestAddr(p *parser, _, arg string) error {
	if arg == "none" {
		p.c.MapGuestAddr4, p.c.MapGuestAddr6 = netip.Addr{}, netip.Addr{}
		p.c.MapGuestAddrNone = true
		return nil
	}
	a, err := parseHostAddr(arg, addrRules{noLoopback: true, noMulticast: true})
	if err != nil {
		return err
	}
	p.c.MapGuestAddrNone = false
	if a.Is4() {
		p.c.MapGuestAddr4 = a
	} else {
		p.c.MapGuestAddr6 = a
	}
	return nil
}

func applyDNS(p *parser, _, arg string) error {
	if arg == "none" {
		p.c.DNS = nil
		p.c.DNSNone = true
		return nil
	}
	a, err := parseHostAddr(arg, addrRules{noMulticast: true, noBroadcast: true})
	if err != nil {
		return err
	}
	p.c.DNSNone = false
	p.c.DNS = append(p.c.DNS, a)
	return nil
}

func applyDNSHost(p *parser, _, arg string) error {
	a, err := parseHostAddr(arg, addrRules{noBroadcast: true})
	if err != nil {
		return err
	}
	// One per IP version, the later one wins.
	out := p.c.DNSHost[:0:0]
	for _, h := range p.c.DNSHost {
		if h.Is4() != a.Is4() {
			out = append(out, h)
		}
	}
	p.c.DNSHost = append(out, a)
	return nil
}

func applySearch(p *parser, _, arg string) error {
	if arg == "none" {
		p.c.Search = nil
		p.c.SearchNone = true
		return nil
	}
	fields := strings.FieldsFunc(arg, func(r rune) bool { return r == ' ' || r == ',' || r == '\t' })
	if len(fields) == 0 {
		return fmt.Errorf("invalid search list '%s'", arg)
	}
	for _, d := range fields {
		if err := validDName(d, "search domain"); err != nil {
			return err
		}
	}
	p.c.SearchNone = false
	p.c.Search = append(p.c.Search, fields...)
	return nil
}

func applyNetNS(p *parser, _, arg string) error {
	if arg == "" {
		return errors.New("invalid network namespace ''")
	}
	if !strings.Contains(arg, "/") {
		arg = "/run/netns/" + arg
	}
	if err := validPath(arg, "network namespace"); err != nil {
		return err
	}
	p.c.NetNS = arg
	return nil
}

func applyMTU(p *parser, _, arg string) error {
	v, err := parseMTU(arg)
	if err != nil {
		return err
	}
	p.c.MTU, p.c.MTUSet = v, true
	return nil
}

func applyFD(p *parser, _, arg string) error {
	v, err := parseUint(arg, 1<<31-1)
	if err != nil {
		return err
	}
	if v == 1 || v == 2 {
		return fmt.Errorf("%s is stdout or stderr, not a socket", arg)
	}
	p.c.FD = int(v)
	p.c.OneOff = true
	p.c.Socket = ""
	return nil
}

func intOption(max uint64, min uint64, set func(c *Config, v uint64)) func(*parser, string, string) error {
	return func(p *parser, _, arg string) error {
		v, err := parseUint(arg, max)
		if err != nil {
			return err
		}
		if v < min {
			return fmt.Errorf("%s is out of range (%d..%d)", arg, min, max)
		}
		set(p.c, v)
		return nil
	}
}

func durationOption(set func(c *Config, d time.Duration)) func(*parser, string, string) error {
	return func(p *parser, _, arg string) error {
		d, err := parseDuration(arg)
		if err != nil {
			return err
		}
		if d <= 0 {
			return fmt.Errorf("invalid duration '%s': must be positive", arg)
		}
		set(p.c, d)
		return nil
	}
}

func macOption(set func(c *Config, m [6]byte)) func(*parser, string, string) error {
	return func(p *parser, _, arg string) error {
		m, err := parseMAC(arg)
		if err != nil {
			return err
		}
		set(p.c, m)
		return nil
	}
}

func boolPtr(b bool) *bool { return &b }

// optionTable is every option, in the order Usage lists them.
var optionTable = buildTable()

// buildTable lists every option in pasta's order of documentation.
func buildTable() []*option {
	ifname := validIfname
	return []*option{
		// Process control and logging.
		{long: []string{"debug"}, short: 'd', toml: tomlBool, help: "Be verbose",
			apply: flag(func(c *Config) { c.Debug, c.Quiet = true, false })},
		{long: []string{"trace"}, toml: tomlBool, help: "Be extra verbose, implies --debug",
			apply: flag(func(c *Config) { c.Trace, c.Debug, c.Quiet = true, true, false })},
		{long: []string{"quiet"}, short: 'q', toml: tomlBool, help: "Don't print informational messages",
			apply: flag(func(c *Config) { c.Quiet, c.Debug, c.Trace = true, false, false })},
		{long: []string{"foreground"}, short: 'f', toml: tomlBool, help: "Don't run in background",
			apply: flag(func(c *Config) { c.Foreground = true })},
		{long: []string{"stderr"}, short: 'e', toml: tomlBool, help: "Deprecated, accepted for compatibility",
			apply: flag(func(c *Config) { c.Stderr = true })},
		{long: []string{"log-file"}, short: 'l', hasArg: true, toml: tomlString, argName: "PATH", help: "Log (only) to the given file",
			apply: str(path("log file"), func(c *Config, v string) { c.LogFile = v })},
		{long: []string{"log-size"}, hasArg: true, toml: tomlInt, argName: "BYTES", help: "Maximum size of the log file (default: 1 MiB)",
			apply: intOption(1<<62, 4096, func(c *Config, v uint64) { c.LogSize = int64(v) })},
		{long: []string{"stats"}, hasArg: true, toml: tomlInt, argName: "DELAY", help: "Print statistics at most every DELAY seconds (needs -f)",
			apply: intOption(1<<31-1, 0, func(c *Config, v uint64) { c.Stats = int(v) })},
		{long: []string{"runas"}, hasArg: true, toml: tomlString, argName: "UID[:GID]", help: "Run as the given user and group (numeric or names)",
			apply: str(func(s string) error {
				if s == "" || strings.HasPrefix(s, ":") || strings.HasSuffix(s, ":") {
					return fmt.Errorf("invalid user '%s' (UID[:GID] or LOGIN[:GROUP])", s)
				}
				return nil
			}, func(c *Config, v string) { c.RunAs = v })},
		{long: []string{"help"}, short: 'h', help: "Show this help and exit",
			apply: func(*parser, string, string) error { return ErrHelp }},
		{long: []string{"version"}, help: "Show the version and exit",
			apply: func(*parser, string, string) error { return ErrVersion }},
		{long: []string{"conf-path"}, short: 'c', hasArg: true, toml: tomlString, argName: "PATH", help: "Control socket for run-time forwarding changes (pesto)",
			apply: str(path("control socket path"), func(c *Config, v string) { c.ConfPath = v })},
		{long: []string{"pcap"}, short: 'p', hasArg: true, toml: tomlString, argName: "FILE", help: "Capture guest-side traffic to a pcap file",
			apply: str(path("pcap path"), func(c *Config, v string) { c.Pcap = v })},
		{long: []string{"pcap-size"}, hasArg: true, toml: tomlInt, argName: "BYTES", help: "Maximum size of the pcap file, then capture stops (default: 1 GiB)",
			apply: intOption(1<<62, 4096, func(c *Config, v uint64) { c.PcapSize = int64(v) })},
		{long: []string{"pid"}, short: 'P', hasArg: true, toml: tomlString, argName: "FILE", help: "Write our PID to FILE once ready",
			apply: str(path("PID file"), func(c *Config, v string) { c.PIDFile = v })},
		{long: []string{"chroot-fallback"}, toml: tomlBool, help: "Use chroot() if pivot_root() fails",
			apply: flag(func(c *Config) { c.ChrootFallback = true })},

		// Interface, addresses, routes.
		{long: []string{"mtu"}, short: 'm', hasArg: true, toml: tomlInt, argName: "MTU", help: "MTU to advertise and set, 0: don't (default: 65520)",
			apply: applyMTU},
		{long: []string{"address"}, short: 'a', hasArg: true, toml: tomlList, argName: "ADDR[/PLEN]", help: "Guest IPv4 and/or IPv6 address (once per IP version)",
			apply: applyAddress,
			reset: func(c *Config) { c.Addr4, c.Addr6, c.Addr6Bits = netip.Prefix{}, netip.Addr{}, 0 }},
		{long: []string{"netmask"}, short: 'n', hasArg: true, toml: tomlInt, argName: "MASK", help: "IPv4 netmask, dotted or prefix length",
			apply: applyNetmask},
		{long: []string{"mac-addr"}, short: 'M', hasArg: true, toml: tomlString, argName: "ADDR", help: "Our MAC address towards the guest (default: 9a:55:9a:55:9a:55)",
			apply: macOption(func(c *Config, m [6]byte) { c.OurMAC = m })},
		{long: []string{"gateway"}, short: 'g', hasArg: true, toml: tomlList, argName: "ADDR", help: "IPv4 and/or IPv6 default gateway for the guest",
			apply: perFamily(addrRules{noLoopback: true, noBroadcast: true},
				func(c *Config) *netip.Addr { return &c.Gateway4 }, func(c *Config) *netip.Addr { return &c.Gateway6 }),
			reset: func(c *Config) { c.Gateway4, c.Gateway6 = netip.Addr{}, netip.Addr{} }},
		{long: []string{"interface"}, short: 'i', hasArg: true, toml: tomlString, argName: "NAME", help: "Host interface to take addresses and routes from",
			apply: str(ifname, func(c *Config, v string) { c.Interface = v })},
		{long: []string{"outbound"}, short: 'o', hasArg: true, toml: tomlList, argName: "ADDR", help: "Source address for outbound sockets (once per IP version)",
			apply: perFamily(addrRules{noMulticast: true, noBroadcast: true},
				func(c *Config) *netip.Addr { return &c.Outbound4 }, func(c *Config) *netip.Addr { return &c.Outbound6 }),
			reset: func(c *Config) { c.Outbound4, c.Outbound6 = netip.Addr{}, netip.Addr{} }},
		{long: []string{"outbound-if4"}, hasArg: true, toml: tomlString, argName: "NAME", help: "Bind outbound IPv4 sockets to this interface",
			apply: str(ifname, func(c *Config, v string) { c.OutboundIf4 = v })},
		{long: []string{"outbound-if6"}, hasArg: true, toml: tomlString, argName: "NAME", help: "Bind outbound IPv6 sockets to this interface",
			apply: str(ifname, func(c *Config, v string) { c.OutboundIf6 = v })},
		{long: []string{"ipv4-only"}, short: '4', toml: tomlBool, help: "IPv4 only",
			apply: flag(func(c *Config) { c.IPv4Only, c.IPv6Only = true, false })},
		{long: []string{"ipv6-only"}, short: '6', toml: tomlBool, help: "IPv6 only",
			apply: flag(func(c *Config) { c.IPv6Only, c.IPv4Only = true, false })},
		{long: []string{"hostname"}, short: 'H', hasArg: true, toml: tomlString, argName: "NAME", help: "Hostname for DHCP, and of a command's namespace (default: pasta-HOST)",
			apply: str(func(s string) error { return validDName(s, "hostname") }, func(c *Config, v string) { c.Hostname = v })},
		{long: []string{"fqdn"}, hasArg: true, toml: tomlString, argName: "NAME", help: "FQDN for DHCP option 81 / DHCPv6 option 39",
			apply: str(func(s string) error { return validDName(s, "FQDN") }, func(c *Config, v string) { c.FQDN = v })},
		{long: []string{"ns-ifname"}, short: 'I', hasArg: true, mode: pastaOnly, toml: tomlString, argName: "NAME", help: "Tap interface name in the namespace",
			apply: str(ifname, func(c *Config, v string) { c.NSIfname = v })},
		{long: []string{"ns-mac-addr"}, hasArg: true, mode: pastaOnly, toml: tomlString, argName: "ADDR", help: "MAC address of the tap in the namespace",
			apply: macOption(func(c *Config, m [6]byte) { c.NSMAC = &m })},
		{long: []string{"config-net"}, mode: pastaOnly, toml: tomlBool, help: "Configure the tap: addresses, routes, MTU, link up",
			apply: flag(func(c *Config) { c.ConfigNet = true })},
		{long: []string{"no-copy-routes"}, mode: pastaOnly, toml: tomlBool, help: "Deprecated: copy only the default route",
			apply: flag(func(c *Config) { c.NoCopyRoutes = true })},
		{long: []string{"no-copy-addrs"}, mode: pastaOnly, toml: tomlBool, help: "Deprecated: copy only one address",
			apply: flag(func(c *Config) { c.NoCopyAddrs = true })},

		// DNS.
		{long: []string{"dns"}, short: 'D', hasArg: true, toml: tomlList, argName: "ADDR", help: "DNS server to advertise (repeatable, 'none': none; default: the host's)",
			apply: applyDNS, reset: func(c *Config) { c.DNS, c.DNSNone = nil, false }},
		{long: []string{"dns-forward"}, hasArg: true, toml: tomlList, argName: "ADDR", help: "Forward DNS sent to ADDR to the host resolver (once per IP version)",
			apply: perFamily(addrRules{noLoopback: true, noBroadcast: true},
				func(c *Config) *netip.Addr { return &c.DNSForward4 }, func(c *Config) *netip.Addr { return &c.DNSForward6 }),
			reset: func(c *Config) { c.DNSForward4, c.DNSForward6 = netip.Addr{}, netip.Addr{} }},
		{long: []string{"dns-host"}, hasArg: true, toml: tomlList, argName: "ADDR", help: "Host resolver that --dns-forward sends to",
			apply: applyDNSHost, reset: func(c *Config) { c.DNSHost = nil }},
		{long: []string{"search"}, short: 'S', hasArg: true, toml: tomlList, argName: "LIST", help: "DNS search domains to advertise ('none': none; default: the host's)",
			apply: applySearch, reset: func(c *Config) { c.Search, c.SearchNone = nil, false }},
		{long: []string{"dhcp-dns"}, mode: pastaOnly, toml: tomlBool, help: "Advertise DNS servers via DHCP/DHCPv6/NDP (default: off in pasta mode)",
			apply: flag(func(c *Config) { c.DHCPDNS = boolPtr(true) })},
		{long: []string{"no-dhcp-dns"}, mode: passtOnly, toml: tomlBool, help: "Don't advertise DNS servers (default: on in passt mode)",
			apply: flag(func(c *Config) { c.DHCPDNS = boolPtr(false) })},
		{long: []string{"dhcp-search"}, mode: pastaOnly, toml: tomlBool, help: "Advertise the search list via DHCP/DHCPv6/NDP (default: off in pasta mode)",
			apply: flag(func(c *Config) { c.DHCPSearch = boolPtr(true) })},
		{long: []string{"no-dhcp-search"}, mode: passtOnly, toml: tomlBool, help: "Don't advertise the search list (default: on in passt mode)",
			apply: flag(func(c *Config) { c.DHCPSearch = boolPtr(false) })},

		// Port forwarding.
		{long: []string{"tcp-ports"}, short: 't', hasArg: true, toml: tomlList, argName: "SPEC", help: "TCP ports to forward from the host to the guest",
			apply: portOption("-t", func(c *Config) *[]PortSpec { return &c.TCPPorts }), reset: func(c *Config) { c.TCPPorts = nil }},
		{long: []string{"udp-ports"}, short: 'u', hasArg: true, toml: tomlList, argName: "SPEC", help: "UDP ports to forward from the host to the guest",
			apply: portOption("-u", func(c *Config) *[]PortSpec { return &c.UDPPorts }), reset: func(c *Config) { c.UDPPorts = nil }},
		{long: []string{"tcp-ns"}, short: 'T', hasArg: true, mode: pastaOnly, toml: tomlList, argName: "SPEC", help: "TCP ports to forward from the namespace to the host",
			apply: portOption("-T", func(c *Config) *[]PortSpec { return &c.TCPNSPorts }), reset: func(c *Config) { c.TCPNSPorts = nil }},
		{long: []string{"udp-ns"}, short: 'U', hasArg: true, mode: pastaOnly, toml: tomlList, argName: "SPEC", help: "UDP ports to forward from the namespace to the host",
			apply: portOption("-U", func(c *Config) *[]PortSpec { return &c.UDPNSPorts }), reset: func(c *Config) { c.UDPNSPorts = nil }},
		{long: []string{"host-lo-to-ns-lo"}, mode: pastaOnly, toml: tomlBool, help: "Deliver host-loopback connections to namespace loopback",
			apply: flag(func(c *Config) { c.HostLoToNsLo = true })},
		{long: []string{"freebind"}, toml: tomlBool, help: "Bind forwarded ports to addresses not (yet) configured",
			apply: flag(func(c *Config) { c.Freebind = true })},
		{long: []string{"no-splice"}, mode: pastaOnly, toml: tomlBool, help: "Don't bypass the tap for loopback traffic",
			apply: flag(func(c *Config) { c.NoSplice = true })},
		{long: []string{"splice-only"}, mode: pastaOnly, toml: tomlBool, help: "No tap device: forward loopback traffic only",
			apply: flag(func(c *Config) { c.SpliceOnly = true })},

		// Gateway and host mapping.
		{long: []string{"map-host-loopback"}, hasArg: true, toml: tomlList, argName: "ADDR", help: "Guest traffic to ADDR goes to host loopback ('none': off)",
			apply: applyMapHostLoopback,
			reset: func(c *Config) {
				c.MapHostLoopback4, c.MapHostLoopback6, c.MapHostLoopbackNone = netip.Addr{}, netip.Addr{}, false
			}},
		{long: []string{"no-map-gw"}, toml: tomlBool, help: "Don't map the gateway address to the host",
			apply: flag(func(c *Config) { c.NoMapGW = true })},
		{long: []string{"map-guest-addr"}, hasArg: true, toml: tomlList, argName: "ADDR", help: "Guest traffic to ADDR goes to the host's copy of the guest address",
			apply: applyMapGuestAddr,
			reset: func(c *Config) {
				c.MapGuestAddr4, c.MapGuestAddr6, c.MapGuestAddrNone = netip.Addr{}, netip.Addr{}, false
			}},

		// Protocol and service switches.
		{long: []string{"no-tcp"}, toml: tomlBool, help: "Disable TCP", apply: flag(func(c *Config) { c.NoTCP = true })},
		{long: []string{"no-udp"}, toml: tomlBool, help: "Disable UDP", apply: flag(func(c *Config) { c.NoUDP = true })},
		{long: []string{"no-icmp"}, toml: tomlBool, help: "Disable ICMP/ICMPv6 echo (implies --no-ndp)", apply: flag(func(c *Config) { c.NoICMP = true })},
		{long: []string{"no-dhcp"}, toml: tomlBool, help: "Disable the DHCP server", apply: flag(func(c *Config) { c.NoDHCP = true })},
		{long: []string{"no-ndp"}, toml: tomlBool, help: "Disable NDP responses", apply: flag(func(c *Config) { c.NoNDP = true })},
		{long: []string{"no-dhcpv6"}, toml: tomlBool, help: "Disable the DHCPv6 server", apply: flag(func(c *Config) { c.NoDHCPv6 = true })},
		{long: []string{"no-ra"}, toml: tomlBool, help: "Disable router advertisements", apply: flag(func(c *Config) { c.NoRA = true })},

		// Namespaces.
		{long: []string{"userns"}, hasArg: true, mode: pastaOnly, toml: tomlString, argName: "PATH", help: "User namespace to join",
			apply: str(path("user namespace"), func(c *Config, v string) { c.UserNS, c.NetNSOnly = v, false })},
		{long: []string{"netns"}, hasArg: true, mode: pastaOnly, toml: tomlString, argName: "PATH|NAME", help: "Network namespace to join (NAME: /run/netns/NAME)",
			apply: applyNetNS},
		{long: []string{"netns-only"}, mode: pastaOnly, toml: tomlBool, help: "Don't join or create a user namespace",
			apply: flag(func(c *Config) { c.NetNSOnly, c.UserNS = true, "" })},
		{long: []string{"no-netns-quit"}, mode: pastaOnly, toml: tomlBool, help: "Don't exit when the namespace goes away",
			apply: flag(func(c *Config) { c.NoNetNSQuit = true })},

		// VM attachment.
		{long: []string{"mode"}, hasArg: true, toml: tomlString, argName: "pasta|passt", help: "Run as pasta or passt whatever the program is called",
			apply: func(_ *parser, _, arg string) error { _, err := ParseMode(arg); return err }},
		{long: []string{"socket", "socket-path"}, short: 's', hasArg: true, mode: passtOnly, toml: tomlString, argName: "PATH", help: "UNIX socket path for the VM (qemu/vhost-user)",
			apply: str(path("socket path"), func(c *Config, v string) { c.Socket, c.FD = v, -1 })},
		{long: []string{"fd"}, short: 'F', hasArg: true, toml: tomlInt, argName: "FD", help: "passt: use FD as connected socket (implies --one-off); pasta: FD is an open tap device",
			apply: applyFD},
		{long: []string{"one-off"}, short: '1', mode: passtOnly, toml: tomlBool, help: "Exit after the first client disconnects",
			apply: flag(func(c *Config) { c.OneOff = true })},
		{long: []string{"vhost-user"}, mode: passtOnly, toml: tomlBool, help: "Act as vhost-user back-end on the -s socket",
			apply: flag(func(c *Config) { c.VhostUser = true })},
		{long: []string{"print-capabilities"}, help: "Print vhost-user back-end capabilities (JSON, stdout) and exit",
			apply: func(p *parser, _, _ string) error { p.c.PrintCapabilities = true; return ErrPrintCapabilities }},
		{long: []string{"repair-path"}, hasArg: true, mode: passtOnly, toml: tomlString, argName: "PATH", help: "passt-repair socket for migration (vhost-user), 'none': off",
			apply: func(p *parser, _, arg string) error {
				if arg == "none" {
					p.c.RepairPath, p.c.RepairPathNone = "", true
					return nil
				}
				if !p.c.VhostUser {
					return errors.New("--repair-path is for vhost-user mode only")
				}
				if err := validPath(arg, "passt-repair path"); err != nil {
					return err
				}
				p.c.RepairPath, p.c.RepairPathNone = arg, false
				return nil
			}},
		{long: []string{"migrate-exit"}, mode: vhostUserOnly, toml: tomlBool, help: "Deprecated: exit after migrating out",
			apply: flag(func(c *Config) { c.MigrateExit = true })},
		{long: []string{"migrate-no-linger"}, mode: vhostUserOnly, toml: tomlBool, help: "Deprecated: close sockets right after migrating out",
			apply: flag(func(c *Config) { c.MigrateNoLinger = true })},

		// gopasta's own.
		{long: []string{"config"}, hasArg: true, argName: "FILE", help: "Read settings from a TOML file first (see config.example.toml)",
			apply: func(*parser, string, string) error { return nil }}, // loaded before the other options
		{long: []string{"flow-limit"}, hasArg: true, toml: tomlInt, argName: "N", help: "Most concurrent flows (default: 65536)",
			apply: intOption(1<<24, 1, func(c *Config, v uint64) { c.FlowLimit = int(v) })},
		{long: []string{"udp-timeout"}, hasArg: true, toml: tomlInt, argName: "DURATION", help: "Idle timeout of UDP flows (default: 180s)",
			apply: durationOption(func(c *Config, d time.Duration) { c.UDPTimeout = d })},
		{long: []string{"icmp-timeout"}, hasArg: true, toml: tomlInt, argName: "DURATION", help: "Idle timeout of ICMP echo flows (default: 60s)",
			apply: durationOption(func(c *Config, d time.Duration) { c.ICMPTimeout = d })},
		{long: []string{"no-sandbox"}, toml: tomlBool, help: "Debugging only: keep privileges and every system call after setup",
			apply: flag(func(c *Config) { c.NoSandbox = true })},
		{long: []string{"seccomp-debug"}, toml: tomlBool, help: "Debugging only: a system call outside the allowlist fails with EPERM (the kernel logs it) instead of killing gopasta",
			apply: flag(func(c *Config) { c.SeccompDebug = true })},
		{long: []string{"flow-buffer"}, hasArg: true, toml: tomlInt, argName: "BYTES", help: "Most guest data one flow may hold for the host (default: 16 MiB, at most an eighth of --total-buffer)",
			apply: intOption(1<<40, 64<<10, func(c *Config, v uint64) { c.FlowBuffer = int64(v) })},
		{long: []string{"total-buffer"}, hasArg: true, toml: tomlInt, argName: "BYTES", help: "Most guest data all flows together may hold for the host (default: 256 MiB)",
			apply: intOption(1<<44, 1<<20, func(c *Config, v uint64) { c.TotalBuffer = int64(v) })},
	}
}

// modeError says an option does not exist in the current mode, in pasta's
// words ("--netns is for pasta mode only").
func modeError(o *option, name string, c *Config) error {
	switch o.mode {
	case pastaOnly:
		if c.Mode != ModePasta {
			return fmt.Errorf("%s is for pasta mode only", name)
		}
	case passtOnly:
		if c.Mode != ModePasst {
			if o.short == 's' {
				return fmt.Errorf("%s is for passt / vhost-user mode only", name)
			}
			return fmt.Errorf("%s is for passt mode only", name)
		}
	case vhostUserOnly:
		if c.Mode != ModePasst || !c.VhostUser {
			return fmt.Errorf("%s is for vhost-user mode only", name)
		}
	}
	return nil
}
