package forward

import "github.com/gopasta/gopasta/conf"

// Options are what the forwarder takes from the configuration besides the
// flows' options (actors.Env.Opts): the rules it starts with and what
// decides which directions exist. They are read once, at start; Replace
// takes the rules that follow.
type Options struct {
	// Pasta: the daemon serves a namespace, where -T/-U listen and
	// spliced connections land (with a namespace descriptor).
	Pasta bool
	// NoSplice is --no-splice; HostLoToNsLo --host-lo-to-ns-lo.
	NoSplice, HostLoToNsLo bool
	// NoTCP and NoUDP (--no-tcp, --no-udp) leave that protocol's
	// directions inactive whatever their rules.
	NoTCP, NoUDP bool
	// TCPPorts, UDPPorts, TCPNSPorts and UDPNSPorts are -t, -u, -T, -U.
	TCPPorts, UDPPorts, TCPNSPorts, UDPNSPorts []conf.PortSpec
}

// OptionsFrom returns the forwarder's options from c.
func OptionsFrom(c *conf.Config) Options {
	return Options{
		Pasta:    c.Mode == conf.ModePasta,
		NoSplice: c.NoSplice, HostLoToNsLo: c.HostLoToNsLo,
		NoTCP: c.NoTCP, NoUDP: c.NoUDP,
		TCPPorts: c.TCPPorts, UDPPorts: c.UDPPorts,
		TCPNSPorts: c.TCPNSPorts, UDPNSPorts: c.UDPNSPorts,
	}
}
