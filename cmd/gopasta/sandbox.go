package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/sandbox"
)

// The sandbox, theory of operation.
//
// gopasta does everything that needs a privilege or a path during setup:
// it opens the tap or the QEMU socket, configures the namespace, binds the
// forwarded ports, starts the namespace worker thread that creates
// namespace-side sockets later (actors/fwd_ns.go), opens the log, pcap and
// /proc files, writes the PID file and starts the command. What it does
// afterwards (host sockets for the guest's flows, splicing, the "auto"
// rescans) needs nothing more, so once setup is done, and before it
// reports readiness, the daemon gives up (package sandbox):
//
//   - its user, if it is root in the initial user namespace: it becomes
//     --runas's user, or nobody as pasta does. Root in another user
//     namespace (rootless podman, command mode) stays that namespace's
//     root, which has no privilege outside it, and loses its capabilities;
//   - every capability on every thread, but CAP_NET_BIND_SERVICE where
//     "auto" may have to bind a port below
//     net.ipv4.ip_unprivileged_port_start after setup. Unlike pasta it
//     keeps no CAP_SYS_ADMIN: the namespace worker entered the namespace
//     during setup and stays there, so nothing needs setns(2) later;
//   - the right to gain privileges (no_new_privs) and to be ptraced or
//     dumped by its user (PR_SET_DUMPABLE 0);
//   - every system call outside sandbox's allowlist (seccomp).
//
// --no-sandbox skips all of it but --runas, for debugging only.

// nobody is the user pasta becomes when started as root.
const nobody = "nobody"

// sandbox applies everything above but the seccomp filter, which comes
// last (seal), once the daemon has also detached its stdio.
func (d *daemon) sandbox() error {
	cfg := d.cfg
	p := sandbox.Privileges{KeepBindService: mayBindLowPorts(cfg)}
	spec := cfg.RunAs
	if spec == "" && os.Geteuid() == 0 && initUserNS() && !cfg.NoSandbox {
		spec = nobody
	}
	if spec != "" && os.Geteuid() == 0 {
		uid, gid, err := lookupRunAs(spec)
		if err != nil {
			if spec != nobody {
				return fmt.Errorf("--runas %s: %v", spec, err)
			}
			// No passwd entry: nobody's usual numbers, as pasta does.
			uid, gid = 65534, 65534
		}
		p.ChangeUser, p.UID, p.GID = uid != 0, uid, gid
	}
	if cfg.NoSandbox {
		if !p.ChangeUser {
			return nil
		}
		// --runas alone: the user changes, capabilities go with it.
		p.KeepBindService = false
		if _, err := sandbox.Drop(p); err != nil {
			return err
		}
		d.log.Infof("Running as UID %d, GID %d", p.UID, p.GID)
		return nil
	}
	if d.qemu != nil {
		c, err := startCleaner(d.qemu.Path(), d.mountNS) // cleaner.go
		if err != nil {
			return err
		}
		d.qemu.KeepFileOnClose()
		d.cleaner = c
	}
	// The resolv.conf follower goes on by descriptor (link/netcfg's
	// resolvroot.go), and Landlock lets it read its directories only.
	var readDirs []int
	defer func() {
		for _, fd := range readDirs {
			unix.Close(fd)
		}
	}()
	if d.resolv != nil {
		if d.mountNS {
			if err := d.resolv.KeepRoot(); err != nil {
				return err
			}
		}
		readDirs = d.resolv.ReadDirs()
	}
	switch {
	case d.mountNS:
		how, err := sandbox.Jail(cfg.ChrootFallback)
		if err != nil {
			return err
		}
		d.log.Debugf("filesystem: %s into an empty tmpfs", how)
		d.jailed = true
	case d.isolateErr != nil:
		d.log.Warnf("no mount namespace (%v): the filesystem stays visible to the daemon", d.isolateErr)
	default:
		d.log.Warn("no mount namespace (unprivileged, no user namespace to create it in): the filesystem stays visible to the daemon")
	}
	dropped, err := sandbox.Drop(p)
	if err != nil {
		return err
	}
	if err := sandbox.VerifyThreads(dropped); err != nil {
		return err
	}
	ll, err := sandbox.Landlock(readDirs, d.command)
	if err != nil {
		return err
	}
	if ll.ABI == 0 {
		d.log.Debug("no Landlock in this kernel: the empty root is the only filesystem wall")
	} else {
		d.log.Debugf("Landlock ABI %d: no filesystem access (but reading beneath %d resolv.conf directories)", ll.ABI, len(readDirs))
	}
	if p.ChangeUser {
		d.log.Infof("Running as UID %d, GID %d", p.UID, p.GID)
	}
	if dropped.KeptBindService {
		d.log.Debug("kept CAP_NET_BIND_SERVICE for ports below net.ipv4.ip_unprivileged_port_start")
	}
	return nil
}

// seal installs the seccomp filter: the last step before readiness.
func (d *daemon) seal() error {
	if d.cfg.NoSandbox {
		d.log.Warn("--no-sandbox: running with every privilege and system call setup had")
		return nil
	}
	mode := sandbox.ModePasta
	if d.cfg.Mode == conf.ModePasst {
		mode = sandbox.ModePasst
	}
	action := sandbox.Kill
	if d.cfg.SeccompDebug {
		action = sandbox.Errno
	}
	return sandbox.Seccomp(mode, action)
}

// mayBindLowPorts reports whether the daemon may have to bind a port below
// net.ipv4.ip_unprivileged_port_start after setup: only "auto" forwarding
// binds listeners then (the guest's flows use host sockets bound to port
// 0).
func mayBindLowPorts(cfg *conf.Config) bool {
	auto := false
	for _, l := range [][]conf.PortSpec{cfg.TCPPorts, cfg.UDPPorts, cfg.TCPNSPorts, cfg.UDPNSPorts} {
		for _, s := range l {
			auto = auto || s.Auto
		}
	}
	if !auto {
		return false
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		return true
	}
	n, err := strconv.Atoi(string(bytes.TrimSpace(b)))
	return err != nil || n > 0
}

// initUserNS reports whether the daemon runs in the initial user
// namespace, whose root is the machine's root: its uid_map maps all of
// the 32-bit range onto itself.
func initUserNS() bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false
	}
	f := bytes.Fields(b)
	return len(f) == 3 && string(f[0]) == "0" && string(f[1]) == "0" && string(f[2]) == "4294967295"
}
