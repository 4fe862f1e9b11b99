package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/cmd/gopasta/sandbox"
	"github.com/gopasta/gopasta/conf"
)

// The sandbox, theory of operation.
//
// gopasta does everything that needs a privilege or a path during setup:
// it opens the tap or the QEMU socket, configures the namespace, binds the
// forwarded ports, starts the namespace worker thread that creates
// namespace-side sockets later (actors/actors/forward/ns.go), opens the log, pcap and
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
	if d.ctl != nil && p.ChangeUser {
		if cfg.RunAs != "" {
			// The control socket is for the user the daemon becomes.
			if err := d.ctl.Chown(p.UID, p.GID); err != nil {
				return fmt.Errorf("control socket: %v", err)
			}
		} else {
			// Still root's, who started it (as with pasta).
			d.ctl.AllowUID(os.Geteuid())
		}
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
	var sockets []string
	if d.qemu != nil {
		sockets = append(sockets, d.qemu.Path())
	}
	if d.vuLn != nil {
		sockets = append(sockets, d.vuPath)
	}
	if d.ctl != nil {
		sockets = append(sockets, d.ctl.Path())
	}
	if len(sockets) > 0 {
		c, err := startCleaner(sockets, d.cleanerEnd, d.mountNS) // cleaner.go
		d.cleanerEnd = nil
		if err != nil {
			return err
		}
		if d.qemu != nil {
			d.qemu.KeepFileOnClose()
		}
		if d.vuLn != nil {
			d.vuLn.SetUnlinkOnClose(false)
		}
		if d.ctl != nil {
			d.ctl.KeepFileOnClose()
		}
		d.cleaner = c
	}
	// The resolv.conf follower goes on by descriptor (internal/netcfg's
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
	if cfg.ConfigFile != "" {
		// SIGHUP reads the --config file again (control.go).
		fds, err := d.keepConfigFile()
		if err != nil {
			return err
		}
		readDirs = append(readDirs, fds...)
	}
	switch {
	case d.mountNS:
		how, err := sandbox.Jail(cfg.ChrootFallback, d.pidNS)
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
	d.sandboxed = true
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
// net.ipv4.ip_unprivileged_port_start after setup: "auto" forwarding and
// rules changed at run time bind listeners then (the guest's flows use
// host sockets bound to port 0).
func mayBindLowPorts(cfg *conf.Config) bool {
	// Rules changed at run time (-c, SIGHUP) may bind any port.
	auto := cfg.ConfPath != "" || cfg.ConfigFile != ""
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

// keepConfigFile makes SIGHUP's reload (control.go) work once the root is
// the sandbox's empty one and the daemon perhaps nobody: conf.ReadFile
// reads the --config file through a descriptor of it opened now (which
// sees edits made in place, by whoever may write it), and, once that file
// has been replaced (renamed over, so unlinked), by its path in a copy of
// the host's mount tree, which the daemon's user must be able to read. It
// returns the file's directory for Landlock to allow reading beneath.
func (d *daemon) keepConfigFile() ([]int, error) {
	file := d.cfg.ConfigFile
	if !filepath.IsAbs(file) {
		file = filepath.Join(configDir, file)
	}
	kept, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("--config %s: %v", d.cfg.ConfigFile, err)
	}
	dir, err := unix.Open(filepath.Dir(file), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		kept.Close()
		return nil, fmt.Errorf("--config %s: %v", d.cfg.ConfigFile, err)
	}
	tree := -1
	if d.mountNS {
		tree, err = unix.OpenTree(unix.AT_FDCWD, "/", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
		if err != nil {
			kept.Close()
			unix.Close(dir)
			return nil, fmt.Errorf("keep the host's mount tree for --config: %v", err)
		}
	}
	conf.ReadFile = func(path string) ([]byte, error) {
		if path == file {
			if st, err := kept.Stat(); err == nil && st.Sys().(*syscall.Stat_t).Nlink > 0 {
				return io.ReadAll(io.NewSectionReader(kept, 0, 1<<30))
			}
		}
		if tree < 0 {
			return os.ReadFile(path)
		}
		fd, err := unix.Openat2(tree, strings.TrimLeft(filepath.Clean(path), "/"), &unix.OpenHow{
			Flags: unix.O_RDONLY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		f := os.NewFile(uintptr(fd), path)
		defer f.Close()
		return io.ReadAll(f)
	}
	return []int{dir}, nil
}
