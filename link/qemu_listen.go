package link

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// qemuSocketMax bounds the search for a free default socket path, as passt's
// UNIX_SOCK_MAX does.
const qemuSocketMax = 64

// qemuSocketPattern is the default socket path, numbered from 1.
const qemuSocketPattern = "/tmp/gopasta_%d.socket"

// QemuListener is the UNIX socket QEMU connects to in passt mode. It only
// accepts; the one-client-at-a-time policy belongs to the caller (see
// ReconnectingDevice, which implements it).
type QemuListener struct {
	ln   *net.UnixListener
	path string
}

// DefaultQemuSocketPath returns the first /tmp/gopasta_N.socket, N = 1..64,
// that nobody listens on and that is ours to take: a path that does not
// exist, or a stale socket file of ours left behind by a dead process
// (which ListenQemu will replace). A stale socket of another user, which
// we could not remove from /tmp, and anything that is not a socket are
// skipped.
func DefaultQemuSocketPath() (string, error) {
	return defaultSocketPath(qemuSocketPattern, qemuSocketMax)
}

// ListenQemuDefault listens on the first /tmp/gopasta_N.socket it can
// have (see DefaultQemuSocketPath), going on to N+1 when binding one
// fails: another process may take a path between the check and the bind.
func ListenQemuDefault() (*QemuListener, error) {
	return listenFirst(qemuSocketPattern, qemuSocketMax)
}

func defaultSocketPath(pattern string, max int) (string, error) {
	for i := 1; i <= max; i++ {
		p := fmt.Sprintf(pattern, i)
		if ok, _ := qemuPathReusable(p); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("no free socket path among "+pattern+" .. %d", 1, max)
}

func listenFirst(pattern string, max int) (*QemuListener, error) {
	ln, p, err := listenFirstUnix(pattern, max)
	if err != nil {
		return nil, err
	}
	return &QemuListener{ln: ln, path: p}, nil
}

// ListenUnixSocketDefault is ListenQemuDefault for a link that speaks
// another protocol on the socket (vhost-user): the bare listener and its
// path.
func ListenUnixSocketDefault() (*net.UnixListener, string, error) {
	return listenFirstUnix(qemuSocketPattern, qemuSocketMax)
}

func listenFirstUnix(pattern string, max int) (*net.UnixListener, string, error) {
	for i := 1; i <= max; i++ {
		p := fmt.Sprintf(pattern, i)
		if ok, _ := qemuPathReusable(p); !ok {
			continue
		}
		if ln, err := ListenUnixSocket(p); err == nil {
			return ln, p, nil
		}
	}
	return nil, "", fmt.Errorf("no free socket path among "+pattern+" .. %d", 1, max)
}

// qemuPathReusable is qemuPathFree for the default search, which also
// leaves alone a stale socket that is not ours: removing it from a sticky
// directory fails for another user's, and even root has no business
// taking it.
func qemuPathReusable(path string) (bool, error) {
	free, err := qemuPathFree(path)
	if !free {
		return false, err
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return false, fmt.Errorf("%s is a stale socket of UID %d", path, st.Uid)
	}
	return true, nil
}

// qemuPathFree reports whether path can be bound after removing a stale
// socket: nothing is there, or a socket nobody accepts on. Anything else
// (a live listener, a regular file, a directory) is not free, and err says
// why.
func qemuPathFree(path string) (bool, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return false, fmt.Errorf("%s exists and is not a socket", path)
	}
	// Probe like a client would. ECONNREFUSED means the file is a leftover
	// of a process that is gone; connecting successfully, or anything
	// else, means someone may be using it.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
	switch {
	case err == nil, errors.Is(err, unix.EAGAIN):
		return false, fmt.Errorf("socket path %s already in use", path)
	case errors.Is(err, unix.ECONNREFUSED), errors.Is(err, unix.ENOENT):
		return true, nil
	default:
		return false, fmt.Errorf("socket path %s: %w", path, err)
	}
}

// ListenQemu binds and listens on the UNIX socket path (use
// DefaultQemuSocketPath if the user gave none). A stale socket file that
// nobody listens on is removed first; a live one is an error. The socket
// file is removed again by Close.
func ListenQemu(path string) (*QemuListener, error) {
	ln, err := ListenUnixSocket(path)
	if err != nil {
		return nil, err
	}
	return &QemuListener{ln: ln, path: path}, nil
}

// ListenUnixSocket binds and listens on path as ListenQemu does, and
// returns the bare listener (which removes the file when closed), for a
// link that speaks another protocol on the socket: vhost-user.
func ListenUnixSocket(path string) (*net.UnixListener, error) {
	free, err := qemuPathFree(path)
	if !free {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("UNIX socket bind: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	return ln, nil
}

// Path is the socket's path.
func (l *QemuListener) Path() string { return l.path }

// Accept waits for the next client and returns it as a device the caller
// owns. It returns ctx.Err() when ctx is done and ErrClosed after Close.
// Accept must not be called from more than one goroutine at a time.
func (l *QemuListener) Accept(ctx context.Context) (*QemuDevice, error) {
	for {
		// The listener has no context support: a deadline in the past
		// wakes a blocked AcceptUnix. A deadline left over from an
		// earlier, cancelled call is cleared by the retry below.
		stop := context.AfterFunc(ctx, func() { l.ln.SetDeadline(time.Unix(1, 0)) })
		c, err := l.ln.AcceptUnix()
		stop()
		if ctx.Err() != nil {
			if c != nil {
				c.Close()
			}
			return nil, ctx.Err()
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				l.ln.SetDeadline(time.Time{})
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return nil, ErrClosed
			}
			return nil, fmt.Errorf("accept on %s: %w", l.path, err)
		}
		return NewQemuDevice(c)
	}
}

// Close stops listening and removes the socket file. Connections already
// accepted are not affected.
func (l *QemuListener) Close() error {
	return l.ln.Close()
}

// KeepFileOnClose makes Close leave the socket file in place: a sandboxed
// daemon can no longer reach the path, and whoever removes it instead
// (the daemon's cleaner process) must not race with a failing unlink.
func (l *QemuListener) KeepFileOnClose() { l.ln.SetUnlinkOnClose(false) }

// QemuCommandHint returns the QEMU options that connect a VM to the socket
// at path, for the line passt-mode prints at start-up.
func QemuCommandHint(path string) string {
	return "-netdev stream,id=s,server=off,addr.type=unix,addr.path=" + path +
		" -device virtio-net-pci,netdev=s"
}
