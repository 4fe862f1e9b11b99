package main

// passt --vhost-user: the link is a vhost-user back end for virtio-net on
// the -s socket (link/vhostuser). QEMU connects to it with -chardev socket
// and -netdev vhost-user, shares the guest's memory with us, and frames
// move between the guest's virtqueues and gopasta's frame buffers with no
// socket in between. Everything above the link is passt mode as usual;
// the life cycle too: one front end at a time, others refused, a front end
// that leaves may come back unless -1, and --fd serves one inherited,
// connected socket and implies -1.

import (
	"fmt"
	"net"
	"os"
	"strconv"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/vhostuser"
)

// vhostUserCopyEnv, set to anything, makes the vhost-user link copy every
// frame through gopasta's own buffers, as stream mode does, instead of
// lending the guest's memory to the TCP flows both ways: for telling a
// problem of the zero-copy paths from one of the rest (README, "passt
// mode").
const vhostUserCopyEnv = "GOPASTA_VHOST_USER_COPY"

// openVhostUser opens the vhost-user link. It sets d.dev and d.vu.
func (d *daemon) openVhostUser(mtu int) error {
	cfg, log, peer := d.cfg, d.log, d.peer
	// One-off (-1, or -F's socket): the device's end is the daemon's,
	// announced by OnDisconnect before the device reports ErrClosed, so
	// the device needs no wrapper (oneOff) hiding its methods.
	oneOff := cfg.OneOff || cfg.FD >= 0
	vcfg := vhostuser.Config{
		MTU:    mtu,
		OneOff: cfg.OneOff,
		Copy:   os.Getenv(vhostUserCopyEnv) != "",
		Log:    log.Logger,
		OnConnect: func(pid int) {
			// A new front end may be another VM: talk broadcast
			// until its first frame says who it is.
			peer.SetMAC(link.Broadcast)
			log.Infof("accepted connection from PID %d", pid)
		},
		OnDisconnect: func(int) {
			s := &d.vu.Stats
			log.WithFields(map[string]any{
				"frames_in": s.RxFrames.Load(), "frames_out": s.TxFrames.Load(),
				"dropped_in": s.RxDropped.Load(), "dropped_out": s.TxDropped.Load(),
				"lent": s.Lent.Load(), "lent_bytes": s.LentBytes.Load(),
				"ext": s.Ext.Load(), "ext_bytes": s.ExtBytes.Load(), "ext_copied_bytes": s.ExtCopiedBytes.Load(), "ext_capped": s.ExtCapped.Load(),
				"interrupts": s.Interrupts.Load(), "waits": s.Waits.Load(),
				"tx_interrupts": s.TxInterrupts.Load(), "tx_waits": s.TxWaits.Load(), "broken": s.Broken.Load(),
				"found_by_poll": s.FoundByPoll.Load(), "interrupts_resent": s.InterruptsResent.Load(),
			}).Info("client closed connection")
			if oneOff {
				d.endOneOff()
			}
		},
		OnRefused: func(pid int) {
			refusedLog.Log(log.WithField("pid", pid), logrus.InfoLevel, "another client is connected: discarding connection from PID %d", pid)
		},
	}
	if cfg.FD >= 0 {
		fd := cfg.FD
		if v := os.Getenv(qemuFDEnv); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("%s=%q: %v", qemuFDEnv, v, err)
			}
			fd = n
		}
		os.Unsetenv(qemuFDEnv)
		dev, err := vhostuser.FromFD(fd, vcfg)
		if err != nil {
			return err
		}
		log.Infof("Using connected socket from file descriptor %d", cfg.FD)
		d.vu, d.dev = dev, dev
		return nil
	}
	var ln *net.UnixListener
	var err error
	path := cfg.Socket
	if path == "" {
		ln, path, err = link.ListenUnixSocketDefault()
	} else {
		ln, err = link.ListenUnixSocket(path)
	}
	if err != nil {
		return err
	}
	dev := vhostuser.Listen(ln, path, vcfg)
	d.vu, d.vuLn, d.vuPath = dev, ln, path
	d.dev = dev
	log.Infof("UNIX domain socket bound at %s", path)
	log.Infof("You can now start qemu (>= 7.2) with:")
	log.Infof("    kvm ... -chardev socket,id=chr0,path=%s -netdev vhost-user,id=netdev0,chardev=chr0 -device virtio-net,netdev=netdev0 -object memory-backend-memfd,id=memfd0,share=on,size=$RAMSIZE -numa node,memdev=memfd0", path)
	return nil
}

// vhostUserStats adds the vhost-user link's counters to the statistics.
func (d *daemon) vhostUserStats(m map[string]any) {
	s := &d.vu.Stats
	m["clients"] = s.Connects.Load()
	m["refused"] = s.Refused.Load()
	m["rx_frames"] = s.RxFrames.Load()
	m["tx_frames"] = s.TxFrames.Load()
	m["rx_dropped"] = s.RxDropped.Load()
	m["link_dropped"] = s.TxDropped.Load()
	m["vu_lent_frames"] = s.Lent.Load()
	m["vu_lent_bytes"] = s.LentBytes.Load()
	m["vu_ext_frames"] = s.Ext.Load()
	m["vu_ext_bytes"] = s.ExtBytes.Load()
	m["vu_ext_copied_bytes"] = s.ExtCopiedBytes.Load()
	m["vu_ext_capped"] = s.ExtCapped.Load()
	m["vu_interrupts"] = s.Interrupts.Load()
	m["vu_waits"] = s.Waits.Load()
	m["vu_tx_interrupts"] = s.TxInterrupts.Load()
	m["vu_tx_waits"] = s.TxWaits.Load()
	m["vu_broken"] = s.Broken.Load()
	m["vu_found_by_poll"] = s.FoundByPoll.Load()
	m["vu_interrupts_resent"] = s.InterruptsResent.Load()
}
