package conf

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Version is gopasta's version, printed by --version.
const Version = "0.1.0"

// Built-in defaults that do not depend on the host.
const (
	DefaultMTU         = 65520
	DefaultFlowLimit   = 65536
	DefaultUDPTimeout  = 180 * time.Second
	DefaultICMPTimeout = 60 * time.Second
)

// ModeFromArgv0 picks the mode from the program name, as pasta does: a name
// containing "passt" means passt, anything else (gopasta, pasta) pasta.
func ModeFromArgv0(argv0 string) Mode {
	if strings.Contains(filepath.Base(argv0), "passt") {
		return ModePasst
	}
	return ModePasta
}

// ParseMode parses the --mode / "mode" value: "pasta" or "passt".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "pasta":
		return ModePasta, nil
	case "passt":
		return ModePasst, nil
	}
	return ModePasta, fmt.Errorf("invalid mode %q (pasta or passt)", s)
}

// Defaults returns the built-in configuration of mode, before any file or
// option: MTU 65520, our MAC 9a:55:9a:55:9a:55, no FD, flow and timeout
// limits. Host-derived values (addresses, gateway, interface names) are
// left unset for the caller to fill in from the host.
func Defaults(mode Mode) *Config {
	return &Config{
		Mode:        mode,
		MTU:         DefaultMTU,
		OurMAC:      DefaultMAC,
		FD:          -1,
		FlowLimit:   DefaultFlowLimit,
		UDPTimeout:  DefaultUDPTimeout,
		ICMPTimeout: DefaultICMPTimeout,
	}
}

// completeError is an error message that already names the option, so the
// parser does not prefix it with "option '-x': ".
type completeError string

func (e completeError) Error() string { return string(e) }

// Parse builds the configuration of the program called argv0 from its
// arguments args (without argv0): built-in defaults, then the --config
// TOML file if any, then the options in order. It returns ErrHelp,
// ErrVersion or ErrPrintCapabilities when the caller should print Usage,
// the version or Capabilities and exit 0;
// other errors are one line for "<prog>: <msg>" and exit status 1.
func Parse(argv0 string, args []string) (*Config, error) {
	c, err := parse(argv0, args)
	return c, oneLine(err)
}

func parse(argv0 string, args []string) (*Config, error) {
	c := Defaults(ModeFromArgv0(argv0))
	p := &parser{c: c}
	events, operand, syntaxErr := tokenize(optionTable, args)

	// Options with a global effect are found before anything is applied:
	// --config (the file sits below the command line), and --vhost-user
	// (passt selects its mode before looking at the other options).
	var file string
	vhost, modeSet := false, false
	for _, ev := range events {
		switch ev.opt.key() {
		case "config":
			file = ev.arg
		case "vhost-user":
			vhost = true
		case "mode":
			if m, err := ParseMode(ev.arg); err == nil {
				c.Mode, modeSet = m, true
			}
		}
	}
	// The mode comes first of all: the command line's --mode, else the
	// file's "mode" key, else the program name.
	if file != "" && !modeSet && !helpFirst(events) {
		if m, ok := peekFileMode(file); ok {
			c.Mode = m
		}
	}
	p.modeSet = modeSet
	if vhost {
		c.VhostUser = c.Mode == ModePasst
	}
	fileKeys := map[string]bool{}
	if file != "" && !helpFirst(events) {
		var err error
		if fileKeys, err = loadFile(p, file); err != nil {
			return nil, err
		}
		c.ConfigFile = file
	}

	seen := map[*option]bool{}
	for _, ev := range events {
		o := ev.opt
		if err := modeError(o, ev.name, c); err != nil {
			return nil, err
		}
		if o.reset != nil && !seen[o] && fileKeys[o.key()] {
			o.reset(c) // the command line replaces the file's list
		}
		seen[o] = true
		if err := o.apply(p, ev.name, ev.arg); err != nil {
			return nil, optionError(ev.name, err)
		}
	}
	if syntaxErr != nil {
		return nil, syntaxErr
	}
	if err := p.operands(args[operand:]); err != nil {
		return nil, err
	}
	if err := finish(c); err != nil {
		return nil, err
	}
	return c, nil
}

// lineError is an error whose message had control characters escaped.
type lineError struct {
	msg string
	err error
}

func (e *lineError) Error() string { return e.msg }
func (e *lineError) Unwrap() error { return e.err }

// oneLine escapes control characters (a newline in an option value) so
// that every error prints as the single line podman and users expect.
func oneLine(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if !strings.ContainsFunc(msg, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return err
	}
	q := strconv.Quote(msg)
	return &lineError{msg: q[1 : len(q)-1], err: err}
}

// helpFirst reports whether --help, --version or --print-capabilities
// comes before --config, in which case a broken file must not stop them.
func helpFirst(events []optEvent) bool {
	for _, ev := range events {
		switch ev.opt.key() {
		case "help", "version", "print-capabilities":
			return true
		case "config":
			return false
		}
	}
	return false
}

func optionError(name string, err error) error {
	var pe *PortSpecError
	var ce completeError
	if errors.Is(err, ErrHelp) || errors.Is(err, ErrVersion) || errors.Is(err, ErrPrintCapabilities) || errors.As(err, &pe) || errors.As(err, &ce) {
		return err
	}
	if strings.Contains(err.Error(), name+" ") {
		return err
	}
	return fmt.Errorf("option '%s': %w", name, err)
}

// operands handles what follows the options: in pasta mode a PID (a single
// all-digits word) or a command; passt takes none.
func (p *parser) operands(ops []string) error {
	c := p.c
	if len(ops) == 0 {
		return nil
	}
	if c.Mode == ModePasst {
		return fmt.Errorf("Extra non-option argument: %s", ops[0])
	}
	// Operands replace a target-pid or command from the file.
	c.TargetPID, c.Command = 0, nil
	if c.NetNS != "" {
		return errors.New("Both --netns and PID or command given")
	}
	if len(ops) == 1 && allDigits(ops[0]) {
		return setPID(c, ops[0])
	}
	c.Command = append([]string(nil), ops...)
	return nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func setPID(c *Config, s string) error {
	v, err := strconv.ParseUint(s, 10, 31)
	if err != nil || v == 0 {
		return fmt.Errorf("Invalid PID %s", s)
	}
	c.TargetPID = int(v)
	return nil
}

// finish checks combinations of options and applies what options imply,
// as pasta does after its option loop.
func finish(c *Config) error {
	if c.Mode == ModePasta && !c.ConfigNet {
		if c.NoCopyRoutes {
			return errors.New("--no-copy-routes needs --config-net")
		}
		if c.NoCopyAddrs {
			return errors.New("--no-copy-addrs needs --config-net")
		}
	}
	if c.SpliceOnly {
		if c.NoSplice {
			return errors.New("--splice-only is incompatible with --no-splice")
		}
		// Only loopback clients can be spliced: a listener that only
		// others reach would accept connections that have nowhere to go.
		for _, specs := range [][]PortSpec{c.TCPPorts, c.UDPPorts} {
			for _, s := range specs {
				if (s.Bind.IsValid() && !s.Bind.IsLoopback() && !s.Bind.IsUnspecified()) || (s.Ifname != "" && s.Ifname != "lo") {
					return fmt.Errorf("option '%s %s' listens where no loopback client can connect (--splice-only forwards loopback clients only)", s.Option, s.Raw)
				}
			}
		}
		// Without a tap there is nobody to answer ICMP or DNS for.
		c.HostLoToNsLo = true
		c.NoICMP = true
		c.DNS, c.DNSNone = nil, true
		c.Search, c.SearchNone = nil, true
	}
	if c.Stats > 0 && !c.Foreground {
		return errors.New("Can't display statistics if not running in foreground")
	}
	if c.NetNS != "" && (c.TargetPID != 0 || len(c.Command) > 0) {
		return errors.New("Both --netns and PID or command given")
	}
	if c.TargetPID != 0 && len(c.Command) > 0 {
		return errors.New("Both PID and command given")
	}
	if c.Mode == ModePasst && (c.TargetPID != 0 || len(c.Command) > 0) {
		return errors.New("PID and command are for pasta mode only")
	}
	for _, l := range []struct {
		specs []PortSpec
		off   bool
		proto string
	}{
		{c.TCPPorts, c.NoTCP, "TCP"}, {c.TCPNSPorts, c.NoTCP, "TCP"},
		{c.UDPPorts, c.NoUDP, "UDP"}, {c.UDPNSPorts, c.NoUDP, "UDP"},
	} {
		for _, s := range l.specs {
			if l.off && !s.None {
				return fmt.Errorf("%s port forwarding requested but %s is disabled", l.proto, l.proto)
			}
		}
	}

	// Implications.
	if c.Trace {
		c.Debug = true
	}
	if c.NetNS != "" && c.UserNS == "" {
		c.NetNSOnly = true
	}
	if c.FD >= 0 {
		c.OneOff = true
	}
	if c.NoICMP {
		c.NoNDP = true
	}
	if c.ConfigNet {
		// pasta configures the addresses itself: no router adverts.
		c.NoRA = true
	}
	if c.Mode == ModePasst {
		c.NoSplice = true
	}
	if !c.MTUSet {
		c.MTU = DefaultMTU
	}

	// pasta forwards whatever is bound on the other side unless told
	// otherwise; passt forwards nothing by default.
	if c.Mode == ModePasta {
		seq := 1 << 20 // after every spec given, as pasta adds them
		def := func(l *[]PortSpec, opt string, off bool) {
			seq++
			if len(*l) == 0 && !off {
				s, _ := ParsePortSpec(opt, "auto")
				s.Seq = seq
				*l = []PortSpec{s}
			}
		}
		def(&c.TCPPorts, "-t", c.NoTCP)
		def(&c.UDPPorts, "-u", c.NoUDP)
		def(&c.TCPNSPorts, "-T", c.NoTCP)
		def(&c.UDPNSPorts, "-U", c.NoUDP)
	}
	return nil
}
