package forward

import (
	"errors"
	"runtime"

	"golang.org/x/sys/unix"
)

// Theory of operation: sockets in the namespace
//
// A socket belongs, for its whole life, to the network namespace of the
// thread that created it; everything else (bind, connect, accept, splice)
// may then happen on any thread. The splice path and the -T/-U listeners
// need sockets inside the namespace, and need them at connection rate, so
// a thread per socket (link/netns.Do) would cost a clone and a setns each
// time. nsWorker is one goroutine, locked to one thread that entered the
// namespace once, serving requests from a channel. The thread is never
// switched back and dies with the goroutine, so no other goroutine ever
// runs in the namespace by accident.
//
// Only socket(2) and open(2) of /proc/thread-self/net files run there;
// requests are tiny, and the channel handoff costs a few microseconds.

// nsWorker runs small functions on a thread inside a network namespace.
type nsWorker struct {
	req  chan func()
	done chan struct{}
}

// errNoNamespace is returned by a worker that could not enter the
// namespace or has stopped.
var errNoNamespace = errors.New("namespace worker not running")

// newNSWorker starts a worker inside the namespace nsFD.
func newNSWorker(nsFD int) (*nsWorker, error) {
	w := &nsWorker{req: make(chan func()), done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the runtime destroys the thread when this
		// goroutine returns.
		if err := unix.Setns(nsFD, unix.CLONE_NEWNET); err != nil {
			started <- err
			return
		}
		started <- nil
		for {
			select {
			case fn := <-w.req:
				fn()
			case <-w.done:
				return
			}
		}
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return w, nil
}

// do runs fn in the namespace and waits for it.
func (w *nsWorker) do(fn func()) error {
	if w == nil {
		return errNoNamespace
	}
	finished := make(chan struct{})
	select {
	case w.req <- func() { fn(); close(finished) }:
	case <-w.done:
		return errNoNamespace
	}
	<-finished
	return nil
}

// socket creates a non-blocking, close-on-exec socket in the namespace.
func (w *nsWorker) socket(family, typ, proto int) (int, error) {
	fd, err := -1, error(nil)
	if e := w.do(func() {
		fd, err = unix.Socket(family, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	}); e != nil {
		return -1, e
	}
	return fd, err
}

// open opens a file in the namespace's view (for /proc/thread-self/net).
func (w *nsWorker) open(path string) (int, error) {
	fd, err := -1, error(nil)
	if e := w.do(func() {
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}); e != nil {
		return -1, e
	}
	return fd, err
}

// stop ends the worker's goroutine (and its thread).
func (w *nsWorker) stop() {
	if w != nil {
		close(w.done)
	}
}
