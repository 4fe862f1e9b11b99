package main

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/link/netns"
)

// watchInterval is the fallback check of the namespace file and the target
// PID: gopasta must notice within a second that either went away, so the
// fallback looks four times a second (a stat(2), nothing more).
const watchInterval = 250 * time.Millisecond

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
	if fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC); err == nil {
		_, err = unix.InotifyAddWatch(fd, filepath.Dir(path), unix.IN_DELETE|unix.IN_DELETE_SELF|unix.IN_MOVED_FROM|unix.IN_UNMOUNT)
		if err != nil {
			unix.Close(fd)
			d.log.Debugf("inotify on %s: %v", filepath.Dir(path), err)
		} else {
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
	t := time.NewTicker(watchInterval)
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
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		d.log.Debugf("pidfd_open(%d): %v, polling", pid, err)
		fd = -1
	} else {
		defer unix.Close(fd)
	}
	for d.ctx.Err() == nil {
		exited := false
		if fd >= 0 {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(pfd, 250)
			exited = err == nil && n > 0
		} else {
			time.Sleep(watchInterval / 2)
			exited = unix.Kill(pid, 0) == unix.ESRCH
		}
		if exited {
			d.log.Infof("process %d is gone, exiting", pid)
			d.cancel(errQuit)
			return
		}
	}
}
