package netcfg

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors/nat"
	"github.com/gopasta/gopasta/internal/nbsys"
)

// Following the host's address
//
// The guest is given the host's address once, at start, and keeps it: a
// guest cannot be told that its address changed. But --map-guest-addr
// (podman's host.containers.internal) promises "the host", and the host's
// address does change under a long-lived container: a laptop moves to
// another network, DHCP hands out a new lease, a VPN comes up. pasta goes
// on leading the alias to the address that is gone, and the host becomes
// unreachable from the container until it is restarted (podman #24970,
// #19405). gopasta listens to the kernel's address notifications and,
// when the address the alias leads to is no longer the host's, moves the
// alias to one the host has: the template interface's first, else any
// global one. Flows already open keep their sockets; new ones go to the
// new address. If the old address comes back, the alias returns to it.

// HostAddrFollower moves the NAT's alias of the host's own address along
// with the host's addresses (theory above).
type HostAddrFollower struct {
	nat        *nat.NAT
	log        logrus.FieldLogger
	ifname     [2]string     // template interface, IPv4 and IPv6
	orig, cur  [2]netip.Addr // the guest's address; where the alias leads now
	follow     [2]bool
	local      [2]bool         // orig is not the host's (local mode)
	h          *netlink.Handle // Run's, once it started (see Close)
	sub        *os.File        // the notification socket
	refreshErr error

	mu      sync.Mutex
	running bool // Run started: it closes h on its way out
	closed  bool
}

// FollowHostAddrs prepares a HostAddrFollower for what Resolve found. It
// returns nil, nil when there is nothing to follow: the addresses were
// given on the command line. In local mode (the host had no usable
// address or route at start) the guest's address is not the host's, and
// the alias leads nowhere until the host has an address: then it leads
// there. Call it in the host's network namespace: its sockets stay there.
func FollowHostAddrs(host *Host, nat *nat.NAT, log logrus.FieldLogger) (*HostAddrFollower, error) {
	f := &HostAddrFollower{nat: nat, log: log, ifname: [2]string{host.If4, host.If6}}
	f.orig[0], f.orig[1] = nat.HostAddrs()
	f.cur = f.orig
	f.follow[0] = !host.UserAddr4 && f.orig[0].IsValid()
	f.follow[1] = !host.UserAddr6 && f.orig[1].IsValid()
	f.local[0] = !slices.ContainsFunc(host.Addrs4, func(p netip.Prefix) bool { return p.Addr() == f.orig[0] })
	f.local[1] = !slices.ContainsFunc(host.Addrs6, func(p netip.Prefix) bool { return p.Addr() == f.orig[1] })
	if !f.follow[0] && !f.follow[1] {
		return nil, nil
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK,
			Groups: unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR})
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("netlink address notifications: %w", err)
	}
	f.h, f.sub = h, os.NewFile(uintptr(fd), "netlink-addr")
	return f, nil
}

// Close stops the follower: Run returns (at once if it has not started)
// and the sockets are released. It may be called at any time, more than
// once, from any goroutine. It closes only the notification socket, which
// ends Run's wait; the netlink handle is Run's from its start, and closing
// it under a dump in progress made the exit of every short command-mode
// run a race with a warning ("use of closed file").
func (f *HostAddrFollower) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	f.closed = true
	f.sub.Close()
	if !f.running {
		f.h.Close()
	}
}

// stopped reports whether Close was called.
func (f *HostAddrFollower) stopped() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// Run follows the host's addresses until ctx is done or Close is called,
// and closes the follower's sockets before it returns.
func (f *HostAddrFollower) Run(ctx context.Context) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.running = true
	f.mu.Unlock()
	defer f.h.Close() // last: after Close, so nothing uses it any more
	defer f.Close()
	stop := context.AfterFunc(ctx, f.Close)
	defer stop()
	rc, err := f.sub.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 16<<10)
	// The notifications themselves are not parsed: any of them (or a
	// lost batch, ENOBUFS) means "look again", and a look is one dump.
	drain := func(fd uintptr) bool {
		got := false
		for {
			_, err := nbsys.Read(int(fd), buf)
			switch err {
			case 0, unix.ENOBUFS:
				got = true
			case unix.EINTR:
			default: // EAGAIN
				return got
			}
		}
	}
	drained := func(fd uintptr) bool { drain(fd); return true }
	// One look before any notification: in local mode the host may
	// already have an address for the alias (just no default route).
	f.refresh()
	for {
		if err := rc.Read(drain); err != nil {
			// Closed by Close (a raw read says "use of closed file",
			// which is not os.ErrClosed): an orderly stop.
			if ctx.Err() == nil && !f.stopped() && !errors.Is(err, os.ErrClosed) {
				f.log.WithError(err).Warn("host address notifications stopped")
			}
			return
		}
		// A change comes in steps (a DHCP client removes the old lease,
		// then adds the new one): let them settle, so that the alias
		// moves once and not through "no address" first.
		select {
		case <-ctx.Done():
			return
		case <-time.After(settleTime):
		}
		if rc.Read(drained) != nil {
			return
		}
		f.refresh()
	}
}

// settleTime is how long the follower waits after a notification before
// it looks at the host's addresses.
const settleTime = 100 * time.Millisecond

// refresh looks at the host's addresses and moves the alias if needed.
func (f *HostAddrFollower) refresh() {
	have, err := f.list()
	if err != nil {
		if f.refreshErr == nil {
			f.log.WithError(err).Warn("cannot list the host's addresses")
		}
		f.refreshErr = err
		return
	}
	f.refreshErr = nil
	next := f.cur
	for i, is6 := range []bool{false, true} {
		if !f.follow[i] {
			continue
		}
		next[i] = pickHostAddr(f.orig[i], f.cur[i], f.ifname[i], is6, have)
		if next[i] == f.cur[i] {
			continue
		}
		fromLocal := f.local[i] && f.cur[i] == f.orig[i]
		switch {
		case fromLocal && !next[i].IsValid():
			// Local mode and still no address: nothing changed.
		case fromLocal || !f.cur[i].IsValid():
			f.log.Infof("the host has an address: the guest-address alias leads to %s", next[i])
		case !next[i].IsValid():
			f.log.Warnf("host address %s gone and the host has no other: the host is unreachable through the guest-address alias", f.cur[i])
		case next[i] == f.orig[i]:
			f.log.Infof("host address %s is back: the guest-address alias leads to it again", next[i])
		default:
			f.log.Infof("host address %s gone: the guest-address alias leads to %s now", f.cur[i], next[i])
		}
	}
	if next != f.cur {
		f.cur = next
		f.nat.SetHostAddrs(next[0], next[1])
	}
}

// hostAddr is one address the host has, with its interface.
type hostAddr struct {
	ifname string
	addr   netip.Addr
	flags  int
}

// list dumps the host's addresses.
func (f *HostAddrFollower) list() ([]hostAddr, error) {
	links, err := f.h.LinkList()
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	addrs, err := f.h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	out := make([]hostAddr, 0, len(addrs))
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		out = append(out, hostAddr{ifname: names[a.LinkIndex], addr: ip.Unmap(), flags: a.Flags})
	}
	return out, nil
}

// pickHostAddr decides where the alias leads, given the host's addresses:
// back to the guest's address orig if the host has it again, else the
// current choice cur while the host has it, else the first usable address
// of the template interface, else the first usable one anywhere. It
// returns the invalid Addr if the host has no usable address of the family.
func pickHostAddr(orig, cur netip.Addr, ifname string, is6 bool, have []hostAddr) netip.Addr {
	usable := func(a hostAddr) bool {
		return a.addr.Is6() == is6 && a.addr.IsGlobalUnicast() && !a.addr.IsLinkLocalUnicast() &&
			a.flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) == 0
	}
	fresh := func(a hostAddr) bool { return usable(a) && a.flags&unix.IFA_F_DEPRECATED == 0 }
	for _, want := range []netip.Addr{orig, cur} {
		for _, a := range have {
			if want.IsValid() && a.addr == want && usable(a) {
				return want
			}
		}
	}
	for _, ok := range []func(hostAddr) bool{
		func(a hostAddr) bool { return a.ifname == ifname && fresh(a) },
		fresh,
		usable,
	} {
		for _, a := range have {
			if ok(a) {
				return a.addr
			}
		}
	}
	return netip.Addr{}
}
