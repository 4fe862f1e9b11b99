package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/internal/netcfg"
	"github.com/gopasta/gopasta/link/netns"
)

// watchInterval is the check of the namespace file where inotify cannot
// see it go (a procfs path, no inotify): gopasta must notice within a
// second that it went away, so it looks four times a second (a stat(2),
// nothing more). Where inotify sees deletions (ip netns del and podman
// unmount and then unlink), the check only backs it up, for a namespace
// unmounted and never unlinked, and runs every watchBackup: every check is
// a wake-up of an otherwise idle daemon, and its stat(2) wakes the
// runtime's sysmon thread as well.
const (
	watchInterval = 250 * time.Millisecond
	watchBackup   = 10 * time.Second
)

// startWatchers starts the goroutines that end the daemon when its
// namespace file is deleted (--netns) or its target process exits (PID),
// unless --no-netns-quit. They belong to run and exit with the context.
func (d *daemon) startWatchers(wg *sync.WaitGroup) {
	if d.cfg.NoNetNSQuit {
		return
	}
	switch {
	case d.nsArg != "":
		wg.Add(1)
		go func() { defer wg.Done(); d.watchNetnsFile(d.nsArg) }()
	case d.cfg.TargetPID != 0:
		wg.Add(1)
		go func() { defer wg.Done(); d.watchPID(d.cfg.TargetPID) }()
	}
}

// prepareWatch sets up the inotify watch on the namespace file's
// directory during setup, while the daemon may still read that directory
// (--runas may take that away before watchNetnsFile runs).
func (d *daemon) prepareWatch() {
	if d.cfg.NoNetNSQuit || d.nsArg == "" {
		return
	}
	d.prepareInotify()
	if d.inotify != nil && !strings.HasPrefix(filepath.Clean(d.nsArg), "/proc/") {
		return
	}
	// Where inotify sees nothing (procfs) or could not be set up, the
	// periodic check is all there is, and after the sandbox's pivot_root
	// the path leads nowhere: it goes through a descriptor of the
	// directory instead. Only then: any directory descriptor is a way
	// into the host's filesystem for a compromised daemon where Landlock
	// does not close it (README, "Security").
	if fd, err := unix.Open(filepath.Dir(d.nsArg), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		d.nsDir = fd
		d.stops = append(d.stops, func() { unix.Close(fd) })
	}
}

// prepareInotify sets d.inotify up, if it can.
func (d *daemon) prepareInotify() {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		d.log.Debugf("inotify: %v", err)
		return
	}
	dir := filepath.Dir(d.nsArg)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_DELETE|unix.IN_DELETE_SELF|unix.IN_MOVED_FROM|unix.IN_UNMOUNT); err != nil {
		unix.Close(fd)
		d.log.Debugf("inotify on %s: %v", dir, err)
		return
	}
	d.inotify = os.NewFile(uintptr(fd), "inotify")
	d.stops = append(d.stops, func() { d.inotify.Close() })
}

// watchNetnsFile waits for the namespace file to disappear: the inotify
// watch on its directory reports its deletion at once (ip netns del and
// podman unmount the bind mount, then unlink the file), and a check every
// watchInterval catches what inotify cannot see (an unmount without
// unlink, a procfs path).
func (d *daemon) watchNetnsFile(path string) {
	gone := func() bool {
		// Only a missing or replaced file is gone. One the daemon may no
		// longer look at (nobody, a root-only directory) is left to
		// inotify.
		if d.jailed {
			// The pivot detached the old root with every mount in it,
			// the namespace file's bind mount included: through the
			// directory descriptor, only the file's removal still shows
			// (ip netns del and podman unmount, then remove it).
			// Without one, inotify alone watches.
			if d.nsDir < 0 {
				return false
			}
			var st unix.Stat_t
			err := unix.Fstatat(d.nsDir, filepath.Base(path), &st, unix.AT_SYMLINK_NOFOLLOW)
			return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ESRCH)
		}
		if err := unix.Access(path, unix.F_OK); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) {
			return false
		}
		return !netns.IsFD(path, d.nsFD)
	}
	deleted := make(chan struct{}, 1)
	interval := watchInterval
	if f := d.inotify; f != nil {
		if !strings.HasPrefix(filepath.Clean(path), "/proc/") {
			interval = watchBackup
		}
		go func() { // ends when teardown closes f
			if readInotify(f, filepath.Base(path)) {
				deleted <- struct{}{}
			}
		}()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	// The file may have gone between readiness and the watch (podman can
	// remove a namespace that fast): look once before waiting.
	for !gone() {
		select {
		case <-d.ctx.Done():
			return
		case <-deleted:
		case <-t.C:
			continue
		}
		break
	}
	d.log.Infof("namespace %s is gone, exiting", path)
	d.cancel(errQuit)
}

// readInotify reads events from f until one says that name, in the
// watched directory, was deleted or moved away, or that the directory
// itself went (true), or until f is closed (false).
func readInotify(f *os.File, name string) bool {
	buf := make([]byte, 4096)
	for {
		n, err := f.Read(buf)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return false
		}
		if netcfg.EachInotifyEvent(buf[:n], func(ev *unix.InotifyEvent, evName string) bool {
			return ev.Mask&(unix.IN_DELETE_SELF|unix.IN_UNMOUNT) != 0 ||
				ev.Mask&(unix.IN_DELETE|unix.IN_MOVED_FROM) != 0 && evName == name
		}) {
			return true
		}
	}
}

// watchPID waits for the target process to exit, through a pidfd (it
// becomes readable then), or by polling where pidfd_open is missing.
func (d *daemon) watchPID(pid int) {
	gone := func() {
		d.log.Infof("process %d is gone, exiting", pid)
		d.cancel(errQuit)
	}
	// A pidfd waits in the runtime's poller, without a wake-up until the
	// process exits; closing it on shutdown ends the wait.
	fd, err := unix.PidfdOpen(pid, 0)
	if err == nil {
		if err = unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
		}
	}
	if err == nil {
		f := os.NewFile(uintptr(fd), "pidfd")
		defer f.Close()
		stop := context.AfterFunc(d.ctx, func() { f.Close() })
		defer stop()
		if rc, err := f.SyscallConn(); err == nil {
			first := true
			// Readable means exited; the first call only starts the wait.
			err = rc.Read(func(uintptr) bool { ok := !first; first = false; return ok })
			if err == nil {
				gone()
			}
			return
		}
	} else {
		d.log.Debugf("pidfd_open(%d): %v, polling", pid, err)
	}
	t := time.NewTicker(watchInterval / 2)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		if unix.Kill(pid, 0) == unix.ESRCH {
			gone()
			return
		}
	}
}
