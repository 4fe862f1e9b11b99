package forward

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/gopasta/gopasta/conf"
)

// Replacing rules at run time (the control socket, SIGHUP)
//
// Replace swaps the rules of every direction at once, under the lock the
// scanner takes. Each direction's open listeners become spares, keyed by
// what their socket is (bind address, interface, port, target): binding a
// port of the new rules first looks for a spare that is exactly the socket
// wanted and keeps it, so connections accepted through it, and UDP flows
// whose replies leave from it, go on untouched. A spare on the same port
// that is not the socket wanted is closed before the new bind (it holds
// the port). After the static rules, two scans give "auto" rules their
// listeners, from the spares too; whatever is left over is closed.

// Forwarding is a running forwarder whose rules can be replaced.
type Forwarding struct{ f *forwarder }

// Stop closes every listener and ends the scanner (see StartForwarder).
func (fw *Forwarding) Stop() { fw.f.stop() }

// AddStats adds the counters of the forwarder's loopback splice to m, by
// the names the statistics log uses.
func (fw *Forwarding) AddStats(m map[string]uint64) { fw.f.splicer.AddStats(m) }

// Rules are the rules of the four directions.
type Rules struct {
	TCPIn, UDPIn   []conf.Rule // -t, -u: listen on the host
	TCPOut, UDPOut []conf.Rule // -T, -U: listen in the namespace
}

// Replace puts rules in force. Ports that cannot be bound are returned
// as problems worded as pasta logs them ("Listen failed for HOST TCP port
// */8080: Address already in use"); every other rule takes effect.
func (fw *Forwarding) Replace(rules Rules) (problems []string) {
	f := fw.f
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.stopc:
		return []string{"port forwarding has stopped"}
	default:
	}
	for i, rs := range [][]conf.Rule{rules.TCPIn, rules.UDPIn, rules.TCPOut, rules.UDPOut} {
		f.dirs[i].replace(explicitFirst(rs), &problems)
	}
	f.scanLocked()
	f.scanLocked() // as at start: settles ports bound in both directions
	for _, d := range f.dirs {
		d.closeSpares()
	}
	f.startScanLoop()
	return problems
}

// explicitFirst orders rules as NewPortMap does: explicit before weak,
// so that "all" skips the ports an explicit rule forwards elsewhere.
func explicitFirst(rs []conf.Rule) []conf.Rule {
	out := append([]conf.Rule(nil), rs...)
	sort.SliceStable(out, func(i, j int) bool { return !out[i].Weak && out[j].Weak })
	return out
}

// spareKey is what a listener is: the socket(s) open(r, port) makes.
type spareKey struct {
	bind   netip.Addr
	ifname string
	to     uint16
	toAddr netip.Addr
}

type spareListener struct {
	key spareKey
	l   fwdListener
}

func keyOf(r conf.Rule, port uint16) spareKey {
	return spareKey{bind: r.Bind, ifname: r.Ifname, to: r.To + (port - r.First), toAddr: r.ToAddr}
}

// replace makes rules the direction's rules; see Forwarding.Replace.
func (d *fwdDir) replace(rules []conf.Rule, problems *[]string) {
	spare := make(map[uint16][]spareListener, len(d.ls))
	for k, l := range d.ls {
		spare[k.port] = append(spare[k.port], spareListener{keyOf(d.rules[k.rule], k.port), l})
	}
	d.spare = spare
	d.ls = make(map[fwdKey]fwdListener)
	d.ours.clear()
	d.failed.clear()
	if d.inactive {
		if len(rules) > 0 {
			d.f.env.Log.Debugf("%s: rules ignored (no loopback splice path, or the protocol is disabled)", d.opt)
		}
		rules = nil
	}
	d.setRules(rules)
	_ = d.bindStatic(problems)
	if err := d.openScanner(); err != nil {
		*problems = append(*problems, err.Error())
	}
}

// takeSpare returns the spare listener that is exactly the socket rule r
// wants for port p. Spares on p that are not are closed: they hold the
// port the new socket needs.
func (d *fwdDir) takeSpare(r conf.Rule, p uint16) (fwdListener, bool) {
	ss := d.spare[p]
	if len(ss) == 0 {
		return nil, false
	}
	want := keyOf(r, p)
	for i, s := range ss {
		if s.key == want {
			d.spare[p] = append(ss[:i:i], ss[i+1:]...)
			return s.l, true
		}
	}
	for _, s := range ss {
		s.l.Close()
	}
	delete(d.spare, p)
	return nil, false
}

// closeSpares closes the listeners no new rule wanted.
func (d *fwdDir) closeSpares() {
	for _, ss := range d.spare {
		for _, s := range ss {
			s.l.Close()
		}
	}
	d.spare = nil
}

// listenFailed words a bind failure as pasta logs it on a rule change.
func (d *fwdDir) listenFailed(r conf.Rule, port uint16, err error) string {
	pif, proto := "HOST", "TCP"
	if d.out {
		pif = "SPLICE"
	}
	if d.udp {
		proto = "UDP"
	}
	addr := "*"
	if r.Bind.IsValid() {
		addr = r.Bind.String()
	}
	if r.Ifname != "" {
		addr += "%" + r.Ifname
	}
	return fmt.Sprintf("Listen failed for %s %s port %s/%d: %s", pif, proto, addr, port, strerror(err))
}
