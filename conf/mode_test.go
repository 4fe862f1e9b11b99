package conf

import (
	"net/netip"
	"strings"
	"testing"
)

// The mode: program name, overridden by the file's "mode", overridden by
// --mode; passt-only keys follow the mode that wins.
func TestModeSelection(t *testing.T) {
	for _, tc := range []struct {
		argv0 string
		args  []string
		want  Mode
	}{
		{"gopasta", nil, ModePasta},
		{"/usr/bin/passt", nil, ModePasst},
		{"gopasta", []string{"--mode", "passt", "-s", "/tmp/x.sock"}, ModePasst},
		{"gopasta", []string{"-s", "/tmp/x.sock", "--mode=passt"}, ModePasst}, // wherever it is
		{"passt", []string{"--mode", "pasta"}, ModePasta},
	} {
		c, err := Parse(tc.argv0, tc.args)
		if err != nil {
			t.Errorf("%s %v: %v", tc.argv0, tc.args, err)
			continue
		}
		if c.Mode != tc.want {
			t.Errorf("%s %v: mode %v, want %v", tc.argv0, tc.args, c.Mode, tc.want)
		}
	}
	// pasta's defaults follow the mode, not the program name.
	if c, _ := Parse("passt", []string{"--mode", "pasta"}); len(c.TCPPorts) != 1 || !c.TCPPorts[0].Auto {
		t.Errorf("--mode pasta: -t default %+v, want auto", c.TCPPorts)
	}
	if c, _ := Parse("gopasta", []string{"--mode", "passt"}); len(c.TCPPorts) != 0 || !c.NoSplice {
		t.Errorf("--mode passt: -t default %+v (want none), NoSplice %v", c.TCPPorts, c.NoSplice)
	}
	for _, args := range [][]string{{"--mode", "vm"}, {"--mode="}} {
		if _, err := Parse("gopasta", args); err == nil || !strings.Contains(err.Error(), "invalid mode") {
			t.Errorf("%v: error %v, want invalid mode", args, err)
		}
	}
}

// A passt-mode daemon described completely by its file, run as gopasta.
func TestModeFromFile(t *testing.T) {
	file := writeConf(t, `mode = "passt"
socket = "/run/gopasta/vm1.socket"
one-off = true
tcp-ports = ["2222:22", "127.0.0.1/8080:80"]
udp-ports = "5353"
address = ["192.0.2.10/24", "2001:db8::10"]
gateway = ["192.0.2.1"]
dns = ["192.0.2.53"]
foreground = true
`)
	check := func(c *Config) {
		t.Helper()
		if c.Mode != ModePasst || c.Socket != "/run/gopasta/vm1.socket" || !c.OneOff || !c.Foreground {
			t.Errorf("mode %v socket %q one-off %v fg %v", c.Mode, c.Socket, c.OneOff, c.Foreground)
		}
		if len(c.TCPPorts) != 2 || len(c.UDPPorts) != 1 || c.TCPPorts[1].Bind != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("ports %+v %+v", c.TCPPorts, c.UDPPorts)
		}
		if c.Addr4 != netip.MustParsePrefix("192.0.2.10/24") || c.Addr6 != netip.MustParseAddr("2001:db8::10") ||
			c.Gateway4 != netip.MustParseAddr("192.0.2.1") || len(c.DNS) != 1 {
			t.Errorf("addresses %v %v %v %v", c.Addr4, c.Addr6, c.Gateway4, c.DNS)
		}
	}
	for _, argv0 := range []string{"gopasta", "pasta", "passt"} {
		c, err := Parse(argv0, []string{"--config", file})
		if err != nil {
			t.Fatalf("%s --config: %v", argv0, err)
		}
		check(c)
	}
	c, err := LoadFile(ModePasta, file)
	if err != nil {
		t.Fatal(err)
	}
	check(c)

	// The command line's --mode wins; the file's passt keys are then
	// errors that name their line.
	_, err = Parse("gopasta", []string{"--config", file, "--mode", "pasta"})
	if err == nil || !strings.Contains(err.Error(), ":2: ") || !strings.Contains(err.Error(), "mode only") {
		t.Errorf("--mode pasta over a passt file: %v", err)
	}

	// A bad mode in the file is reported with its line.
	bad := writeConf(t, "mtu = 1500\nmode = \"qemu\"\n")
	if _, err := Parse("gopasta", []string{"--config", bad}); err == nil || !strings.Contains(err.Error(), ":2: ") ||
		!strings.Contains(err.Error(), "invalid mode") {
		t.Errorf("bad mode in file: %v", err)
	}
	if _, err := Parse("gopasta", []string{"--config", writeConf(t, "mode = 1\n")}); err == nil {
		t.Error("mode = 1 accepted")
	}
}
