package poll

import (
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/internal/nbsys"
)

// # Socket readiness: one edge-triggered epoll per protocol
//
// A TCP actor waits in a select on its inbox, its timer and its socket. Go
// cannot select on a descriptor, so something must turn readiness into a
// channel value. A goroutine per socket waiting in the runtime poller
// (with a level-triggered poll(2) before each wait, since the runtime
// forgets edges) would do it, and is wrong for TCP in two ways. A socket whose receive queue holds data the guest has not yet
// acknowledged is always readable, though there is nothing new to peek:
// every Arm would fire at once, and an idle request/response flow spins
// until the guest's ACK arrives. And two goroutines, two channels and an
// os.File per connection are what a connect/request/response/close
// benchmark pays for on every connection.
//
// So all TCP flow sockets of a daemon share one epoll instance, registered
// edge-triggered once, when the socket is created. An edge is a new event
// (data arrived, room in the send buffer, a FIN, an error), which is
// exactly what the actor wants to hear about; data it has already peeked
// raises none. One goroutine harvests the epoll instance, itself waiting
// in the runtime's poller (an epoll descriptor is pollable), and for each
// event records it in the socket's pending bits and, if the actor armed
// that kind, sends on the socket's wake channel (capacity 1, so bursts
// coalesce and the harvester never blocks).
//
// No edge is lost: the actor clears a pending bit before the I/O that may
// end in EAGAIN, and arms after it. An event after the clear sets the bit
// again; the harvester sets pending before it reads armed and the actor
// sets armed before it reads pending, so (the atomics being sequentially
// consistent) at least one of them sees the other and the actor is woken.
// A stale pending bit costs one spurious wakeup, never a missed one.
//
// Sockets are named in the kernel's event by a slot index and a generation
// (Go pointers cannot be kept by the kernel), so an event harvested just
// before a flow closed finds its slot empty or reused and is dropped.
//
// Spliced sockets are registered too, for hang-ups only (splice/tcp.go):
// the pumps wait for data in the runtime's own poller, but it does not say
// whether a FIN came, and that is what lets a pump skip a read.
//
// ICMP echo sockets have a Poller of their own, their protocol's, for
// readable and error events. A datagram socket needs no pending bits: its
// actor reads until EAGAIN, so every event is worth a wakeup, and a
// wakeup that stops early wakes the actor again itself (icmp.go).

// Events is what every TCP flow socket is registered for.
const Events = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

// pollee is what a slot of the poller holds: a TCP flow's socket, a
// spliced socket watched for hang-ups, or an ICMP echo flow.
type pollee interface {
	// notify records events (the harvester calls it with mu held) and
	// reports whether the owner is to hear of them.
	Notify(events uint32) bool
	// woken tells the owner, after mu is released.
	Woken()
}

// Poller is the epoll instance of one daemon's TCP flows and its
// harvester, owned by its TCP protocol (tcp.Protocol).
type Poller struct {
	file *os.File // the epoll descriptor, in the runtime's poller
	rc   syscall.RawConn

	ready []pollee // deliver's list of sockets to act on; the harvester's

	mu     sync.Mutex // guards the rest, and epfd against use after close
	epfd   int
	closed bool
	slots  []pollee
	gens   []uint32
	free   []int32

	done      chan struct{} // closed when run has returned
	closeOnce sync.Once
}

// New returns a running poller. Its harvester goroutine is owned by the
// caller (a daemon's TCP protocol): it runs until Close.
func New() (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	// Non-blocking, so that os.NewFile hands it to the runtime's poller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, err
	}
	p := &Poller{file: os.NewFile(uintptr(epfd), "tcp-epoll"), epfd: epfd, ready: make([]pollee, 0, 256), done: make(chan struct{})}
	if p.rc, err = p.file.SyscallConn(); err != nil {
		p.file.Close()
		return nil, err
	}
	go p.run()
	return p, nil
}

// run harvests events until the poller is closed.
func (p *Poller) run() {
	defer close(p.done)
	evs := make([]unix.EpollEvent, 256)
	// harvest never reports success, so run stays inside rc.Read: leaving
	// and re-entering it would reset the descriptor's recorded readiness
	// and force an epoll_wait that finds nothing before every wait. Inside
	// it, an event that arrives while deliver runs is an edge the poller
	// records, and the next wait returns at once.
	harvest := func(fd uintptr) bool {
		for {
			n, err := nbsys.EpollWait(int(fd), evs)
			if err == unix.EINTR {
				continue
			}
			if n <= 0 {
				return false // nothing ready: wait in the runtime's poller
			}
			p.deliver(evs[:n])
			if n < len(evs) {
				return false // drained
			}
		}
	}
	for {
		if err := p.rc.Read(harvest); err != nil {
			return // closed
		}
	}
}

// deliver records the events of one epoll_wait and, for each socket whose
// owner waits for what happened, tells the owner: a flow runs inline
// (tcp/inline.go) or is woken. The owners run after mu is released: a flow
// that closes its socket takes mu to remove it.
func (p *Poller) deliver(evs []unix.EpollEvent) {
	ready := p.ready[:0]
	p.mu.Lock()
	for i := range evs {
		e := &evs[i]
		slot := int(e.Fd)
		if slot < 0 || slot >= len(p.slots) || p.gens[slot] != uint32(e.Pad) {
			continue
		}
		if s := p.slots[slot]; s != nil && s.Notify(e.Events) {
			ready = append(ready, s)
		}
	}
	p.mu.Unlock()
	for i, s := range ready {
		s.Woken()
		ready[i] = nil
	}
	p.ready = ready[:0]
}

// add registers fd, owned by x, for events and returns its slot.
func (p *Poller) Add(fd int, x pollee, events uint32) (int32, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return -1, unix.EBADF
	}
	var slot int32
	if n := len(p.free); n > 0 {
		slot = p.free[n-1]
		p.free = p.free[:n-1]
	} else {
		slot = int32(len(p.slots))
		p.slots = append(p.slots, nil)
		p.gens = append(p.gens, 0)
	}
	p.gens[slot]++
	ev := unix.EpollEvent{Events: events, Fd: slot, Pad: int32(p.gens[slot])}
	if e := nbsys.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); e != 0 {
		p.free = append(p.free, slot)
		return -1, os.NewSyscallError("epoll_ctl", e)
	}
	p.slots[slot] = x
	return slot, nil
}

// remove unregisters fd from *slot and sets it to -1; it must be called
// before fd is closed, and does nothing if *slot is already -1.
func (p *Poller) Remove(fd int, slot *int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if *slot < 0 {
		return
	}
	if !p.closed {
		_ = nbsys.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	}
	p.slots[*slot] = nil
	p.gens[*slot]++
	p.free = append(p.free, *slot)
	*slot = -1
}

// Close stops the harvester and waits for it to return; the sockets still
// registered hear of nothing more (Add fails, Remove only forgets). It may
// be called more than once, but not from a Pollee's Woken: the harvester
// would wait for itself.
func (p *Poller) Close() {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.file.Close()
	})
	<-p.done
}

// Running reports whether the harvester still runs (for tests: a closed
// poller's goroutine has returned).
func (p *Poller) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}
