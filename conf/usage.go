package conf

import (
	"fmt"
	"strings"
)

// Usage returns the --help text of mode, listing every option valid there.
func Usage(mode Mode) string {
	var b strings.Builder
	if mode == ModePasta {
		b.WriteString("Usage: gopasta [OPTION]... [COMMAND] [ARGS]...\n" +
			"       gopasta [OPTION]... PID\n" +
			"       gopasta [OPTION]... --netns [PATH|NAME]\n\n" +
			"Connect a network namespace to the host through a tap device.\n" +
			"Without PID or --netns, run COMMAND (default: $SHELL) in new user\n" +
			"and network namespaces. Called as 'passt', serve a VM instead.\n\n")
	} else {
		b.WriteString("Usage: gopasta-passt [OPTION]...\n\n" +
			"Connect a virtual machine to the host through a UNIX stream\n" +
			"socket (qemu -netdev stream) or as a vhost-user back-end.\n\n")
	}
	for _, o := range optionTable {
		if (o.mode == pastaOnly && mode != ModePasta) ||
			((o.mode == passtOnly || o.mode == vhostUserOnly) && mode != ModePasst) {
			continue
		}
		var names []string
		if o.short != 0 {
			names = append(names, "-"+string(o.short))
		}
		for _, l := range o.long {
			names = append(names, "--"+l)
		}
		left := "  " + strings.Join(names, ", ")
		if o.hasArg {
			left += " " + o.argName
		}
		if len(left) < 30 {
			fmt.Fprintf(&b, "%-30s%s\n", left, o.help)
		} else {
			fmt.Fprintf(&b, "%s\n%30s%s\n", left, "", o.help)
		}
		if o.key() == "udp-ns" || (mode == ModePasst && o.key() == "udp-ports") {
			b.WriteString(specHelp(mode))
		}
	}
	b.WriteString("\nEvery option can also be set in the --config file under its long\n" +
		"name, e.g. mtu = 1500; the command line takes precedence.\n" +
		"\nA daemon started with -c SOCKET can be looked into while it runs:\n" +
		"gopasta ctl SOCKET flows|stats|trace|log-level|pcap (gopasta ctl --help).\n")
	return b.String()
}

func specHelp(mode Mode) string {
	def := "none"
	if mode == ModePasta {
		def = "auto"
	}
	return "    SPEC for -t/-u" + map[bool]string{true: "/-T/-U", false: ""}[mode == ModePasta] + " (default: " + def + "):\n" +
		"      none                  forward nothing\n" +
		"      [ADDR][%IF]/PORTS     listen on ADDR and/or interface IF only\n" +
		"      PORTS is a comma-separated list of:\n" +
		"        P or P1-P2          ports, forwarded to the same numbers\n" +
		"        P1-P2:Q1-Q2         ports, forwarded to other numbers\n" +
		"        P1-P2:ADDR/Q1-Q2    ports, forwarded to another address\n" +
		"        ~P1-P2              exclude ports (alone: all others)\n" +
		"        all[:ADDR]          all non-ephemeral ports\n" +
		"        auto                only ports bound on the other side\n" +
		"      Examples: -t 22-80:32-90   -t 192.0.2.1%eth0/22   -t ~3000-3010\n" +
		"                -t ::1/auto      -t 8000-8010,auto\n" +
		"                -t 0.0.0.0/5000:192.0.2.5/6000\n"
}
