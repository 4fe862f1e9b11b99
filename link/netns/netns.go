// Package netns runs code inside another network namespace without moving
// the whole process there.
//
// # Theory of operation
//
// A network namespace is a property of a thread, not of a process: setns(2)
// with CLONE_NEWNET and unshare(2) with CLONE_NEWNET change only the calling
// thread. Go multiplexes goroutines over threads, so gopasta pins a goroutine
// to its thread (runtime.LockOSThread) for exactly as long as the thread is
// in the foreign namespace, and only the syscalls that must happen there run
// on it: opening the tap device (the kernel creates it in the namespace of
// the thread that opens /dev/net/tun), creating netlink sockets (they talk
// to the namespace they were created in, for their whole life), and forking
// a command (a child inherits the namespace of the thread that forked it).
// Host sockets are created anywhere else and so live in the namespace the
// process started in, which is the whole point of pasta.
//
// Each switch runs on a fresh goroutine that ends while still locked, so
// the Go runtime destroys its thread instead of returning a thread in the
// wrong namespace to its pool. For the same reason netlink sockets are
// created with netlink.NewHandle inside Do, never with NewHandleAt, which
// switches back and ignores a failure to do so.
//
// Joining a user namespace is different: setns(CLONE_NEWUSER) is refused to
// a multi-threaded process, and a Go program has several threads before main
// runs. That is done before the runtime starts, by the C constructor in the
// nsenter subpackage; see its documentation.
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// RunDir is where named network namespaces live, as iproute2 keeps them.
const RunDir = "/run/netns"

// ResolvePath turns a --netns argument into a path: a bare NAME means
// RunDir/NAME, anything with a slash is a path.
func ResolvePath(arg string) string {
	if arg == "" || strings.ContainsRune(arg, '/') {
		return arg
	}
	return filepath.Join(RunDir, arg)
}

// Open opens a namespace file (a bind mount under /run/netns, or
// /proc/PID/ns/net) and checks that it is a network namespace. The
// descriptor is close-on-exec; the caller closes it.
func Open(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	if err := checkType(fd, unix.CLONE_NEWNET); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("%s: %w", path, err)
	}
	return fd, nil
}

// checkType verifies with NS_GET_NSTYPE that fd is a namespace of the kind
// want. A plain file (a netns bind mount that was unmounted) fails here.
func checkType(fd int, want int) error {
	t, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil {
		if errors.Is(err, unix.ENOTTY) {
			return errors.New("not a namespace file")
		}
		return fmt.Errorf("NS_GET_NSTYPE: %w", err)
	}
	if t != want {
		return errors.New("not a network namespace")
	}
	return nil
}

// Do runs fn on a thread that is inside the network namespace nsFD. fn
// must not start goroutines that expect to be in the namespace: only fn's
// own goroutine is.
//
// The thread is never switched back: it ends with fn's goroutine. Switching
// back is not always possible (a daemon that is root only in its own user
// namespace has no rights over the host's network namespace), and a thread
// left in the wrong namespace must never return to the scheduler, where it
// would silently create host sockets in the guest. A thread per call is
// cheap for the handful of calls setup makes.
func Do(nsFD int, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the runtime destroys the thread when this
		// goroutine returns.
		if err := unix.Setns(nsFD, unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// NewUnshared creates a new network namespace and returns a descriptor for
// it. The namespace lives as long as a descriptor or a process refers to it.
// The thread that created it is thrown away, so no other goroutine ever runs
// in the new namespace by accident.
func NewUnshared() (int, error) {
	type result struct {
		fd  int
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: this thread ends with the goroutine.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- result{-1, fmt.Errorf("create network namespace: %w", err)}
			return
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- result{-1, fmt.Errorf("open new network namespace: %w", err)}
			return
		}
		done <- result{fd, nil}
	}()
	r := <-done
	return r.fd, r.err
}

// SameFile reports whether two namespace files name the same namespace.
func SameFile(a, b string) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		return false, err
	}
	if err := unix.Stat(b, &sb); err != nil {
		return false, err
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}

// IsFD reports whether the file at path still is the namespace nsFD refers
// to. It is false once the path is gone or was unmounted (then it is an
// empty regular file again), which is how a deleted namespace shows.
func IsFD(path string, nsFD int) bool {
	var sp, sf unix.Stat_t
	if unix.Stat(path, &sp) != nil || unix.Fstat(nsFD, &sf) != nil {
		return false
	}
	return sp.Dev == sf.Dev && sp.Ino == sf.Ino
}

// Exists reports whether a namespace file exists, for error messages.
func Exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
