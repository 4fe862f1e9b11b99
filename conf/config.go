// Package conf holds gopasta's configuration: the Config every other package
// reads, the pasta-compatible command line, and the TOML file. Precedence is
// built-in defaults < TOML file (--config) < command line.
package conf

import (
	"net/netip"
	"time"
)

// Mode says what gopasta connects to.
type Mode int

const (
	// ModePasta connects a network namespace through a tap device.
	ModePasta Mode = iota
	// ModePasst connects a VM through QEMU's stream socket.
	ModePasst
)

func (m Mode) String() string {
	if m == ModePasst {
		return "passt"
	}
	return "pasta"
}

// DefaultMAC is the MAC address gopasta uses towards the guest, as pasta does.
var DefaultMAC = [6]byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}

// Config is the complete configuration. Zero values mean "not set"; Finish
// (in the parser) fills in defaults that depend on the host.
//
// Every field has a TOML key, named after the long command-line option.
type Config struct {
	Mode Mode

	// Process control and logging.
	Foreground bool   // -f
	PIDFile    string // -P
	Debug      bool   // -d
	Trace      bool   // --trace (implies Debug)
	Quiet      bool   // -q
	LogFile    string // -l
	LogSize    int64  // --log-size
	Stats      int    // --stats DELAY (seconds)
	RunAs      string // --runas
	ConfPath   string // -c/--conf-path (control socket, pesto)
	Pcap       string // -p/--pcap
	PcapSize   int64  // --pcap-size, 0 for the default

	// Interface, addresses, routes.
	MTU          int          // -m; 0 until defaulted to 65520
	MTUSet       bool         // -m given (0 then means "don't advertise")
	Addr4        netip.Prefix // -a (IPv4), with -n's prefix length
	Addr6        netip.Addr   // -a (IPv6)
	Gateway4     netip.Addr   // -g (IPv4)
	Gateway6     netip.Addr   // -g (IPv6)
	OurMAC       [6]byte      // -M
	NSMAC        *[6]byte     // --ns-mac-addr
	NSIfname     string       // -I
	Interface    string       // -i
	Outbound4    netip.Addr   // -o (IPv4)
	Outbound6    netip.Addr   // -o (IPv6)
	OutboundIf4  string       // --outbound-if4
	OutboundIf6  string       // --outbound-if6
	IPv4Only     bool         // -4
	IPv6Only     bool         // -6
	Hostname     string       // -H
	FQDN         string       // --fqdn
	ConfigNet    bool         // --config-net
	NoCopyRoutes bool         // --no-copy-routes (deprecated)
	NoCopyAddrs  bool         // --no-copy-addrs (deprecated)

	// DNS.
	DNS         []netip.Addr // -D (empty with DNSNone: none)
	DNSNone     bool         // -D none
	DNSForward4 netip.Addr   // --dns-forward (IPv4)
	DNSForward6 netip.Addr   // --dns-forward (IPv6)
	DNSHost     []netip.Addr // --dns-host
	Search      []string     // -S
	SearchNone  bool         // -S none
	DHCPDNS     *bool        // --dhcp-dns / --no-dhcp-dns (nil: mode default)
	DHCPSearch  *bool        // --dhcp-search / --no-dhcp-search

	// Port forwarding: the specs as given, in order, each parsed.
	TCPPorts   []PortSpec // -t: host -> guest
	UDPPorts   []PortSpec // -u: host -> guest
	TCPNSPorts []PortSpec // -T: namespace -> host (pasta)
	UDPNSPorts []PortSpec // -U: namespace -> host (pasta)

	// Gateway and host mapping.
	NoMapGW             bool       // --no-map-gw
	MapHostLoopback4    netip.Addr // --map-host-loopback (IPv4); invalid: gateway
	MapHostLoopback6    netip.Addr
	MapHostLoopbackNone bool
	MapGuestAddr4       netip.Addr // --map-guest-addr (IPv4)
	MapGuestAddr6       netip.Addr
	MapGuestAddrNone    bool

	// Loopback splice path (pasta).
	NoSplice     bool // --no-splice
	SpliceOnly   bool // --splice-only
	HostLoToNsLo bool // --host-lo-to-ns-lo
	Freebind     bool // --freebind

	// Protocol and service switches.
	NoTCP, NoUDP, NoICMP          bool
	NoDHCP, NoNDP, NoDHCPv6, NoRA bool

	// Namespaces (pasta).
	NetNS       string   // --netns PATH|NAME (NAME resolved to /run/netns/NAME)
	NetNSOnly   bool     // --netns-only
	UserNS      string   // --userns PATH
	TargetPID   int      // PID argument
	Command     []string // COMMAND [ARG]...
	NoNetNSQuit bool     // --no-netns-quit

	// VM attachment (passt).
	Socket    string // -s
	FD        int    // -F (-1 when unset)
	OneOff    bool   // -1
	VhostUser bool   // --vhost-user

	// Accepted for compatibility, no effect.
	Stderr bool // -e

	// gopasta's own knobs (TOML and long options only).
	FlowLimit   int           // --flow-limit: most concurrent flows (default 65536)
	UDPTimeout  time.Duration // --udp-timeout (default 180s)
	ICMPTimeout time.Duration // --icmp-timeout (default 60s)
	FlowBuffer  int64         // --flow-buffer: bytes one flow may hold (0: actors' default)
	TotalBuffer int64         // --total-buffer: bytes all flows may hold (0: actors' default)

	// Added by the command-line parser (additive; see conf/options.go).

	// ConfigFile is the --config FILE that was loaded ("" if none).
	ConfigFile string
	// Netmask4 is -n as a prefix length (0: not given). It applies to the
	// IPv4 address derived from the host when -a gives none; with -a it is
	// already folded into Addr4.
	Netmask4 int
	// Addr6Bits is the /PLEN given with an IPv6 -a (0: not given, use 64).
	Addr6Bits int
	// PrintCapabilities is --print-capabilities (vhost-user convention):
	// print the back-end capabilities and exit.
	PrintCapabilities bool
	// RepairPath is --repair-path (vhost-user): passt-repair socket;
	// RepairPathNone is "--repair-path none".
	RepairPath     string
	RepairPathNone bool
	// MigrateExit, MigrateNoLinger: deprecated vhost-user migration knobs.
	MigrateExit     bool
	MigrateNoLinger bool
	// ChrootFallback is --chroot-fallback: chroot() if pivot_root() fails.
	ChrootFallback bool
	// NoSandbox is --no-sandbox: for debugging only, the daemon keeps
	// its privileges and every system call after setup (sandbox package).
	NoSandbox bool
	// SeccompDebug is --seccomp-debug: a denied system call fails with
	// EPERM (and the kernel logs it) instead of killing the daemon.
	SeccompDebug bool
}

// PortSpec is one -t/-u/-T/-U argument.
type PortSpec struct {
	// Raw is the argument as given, for messages ("for option '-t 8000'").
	Raw string
	// Option is the option it came with, e.g. "-t".
	Option string
	// None, Auto, All are the keyword forms.
	None, Auto, All bool
	// Bind is the address to bind (invalid: any), Ifname the interface.
	Bind   netip.Addr
	Ifname string
	// Ranges are the forwarded ranges, Excluded the "~" ranges.
	Ranges   []PortRange
	Excluded []PortRange
	// AllToAddr is the target address of "all:ADDR" (invalid: none).
	AllToAddr netip.Addr
	// Seq is the spec's position among all -t/-u/-T/-U options given
	// (file first, then command line): pasta lists -t and -u rules in one
	// table in the order they were given, and so does the control socket.
	Seq int
}

// PortRange forwards ports First..Last to To..To+(Last-First) (To == First
// when not remapped), optionally to a target address.
type PortRange struct {
	First, Last uint16
	To          uint16
	ToAddr      netip.Addr
}
