package main

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Output files (-l log, -P pid, -p pcap, the developer's CPU profile),
// theory of operation.
//
// The daemon often runs as root, and its output paths are often in shared,
// world-writable directories (/tmp, /run/user/...). A path someone else
// prepared there must not make the daemon write where that someone wants:
// so every output file is opened once, during setup, before --runas drops
// privileges and before the daemon leaves its working directory, through
// openOutput:
//
//   - never through a symbolic link at the path itself (O_NOFOLLOW: a link
//     planted at /tmp/gopasta.pid pointing at /etc/shadow is refused, where
//     os.WriteFile would have truncated the target);
//   - close-on-exec, so that no -- COMMAND inherits it;
//   - created 0600: they hold the guest's traffic or the daemon's view of
//     it, which is its owner's business only (pasta creates all of them
//     so, the pid file included);
//   - a regular file that is already there is only taken if it is the
//     daemon's own (same owner) and has no other name (one link): cutting
//     or truncating it must not change a file someone else owns, or one
//     hard-linked from elsewhere. It is truncated only after those
//     checks, never at open.
//
// A path that is not a regular file (a FIFO for a live capture,
// /dev/stderr) is written as it is.
//
// A capture started at run time (gopasta ctl SOCKET pcap FILE) is opened
// the same way by the ctl client, as the user running it, and its
// descriptor handed to the daemon over the control socket, which opens
// no path after setup (conf/control/fdpass.go).

// openOutput opens path for writing as described above. trunc empties a
// regular file once it passed the checks.
func openOutput(path string, trunc bool) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s is a symbolic link, refusing to follow it", path)
		}
		return nil, err
	}
	f, err := checkOutput(fd, path, trunc)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return f, nil
}

// openOutputRW is openOutput for a file the daemon also reads (the log,
// whose oldest entries it drops), never truncated.
func openOutputRW(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s is a symbolic link, refusing to follow it", path)
		}
		return nil, err
	}
	f, err := checkOutput(fd, path, false)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return f, nil
}

// checkOutput applies openOutput's checks to the just-opened fd and wraps
// it.
func checkOutput(fd int, path string, trunc bool) (*os.File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG {
		if int(st.Uid) != os.Geteuid() {
			return nil, fmt.Errorf("%s belongs to UID %d, not to us (UID %d)", path, st.Uid, os.Geteuid())
		}
		if st.Nlink != 1 {
			return nil, fmt.Errorf("%s has %d links: another name would change with it", path, st.Nlink)
		}
		if trunc {
			if err := unix.Ftruncate(fd, 0); err != nil {
				return nil, err
			}
		}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// discardPIDFile removes the -P file that setup opened but, failing, never
// wrote: a daemon that did not start leaves no pid file behind. Only the
// file it opened goes, and only while still empty: if the path names
// another file by now, that one stays.
func (d *daemon) discardPIDFile() {
	f := d.pidFile
	if f == nil {
		return
	}
	d.pidFile = nil
	var opened, now unix.Stat_t
	if unix.Fstat(int(f.Fd()), &opened) == nil && unix.Lstat(d.cfg.PIDFile, &now) == nil &&
		opened.Dev == now.Dev && opened.Ino == now.Ino && opened.Mode&unix.S_IFMT == unix.S_IFREG && opened.Size == 0 {
		_ = os.Remove(d.cfg.PIDFile)
	}
	f.Close()
}
