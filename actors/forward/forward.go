package forward

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/internal/sockutil"
	"github.com/gopasta/gopasta/actors/splice"
	"github.com/gopasta/gopasta/actors/tcp"
	"github.com/gopasta/gopasta/actors/udp"
	"github.com/gopasta/gopasta/conf"
)

// Theory of operation: port forwarding
//
// The four options are four directions (fwdDir): -t and -u listen on the
// host and forward to the namespace, -T and -U listen in the namespace
// (on its loopback addresses) and forward to the host's loopback. Each
// direction has the concrete rules of its specs (conf.Rule: port ranges
// with exclusions cut out, remapping, bind address and interface) and the
// listeners it holds, keyed by rule and port.
//
// Static rules are bound once, before the daemon reports readiness, so a
// port in use is an error podman shows ("Failed to bind port 8000 (Address
// already in use) for option '-t 8000-8000:80-80', exiting"). Weak rules
// ("all", exclusion-only specs) skip the ephemeral range and ports that
// cannot be bound, and fail only when none could be.
//
// Scan rules ("auto") are driven by the scanner: once a second it reads
// the socket tables of the other side (scan.go) and opens a listener
// for every port of the rule whose target port is bound there, and closes
// listeners whose target went away. Ports that gopasta itself holds on the
// other side (the listeners of the opposite direction) are not "bound
// there" for this purpose: with the pasta default of auto everywhere, a
// host port forwarded into the namespace by -T would otherwise come back
// out through -t, forever.
//
// Where connections go: a -t/-u client on a loopback address is spliced
// (splice/tcp.go, splice/udp.go) to a socket made in the namespace that
// connects to the namespace's own address (or its loopback with
// --host-lo-to-ns-lo); every other client takes the tap path (the TCP and
// UDP actors), so the guest sees its real address. -T/-U are splice only.

// fwdScanInterval is how often "auto" rescans the other side.
var fwdScanInterval = time.Second

// fwdListener is the listening socket(s) of one forwarded port.
type fwdListener interface{ Close() }

// fwdKey names a listener: the rule it serves and its port.
type fwdKey struct {
	rule int
	port uint16
}

// forwarder is all port forwarding of a daemon.
type forwarder struct {
	env  *actors.Env
	opts Options
	// tcp and udp are the daemon's protocols, which the tap path's
	// connections and datagrams become flows of; splicer is the loopback
	// splice, the forwarder's own (its counters are reported through
	// Forwarding.AddStats).
	tcp     *tcp.Protocol
	udp     *udp.Protocol
	splicer *splice.Splicer

	ns     *nsWorker // nil: no namespace (passt)
	splice bool
	dirs   []*fwdDir
	stopc  chan struct{}
	wg     sync.WaitGroup
	// mu serialises the scanner and Replace: both change the listeners
	// and the rules of every direction.
	mu       sync.Mutex
	scanning bool // scanLoop runs
}

// fwdDir is the live state of one option (-t, -u, -T or -U).
type fwdDir struct {
	f       *forwarder
	opt     string
	udp     bool
	out     bool // listens in the namespace, forwards to the host
	rules   []conf.Rule
	eph     [2]uint16 // ephemeral range of the listening side
	ls      map[fwdKey]fwdListener
	dyn     []portSet           // per rule: ports with a listener opened by the scanner
	ours    portSet             // ports we listen on, on the listening side
	failed  portSet             // scanner binds that failed (logged once)
	own     map[uint64]struct{} // -U: our datagram sockets, refilled per scan
	scan    portScanner
	rev     *fwdDir // the opposite direction of the same protocol
	bound   portSet // scratch for the scanner
	scanned bool    // has Scan rules
	// inactive: the direction forwards nothing whatever its rules say
	// (-T/-U without a splice path, a disabled protocol).
	inactive bool
	// spare are the listeners of the rules Replace is replacing, by
	// port: open takes one from here when a new rule wants the very
	// same socket, so that its connections and flows go on.
	spare map[uint16][]spareListener
}

// StartForwarder binds the listeners of every -t/-u/-T/-U option, starts
// the "auto" scanner, and enables the loopback splice path. nsFD is the
// namespace (pasta); without one (nsFD < 0) only -t/-u forward, through
// the tap. Call it before reporting readiness: its error is the one line
// the user (or podman) must see. The rules can be replaced at run time
// (Forwarding.Replace); Forwarding.Stop closes every listener and waits
// for their goroutines; spliced connections and flows already running end
// on their own. Connections and datagrams that take the tap path become
// flows of the daemon's protocols, flows.
func StartForwarder(env *actors.Env, opts Options, nsFD int, flows Flows) (*Forwarding, error) {
	f, err := startForwarder(env, opts, nsFD, flows)
	if err != nil {
		return nil, err
	}
	return &Forwarding{f: f}, nil
}

// Flows are the daemon's protocols that forwarded connections (TCP) and
// datagrams (UDP) off loopback become flows of, and whose poller watches
// spliced connections for hang-ups. Both must be set.
type Flows struct {
	TCP *tcp.Protocol
	UDP *udp.Protocol
}

func startForwarder(env *actors.Env, c Options, nsFD int, flows Flows) (_ *forwarder, err error) {
	f := &forwarder{env: env, opts: c, tcp: flows.TCP, udp: flows.UDP, stopc: make(chan struct{})}
	f.splicer = splice.New(env, flows.TCP.Poller())
	// Read now, during setup: the daemon's sandbox takes the filesystem
	// away before the first flow would read it (cmd/gopasta/sandbox.go).
	tcp.SysMax()
	actors.TCPConnectTimeout()
	if nsFD >= 0 && c.Pasta {
		if f.ns, err = newNSWorker(nsFD); err != nil {
			return nil, fmt.Errorf("port forwarding: %v", err)
		}
		f.splice = !c.NoSplice
		// pasta brings the namespace's loopback up whatever else it is
		// told: -T/-U listen there, and spliced connections land there.
		if err := f.ns.do(loopbackUp); err != nil {
			f.ns.stop()
			return nil, fmt.Errorf("port forwarding: %v", err)
		}
	}
	hostEph := [2]uint16{}
	hostEph[0], hostEph[1] = ephemeralRange()
	nsEph := hostEph
	if f.ns != nil {
		if fd, err := f.ns.open("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
			var buf [64]byte
			if n, err := unix.Read(fd, buf[:]); err == nil {
				nsEph[0], nsEph[1] = parsePortRange(string(buf[:n]), hostEph)
			}
			unix.Close(fd)
		}
	}
	mk := func(opt string, udp, out bool, specs []conf.PortSpec, off bool) *fwdDir {
		d := &fwdDir{f: f, opt: opt, udp: udp, out: out, ls: make(map[fwdKey]fwdListener), eph: hostEph}
		if out {
			d.eph = nsEph
		}
		if off {
			d.inactive = true
			return d
		}
		if out && (f.ns == nil || !f.splice) {
			// -T/-U are splice only: nothing to do without it.
			if hasRules(specs) {
				env.Log.Debugf("%s: no loopback splice path (--no-splice or no namespace), ignored", opt)
			}
			d.inactive = true
			return d
		}
		d.setRules(conf.NewPortMap(specs).Rules())
		return d
	}
	tIn := mk("-t", false, false, c.TCPPorts, c.NoTCP)
	uIn := mk("-u", true, false, c.UDPPorts, c.NoUDP)
	tOut := mk("-T", false, true, c.TCPNSPorts, c.NoTCP)
	uOut := mk("-U", true, true, c.UDPNSPorts, c.NoUDP)
	tIn.rev, tOut.rev, uIn.rev, uOut.rev = tOut, tIn, uOut, uIn
	f.dirs = []*fwdDir{tIn, uIn, tOut, uOut}

	fail := func(err error) (*forwarder, error) {
		f.stop()
		return nil, err
	}
	for _, d := range f.dirs {
		if err := d.bindStatic(nil); err != nil {
			return fail(err)
		}
	}
	for _, d := range f.dirs {
		if err := d.openScanner(); err != nil {
			return fail(err)
		}
	}
	// A first scan before readiness: whatever is bound now is forwarded
	// when our caller goes on.
	f.scanOnce()
	f.scanOnce() // settles ports the first pass bound in both directions
	f.mu.Lock()
	f.startScanLoop()
	f.mu.Unlock()
	return f, nil
}

// startScanLoop starts the rescans if some direction has "auto" rules and
// they are not running yet. Without 'auto' there is nothing to rescan, and
// a ticker would wake an idle daemon every second (podman passes -t none
// -u none and so on); the loop ends by itself once no direction scans.
func (f *forwarder) startScanLoop() {
	if f.scanning || !slices.ContainsFunc(f.dirs, func(d *fwdDir) bool { return d.scan != nil }) {
		return
	}
	f.scanning = true
	f.wg.Add(1)
	go f.scanLoop()
}

// setRules makes rules the direction's rules (explicit ones first).
func (d *fwdDir) setRules(rules []conf.Rule) {
	d.rules = rules
	d.dyn = make([]portSet, len(rules))
	d.scanned = false
	for _, r := range rules {
		d.scanned = d.scanned || r.Scan
	}
}

// openScanner opens the socket tables "auto" reads, if the direction has
// Scan rules and has none open; without Scan rules it closes them.
func (d *fwdDir) openScanner() error {
	f := d.f
	if !d.scanned {
		if d.scan != nil {
			d.scan.Close()
			d.scan = nil
		}
		return nil
	}
	if d.scan != nil {
		return nil
	}
	if f.ns == nil {
		return fmt.Errorf("'auto' port forwarding needs a namespace (option %s)", d.opt)
	}
	// -t/-u look at the namespace, -T/-U at the host.
	open := f.ns.open
	newSock := func() (int, error) { return f.ns.socket(unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_SOCK_DIAG) }
	if d.out {
		open = openHere
		newSock = func() (int, error) {
			return unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		}
	}
	var err error
	if d.udp {
		var p *procNetFiles
		if p, err = openProcNet("udp", open); err == nil {
			d.scan = procScanner{p}
		}
	} else {
		d.scan, err = openTCPScanner(newSock, open)
	}
	if err != nil {
		d.scan = nil
		return fmt.Errorf("port forwarding: cannot read socket table for %s auto: %v", d.opt, err)
	}
	return nil
}

func hasRules(specs []conf.PortSpec) bool {
	for _, s := range specs {
		if !s.None {
			return true
		}
	}
	return false
}

// parsePortRange parses "LO\tHI\n" (ip_local_port_range), def on error.
func parsePortRange(s string, def [2]uint16) (uint16, uint16) {
	var lo, hi uint16
	if n, err := fmt.Sscan(s, &lo, &hi); err != nil || n != 2 || lo > hi {
		return def[0], def[1]
	}
	return lo, hi
}

// stop ends the scanner, closes every listener and the namespace worker.
func (f *forwarder) stop() {
	// stopc closes under the lock: a Replace running now has started
	// its scan loop (wg.Add) before the Wait below, and one after sees
	// stopc closed and does nothing.
	f.mu.Lock()
	select {
	case <-f.stopc:
		f.mu.Unlock()
		return
	default:
	}
	close(f.stopc)
	f.mu.Unlock()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range f.dirs {
		for k, l := range d.ls {
			l.Close()
			delete(d.ls, k)
		}
		if d.scan != nil {
			d.scan.Close()
			d.scan = nil
		}
	}
	f.ns.stop()
}

func (f *forwarder) scanLoop() {
	defer f.wg.Done()
	t := time.NewTimer(UntilBoundary(fwdScanInterval))
	defer t.Stop()
	for {
		select {
		case <-f.stopc:
			return
		case <-t.C:
			if !f.scanOnce() {
				return
			}
			t.Reset(UntilBoundary(fwdScanInterval))
		}
	}
}

// UntilBoundary is how long until the wall clock next reaches a whole
// multiple of period. The daemon's periodic work waits for such
// boundaries, so that what falls due together (the "auto" scan every
// second, the GOMAXPROCS sampler every two) runs on one wake-up of an
// otherwise idle process, and one of the runtime's sysmon thread, which
// leaves its deep sleep at every timer.
func UntilBoundary(period time.Duration) time.Duration {
	now := time.Now()
	return now.Truncate(period).Add(period).Sub(now)
}

// scanOnce updates every direction with Scan rules from its other side.
// It reports whether some direction still scans; when none does (Replace
// removed the last "auto" rule) the scan loop ends, and clears scanning
// under the lock, so that a later Replace starts a new one.
func (f *forwarder) scanOnce() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	more := f.scanLocked()
	if !more {
		f.scanning = false
	}
	return more
}

func (f *forwarder) scanLocked() bool {
	more := false
	for _, d := range f.dirs {
		more = more || d.scan != nil
		if d.scan == nil {
			continue
		}
		d.bound.clear()
		var skip map[uint64]struct{}
		if d.udp && d.out {
			// The tap path's UDP sockets on the host are bound to the
			// guest's source ports and unconnected: they look like
			// services, but are ours.
			d.own = sockutil.OwnDgramInodes(d.own)
			skip = d.own
		}
		if err := d.scan.scan(&d.bound, skip); err != nil {
			f.env.Log.Debugf("%s auto: %v", d.opt, err)
			continue
		}
		if d.udp {
			// As pasta: a port bound for TCP over there is forwarded
			// for UDP too (DNS, QUIC next to HTTPS).
			for _, t := range f.dirs {
				if !t.udp && t.out == d.out && t.scan != nil {
					d.bound.or(&t.bound)
				}
			}
		}
		d.bound.andNot(&d.rev.ours)
		d.update()
	}
	return more
}

func (d *fwdDir) ephemeral(p uint16) bool { return p >= d.eph[0] && p <= d.eph[1] }

// bindStatic opens the listeners of the rules that are not scanned. With
// problems nil the first port that cannot be bound is the error (at
// start, where it must stop the daemon); otherwise every such port is
// added to *problems and the others are bound (Replace).
func (d *fwdDir) bindStatic(problems *[]string) error {
	weakBound := make(map[string]int) // spec -> ports bound, for weak rules
	budget, limited := -1, false
	for ri, r := range d.rules {
		if r.Scan {
			continue
		}
		spec := r.Option + " " + r.Raw
		perPort := len(d.families(r))
		if d.udp && d.f.splice && !d.out {
			perPort *= 2 // the relay's dup of each socket
		}
		if r.Weak {
			weakBound[spec] += 0
			if budget < 0 {
				budget = fdBudget()
			}
		}
		for p := int(r.First); p <= int(r.Last); p++ {
			port := uint16(p)
			if r.Weak && (d.ephemeral(port) || d.ours.has(port)) {
				continue
			}
			if r.Weak && budget < perPort {
				limited = true
				break
			}
			if r.Weak {
				budget -= perPort
			}
			l, err := d.open(r, port, r.Weak)
			if err != nil {
				if r.Weak {
					continue
				}
				if problems != nil {
					*problems = append(*problems, d.listenFailed(r, port, err))
					continue
				}
				return &ForwardError{fmt.Sprintf("Failed to bind port %d (%s) for option '%s', exiting", port, strerror(err), spec)}
			}
			d.ls[fwdKey{ri, port}] = l
			d.ours.add(port)
			if r.Weak {
				weakBound[spec]++
			}
		}
	}
	if limited {
		d.f.env.Log.Warnf("%s: descriptor limit (RLIMIT_NOFILE) reached, not every port is forwarded", d.opt)
	}
	for spec, n := range weakBound {
		if n == 0 {
			if problems != nil {
				*problems = append(*problems, fmt.Sprintf("All listens failed for %s", spec))
				continue
			}
			return &ForwardError{fmt.Sprintf("Failed to bind any port for option '%s', exiting", spec)}
		}
	}
	return nil
}

// fdBudget is how many more descriptors "all" may take: the soft
// RLIMIT_NOFILE (the Go runtime raises it to the hard one) minus those
// open now, minus a quarter kept for connections, flows and files. pasta
// binds what it can; with a limit below the port count that would leave
// nothing to accept a connection with.
func fdBudget() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<24 {
		return 1 << 20
	}
	open := 0
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		open = len(ents)
	}
	return int(rl.Cur) - open - max(int(rl.Cur)/4, 256)
}

// update opens and closes the listeners of Scan rules after a scan.
func (d *fwdDir) update() {
	log := d.f.env.Log
	for ri, r := range d.rules {
		if !r.Scan {
			continue
		}
		dyn := &d.dyn[ri]
		shift := int(r.To) - int(r.First)
		for p := int(r.First); p <= int(r.Last); p++ {
			// Skip quickly over words where nothing is bound and
			// nothing is open (the common case for most of the space).
			if shift == 0 && p%64 == 0 && p+63 <= int(r.Last) && d.bound[p/64] == 0 && dyn[p/64] == 0 {
				p += 63
				continue
			}
			port := uint16(p)
			want := d.bound.has(uint16(p+shift)) && !(r.Weak && d.ephemeral(port))
			have := dyn.has(port)
			if want == have {
				continue
			}
			k := fwdKey{ri, port}
			if have {
				d.ls[k].Close()
				delete(d.ls, k)
				dyn.del(port)
				d.ours.del(port)
				log.Debugf("%s auto: port %d no longer bound, not forwarded", d.opt, port)
				continue
			}
			if d.ours.has(port) {
				continue // a static rule or another spec forwards it
			}
			l, err := d.open(r, port, true)
			if err != nil {
				if !d.failed.has(port) {
					d.failed.add(port)
					log.Debugf("%s auto: cannot forward port %d: %v", d.opt, port, err)
				}
				continue
			}
			d.failed.del(port)
			d.ls[k] = l
			dyn.add(port)
			d.ours.add(port)
			log.Debugf("%s auto: forwarding port %d", d.opt, port)
		}
	}
}

// families lists the IP versions a rule listens on (true: IPv6).
func (d *fwdDir) families(r conf.Rule) []bool {
	c := d.f.env.Opts
	switch {
	case r.Bind.IsValid():
		return []bool{!r.Bind.Unmap().Is4()}
	case r.ToAddr.IsValid():
		return []bool{!r.ToAddr.Unmap().Is4()}
	case c.IPv4Only:
		return []bool{false}
	case c.IPv6Only:
		return []bool{true}
	}
	return []bool{false, true}
}

// multiListener is the per-family listeners of one port.
type multiListener []fwdListener

func (m multiListener) Close() {
	for _, l := range m {
		l.Close()
	}
}

// open binds port p of rule r in every family. With weak set, or for the
// IPv6 half of an any-address rule on a host without IPv6, a family that
// cannot be bound is skipped; otherwise any failure is the error.
func (d *fwdDir) open(r conf.Rule, p uint16, weak bool) (fwdListener, error) {
	if l, ok := d.takeSpare(r, p); ok {
		return l, nil
	}
	fams := d.families(r)
	var m multiListener
	var firstErr error
	failedV6 := false
	for _, v6 := range fams {
		l, err := d.openFamily(r, p, v6)
		if err != nil {
			// Without a bind address a port is forwarded for both
			// families, and as pasta does it stays forwarded for the one
			// that could be bound: a host service holding 0.0.0.0:PORT
			// leaves [::]:PORT to us. Only when no family binds is it an
			// error.
			if firstErr == nil {
				firstErr, failedV6 = err, v6
			}
			if weak || len(fams) == 2 {
				continue
			}
			m.Close()
			return nil, err
		}
		m = append(m, l)
	}
	if len(m) == 0 {
		return nil, firstErr
	}
	// A family the host lacks (no IPv6 in the kernel, no address) is not
	// worth a line per port.
	quiet := errors.Is(firstErr, unix.EAFNOSUPPORT) || errors.Is(firstErr, unix.EADDRNOTAVAIL)
	if firstErr != nil && !weak && !quiet {
		fam, other := "4", "6"
		if failedV6 {
			fam, other = "6", "4"
		}
		d.f.env.Log.Warnf("Failed to bind port %d (%s) for option '%s %s' over IPv%s, forwarding it over IPv%s only",
			p, strerror(firstErr), d.opt, r.Raw, fam, other)
	}
	return m, nil
}

func (d *fwdDir) openFamily(r conf.Rule, p uint16, v6 bool) (fwdListener, error) {
	to := r.To + (p - r.First)
	switch {
	case !d.out && !d.udp:
		return d.f.openTCPIn(r, p, to, v6)
	case !d.out:
		return d.f.openUDPIn(r, p, to, v6)
	case !d.udp:
		return d.f.openTCPOut(p, to, v6)
	default:
		return d.f.openUDPOut(p, to, v6)
	}
}

// ForwardError is a port forwarding failure worded as pasta words it
// ("Failed to bind port 8000 (Address already in use) for option '-t
// 8000-8000:80-80', exiting"): the complete line to show the user.
type ForwardError struct{ Msg string }

func (e *ForwardError) Error() string { return e.Msg }

// loopbackUp sets the calling thread's namespace's "lo" up.
func loopbackUp() {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil || unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr) != nil {
		return
	}
	if ifr.Uint16()&unix.IFF_UP == 0 {
		ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
		_ = unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
	}
}

// strerror spells an errno as the C library does ("Address already in
// use"), which is what pasta's messages show.
func strerror(err error) string {
	s := err.Error()
	var errno unix.Errno
	if errors.As(err, &errno) {
		s = errno.Error()
	}
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func loopback(v6 bool) netip.Addr {
	if v6 {
		return netip.IPv6Loopback()
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

func family(v6 bool) int {
	if v6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// nsTarget is where a spliced -t/-u client goes in the namespace: the
// rule's target address if it is a loopback one, else the namespace's own
// address (the one it uses, else the configured one), or its loopback
// with --host-lo-to-ns-lo. ok is false when the connection must take the
// tap path (a non-loopback target address).
func (f *forwarder) nsTarget(v6 bool, toAddr netip.Addr, port uint16) (netip.AddrPort, bool) {
	if toAddr.IsValid() {
		toAddr = toAddr.Unmap()
		if !toAddr.IsLoopback() || toAddr.Is6() != v6 {
			return netip.AddrPort{}, false
		}
		return netip.AddrPortFrom(toAddr, port), true
	}
	if f.opts.HostLoToNsLo {
		return netip.AddrPortFrom(loopback(v6), port), true
	}
	var a netip.Addr
	if v6 {
		if a = f.env.Peer.Addr6(); !a.IsValid() {
			a = f.env.Opts.Addr6
		}
	} else {
		if a = f.env.Peer.Addr4(); !a.IsValid() && f.env.Opts.Addr4.IsValid() {
			a = f.env.Opts.Addr4.Addr()
		}
	}
	if !a.IsValid() || a.IsLinkLocalUnicast() {
		a = loopback(v6)
	}
	return netip.AddrPortFrom(a, port), true
}
