package conf

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeConf(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTOMLPrecedence(t *testing.T) {
	file := writeConf(t, `# test
foreground = true
mtu = 9000
address = ["10.0.2.100/24", "fd00::2"]
tcp-ports = ["8080", "127.0.0.1/9000-9010:90-100"]
udp-ports = "53"
dns = ["192.0.2.53"]
netns = "/run/netns/x"
quiet = true
flow-limit = 100
flow-buffer = 2097152
total-buffer = 134217728
udp-timeout = "30s"
icmp-timeout = 5
no-udp = false
mac-addr = "02:00:00:00:00:09"
`)
	// File only.
	c := mustParse(t, "pasta", "--config", file)
	if !c.Foreground || c.MTU != 9000 || !c.MTUSet || !c.Quiet || c.FlowLimit != 100 ||
		c.UDPTimeout != 30*time.Second || c.ICMPTimeout != 5*time.Second || c.NoUDP ||
		c.OurMAC != [6]byte{2, 0, 0, 0, 0, 9} || c.ConfigFile != file ||
		c.FlowBuffer != 2<<20 || c.TotalBuffer != 128<<20 {
		t.Errorf("file values: %+v", c)
	}
	if c.Addr4 != netip.MustParsePrefix("10.0.2.100/24") || c.Addr6 != addr("fd00::2") {
		t.Errorf("addresses %v %v", c.Addr4, c.Addr6)
	}
	// CLI -a replaces both of the file's addresses.
	if c := mustParse(t, "pasta", "--config", file, "-a", "10.9.9.9/30"); c.Addr4 != netip.MustParsePrefix("10.9.9.9/30") || c.Addr6.IsValid() {
		t.Errorf("CLI -a over file: %v %v", c.Addr4, c.Addr6)
	}
	// netmask as an integer or a string.
	for _, v := range []string{"16", `"255.255.0.0"`} {
		c := mustParse(t, "pasta", "--config", writeConf(t, "address = \"10.1.1.1\"\nnetmask = "+v+"\n"))
		if c.Addr4 != netip.MustParsePrefix("10.1.1.1/16") {
			t.Errorf("netmask %s: %v", v, c.Addr4)
		}
	}
	if got := specStrings(c.TCPPorts); !reflect.DeepEqual(got, []string{"-t 8080", "-t 127.0.0.1/9000-9010:90-100"}) {
		t.Errorf("file -t %v", got)
	}
	if c.NetNS != "/run/netns/x" || !c.NetNSOnly {
		t.Errorf("netns %q %v", c.NetNS, c.NetNSOnly)
	}

	// Command line over file: scalars override, lists replace.
	c = mustParse(t, "pasta", "--config="+file, "-m", "1500", "-t", "22", "-d", "--dns", "192.0.2.54", "--flow-limit", "7")
	if c.MTU != 1500 || !c.Debug || c.Quiet || c.FlowLimit != 7 || !c.Foreground {
		t.Errorf("override: mtu %d debug %v quiet %v flows %d fg %v", c.MTU, c.Debug, c.Quiet, c.FlowLimit, c.Foreground)
	}
	if got := specStrings(c.TCPPorts); !reflect.DeepEqual(got, []string{"-t 22"}) {
		t.Errorf("CLI -t should replace the file's list: %v", got)
	}
	if got := specStrings(c.UDPPorts); !reflect.DeepEqual(got, []string{"-u 53"}) {
		t.Errorf("file -u should stay: %v", got)
	}
	if !reflect.DeepEqual(c.DNS, []netip.Addr{addr("192.0.2.54")}) {
		t.Errorf("dns %v", c.DNS)
	}
	// Two -t on the command line: both kept (replacement happens once).
	c = mustParse(t, "pasta", "--config", file, "-t", "22", "-t", "23")
	if got := specStrings(c.TCPPorts); !reflect.DeepEqual(got, []string{"-t 22", "-t 23"}) {
		t.Errorf("two CLI -t: %v", got)
	}
	// -t none on the command line over a file list: no conflict.
	c = mustParse(t, "pasta", "--config", file, "-t", "none")
	if len(c.TCPPorts) != 1 || !c.TCPPorts[0].None {
		t.Errorf("-t none over file: %+v", c.TCPPorts)
	}
	// CLI operands replace file's target-pid/command.
	file2 := writeConf(t, "target-pid = 42\n")
	c = mustParse(t, "pasta", "--config", file2)
	if c.TargetPID != 42 {
		t.Errorf("target-pid %d", c.TargetPID)
	}
	c = mustParse(t, "pasta", "--config", file2, "sh")
	if c.TargetPID != 0 || !reflect.DeepEqual(c.Command, []string{"sh"}) {
		t.Errorf("operands over file: %d %q", c.TargetPID, c.Command)
	}
	file3 := writeConf(t, `command = ["sh", "-c", "echo hi"]`+"\n")
	c = mustParse(t, "pasta", "--config", file3)
	if !reflect.DeepEqual(c.Command, []string{"sh", "-c", "echo hi"}) {
		t.Errorf("command %q", c.Command)
	}
	// LoadFile without a command line.
	c, err := LoadFile(ModePasta, file)
	if err != nil || c.MTU != 9000 || len(c.TCPNSPorts) != 1 || !c.TCPNSPorts[0].Auto {
		t.Errorf("LoadFile: %v %+v", err, c)
	}
	// Empty file: defaults.
	c = mustParse(t, "pasta", "--config", writeConf(t, ""))
	if c.MTU != DefaultMTU || c.FD != -1 || c.OurMAC != DefaultMAC {
		t.Errorf("empty file: %+v", c)
	}
}

func TestTOMLErrors(t *testing.T) {
	for _, tc := range []struct {
		mode Mode
		text string
		want string // after "<path>:"
	}{
		{ModePasta, "foreground = true\n\n\n\n\n\n\n\n\n\n\nmtuu = 1\n", `12: unknown key "mtuu" (did you mean "mtu"?); see config.example.toml for the keys`},
		{ModePasta, "# c\n\nmtu = 70000\n", `3: key "mtu": 70000 is out of range (0..65520)`},
		{ModePasta, "mtu = -1\n", `1: key "mtu": -1 is out of range (negative)`},
		{ModePasta, "mtu = 1.5\n", `1: key "mtu": expected an integer, got float 1.5`},
		{ModePasta, "foreground = \"yes\"\n", `1: key "foreground": expected true or false, got string "yes"`},
		{ModePasta, "pcap = 3\n", `1: key "pcap": expected a string, got integer 3`},
		{ModePasta, "a = 1\ntcp-ports = [\"80-22\"]\n", `1: unknown key "a" (did you mean "fd"?); see config.example.toml for the keys`},
		{ModePasta, "quiet = true\ntcp-ports = [\n  \"80\",\n  \"80-22\",\n]\n", `2: key "tcp-ports": invalid port range '80-22' in '80-22'`},
		{ModePasta, "tcp-ports = [80]\n", `1: key "tcp-ports": expected a string or an array of strings, got an array`},
		{ModePasta, "address = \"127.0.0.1\"\n", `1: key "address": invalid address '127.0.0.1': loopback`},
		{ModePasst, "netns = \"x\"\n", `1: key "netns" is for pasta mode only`},
		{ModePasta, "socket = \"/x\"\n", `1: key "socket" is for passt / vhost-user mode only`},
		{ModePasta, "help = true\n", `1: key "help": --help is a command-line action, not a setting`},
		{ModePasta, "[netns]\npath = \"x\"\n", `1: key "netns": expected a string, got a table`},
		{ModePasta, "mtu = \n", `1: expected value but found '\n' instead`},
		{ModePasta, "mtu = 1\nmtu = 2\n", `2: Key 'mtu' has already been defined.`},
		{ModePasta, "target-pid = \"12\"\n", `1: key "target-pid": expected a process ID (positive integer), got string "12"`},
		{ModePasta, "command = []\n", `1: key "command": expected a non-empty array of strings, got an array`},
		{ModePasst, "target-pid = 3\n", `1: key "target-pid" is for pasta mode only`},
		{ModePasta, "udp-timeout = \"fast\"\n", `1: key "udp-timeout": invalid duration 'fast' (e.g. 180s, 3m, or seconds)`},
		{ModePasta, "\"quoted key\" = 1\n", `1: unknown key "quoted key"; see config.example.toml for the keys`},
	} {
		p := writeConf(t, tc.text)
		argv0 := "pasta"
		if tc.mode == ModePasst {
			argv0 = "passt"
		}
		_, err := Parse(argv0, []string{"--config", p})
		if err == nil {
			t.Errorf("%q: no error", tc.text)
			continue
		}
		got := strings.TrimPrefix(err.Error(), p+":")
		if !strings.HasPrefix(err.Error(), p+":") {
			t.Errorf("%q: error doesn't start with the file name: %v", tc.text, err)
		}
		if got != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.text, got, tc.want)
		}
	}
}

func TestKeyLine(t *testing.T) {
	data := []byte("# comment\nfoo = 1\n\n  bar = [\n 1,\n 2]\n\"baz\" = \"x\"\n[tab]\nk = 1\n")
	for key, want := range map[string]int{"foo": 2, "bar": 4, "baz": 7, "tab": 8, "missing": 0} {
		if got := keyLine(data, key); got != want {
			t.Errorf("keyLine(%q) = %d, want %d", key, got, want)
		}
	}
}

// "control" is the control socket's key as well as "conf-path".
func TestTOMLControlAlias(t *testing.T) {
	f := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(f, []byte("control = \"/run/gp.ctl\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Parse("gopasta", []string{"--config", f})
	if err != nil || c.ConfPath != "/run/gp.ctl" {
		t.Fatalf("%v %q", err, c.ConfPath)
	}
}
