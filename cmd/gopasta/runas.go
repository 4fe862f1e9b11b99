package main

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
)

// --runas, theory of operation.
//
// gopasta does everything that needs root during setup: it opens the tap
// or the QEMU socket, configures the namespace, binds the forwarded ports,
// writes the PID file and starts the command. What it does afterwards
// (host sockets for the guest's flows, splicing, the "auto" rescans) needs
// no privilege, so a daemon started as root with --runas USER[:GROUP]
// becomes that user once setup is done and before it reports readiness:
// the process that parses every frame the guest sends no longer has root's
// files and capabilities to lose.
//
// Costs, which is why it is not the default as it is for pasta (which
// becomes nobody unless told otherwise): ports below 1024 that "auto"
// finds after setup cannot be bound any more (each is logged once; pasta
// keeps CAP_NET_BIND_SERVICE, which a cgo build cannot keep on every
// thread), a guest's UDP flow from such a port leaves from another one,
// and ICMP echo needs the user's group in net.ipv4.ping_group_range.

// dropPrivileges becomes --runas's user and group, if given and running
// as root; "0" (or "root") stays.
func (d *daemon) dropPrivileges() error {
	if d.cfg.RunAs == "" || os.Geteuid() != 0 {
		return nil
	}
	uid, gid, err := lookupRunAs(d.cfg.RunAs)
	if err != nil {
		return fmt.Errorf("--runas %s: %v", d.cfg.RunAs, err)
	}
	if uid == 0 {
		return nil
	}
	if d.ctl != nil {
		// The control socket is for the user the daemon becomes.
		if err := d.ctl.Chown(uid, gid); err != nil {
			return fmt.Errorf("--runas %s: control socket: %v", d.cfg.RunAs, err)
		}
	}
	// With cgo these are glibc's, which apply them to every thread; without
	// it the Go runtime does the same.
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("--runas %s: setgroups: %v", d.cfg.RunAs, err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("--runas %s: setgid(%d): %v", d.cfg.RunAs, gid, err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("--runas %s: setuid(%d): %v", d.cfg.RunAs, uid, err)
	}
	d.log.Infof("Running as UID %d, GID %d", uid, gid)
	return nil
}

// lookupRunAs resolves UID[:GID] or LOGIN[:GROUP]. Without a group, a
// known user's primary group is taken, else the GID equal to the UID.
func lookupRunAs(spec string) (uid, gid int, err error) {
	us, gs, hasGroup := strings.Cut(spec, ":")
	primary := ""
	if n, err := strconv.ParseUint(us, 10, 32); err == nil {
		uid = int(n)
		if u, err := user.LookupId(us); err == nil {
			primary = u.Gid
		} else {
			primary = us
		}
	} else {
		u, err := user.Lookup(us)
		if err != nil {
			return 0, 0, err
		}
		if uid, err = strconv.Atoi(u.Uid); err != nil {
			return 0, 0, err
		}
		primary = u.Gid
	}
	if !hasGroup {
		gs = primary
	}
	if n, err := strconv.ParseUint(gs, 10, 32); err == nil {
		return uid, int(n), nil
	}
	g, err := user.LookupGroup(gs)
	if err != nil {
		return 0, 0, err
	}
	gid, err = strconv.Atoi(g.Gid)
	return uid, gid, err
}
