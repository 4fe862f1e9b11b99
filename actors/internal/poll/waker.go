package poll

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// Waker turns readiness of a non-blocking socket into a value on a channel,
// so that an actor can select on its inbox, its timers and its socket at
// once. Go cannot select on a file descriptor; the runtime poller can wait
// for one, so a small goroutine does that waiting on the actor's behalf.
//
// The protocol is: the actor does its I/O non-blocking until EAGAIN, then
// calls Arm; the next readiness edge after that (or one that arrived since
// the last wait) sends one value on C. Spurious wakeups are possible and
// harmless; lost ones are not: the runtime poller forgets edges that arrived
// before its wait is prepared (RawConn resets the readiness flag), so the
// first look is a zero-timeout poll(2) of the socket itself, which catches
// readiness that arrived between the owner's EAGAIN and this wait.
//
// The goroutine belongs to the Waker and exits when the socket is closed (the
// pending wait fails) or Stop is called.
type Waker struct {
	// C receives a value when the socket became ready after Arm.
	C <-chan struct{}

	c     chan struct{}
	arm   chan struct{}
	stop  chan struct{}
	armed bool
}

// NewReadWaker returns a Waker for readability of rc.
func NewReadWaker(rc syscall.RawConn) *Waker {
	return newWaker(rc.Read, unix.POLLIN|unix.POLLRDHUP)
}

// NewWriteWaker returns a Waker for writability of rc.
func NewWriteWaker(rc syscall.RawConn) *Waker { return newWaker(rc.Write, unix.POLLOUT) }

func newWaker(wait func(func(uintptr) bool) error, events int16) *Waker {
	w := &Waker{c: make(chan struct{}, 1), arm: make(chan struct{}, 1), stop: make(chan struct{})}
	w.C = w.c
	go w.run(wait, events)
	return w
}

func (w *Waker) run(wait func(func(uintptr) bool) error, events int16) {
	pfd := make([]unix.PollFd, 1)
	// One closure for the Waker's life: a fresh one per wait would be an
	// allocation per wakeup.
	var first bool
	ready := func(fd uintptr) bool {
		if first {
			first = false
			pfd[0] = unix.PollFd{Fd: int32(fd), Events: events}
			n, _ := unix.Poll(pfd, 0)
			return n > 0 // not ready yet: let the poller wait
		}
		return true
	}
	for {
		select {
		case <-w.arm:
		case <-w.stop:
			return
		}
		first = true
		// An error is reported as readiness too, and the goroutine goes
		// on: the runtime answers a bare EPOLLERR (an error queued on the
		// socket while nothing else is ready) with "not pollable" until the
		// next event, and only the owner's I/O (reading the error queue)
		// clears that. A closed socket also fails the wait; its owner stops
		// the Waker right after closing, so this never spins.
		_ = wait(ready)
		select {
		case w.c <- struct{}{}:
		default:
		}
	}
}

// Arm asks for one notification on C at the next readiness. Arming an armed
// Waker does nothing. Call it only from the actor that owns the Waker.
func (w *Waker) Arm() {
	if w.armed {
		return
	}
	w.armed = true
	w.arm <- struct{}{}
}

// Fired must be called by the owner after it received from C, before it may
// Arm again.
func (w *Waker) Fired() { w.armed = false }

// Stop ends the goroutine if it is not waiting; closing the socket ends a
// pending wait. Call it once, from the owner, after closing the socket.
func (w *Waker) Stop() { close(w.stop) }
