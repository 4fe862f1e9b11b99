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

// watchNetnsFile waits for the namespace file to disappear: an inotify
// watch on its directory reports deletions at once (ip netns del and
// podman unmount the bind mount, then unlink the file), and a check every
// watchInterval catches what inotify cannot see (an unmount without unlink, a
// procfs path).
func (d *daemon) watchNetnsFile(path string) {
	gone := func() bool { return !netns.IsFD(path, d.nsFD) }
	events := make(chan struct{}, 1)
	interval := watchInterval
	if fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC); err == nil {
		_, err = unix.InotifyAddWatch(fd, filepath.Dir(path), unix.IN_DELETE|unix.IN_DELETE_SELF|unix.IN_MOVED_FROM|unix.IN_UNMOUNT)
		if err != nil {
			unix.Close(fd)
			d.log.Debugf("inotify on %s: %v", filepath.Dir(path), err)
		} else {
			if !strings.HasPrefix(filepath.Clean(path), "/proc/") {
				interval = watchBackup
			}
			f := os.NewFile(uintptr(fd), "inotify")
			defer f.Close() // ends the reader below
			go func() {
				buf := make([]byte, 4096)
				for {
					if _, err := f.Read(buf); err != nil && !errors.Is(err, unix.EINTR) {
						return
					}
					select {
					case events <- struct{}{}:
					default:
					}
				}
			}()
		}
	}
	// The file may have gone between readiness and the watch above (podman
	// can remove a namespace that fast): look once before waiting.
	events <- struct{}{}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-events:
		case <-t.C:
		}
		if gone() {
			d.log.Infof("namespace %s is gone, exiting", path)
			d.cancel(errQuit)
			return
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
