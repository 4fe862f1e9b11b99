package main

// Theory of operation: passt mode.
//
// Run as passt (argv[0] containing "passt", or mode = "passt" in the TOML
// file, or --mode passt), gopasta serves a virtual machine instead of a
// namespace. Only the link differs: QEMU connects to a UNIX stream socket
// and both sides exchange length-prefixed Ethernet frames (link/qemu.go).
// Everything above the link, the dispatcher with its ARP, NDP, DHCP and
// DHCPv6 answers, the flow actors and the -t/-u forwarders, is the very code
// pasta mode runs. There is no namespace, no tap, no --config-net and no
// loopback splice path: the guest configures itself from our DHCP and
// router advertisements and every flow goes through the link.
//
// The process model is pasta's too (doc.go): the front starts the daemon
// and waits for its readiness line, the daemon daemonizes unless -f. The
// socket is listening before the daemon reports readiness, so that a QEMU
// started the moment the front exits finds it; the line "You can now start
// qemu ..." is logged during setup, hence relayed by the front to the
// user's terminal even in the background.
//
// Clients. With -s (or the default path) the daemon owns a listener and a
// link.ReconnectingDevice in front of it: one QEMU at a time, any other is
// refused at once while one is connected, and a QEMU that disconnects may
// come back later while every flow and forwarder carries on. Each new
// client may be a different VM, so the guest MAC we learned is forgotten
// (broadcast until its first frame). With -1 the first disconnect ends the
// daemon; -F FD (a socket our caller connected for us) implies -1.
//
// -F and the two processes. The descriptor belongs to the front's caller,
// and the front marks every inherited descriptor close-on-exec (front.go);
// so the front passes it on explicitly, always as descriptor qemuFDChild,
// and tells the daemon in qemuFDEnv. The number the user gave may be any,
// even the readiness pipe's.
//
// The end of a one-off link is an orderly exit (status 0), not a failure:
// the device wrapper oneOffEnd (the vhost-user device's OnDisconnect)
// cancels the daemon's context with errQuit before ReadBatch or WriteBatch
// reports ErrClosed, so neither the dispatcher nor the writer is taken for
// a broken link.

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link"
)

// Passing -F's descriptor from the front to the daemon.
const (
	qemuFDEnv   = "GOPASTA_QEMU_FD"
	qemuFDChild = readyFD + 1 // ExtraFiles[1]
)

// passtFD prepares the -F descriptor for the daemon (passt: the VM's
// connected socket; pasta: a tap device): the file to put in
// ExtraFiles[1], or nil when there is none. It checks that the descriptor
// is open, so that a wrong number is the front's one-line error.
func passtFD(cfg *conf.Config) (*os.File, error) {
	if cfg.FD < 0 {
		return nil, nil
	}
	f := os.NewFile(uintptr(cfg.FD), "qemu-fd")
	if f == nil {
		return nil, fmt.Errorf("bad file descriptor %d", cfg.FD)
	}
	if _, err := f.Stat(); err != nil {
		return nil, fmt.Errorf("file descriptor %d: %v", cfg.FD, err)
	}
	return f, nil
}

// inheritedFD is the daemon's number for the -F descriptor, which the
// front passed on as qemuFDChild.
func inheritedFD(cfg *conf.Config) (int, error) {
	fd := cfg.FD
	if v := os.Getenv(qemuFDEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return -1, fmt.Errorf("%s=%q: %v", qemuFDEnv, v, err)
		}
		fd = n
	}
	os.Unsetenv(qemuFDEnv)
	return fd, nil
}

// openPasst opens the passt-mode link: the -F socket, or a listener on -s
// (or the first free default path) behind a ReconnectingDevice. It sets
// d.dev and d.qemu.
func (d *daemon) openPasst() error {
	cfg, log := d.cfg, d.log
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = link.QemuMTU // "-m 0": don't advertise, the link still carries
	}
	if cfg.VhostUser {
		return d.openVhostUser(mtu)
	}

	if cfg.FD >= 0 {
		fd, err := inheritedFD(cfg)
		if err != nil {
			return err
		}
		dev, err := link.QemuDeviceFromFD(fd)
		if err != nil {
			return err
		}
		dev.SetMTU(mtu)
		log.Infof("Using connected socket from file descriptor %d (peer PID %d)", cfg.FD, dev.PeerPID())
		d.qemuFD = dev
		d.dev = d.oneOff(dev)
		return nil
	}

	var ln *link.QemuListener
	var err error
	if cfg.Socket == "" {
		ln, err = link.ListenQemuDefault()
	} else {
		ln, err = link.ListenQemu(cfg.Socket)
	}
	if err != nil {
		return err
	}
	peer := d.peer
	rd := link.NewReconnectingDevice(ln, link.ReconnectConfig{
		MTU:    mtu,
		OneOff: cfg.OneOff,
		OnConnect: func(c *link.QemuDevice) {
			// A new client may be another VM: talk broadcast until
			// its first frame says who it is.
			peer.SetMAC(link.Broadcast)
			log.Infof("accepted connection from PID %d", c.PeerPID())
		},
		OnDisconnect: func(c *link.QemuDevice) {
			log.WithFields(map[string]any{
				"frames_in": c.Stats.RxFrames.Load(), "frames_out": c.Stats.TxFrames.Load(),
				"bad_length": c.Stats.RxBadLength.Load(), "truncated_bytes": c.Stats.RxTruncated.Load(),
			}).Info("client closed connection")
		},
		OnRefused: func(pid int) {
			refusedLog.Log(log.WithField("pid", pid), logrus.InfoLevel, "another client is connected: discarding connection from PID %d", pid)
		},
		OnAcceptError: func(err error) {
			acceptErrLog.Warnf(log.WithError(err), "accept on the UNIX socket failed: %v", err)
		},
	})
	d.qemu = rd
	d.dev = rd
	if cfg.OneOff {
		d.dev = d.oneOff(rd)
	}
	log.Infof("UNIX domain socket bound at %s", ln.Path())
	log.Infof("You can now start qemu (>= 7.2) with:")
	log.Infof("    kvm ... %s", link.QemuCommandHint(ln.Path()))
	return nil
}

// oneOff wraps the link of a one-off daemon so that its end is an orderly
// exit: see the theory of operation. (The vhost-user device announces its
// end itself: openVhostUser.)
func (d *daemon) oneOff(dev link.Device) link.Device {
	return &oneOffEnd{Device: dev, end: d.endOneOff}
}

// endOneOff ends a one-off daemon whose link has gone, once.
func (d *daemon) endOneOff() {
	d.oneOffOnce.Do(func() {
		if d.ctx.Err() == nil {
			d.log.Info("client closed connection, exiting")
		}
		d.cancel(errQuit)
	})
}

// oneOffEnd is a Device whose ErrClosed ends the daemon.
type oneOffEnd struct {
	link.Device
	end func()
}

func (e *oneOffEnd) ReadBatch(frames []*link.Frame) (int, error) {
	n, err := e.Device.ReadBatch(frames)
	if err == link.ErrClosed {
		e.end()
	}
	return n, err
}

func (e *oneOffEnd) WriteBatch(frames []*link.Frame) error {
	err := e.Device.WriteBatch(frames)
	if err == link.ErrClosed {
		e.end()
	}
	return err
}

// passtStats adds the link's counters to the statistics line.
func (d *daemon) passtStats() map[string]any {
	m := map[string]any{}
	var c *link.QemuDevice
	if d.vu != nil {
		d.vhostUserStats(m)
		return m
	}
	if d.qemu != nil {
		m["clients"] = d.qemu.Connects.Load()
		m["refused"] = d.qemu.Refused.Load()
		m["link_dropped"] = d.qemu.TxDropped.Load()
		c = d.qemu.Current()
	} else {
		c = d.qemuFD
	}
	if c != nil {
		m["rx_frames"] = c.Stats.RxFrames.Load()
		m["tx_frames"] = c.Stats.TxFrames.Load()
		m["rx_bad_length"] = c.Stats.RxBadLength.Load()
		m["tx_short_writes"] = c.Stats.TxShortWrites.Load()
	}
	return m
}

// usageMode is the mode whose --help to print: the program name's, unless
// --mode says otherwise (a file's "mode" key is not read for --help).
func usageMode(argv0 string, args []string) conf.Mode {
	mode := conf.ModeFromArgv0(argv0)
	for i, a := range args {
		v, ok := strings.CutPrefix(a, "--mode=")
		if a == "--mode" && i+1 < len(args) {
			v, ok = args[i+1], true
		}
		if a == "--" {
			break
		}
		if m, err := conf.ParseMode(v); ok && err == nil {
			mode = m
		}
	}
	return mode
}

// refusedLog rate-limits the note about QEMU (and vhost-user) clients
// refused while another is connected: any local process may connect as
// often as it likes.
var refusedLog actors.RateLog

// acceptErrLog rate-limits the UNIX socket's accept errors (out of
// descriptors, they come every 100 ms).
var acceptErrLog actors.RateLog
