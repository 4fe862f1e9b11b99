package conf

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func mustParse(t *testing.T, argv0 string, args ...string) *Config {
	t.Helper()
	c, err := Parse(argv0, args)
	if err != nil {
		t.Fatalf("Parse(%q, %q): %v", argv0, args, err)
	}
	return c
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func specStrings(specs []PortSpec) []string {
	var out []string
	for _, s := range specs {
		out = append(out, s.Option+" "+s.Raw)
	}
	return out
}

// The exact argv podman's createPastaArgs() builds for a container without
// published ports.
func TestPodmanArgv(t *testing.T) {
	c := mustParse(t, "/usr/bin/pasta", strings.Fields(
		"--config-net --dns-forward 169.254.1.1 -t none -u none -T none -U none --no-map-gw --quiet --netns /run/user/1000/netns/netns-abc --map-guest-addr 169.254.1.2")...)
	if c.Mode != ModePasta {
		t.Errorf("Mode = %v", c.Mode)
	}
	if !c.ConfigNet || !c.NoMapGW || !c.Quiet || c.Debug {
		t.Errorf("ConfigNet %v NoMapGW %v Quiet %v Debug %v", c.ConfigNet, c.NoMapGW, c.Quiet, c.Debug)
	}
	if c.DNSForward4 != addr("169.254.1.1") || c.DNSForward6.IsValid() {
		t.Errorf("DNSForward = %v %v", c.DNSForward4, c.DNSForward6)
	}
	if c.MapGuestAddr4 != addr("169.254.1.2") || c.MapGuestAddr6.IsValid() || c.MapGuestAddrNone {
		t.Errorf("MapGuestAddr = %v %v %v", c.MapGuestAddr4, c.MapGuestAddr6, c.MapGuestAddrNone)
	}
	if c.NetNS != "/run/user/1000/netns/netns-abc" || !c.NetNSOnly || c.UserNS != "" {
		t.Errorf("NetNS %q NetNSOnly %v UserNS %q", c.NetNS, c.NetNSOnly, c.UserNS)
	}
	for name, l := range map[string][]PortSpec{"t": c.TCPPorts, "u": c.UDPPorts, "T": c.TCPNSPorts, "U": c.UDPNSPorts} {
		if len(l) != 1 || !l[0].None || l[0].Option != "-"+name {
			t.Errorf("-%s = %+v", name, l)
		}
		if r := l[0].Rules(); len(r) != 0 {
			t.Errorf("-%s none has rules %v", name, r)
		}
	}
	if c.MTU != 65520 || c.MTUSet || c.OurMAC != DefaultMAC || c.FD != -1 {
		t.Errorf("defaults: MTU %d set %v MAC %x FD %d", c.MTU, c.MTUSet, c.OurMAC, c.FD)
	}
	if c.FlowLimit != 65536 || c.UDPTimeout != 180*time.Second || c.ICMPTimeout != 60*time.Second {
		t.Errorf("gopasta defaults: %d %v %v", c.FlowLimit, c.UDPTimeout, c.ICMPTimeout)
	}
	if !c.NoRA { // --config-net: addresses are set by netlink, no RA
		t.Error("NoRA not implied by --config-net")
	}
	if c.TargetPID != 0 || c.Command != nil {
		t.Errorf("operands: %d %q", c.TargetPID, c.Command)
	}
}

// podman with published ports and user options (-T,18080 arrives split).
func TestPodmanUserForms(t *testing.T) {
	c := mustParse(t, "pasta", "--config-net", "-T", "18080",
		"-t", "127.0.0.1/8080-8080:80-80", "-t", "::1/8088-8088:80-80", "-u", "5000-5002:6000-6002",
		"--dns-forward", "169.254.1.1", "-U", "none", "--no-map-gw", "--quiet",
		"--netns", "/run/user/1000/netns/netns-x", "--map-guest-addr", "169.254.1.2")
	if got := specStrings(c.TCPNSPorts); !reflect.DeepEqual(got, []string{"-T 18080"}) {
		t.Errorf("-T = %v", got)
	}
	if got := specStrings(c.TCPPorts); !reflect.DeepEqual(got, []string{"-t 127.0.0.1/8080-8080:80-80", "-t ::1/8088-8088:80-80"}) {
		t.Errorf("-t = %v", got)
	}
	m := NewPortMap(c.TCPPorts)
	if to, ok := m.To(8080); !ok || to != 80 {
		t.Errorf("8080 -> %d %v", to, ok)
	}
	if c.TCPPorts[1].Bind != addr("::1") {
		t.Errorf("bind = %v", c.TCPPorts[1].Bind)
	}
	if len(c.UDPPorts) != 1 || c.UDPPorts[0].Ranges[0] != (PortRange{First: 5000, Last: 5002, To: 6000}) {
		t.Errorf("-u = %+v", c.UDPPorts)
	}
	// -T 18080 given, so no default for it; -U none stays none.
	if len(c.UDPNSPorts) != 1 || !c.UDPNSPorts[0].None {
		t.Errorf("-U = %+v", c.UDPNSPorts)
	}

	// The real line of podman issue #28994.
	c = mustParse(t, "pasta", strings.Fields("--config-net --no-splice -t 8080-8080:8080-8080 --dns-forward 169.254.1.1 -u none -T none -U none --no-map-gw --quiet --netns /run/user/1000/netns/netns-3ef4 --map-guest-addr 169.254.1.2")...)
	if !c.NoSplice || len(c.TCPPorts) != 1 || c.TCPPorts[0].Ranges[0] != (PortRange{First: 8080, Last: 8080, To: 8080}) {
		t.Errorf("issue 28994 line: NoSplice %v -t %+v", c.NoSplice, c.TCPPorts)
	}
	// Podman removes --map-gw itself; we must reject it like pasta.
	if _, err := Parse("pasta", []string{"--map-gw"}); err == nil || err.Error() != "unrecognized option '--map-gw'" {
		t.Errorf("--map-gw: %v", err)
	}
	// -d after podman's --quiet-less line: debug.
	c = mustParse(t, "pasta", "--config-net", "-d", "--netns", "x")
	if !c.Debug || c.Quiet || c.NetNS != "/run/netns/x" {
		t.Errorf("debug %v quiet %v netns %q", c.Debug, c.Quiet, c.NetNS)
	}
}

func TestRootlessKitArgv(t *testing.T) {
	base := strings.Fields("--stderr --ns-ifname=tap0 --mtu=65520 --config-net --address=10.0.2.100 --netmask=24 --gateway=10.0.2.2 --dns-forward=10.0.2.3 --tcp-ports=auto --udp-ports=auto")
	c := mustParse(t, "pasta", append(base, "1234")...)
	if !c.Stderr || c.NSIfname != "tap0" || c.MTU != 65520 || !c.MTUSet || !c.ConfigNet {
		t.Errorf("stderr %v ifname %q mtu %d/%v confignet %v", c.Stderr, c.NSIfname, c.MTU, c.MTUSet, c.ConfigNet)
	}
	if c.Addr4 != netip.MustParsePrefix("10.0.2.100/24") || c.Netmask4 != 24 || c.Addr6.IsValid() {
		t.Errorf("addr %v netmask %d addr6 %v", c.Addr4, c.Netmask4, c.Addr6)
	}
	if c.Gateway4 != addr("10.0.2.2") || c.DNSForward4 != addr("10.0.2.3") {
		t.Errorf("gw %v dnsfwd %v", c.Gateway4, c.DNSForward4)
	}
	for _, l := range [][]PortSpec{c.TCPPorts, c.UDPPorts, c.TCPNSPorts, c.UDPNSPorts} {
		if len(l) != 1 || !l[0].Auto || l[0].Raw != "auto" {
			t.Errorf("ports = %+v", l)
		}
	}
	if c.TargetPID != 1234 || c.NetNS != "" || c.NetNSOnly || c.Command != nil {
		t.Errorf("pid %d netns %q only %v cmd %q", c.TargetPID, c.NetNS, c.NetNSOnly, c.Command)
	}

	c = mustParse(t, "pasta", append(append(base, "--no-map-gw", "--ipv4-only", "--host-lo-to-ns-lo"),
		"--userns=/proc/1234/ns/user", "--netns=/proc/1234/ns/net")...)
	if c.UserNS != "/proc/1234/ns/user" || c.NetNS != "/proc/1234/ns/net" || c.NetNSOnly || c.TargetPID != 0 {
		t.Errorf("userns %q netns %q only %v pid %d", c.UserNS, c.NetNS, c.NetNSOnly, c.TargetPID)
	}
	if !c.NoMapGW || !c.IPv4Only || !c.HostLoToNsLo {
		t.Errorf("nomapgw %v v4only %v hostlo %v", c.NoMapGW, c.IPv4Only, c.HostLoToNsLo)
	}
	// RootlessKit's feature probe.
	if _, err := Parse("pasta", []string{"--host-lo-to-ns-lo", "--version"}); err != ErrVersion {
		t.Errorf("probe: %v", err)
	}
	// --tcp-ports=none variant.
	c = mustParse(t, "pasta", "--tcp-ports=none", "--udp-ports=none", "1234")
	if !c.TCPPorts[0].None || !c.UDPPorts[0].None || !c.TCPNSPorts[0].Auto {
		t.Errorf("none variant: %+v %+v %+v", c.TCPPorts, c.UDPPorts, c.TCPNSPorts)
	}
}

func TestLibvirtPasstArgv(t *testing.T) {
	c := mustParse(t, "/usr/bin/passt", "--one-off", "--socket", "/run/libvirt/passt.sock", "--mac-addr", "52:54:00:12:34:56",
		"--mtu", "1500", "--interface", "eth0", "--log-file", "/tmp/p.log", "--address", "192.0.2.5", "--netmask", "24",
		"--tcp-ports", "2222:22", "--udp-ports", "5353")
	if c.Mode != ModePasst || !c.OneOff || c.Socket != "/run/libvirt/passt.sock" || c.FD != -1 {
		t.Errorf("mode %v oneoff %v socket %q fd %d", c.Mode, c.OneOff, c.Socket, c.FD)
	}
	if c.OurMAC != [6]byte{0x52, 0x54, 0, 0x12, 0x34, 0x56} || c.MTU != 1500 || c.Interface != "eth0" || c.LogFile != "/tmp/p.log" {
		t.Errorf("mac %x mtu %d if %q log %q", c.OurMAC, c.MTU, c.Interface, c.LogFile)
	}
	// classful /24 by default, then -n 24 again.
	if c.Addr4 != netip.MustParsePrefix("192.0.2.5/24") {
		t.Errorf("addr %v", c.Addr4)
	}
	if len(c.TCPNSPorts) != 0 || len(c.UDPPorts) != 1 || !c.NoSplice {
		t.Errorf("passt defaults: -T %v -u %v nosplice %v", c.TCPNSPorts, c.UDPPorts, c.NoSplice)
	}
	// passt has no default forwarding.
	c = mustParse(t, "passt")
	if c.TCPPorts != nil || c.UDPPorts != nil {
		t.Errorf("passt default ports %v %v", c.TCPPorts, c.UDPPorts)
	}
}

func TestGetopt(t *testing.T) {
	// Bundled, attached and separated arguments.
	c := mustParse(t, "pasta", "-fd", "-m1500", "-46", "-a", "10.0.0.2/16", "-I", "eth9")
	if !c.Foreground || !c.Debug || c.MTU != 1500 || c.IPv4Only || !c.IPv6Only || c.NSIfname != "eth9" {
		t.Errorf("%+v", c)
	}
	c = mustParse(t, "pasta", "-fm", "9000", "-q")
	if !c.Foreground || c.MTU != 9000 || !c.Quiet {
		t.Errorf("-fm 9000: %+v", c)
	}
	// Abbreviations: unique prefix; exact match wins over longer names.
	c = mustParse(t, "pasta", "--fore", "--netns=foo", "--map-g", "169.254.1.2", "--dns", "192.0.2.53")
	if !c.Foreground || c.NetNS != "/run/netns/foo" || c.MapGuestAddr4 != addr("169.254.1.2") || len(c.DNS) != 1 {
		t.Errorf("abbrev: %+v", c)
	}
	// --netns exact even though --netns-only shares the prefix.
	c = mustParse(t, "pasta", "--netns", "/x/y")
	if c.NetNS != "/x/y" || !c.NetNSOnly {
		t.Errorf("--netns: %q %v", c.NetNS, c.NetNSOnly)
	}
	// --sock matches --socket and --socket-path: same option, not ambiguous.
	c = mustParse(t, "passt", "--sock", "/s")
	if c.Socket != "/s" {
		t.Errorf("--sock: %q", c.Socket)
	}
	c = mustParse(t, "passt", "--socket-path=/t")
	if c.Socket != "/t" {
		t.Errorf("--socket-path: %q", c.Socket)
	}
	// Parsing stops at the first operand and at "--".
	c = mustParse(t, "pasta", "-f", "sh", "-c", "echo -d")
	if !reflect.DeepEqual(c.Command, []string{"sh", "-c", "echo -d"}) || c.Debug {
		t.Errorf("command: %q debug %v", c.Command, c.Debug)
	}
	c = mustParse(t, "pasta", "--", "-d")
	if !reflect.DeepEqual(c.Command, []string{"-d"}) || c.Debug {
		t.Errorf("after --: %q", c.Command)
	}
	c = mustParse(t, "pasta", "--", "4242")
	if c.TargetPID != 4242 {
		t.Errorf("-- PID: %d", c.TargetPID)
	}
	c = mustParse(t, "pasta", "-", "x")
	if !reflect.DeepEqual(c.Command, []string{"-", "x"}) {
		t.Errorf("'-' operand: %q", c.Command)
	}
	// An option's argument may start with '-'.
	c = mustParse(t, "pasta", "-l", "-weird", "--pid", "--x")
	if c.LogFile != "-weird" || c.PIDFile != "--x" {
		t.Errorf("dash args: %q %q", c.LogFile, c.PIDFile)
	}
	// "12 34" is two operands: a command, not a PID.
	c = mustParse(t, "pasta", "12", "34")
	if c.TargetPID != 0 || len(c.Command) != 2 {
		t.Errorf("12 34: %d %q", c.TargetPID, c.Command)
	}
	// -q then -d: last wins, as in pasta; --trace implies -d.
	if c := mustParse(t, "pasta", "-q", "-d"); !c.Debug || c.Quiet {
		t.Errorf("-q -d: %v %v", c.Debug, c.Quiet)
	}
	if c := mustParse(t, "pasta", "-d", "-q"); c.Debug || !c.Quiet {
		t.Errorf("-d -q: %v %v", c.Debug, c.Quiet)
	}
	if c := mustParse(t, "pasta", "--trace"); !c.Debug || !c.Trace {
		t.Errorf("--trace: %v %v", c.Debug, c.Trace)
	}
}

func TestGetoptErrors(t *testing.T) {
	for _, tc := range []struct {
		argv0 string
		args  []string
		want  string
	}{
		{"pasta", []string{"--foo"}, "unrecognized option '--foo'"},
		{"pasta", []string{"--foo=bar"}, "unrecognized option '--foo=bar'"},
		{"pasta", []string{"--map-guest-addr-x", "1"}, "unrecognized option '--map-guest-addr-x'"},
		{"pasta", []string{"-x"}, "invalid option -- 'x'"},
		{"pasta", []string{"-fx"}, "invalid option -- 'x'"},
		{"pasta", []string{"--mtu"}, "option '--mtu' requires an argument"},
		{"pasta", []string{"--mt"}, "option '--mtu' requires an argument"},
		{"pasta", []string{"-m"}, "option requires an argument -- 'm'"},
		{"pasta", []string{"-fm"}, "option requires an argument -- 'm'"},
		{"pasta", []string{"--foreground=yes"}, "option '--foreground' doesn't allow an argument"},
		{"pasta", []string{"--fore=yes"}, "option '--foreground' doesn't allow an argument"},
		{"pasta", []string{"--"}, ""},
		{"pasta", []string{"--=x"}, "unrecognized option '--=x'"},
		// mode errors, in pasta's words
		{"passt", []string{"--netns", "x"}, "--netns is for pasta mode only"},
		{"passt", []string{"-I", "tap0"}, "-I is for pasta mode only"},
		{"passt", []string{"-T", "80"}, "-T is for pasta mode only"},
		{"pasta", []string{"-s", "/sock"}, "-s is for passt / vhost-user mode only"},
		{"pasta", []string{"--one-off"}, "--one-off is for passt mode only"},
		{"pasta", []string{"--no-dhcp-dns"}, "--no-dhcp-dns is for passt mode only"},
		{"passt", []string{"--dhcp-dns"}, "--dhcp-dns is for pasta mode only"},
		{"passt", []string{"--migrate-exit"}, "--migrate-exit is for vhost-user mode only"},
		{"passt", []string{"--repair-path", "/r"}, "--repair-path is for vhost-user mode only"},
		{"passt", []string{"x"}, "Extra non-option argument: x"},
		// values
		{"pasta", []string{"-m", "70000"}, "option '-m': 70000 is out of range (0..65520)"},
		{"pasta", []string{"--mtu=abc"}, "option '--mtu': 'abc' is not a number"},
		{"pasta", []string{"-a", "127.0.0.1"}, "option '-a': invalid address '127.0.0.1': loopback"},
		{"pasta", []string{"-a", "10.0.0.1/33"}, "option '-a': invalid prefix length in '10.0.0.1/33' (0..32)"},
		{"pasta", []string{"-a", "10.0.0.1/8", "-n", "16"}, "option '-n': redundant prefix length specification (-a with /PLEN and -n)"},
		{"pasta", []string{"-n", "255.0.255.0"}, "option '-n': invalid netmask '255.0.255.0': not contiguous"},
		{"pasta", []string{"-M", "9a:55:9a:55:9a"}, "option '-M': invalid MAC address '9a:55:9a:55:9a' (expected xx:xx:xx:xx:xx:xx)"},
		{"pasta", []string{"-g", "0.0.0.0"}, "option '-g': invalid address '0.0.0.0': unspecified"},
		{"pasta", []string{"--dns-forward", "nope"}, "option '--dns-forward': invalid address 'nope'"},
		{"pasta", []string{"-F", "2"}, "option '-F': 2 is stdout or stderr, not a socket"},
		{"pasta", []string{"-I", "0123456789abcdef"}, "option '-I': invalid interface name '0123456789abcdef'"},
		{"pasta", []string{"--stats", "5"}, "Can't display statistics if not running in foreground"},
		{"pasta", []string{"--netns", "x", "1234"}, "Both --netns and PID or command given"},
		{"pasta", []string{"--no-copy-routes"}, "--no-copy-routes needs --config-net"},
		{"pasta", []string{"--splice-only", "--no-splice"}, "--splice-only is incompatible with --no-splice"},
		{"pasta", []string{"--splice-only", "-t", "192.0.2.1/8080"}, "option '-t 192.0.2.1/8080' listens where no loopback client can connect (--splice-only forwards loopback clients only)"},
		{"pasta", []string{"-u", "%eth0/53", "--splice-only"}, "option '-u %eth0/53' listens where no loopback client can connect (--splice-only forwards loopback clients only)"},
		{"pasta", []string{"-t", "80", "-t", "none"}, "-t none conflicts with previous options"},
		{"pasta", []string{"-t", "80-22"}, "invalid port range '80-22' in option '-t 80-22'"},
		{"pasta", []string{"-T", "127.0.0.1/80"}, "listening address not allowed for -T 127.0.0.1/80"},
		{"passt", []string{"-t", "auto"}, "'auto' port forwarding is only allowed for pasta (option '-t auto')"},
		{"pasta", []string{"--no-tcp", "-t", "80"}, "TCP port forwarding requested but TCP is disabled"},
		{"pasta", []string{"-t", "80", "--no-tcp"}, "TCP port forwarding requested but TCP is disabled"},
		{"pasta", []string{"-t", "80", "-t", "70-90"}, "forwarding conflict: port 80 in '-t 70-90' is already forwarded by '-t 80'"},
		{"pasta", []string{"--udp-timeout", "0s"}, "option '--udp-timeout': invalid duration '0s' (e.g. 180s, 3m, or seconds)"},
		{"pasta", []string{"0"}, "Invalid PID 0"},
		{"pasta", []string{"-a", "\n"}, `option '-a': invalid address '\n'`}, // found by FuzzParseArgs: one line
		{"pasta", []string{"99999999999"}, "Invalid PID 99999999999"},
		{"pasta", []string{"--config", "/nonexistent/gopasta.toml"}, "can't read configuration file: open /nonexistent/gopasta.toml: no such file or directory"},
	} {
		_, err := Parse(tc.argv0, tc.args)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("%s %q:\n got %q\nwant %q", tc.argv0, tc.args, got, tc.want)
		}
	}
}

func TestAmbiguous(t *testing.T) {
	_, err := Parse("pasta", []string{"--no"})
	if err == nil || !strings.HasPrefix(err.Error(), "option '--no' is ambiguous; possibilities: '--no-copy-routes'") {
		t.Fatalf("--no: %v", err)
	}
	for _, want := range []string{"'--no-tcp'", "'--no-map-gw'", "'--no-netns-quit'"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %s in %q", want, err)
		}
	}
	// --udp: --udp-ports, --udp-ns, --udp-timeout.
	if _, err := Parse("pasta", []string{"--udp", "80"}); err == nil || !strings.Contains(err.Error(), "is ambiguous") {
		t.Errorf("--udp: %v", err)
	}
}

func TestHelpVersion(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"--he"}, {"-fh"}, {"-d", "--help", "--bogus"}} {
		if _, err := Parse("pasta", args); !errors.Is(err, ErrHelp) {
			t.Errorf("%q: %v", args, err)
		}
	}
	if _, err := Parse("passt", []string{"--version"}); !errors.Is(err, ErrVersion) {
		t.Errorf("--version: %v", err)
	}
	// Errors before --version win, as in pasta.
	if _, err := Parse("pasta", []string{"--bogus", "--version"}); err == nil || errors.Is(err, ErrVersion) {
		t.Errorf("--bogus --version: %v", err)
	}
	// A broken --config after --help doesn't hide the help.
	if _, err := Parse("pasta", []string{"--help", "--config", "/nonexistent"}); !errors.Is(err, ErrHelp) {
		t.Errorf("help+config: %v", err)
	}
	for _, mode := range []Mode{ModePasta, ModePasst} {
		listed := usageOptions(Usage(mode))
		for _, o := range optionTable {
			want := o.mode == bothModes || (o.mode == pastaOnly) == (mode == ModePasta)
			for _, l := range o.long {
				if listed["--"+l] != want {
					t.Errorf("%v usage lists --%s: %v, want %v", mode, l, listed["--"+l], want)
				}
			}
			if o.short != 0 && listed["-"+string(o.short)] != want {
				t.Errorf("%v usage lists -%c: %v, want %v", mode, o.short, !want, want)
			}
		}
	}
}

// usageOptions returns the option names in the first column of a help text.
func usageOptions(u string) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(u, "\n") {
		if !strings.HasPrefix(line, "  -") {
			continue
		}
		col, _, _ := strings.Cut(strings.TrimSpace(line), "  ")
		for _, f := range strings.Split(col, ", ") {
			name, _, _ := strings.Cut(f, " ")
			out[name] = true
		}
	}
	return out
}

// Every option of pasta/passt (survey 1.1-1.9) parses and lands in Config.
func TestEveryOption(t *testing.T) {
	c := mustParse(t, "pasta",
		"-d", "--trace", "-f", "-e", "-l", "/tmp/log", "--log-size", "1048576", "--stats", "10",
		"--runas", "nobody:nogroup", "-c", "/tmp/ctl", "-p", "/tmp/x.pcap", "-P", "/tmp/pid", "--chroot-fallback",
		"-m", "0", "-a", "10.1.2.3", "-a", "2001:db8::5/64", "-n", "255.255.0.0", "-M", "02:00:00:00:00:01",
		"-g", "10.1.0.1", "-g", "fe80::1", "-i", "eth0", "-o", "192.0.2.9", "-o", "2001:db8::9",
		"--outbound-if4", "eth1", "--outbound-if6", "eth2", "-H", "box", "--fqdn", "box.example.org",
		"-I", "tap7", "--ns-mac-addr", "02:00:00:00:00:02", "--config-net", "--no-copy-routes", "--no-copy-addrs",
		"-D", "192.0.2.53", "-D", "2001:db8::53", "--dns-forward", "10.1.0.3", "--dns-forward", "fd00::3",
		"--dns-host", "127.0.0.53", "-S", "a.example b.example", "-S", "c.example", "--dhcp-dns", "--dhcp-search",
		"-t", "22", "-u", "53", "-T", "5201", "-U", "5353", "--host-lo-to-ns-lo", "--freebind", "--no-splice",
		"--map-host-loopback", "10.1.0.254", "--no-map-gw", "--map-guest-addr", "169.254.1.2",
		"--no-icmp", "--no-dhcp", "--no-ndp", "--no-dhcpv6", "--no-ra",
		"--userns", "/proc/1/ns/user", "--netns", "/proc/1/ns/net", "--no-netns-quit", "-F", "5",
		"--flow-limit", "1000", "--udp-timeout", "30s", "--icmp-timeout", "5",
		"--flow-buffer", "1048576", "--total-buffer", "67108864")
	checks := []struct {
		name string
		ok   bool
	}{
		{"debug/trace", c.Debug && c.Trace && !c.Quiet},
		{"foreground", c.Foreground},
		{"stderr", c.Stderr},
		{"log", c.LogFile == "/tmp/log" && c.LogSize == 1048576},
		{"stats", c.Stats == 10},
		{"runas", c.RunAs == "nobody:nogroup"},
		{"conf-path", c.ConfPath == "/tmp/ctl"},
		{"pcap", c.Pcap == "/tmp/x.pcap"},
		{"pid", c.PIDFile == "/tmp/pid"},
		{"chroot-fallback", c.ChrootFallback},
		{"mtu 0", c.MTU == 0 && c.MTUSet},
		{"address", c.Addr4 == netip.MustParsePrefix("10.1.2.3/16") && c.Addr6 == addr("2001:db8::5") && c.Addr6Bits == 64 && c.Netmask4 == 16},
		{"mac", c.OurMAC == [6]byte{2, 0, 0, 0, 0, 1}},
		{"gateway", c.Gateway4 == addr("10.1.0.1") && c.Gateway6 == addr("fe80::1")},
		{"interface", c.Interface == "eth0"},
		{"outbound", c.Outbound4 == addr("192.0.2.9") && c.Outbound6 == addr("2001:db8::9")},
		{"outbound-if", c.OutboundIf4 == "eth1" && c.OutboundIf6 == "eth2"},
		{"hostname", c.Hostname == "box" && c.FQDN == "box.example.org"},
		{"ns-ifname", c.NSIfname == "tap7"},
		{"ns-mac", c.NSMAC != nil && *c.NSMAC == [6]byte{2, 0, 0, 0, 0, 2}},
		{"config-net", c.ConfigNet && c.NoCopyRoutes && c.NoCopyAddrs},
		{"dns", reflect.DeepEqual(c.DNS, []netip.Addr{addr("192.0.2.53"), addr("2001:db8::53")}) && !c.DNSNone},
		{"dns-forward", c.DNSForward4 == addr("10.1.0.3") && c.DNSForward6 == addr("fd00::3")},
		{"dns-host", reflect.DeepEqual(c.DNSHost, []netip.Addr{addr("127.0.0.53")})},
		{"search", reflect.DeepEqual(c.Search, []string{"a.example", "b.example", "c.example"})},
		{"dhcp-dns", c.DHCPDNS != nil && *c.DHCPDNS && c.DHCPSearch != nil && *c.DHCPSearch},
		{"ports", len(c.TCPPorts) == 1 && len(c.UDPPorts) == 1 && len(c.TCPNSPorts) == 1 && len(c.UDPNSPorts) == 1 && c.UDPNSPorts[0].Ranges[0].First == 5353},
		{"splice knobs", c.HostLoToNsLo && c.Freebind && c.NoSplice},
		{"map", c.MapHostLoopback4 == addr("10.1.0.254") && c.NoMapGW && c.MapGuestAddr4 == addr("169.254.1.2")},
		{"switches", c.NoICMP && c.NoDHCP && c.NoNDP && c.NoDHCPv6 && c.NoRA && !c.NoTCP && !c.NoUDP},
		{"ns", c.UserNS == "/proc/1/ns/user" && c.NetNS == "/proc/1/ns/net" && !c.NetNSOnly && c.NoNetNSQuit},
		{"fd", c.FD == 5 && c.OneOff},
		{"gopasta", c.FlowLimit == 1000 && c.UDPTimeout == 30*time.Second && c.ICMPTimeout == 5*time.Second},
		{"buffers", c.FlowBuffer == 1<<20 && c.TotalBuffer == 64<<20},
	}
	for _, ch := range checks {
		if !ch.ok {
			t.Errorf("%s: %+v", ch.name, c)
		}
	}

	c = mustParse(t, "pasta", "--no-tcp", "--no-udp", "--splice-only", "--netns-only", "-D", "none", "-S", "none",
		"--map-host-loopback", "none", "--map-guest-addr", "none", "-t", "none")
	if !c.NoTCP || !c.NoUDP || !c.SpliceOnly || !c.NetNSOnly || !c.DNSNone || !c.SearchNone ||
		!c.MapHostLoopbackNone || !c.NoMapGW || !c.MapGuestAddrNone || !c.NoICMP || !c.NoNDP || !c.HostLoToNsLo {
		t.Errorf("second set: %+v", c)
	}
	// Disabled protocols get no default forwarding.
	if len(c.UDPPorts) != 0 || len(c.TCPNSPorts) != 0 || len(c.TCPPorts) != 1 {
		t.Errorf("ports with --no-tcp/--no-udp: %v %v %v", c.TCPPorts, c.UDPPorts, c.TCPNSPorts)
	}
	// Under --splice-only, loopback and wildcard listeners are fine.
	c = mustParse(t, "pasta", "--splice-only", "-t", "127.0.0.1/8080", "-t", "::1/8081", "-t", "8082", "-u", "%lo/53")
	if len(c.TCPPorts) != 3 || len(c.UDPPorts) != 1 {
		t.Errorf("--splice-only with loopback listeners: %v %v", c.TCPPorts, c.UDPPorts)
	}

	c = mustParse(t, "passt", "-s", "/tmp/vu.sock", "--vhost-user", "--repair-path", "/tmp/r",
		"--migrate-exit", "--migrate-no-linger", "-1", "--no-dhcp-dns", "--no-dhcp-search")
	if c.Socket != "/tmp/vu.sock" || !c.VhostUser || c.RepairPath != "/tmp/r" ||
		!c.MigrateExit || !c.MigrateNoLinger || !c.OneOff || c.DHCPDNS == nil || *c.DHCPDNS || c.DHCPSearch == nil || *c.DHCPSearch {
		t.Errorf("passt set: %+v", c)
	}
	// --vhost-user selects the mode before other options, wherever it is.
	if _, err := Parse("passt", []string{"--migrate-exit", "--vhost-user"}); err != nil {
		t.Errorf("--migrate-exit before --vhost-user: %v", err)
	}
	c = mustParse(t, "passt", "--repair-path", "none", "-F", "0")
	if !c.RepairPathNone || c.FD != 0 || !c.OneOff {
		t.Errorf("repair none / fd 0: %+v", c)
	}
	// -F after -s wins (pasta clears the socket path).
	c = mustParse(t, "passt", "-s", "/x", "-F", "7")
	if c.Socket != "" || c.FD != 7 {
		t.Errorf("-s then -F: %q %d", c.Socket, c.FD)
	}
}

func TestAddressSemantics(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-a", "10.0.2.100"}, "10.0.2.100/8"},    // classful
		{[]string{"-a", "172.16.0.5"}, "172.16.0.5/16"},   // classful
		{[]string{"-a", "192.168.1.5"}, "192.168.1.5/24"}, // classful
		{[]string{"-n", "20", "-a", "10.0.2.100"}, "10.0.2.100/20"},
		{[]string{"-a", "10.0.2.100", "-n", "255.255.255.0"}, "10.0.2.100/24"},
		{[]string{"-a", "10.0.2.100/28"}, "10.0.2.100/28"},
		{[]string{"-a", "10.0.0.1", "-a", "10.0.0.2/30"}, "10.0.0.2/30"}, // later wins
		{[]string{"-a", "::ffff:10.0.0.9/8"}, "10.0.0.9/8"},              // v4-mapped is IPv4
	} {
		c := mustParse(t, "pasta", tc.args...)
		if c.Addr4.String() != tc.want {
			t.Errorf("%q: Addr4 %v, want %s", tc.args, c.Addr4, tc.want)
		}
	}
	c := mustParse(t, "pasta", "-n", "24")
	if c.Addr4.IsValid() || c.Netmask4 != 24 {
		t.Errorf("-n alone: %v %d", c.Addr4, c.Netmask4)
	}
	c = mustParse(t, "pasta", "-a", "fd00::2")
	if c.Addr6 != addr("fd00::2") || c.Addr6Bits != 0 || c.Addr4.IsValid() {
		t.Errorf("-a v6: %v %d %v", c.Addr6, c.Addr6Bits, c.Addr4)
	}
	c = mustParse(t, "pasta", "--map-host-loopback", "none", "--map-host-loopback", "10.0.0.1")
	if c.MapHostLoopbackNone || c.MapHostLoopback4 != addr("10.0.0.1") || !c.NoMapGW {
		t.Errorf("map-host-loopback none then addr: %+v", c)
	}
	c = mustParse(t, "pasta", "-D", "1.1.1.1", "-D", "none")
	if c.DNS != nil || !c.DNSNone {
		t.Errorf("-D none: %v %v", c.DNS, c.DNSNone)
	}
	c = mustParse(t, "pasta", "--dns-host", "1.1.1.1", "--dns-host", "::1", "--dns-host", "8.8.8.8")
	if !reflect.DeepEqual(c.DNSHost, []netip.Addr{addr("::1"), addr("8.8.8.8")}) {
		t.Errorf("--dns-host per family: %v", c.DNSHost)
	}
	c = mustParse(t, "gopasta", "--netns", "abc", "--userns", "/proc/5/ns/user", "--netns-only")
	if c.UserNS != "" || !c.NetNSOnly {
		t.Errorf("--netns-only after --userns: %q %v", c.UserNS, c.NetNSOnly)
	}
	if c := mustParse(t, "pasta", "--udp-timeout", "2m"); c.UDPTimeout != 2*time.Minute {
		t.Errorf("udp-timeout 2m: %v", c.UDPTimeout)
	}
}

// TestPrintCapabilities: --print-capabilities asks for the vhost-user
// capabilities and an exit in every mode, before anything else is checked
// or started (it is not a passt flag that starts the daemon).
func TestPrintCapabilities(t *testing.T) {
	for _, c := range []struct {
		prog string
		args []string
	}{
		{"passt", []string{"--print-capabilities"}},
		{"passt", []string{"--vhost-user", "--print-capabilities"}},
		{"passt", []string{"-s", "/tmp/x.sock", "--print-capabilities", "-t", "bogus"}},
		{"pasta", []string{"--print-capabilities"}},
		{"pasta", []string{"--config-net", "--print-capabilities", "--config", "/nonexistent"}},
	} {
		if _, err := Parse(c.prog, c.args); !errors.Is(err, ErrPrintCapabilities) {
			t.Errorf("%s %q: %v", c.prog, c.args, err)
		}
	}
	// Errors before it win, as for --version.
	if _, err := Parse("pasta", []string{"--bogus", "--print-capabilities"}); err == nil || errors.Is(err, ErrPrintCapabilities) {
		t.Errorf("--bogus --print-capabilities: %v", err)
	}
	if Capabilities != "{\n  \"type\": \"net\"\n}\n" {
		t.Errorf("capabilities %q", Capabilities)
	}
}
