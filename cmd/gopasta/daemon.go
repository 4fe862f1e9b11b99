package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/flowtrace"
	"github.com/gopasta/gopasta/actors/forward"
	"github.com/gopasta/gopasta/actors/icmp"
	"github.com/gopasta/gopasta/actors/tcp"
	"github.com/gopasta/gopasta/actors/udp"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/conf/control"
	"github.com/gopasta/gopasta/dispatcher"
	"github.com/gopasta/gopasta/internal/netcfg"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/netns"
	"github.com/gopasta/gopasta/link/netns/nsenter"
	"github.com/gopasta/gopasta/link/vhostuser"
)

// writerDepth is the link writer's queue: deep enough for a burst from many
// flows, bounded so that a stalled guest pushes back on the actors.
const writerDepth = 4096

// shutdownGrace is how long the daemon waits for its goroutines at exit.
const shutdownGrace = 2 * time.Second

// daemon is the child process: it owns every resource gopasta uses.
type daemon struct {
	cfg        *conf.Config
	log        *logging
	foreground bool
	command    bool

	pidFile *os.File // -P, opened at the start of setup, written and closed at its end
	profile *os.File // profileEnv's file, opened before setup (profile.go)

	nsFD    int
	nsArg   string   // the namespace file to watch ("" in command mode)
	nsDir   int      // nsArg's directory (O_PATH), or -1 (watch.go)
	inotify *os.File // watch on nsArg's directory (prepareWatch), or nil
	tap     *link.Tap
	dev     link.Device // the guest link: tap, or passt's QEMU socket
	peer    *link.Peer
	w       *link.Writer
	disp    *dispatcher.Dispatcher
	env     *actors.Env
	pcap    *link.Pcap // -p/--pcap (pcap.go)
	caps    captures   // --pcap and gopasta ctl pcap (pcap.go)
	trace   flowtrace.Hub
	stops   []func()

	// protos are the daemon's transport protocols (their registries,
	// poller and counters), made with env and closed by teardown once
	// env.Ctx is done.
	protos actors.Protocols

	// fw is the port forwarder, rules its tables as the control socket
	// (ctl, -c) and SIGHUP change them (control.go).
	fw    *forward.Forwarding
	rules *rulesBackend
	ctl   *control.Server

	// follow moves --map-guest-addr's alias along with the host's
	// address (nil: nothing to follow).
	follow *netcfg.HostAddrFollower
	// resolv moves --dns-forward along with the host's resolv.conf
	// (nil: --dns-host was given, or nothing is forwarded).
	resolv *netcfg.ResolvFollower
	cmd    *exec.Cmd

	// passt mode: the listening device, or the -F socket (passt.go).
	qemu   *link.ReconnectingDevice
	qemuFD *link.QemuDevice
	vu     *vhostuser.Device // --vhost-user (vhostuser.go)
	// vu's listening socket and its path, if it listens (the sandbox's
	// cleaner removes the file).
	vuLn   *net.UnixListener
	vuPath string
	// cleaner removes qemu's socket file once the daemon is gone
	// (cleaner.go); nil without a sandbox.
	cleaner *cleaner
	// cleanerEnd is the daemon's end of the front's cleaner, if the
	// front started one (PID namespace).
	cleanerEnd *os.File

	ctx    context.Context
	cancel context.CancelCauseFunc

	oneOffOnce sync.Once // endOneOff (passt.go)

	// mountNS: the daemon runs in a mount namespace of its own, which
	// the sandbox may pivot_root in; isolateErr says why not, if asked.
	mountNS bool
	// pidNS: the daemon is PID 1 of a PID namespace of its own, and
	// /proc (the host's) knows it by another number (hostPID).
	pidNS      bool
	isolateErr error
	// jailed: the root is the sandbox's empty one now, and nsDir (if
	// any) is the only way to the namespace file.
	jailed bool
	// sandboxed: the sandbox is on (no files can be created any more).
	sandboxed bool
}

// errQuit is the cancel cause of an orderly exit (signal, namespace or PID
// gone, command ended).
var errQuit = errors.New("quit")

func daemonMain(prog string) int {
	start := time.Now()
	ready := os.NewFile(readyFD, "ready")
	report := func(line string) {
		if ready != nil {
			fmt.Fprintln(ready, line)
			ready.Close()
			ready = nil
		}
	}
	userns := os.Getenv(nsenter.EnvVar)
	isolate := os.Getenv(nsenter.IsolateEnv)
	nsenter.Clean()
	os.Unsetenv(stageEnv)

	cfg, err := conf.Parse(os.Args[0], os.Args[1:])
	if err != nil {
		report("err " + err.Error())
		return 1
	}
	if userns != "" && !nsenter.Joined() {
		report("err cannot join user namespace " + userns)
		return 1
	}
	log, err := newLogging(cfg, start)
	if err != nil {
		report("err " + err.Error())
		return 1
	}
	d := &daemon{cfg: cfg, log: log, nsFD: -1, nsDir: -1, command: commandMode(cfg)}
	switch isolate {
	case nsenter.IsolateClone:
		d.mountNS = true
	case nsenter.IsolateUnshare:
		_, d.isolateErr = nsenter.Isolated()
		d.mountNS = d.isolateErr == nil
	}
	d.profile = openProfile(log)
	if v := os.Getenv(cleanerFDEnv); v != "" {
		os.Unsetenv(cleanerFDEnv)
		if fd, err := strconv.Atoi(v); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
			d.cleanerEnd = os.NewFile(uintptr(fd), "cleaner")
		}
	}
	// PID 1: the front made a PID namespace for the daemon (passt mode).
	d.pidNS = os.Getpid() == 1
	d.foreground = cfg.Foreground || d.command
	d.ctx, d.cancel = context.WithCancelCause(context.Background())
	defer d.closePcap()

	// Signals are caught from the start, so that a SIGTERM during setup
	// is a clean exit after it rather than a kill in the middle.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1)

	if err := d.setup(); err != nil {
		log.WithError(err).Debug("setup failed")
		d.discardPIDFile()
		d.teardown()
		d.closeNS()
		var fe *forward.ForwardError
		if errors.As(err, &fe) {
			// pasta's own wording, shown as is (podman users see it).
			report("die " + fe.Error())
		} else {
			report("err " + err.Error())
		}
		return 1
	}
	log.afterReady(d.foreground)
	// The profile file was opened before setup (profile.go); profiling
	// starts now.
	defer startProfile(log, d.profile)()
	// Last: stdio detached (it opens /dev/null), then the sandbox
	// (sandbox.go), whose seccomp filter is the very last step.
	for _, step := range []func() error{d.detachStdio, d.sandbox, d.seal} {
		if err := step(); err != nil {
			d.teardown()
			d.closeNS()
			report("err " + err.Error())
			return 1
		}
	}
	log.Debugf("ready after %v", time.Since(start).Round(time.Microsecond))
	if d.cmd != nil {
		// The front passes signals on to COMMAND (command.go).
		report("ok " + strconv.Itoa(d.cmd.Process.Pid))
	} else {
		report("ok")
	}
	return d.run(sigs)
}

// detachStdio is the package function, in the background only.
func (d *daemon) detachStdio() error {
	if d.foreground {
		return nil
	}
	return detachStdio()
}

// detachStdio points fds 0, 1 and 2 at /dev/null, so that the daemon holds
// nothing of its parent's pipes once it is ready, and leaves the working
// directory, so that it pins no mount its caller may want to remove. Every
// path from the options has been opened by now.
func detachStdio() error {
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %v", err)
	}
	null, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/null: %v", err)
	}
	defer unix.Close(null)
	for fd := 0; fd <= 2; fd++ {
		if err := unix.Dup3(null, fd, 0); err != nil {
			return fmt.Errorf("redirect fd %d: %v", fd, err)
		}
	}
	return nil
}

// setup does everything that can fail, before readiness.
func (d *daemon) setup() error {
	cfg, log := d.cfg, d.log

	// Output files first: before anything enters a namespace or drops a
	// privilege, relative to the caller's directory (outfile.go).
	if cfg.PIDFile != "" {
		f, err := openOutput(cfg.PIDFile, true)
		if err != nil {
			return fmt.Errorf("PID file: %v", err)
		}
		d.pidFile = f
	}
	if err := d.openPcap(); err != nil {
		return err
	}
	// The control socket first, as pasta opens it: a path that cannot
	// be used is the first and only complaint. Clients are served once
	// the daemon is ready (run), when the rules are in place.
	d.rules = &rulesBackend{cfg: cfg, log: log.Logger}
	if err := d.startControl(); err != nil {
		return err
	}
	host, err := netcfg.Resolve(cfg)
	if err != nil {
		return err
	}
	for _, w := range host.Warnings {
		log.Warn(w)
	}
	// Still in the host's namespace: the follower's sockets stay here.
	if d.follow, err = netcfg.FollowHostAddrs(host, host.NAT, log.Logger); err != nil {
		log.WithError(err).Warn("not following the host's address changes")
	} else if d.follow != nil {
		d.stops = append(d.stops, d.follow.Close)
	}
	if d.resolv, err = netcfg.FollowResolvConf(netcfg.ResolvConf, host.UserDNSHost, host.NAT, log.Logger); err != nil {
		log.WithError(err).Warn("not following the host's resolver changes")
	} else if d.resolv != nil {
		d.stops = append(d.stops, d.resolv.Close)
	}
	d.peer = &link.Peer{OurMAC: cfg.OurMAC}
	switch {
	case cfg.Mode == conf.ModePasst:
		err = d.openPasst()
	case cfg.SpliceOnly:
		err = d.openSpliceOnly()
	default:
		err = d.openTapLink(host)
	}
	if err != nil {
		return err
	}
	d.logConfig(host)

	d.w = link.NewWriter(d.dev, writerDepth)
	if d.vu != nil {
		d.w.Lend = d.vu
	}
	d.env = &actors.Env{Ctx: d.ctx, Opts: actors.OptionsFrom(cfg), Out: d.w, Peer: d.peer, Log: log.Logger, NAT: host.NAT, Trace: &d.trace, Reg: actors.NewRegistrar()}
	tcpP, err := tcp.New(d.env)
	if err != nil {
		return fmt.Errorf("tcp: %v", err)
	}
	udpP := udp.New(d.env)
	d.protos = actors.Protocols{TCP: tcpP, UDP: udpP, ICMP: icmp.New(d.env)}
	d.disp = dispatcher.New(cfg, d.dev, d.env, log.Logger, d.protos)
	d.teePcap()
	control.SetNativeBackend(ctlBackend{d})

	// Listening sockets are bound now, so that a port in use is a setup
	// error that podman sees, and "auto" has scanned once.
	if d.fw, err = forward.StartForwarder(d.env, forward.OptionsFrom(cfg), d.nsFD, forward.Flows{TCP: tcpP, UDP: udpP}); err != nil {
		return err
	}
	d.stops = append(d.stops, d.fw.Stop)
	if err := d.rules.start(d.fw); err != nil {
		if cfg.ConfPath != "" {
			return fmt.Errorf("control socket: %v", err)
		}
		// Only SIGHUP would miss them: podman's users need no line.
		lvl := logrus.DebugLevel
		if cfg.ConfigFile != "" {
			lvl = logrus.WarnLevel
		}
		log.Logf(lvl, "forwarding rules cannot be changed at run time (SIGHUP): %v", err)
	}
	d.setLimits()

	if d.pidFile != nil {
		_, err := d.pidFile.WriteString(strconv.Itoa(hostPID()) + "\n")
		if cerr := d.pidFile.Close(); err == nil {
			err = cerr
		}
		d.pidFile = nil
		if err != nil {
			return fmt.Errorf("PID file: %v", err)
		}
	}
	if d.command {
		if err := d.startCommand(); err != nil {
			return err
		}
	}
	d.prepareWatch()
	return nil
}

// openTapLink enters or creates the namespace and opens (and with
// --config-net configures) the tap in it: pasta mode's link.
func (d *daemon) openTapLink(host *netcfg.Host) error {
	cfg, log := d.cfg, d.log
	if err := d.openNetns(); err != nil {
		return err
	}
	if d.command {
		// pasta configures a namespace it created itself, and then sends
		// no router advertisements, as with --config-net (conf.Parse):
		// the guest would add a SLAAC address of its own beside the one
		// configured.
		cfg.ConfigNet = true
		cfg.NoRA = true
	}

	var err error
	if cfg.FD >= 0 {
		// -F: a tap device the caller opened, as pasta takes it; its
		// interface is the one --config-net configures.
		fd, err := inheritedFD(cfg)
		if err != nil {
			return err
		}
		if d.tap, err = link.TapFromFD(fd, cfg.MTU); err != nil {
			return err
		}
		log.Infof("Using tap device %s from file descriptor %d", d.tap.Name(), cfg.FD)
	} else if d.tap, err = link.OpenTap(cfg.NSIfname, d.nsFD, cfg.MTU); err != nil {
		return err
	}
	d.dev = d.tap
	if cfg.ConfigNet {
		warns, err := netcfg.Configure(d.nsFD, cfg, d.tap.Name(), host)
		for _, w := range warns {
			log.Warn(w)
		}
		if err != nil {
			return err
		}
	}
	if d.command {
		if err := netcfg.SetPingGroupRange(d.nsFD); err != nil {
			log.Debugf("ping_group_range: %v", err)
		}
	}
	return nil
}

// openSpliceOnly is pasta mode's link with --splice-only: the namespace
// gets no tap, only its loopback (which the forwarder brings up), and the
// only traffic is spliced between the two loopbacks. The dispatcher runs
// on a device where nothing arrives.
func (d *daemon) openSpliceOnly() error {
	if err := d.openNetns(); err != nil {
		return err
	}
	mtu := d.cfg.MTU
	if mtu == 0 {
		mtu = netcfg.DefaultMTU
	}
	d.dev = link.NewNullDevice(mtu)
	return nil
}

// openNetns opens the target network namespace, or creates one.
func (d *daemon) openNetns() error {
	var err error
	switch cfg := d.cfg; {
	case cfg.NetNS != "":
		d.nsArg = netns.ResolvePath(cfg.NetNS)
		d.nsFD, err = netns.Open(d.nsArg)
	case cfg.TargetPID != 0:
		d.nsFD, err = netns.Open("/proc/" + strconv.Itoa(cfg.TargetPID) + "/ns/net")
	default:
		d.nsFD, err = netns.NewUnshared()
	}
	return err
}

func (d *daemon) logConfig(host *netcfg.Host) {
	cfg, log := d.cfg, d.log
	if host.If4 != "" || host.If6 != "" {
		log.Infof("Template interface: %s (IPv4), %s (IPv6)", orNone(host.If4), orNone(host.If6))
	}
	if !cfg.IPv6Only {
		log.Infof("IPv4: %s gateway %s", cfg.Addr4, cfg.Gateway4)
	}
	if !cfg.IPv4Only {
		log.Infof("IPv6: %s gateway %s", orNone(addrString(cfg.Addr6)), cfg.Gateway6)
	}
	if d.tap != nil {
		log.Infof("Namespace interface: %s, MTU %d", d.tap.Name(), cfg.MTU)
	} else if cfg.SpliceOnly {
		log.Infof("Namespace interface: none (--splice-only): loopback traffic only")
	} else if d.vu != nil {
		log.Infof("Guest link: vhost-user, MTU %d", d.dev.MTU())
	} else {
		log.Infof("Guest link: QEMU stream socket, MTU %d", d.dev.MTU())
	}
	log.Debugf("NAT: %s", host.NAT)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func addrString(a interface {
	IsValid() bool
	String() string
}) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// run is the daemon's life after readiness: the writer, the dispatcher and
// the watchers run until something cancels the context.
func (d *daemon) run(sigs <-chan os.Signal) int {
	var wg sync.WaitGroup
	goOwned := func(name string, fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := fn()
			if d.ctx.Err() == nil {
				// Nothing asked it to stop: the link failed.
				d.log.WithError(err).Errorf("%s stopped", name)
				d.cancel(fmt.Errorf("%s: %w", name, err))
			}
		}()
	}
	goOwned("writer", func() error { return d.w.Run(d.ctx) })
	goOwned("dispatcher", func() error { return d.disp.Run(d.ctx) })
	wg.Add(1)
	go func() { defer wg.Done(); adaptProcs(d.ctx) }() // procs.go
	if d.follow != nil {
		wg.Add(1)
		go func() { defer wg.Done(); d.follow.Run(d.ctx) }()
	}
	if d.resolv != nil {
		wg.Add(1)
		go func() { defer wg.Done(); d.resolv.Run(d.ctx) }()
	}
	d.startWatchers(&wg)
	if d.ctl != nil {
		wg.Add(1)
		go func() { defer wg.Done(); d.ctl.Serve(d.ctx) }()
	}

	status := 0
	var cmdDone chan int
	if d.cmd != nil {
		cmdDone = make(chan int, 1)
		go func() { cmdDone <- exitStatus(d.cmd.Wait()) }()
	}
	var statsTick <-chan time.Time
	if d.cfg.Stats > 0 {
		t := time.NewTicker(time.Duration(d.cfg.Stats) * time.Second)
		defer t.Stop()
		statsTick = t.C
	}
loop:
	for {
		select {
		case <-d.ctx.Done():
			break loop
		case status = <-cmdDone:
			d.log.Debugf("command exited with status %d", status)
			cmdDone = nil
			d.cancel(errQuit)
		case s := <-sigs:
			switch {
			case s == syscall.SIGUSR1:
				// Asked for: written even under --quiet (podman's
				// default), as a warning there.
				lvl := logrus.InfoLevel
				if !d.log.IsLevelEnabled(lvl) {
					lvl = logrus.WarnLevel
				}
				d.logStats(lvl)
			case d.cmd != nil:
				// COMMAND decides; we exit when it does.
				if s == syscall.SIGTERM || s == syscall.SIGHUP {
					_ = d.cmd.Process.Signal(s)
				}
			case s == syscall.SIGHUP && d.cfg.ConfigFile != "" && d.rules.ready():
				d.reload()
			case s == syscall.SIGQUIT:
			default:
				d.log.Infof("%v, exiting", s)
				d.cancel(errQuit)
			}
		case <-statsTick:
			d.logStats(logrus.InfoLevel)
		}
	}
	cause := context.Cause(d.ctx)
	d.teardown()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		// Only now: the namespace watcher compares the file with it.
		d.closeNS()
	case <-time.After(shutdownGrace):
		d.log.Warn("goroutines still running at exit")
	}
	if cmdDone != nil {
		// The namespace went away under a running command: stop it.
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		status = <-cmdDone
	}
	d.logStats(logrus.DebugLevel)
	if !errors.Is(cause, errQuit) && d.cmd == nil {
		return 1
	}
	return status
}

// teardown releases what setup acquired. Closing the tap ends the
// dispatcher's read and the writer.
func (d *daemon) teardown() {
	if d.ctl != nil {
		// First: no rule change may race with the forwarder stopping.
		d.ctl.Close()
	}
	for _, stop := range d.stops {
		stop()
	}
	d.stops = nil
	d.cancel(errQuit)
	if d.tap != nil {
		d.tap.Close()
	} else if d.dev != nil {
		d.dev.Close()
	}
	// The flows are told to end and no write to the link can wait any
	// more (the TCP harvester runs flows inline, and QEMU's socket may
	// block a write): the protocols' goroutines go now.
	d.protos.Close()
	if d.cleaner != nil {
		d.cleaner.finish()
		d.cleaner = nil
	}
}

// closeNS closes the namespace descriptor once nothing uses it.
func (d *daemon) closeNS() {
	if d.nsFD >= 0 {
		unix.Close(d.nsFD)
		d.nsFD = -1
	}
}

func (d *daemon) logStats(level logrus.Level) {
	if d.w == nil || !d.log.IsLevelEnabled(level) {
		return
	}
	f := logrus.Fields{}
	for k, v := range d.stats() {
		f[k] = v
	}
	d.log.WithFields(f).Log(level, "statistics")
}

// stats is every counter by name: what SIGUSR1 logs and gopasta ctl stats
// shows.
func (d *daemon) stats() map[string]uint64 {
	m := map[string]uint64{
		"written": d.w.Frames.Load(), "dropped": d.w.Dropped.Load(),
		"write_errors": d.w.Errors.Load(),
		"tcp_flows":    uint64(max(d.env.Stats.TCPFlows.Load(), 0)), "udp_flows": uint64(max(d.env.Stats.UDPFlows.Load(), 0)),
		"icmp_flows": uint64(max(d.env.Stats.ICMPFlows.Load(), 0)), "goroutines": uint64(runtime.NumGoroutine()),
	}
	if d.tap != nil {
		m["tap_skipped"] = d.tap.Skipped.Load()
	} else {
		for k, v := range d.passtStats() {
			switch n := v.(type) {
			case uint64:
				m[k] = n
			case int64:
				m[k] = uint64(max(n, 0))
			}
		}
	}
	for k, v := range d.disp.Stats() {
		m[k] = v
	}
	for k, v := range actors.StatsSnapshot(d.env) {
		m[k] = v
	}
	d.protos.AddStats(m)
	if d.fw != nil {
		d.fw.AddStats(m)
	}
	return m
}

// setLimits gives the flows their descriptor budget: what RLIMIT_NOFILE
// leaves once everything set up so far is open, minus the reserve
// (actors.FDBudgetFor). It runs after the listeners are bound, so that
// they are counted among the open descriptors.
func (d *daemon) setLimits() {
	nofile, open := actors.NofileLimit(), actors.OpenFDs()
	budget := actors.FDBudgetFor(nofile, open)
	d.env.Limits.SetFDBudget(budget)
	d.log.Debugf("descriptors: limit %d, %d open, %d reserved, %d for flows, %d pending connects at most, for %v each",
		nofile, open, actors.FDReserve, budget, d.env.Limits.ConnectLimit(), actors.TCPConnectTimeout())
}

// hostPID is the daemon's PID as its caller knows it: in a PID namespace
// of its own it is 1 to itself, but /proc, still the caller's until the
// sandbox's pivot_root, names it by the caller's number.
func hostPID() int {
	if os.Getpid() != 1 {
		return os.Getpid()
	}
	self, err := os.Readlink("/proc/self")
	if pid, err2 := strconv.Atoi(self); err == nil && err2 == nil {
		return pid
	}
	return os.Getpid()
}
