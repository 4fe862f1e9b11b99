package netcfg

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors/nat"
)

// Following the host's resolver
//
// --dns-forward leads the guest's DNS queries to the host's resolver,
// which, unless --dns-host says otherwise, is the first nameserver of each
// family in the host's /etc/resolv.conf. pasta reads the file once. But the
// file changes under a long-lived container: a laptop joins another
// network and NetworkManager or resolvconf writes the new network's
// servers, a VPN comes up with its own. A gopasta that kept the old
// address would forward every query of every container to a resolver that
// is no longer reachable (or no longer the right one), until the
// container is restarted; podman's containers all use --dns-forward.
//
// So the daemon watches the file with inotify (no wake-up at all while
// nothing changes) and, when it changes, points the forward addresses at
// the new first nameservers (actors.NAT.SetDNSHosts). Three ways of
// changing it are seen, and each needs its own watch:
//
//   - rewritten in place (an editor, `echo >`, or the file bind-mounted
//     over /etc/resolv.conf, as `ip netns exec` does): a watch on the
//     file's inode sees it closed after writing;
//   - replaced by a rename (NetworkManager, resolvconf): a watch on its
//     directory sees the new file moved in under the name;
//   - a symbolic link to a managed file (/run/systemd/resolve/...,
//     /run/resolvconf/resolv.conf), itself replaced by renames in its own
//     directory: that directory is watched too, under the target's name.
//
// Every change re-resolves the link and re-adds the watches, so a link
// that is re-pointed, or an inode that is replaced, is followed from then
// on. A family the new file has no nameserver for keeps its resolver (a
// file caught half-written, or a network without IPv6 DNS: an old server
// is no worse than none). Flows already open keep their sockets; a stub
// resolver uses a new source port, and so a new flow, for every query.
// Replies from the previous resolver still appear from the forward
// address (NAT.Inbound), so queries in flight during a change are not
// answered from an unexpected source.

// What the watches report: everything that can change what reading the
// file returns, in its directory (under its name) and on its inode.
const (
	resolvDirMask  = unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM
	resolvFileMask = unix.IN_CLOSE_WRITE | unix.IN_MOVE_SELF | unix.IN_DELETE_SELF | unix.IN_ATTRIB
)

// ResolvFollower keeps the NAT's DNS hosts on the host resolv.conf's first
// nameservers (theory above).
type ResolvFollower struct {
	path string
	nat  *nat.NAT
	log  logrus.FieldLogger
	f    *os.File         // the inotify descriptor, in the runtime's poller
	fd   int              // f's descriptor
	dirs map[int][]string // watch descriptor of a directory -> the names in it that matter
	// root is the host's root directory (O_PATH) once the daemon's own
	// root is an empty one (KeepRoot), else -1: paths are then resolved
	// through it (resolvroot.go).
	root      int
	closeRoot sync.Once
}

// FollowResolvConf returns a follower of path for nat, or nil, nil when
// there is nothing to follow: the resolver was given (userDNSHost), or no
// address is forwarded to it.
func FollowResolvConf(path string, userDNSHost bool, nat *nat.NAT, log logrus.FieldLogger) (*ResolvFollower, error) {
	if userDNSHost || (!nat.DNSForward4.IsValid() && !nat.DNSForward6.IsValid()) {
		return nil, nil
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("inotify_init1", err)
	}
	r := &ResolvFollower{path: path, nat: nat, log: log, fd: fd, f: os.NewFile(uintptr(fd), "inotify"), dirs: map[int][]string{}, root: -1}
	if !r.watch() {
		r.f.Close()
		return nil, errors.New("cannot watch " + path + " or its directory")
	}
	return r, nil
}

// watch (re-)adds the watches on the file, its directory and, for a
// symbolic link, its target's directory. It reports whether any was set.
func (r *ResolvFollower) watch() bool {
	ok := false
	add := func(dir, name string) {
		if wd, err := r.addWatch(dir, resolvDirMask|unix.IN_ONLYDIR); err == nil {
			if !slices.Contains(r.dirs[wd], name) {
				r.dirs[wd] = append(r.dirs[wd], name)
			}
			ok = true
		}
	}
	add(filepath.Dir(r.path), filepath.Base(r.path))
	target, err := r.evalSymlinks(r.path)
	if err == nil && target != r.path {
		add(filepath.Dir(target), filepath.Base(target))
	}
	// The file's own inode, through the link (a missing file is
	// watched again when its directory sees it come).
	file := r.path
	if r.root >= 0 && err == nil {
		file = target // no link is followed from inside the empty root
	}
	if _, err := r.addWatch(file, resolvFileMask); err == nil {
		ok = true
	}
	return ok
}

// Run follows the file until ctx is done or the follower is closed.
func (r *ResolvFollower) Run(ctx context.Context) {
	stop := context.AfterFunc(ctx, r.Close)
	defer stop()
	buf := make([]byte, 4096)
	for {
		n, err := r.f.Read(buf)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		changed := false
		EachInotifyEvent(buf[:n], func(ev *unix.InotifyEvent, name string) bool {
			if names, isDir := r.dirs[int(ev.Wd)]; isDir {
				changed = changed || slices.Contains(names, name) || ev.Mask&unix.IN_IGNORED != 0
			} else {
				changed = changed || ev.Mask&unix.IN_IGNORED == 0
			}
			return false
		})
		if changed {
			r.reload()
		}
	}
}

// Close ends Run.
func (r *ResolvFollower) Close() {
	r.f.Close()
	r.closeRoot.Do(func() {
		if r.root >= 0 {
			unix.Close(r.root)
		}
	})
}

// reload reads the file again and moves the forward addresses to its first
// nameservers, where they changed.
func (r *ResolvFollower) reload() {
	r.watch()
	servers := r.read()
	cur4, cur6 := r.nat.DNSHosts()
	new4, new6 := cur4, cur6
	var have4, have6 bool
	for _, a := range servers {
		switch {
		case a.Is4() && !have4:
			new4, have4 = a, true
		case a.Is6() && !have6:
			new6, have6 = a, true
		}
	}
	if !r.nat.DNSForward4.IsValid() {
		new4 = cur4
	}
	if !r.nat.DNSForward6.IsValid() {
		new6 = cur6
	}
	if new4 == cur4 && new6 == cur6 {
		return
	}
	r.nat.SetDNSHosts(new4, new6)
	r.log.Infof("host resolver changed (%s): DNS forwarding now leads to %s (was %s)",
		r.path, addrList(new4, new6), addrList(cur4, cur6))
}

func addrList(as ...netip.Addr) string {
	var s []string
	for _, a := range as {
		if a.IsValid() {
			s = append(s, a.String())
		}
	}
	if len(s) == 0 {
		return "nothing"
	}
	return strings.Join(s, ", ")
}

// EachInotifyEvent calls fn for each event in b, the result of reading an
// inotify descriptor, with the event's name (empty if none), until fn
// returns true; it reports whether one did.
func EachInotifyEvent(b []byte, fn func(ev *unix.InotifyEvent, name string) bool) bool {
	for len(b) >= unix.SizeofInotifyEvent {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&b[0]))
		l := unix.SizeofInotifyEvent + int(ev.Len)
		if l > len(b) {
			break
		}
		if fn(ev, strings.TrimRight(string(b[unix.SizeofInotifyEvent:l]), "\x00")) {
			return true
		}
		b = b[l:]
	}
	return false
}
