package link

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/songgao/water"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/internal/nbsys"
	"github.com/gopasta/gopasta/link/netns"
)

// TapTxQueueLen is the transmit queue length gopasta gives its tap. The
// kernel's default of 1000 frames is what the guest's stack may queue
// towards us before it drops; at MTU 1500 that throttles bulk transfers to a
// fraction of a Gbit/s.
const TapTxQueueLen = 10000

// Tap is the tap device of pasta mode: the guest end of the link is a
// network interface inside the target namespace, and every read or write on
// its file descriptor is one whole Ethernet frame (IFF_NO_PI: no packet
// information header in front of it).
//
// Reads and writes go through the Go runtime's poller, so a blocked
// ReadBatch or WriteBatch costs no thread and Close wakes it.
type Tap struct {
	f    *os.File
	rc   syscall.RawConn
	name string
	mtu  int

	// closed is set before the file is closed: the poller's "use of closed
	// file" error is not exported, so this is how it is told apart.
	closed atomic.Bool

	// Skipped counts frames WriteBatch did not write because the tap cannot
	// carry them (wrong size, interface down, kernel out of buffers).
	Skipped atomic.Uint64

	// The poller callbacks are bound once, in OpenTap, and keep their
	// state here: a closure per call would be a heap allocation per batch.
	// The read fields belong to the reader, the write fields to the
	// writer (one goroutine each).
	readFn, loopFn, writeFn func(fd uintptr) bool
	rFrames                 []*Frame
	rn                      int
	rErr                    error
	rHandle                 func(n int) bool
	rStopped                bool
	wFrames                 []*Frame
	wi, wRetries            int
	wErr                    error
}

// OpenTap creates the tap device name inside the network namespace nsFD and
// returns it. mtu is the largest IP packet gopasta will write to it; OpenTap
// does not set the interface's MTU (link configuration does that, with
// --config-net), but it does raise the transmit queue length.
func OpenTap(name string, nsFD int, mtu int) (*Tap, error) {
	var ifce *water.Interface
	// water opens /dev/net/tun and issues TUNSETIFF; the kernel creates the
	// device in the namespace of the opening thread, so both run there.
	err := netns.Do(nsFD, func() error {
		var err error
		ifce, err = water.New(water.Config{
			DeviceType: water.TAP,
			// IFF_NO_PI is always set by water on Linux
			// (syscalls_linux.go: flags start as cIFFNOPI).
			PlatformSpecificParams: water.PlatformSpecificParams{Name: name, Persist: false, MultiQueue: false},
		})
		if err != nil {
			return err
		}
		// netlink's package functions open their socket in the
		// calling thread's namespace: this one.
		l, err := netlink.LinkByName(ifce.Name())
		if err == nil {
			err = netlink.LinkSetTxQLen(l, TapTxQueueLen)
		}
		if err != nil {
			ifce.Close()
			return fmt.Errorf("set txqueuelen: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create tap device %q: %w", name, err)
	}
	// water wraps its O_NONBLOCK descriptor in an *os.File, which registers
	// it with the runtime poller.
	f, ok := ifce.ReadWriteCloser.(*os.File)
	if !ok {
		ifce.Close()
		return nil, errors.New("tap: unexpected device type from water")
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("tap: %w", err)
	}
	t := &Tap{f: f, rc: rc, name: ifce.Name(), mtu: mtu}
	t.readFn, t.loopFn, t.writeFn = t.doRead, t.doLoop, t.doWrite
	return t, nil
}

// TapFromFD takes a tap device the caller opened (pasta's -F in pasta
// mode): fd must be a /dev/net/tun descriptor attached to a tap interface
// without packet information (IFF_TAP|IFF_NO_PI), the only framing gopasta
// reads and writes. The Tap owns fd from here, also on error. The
// interface's name comes from the kernel (TUNGETIFF).
func TapFromFD(fd int, mtu int) (*Tap, error) {
	ifr, err := unix.NewIfreq("")
	if err == nil {
		err = unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("file descriptor %d is not a tap device: %w", fd, err)
	}
	if flags := ifr.Uint16(); flags&(unix.IFF_TAP|unix.IFF_TUN) != unix.IFF_TAP || flags&unix.IFF_NO_PI == 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("file descriptor %d (%s) is not a tap device without packet information (IFF_TAP|IFF_NO_PI)", fd, ifr.Name())
	}
	// Non-blocking first: then os.NewFile registers it with the poller.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap file descriptor %d: %w", fd, err)
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "tap-"+ifr.Name())
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("tap: %w", err)
	}
	t := &Tap{f: f, rc: rc, name: ifr.Name(), mtu: mtu}
	t.readFn, t.loopFn, t.writeFn = t.doRead, t.doLoop, t.doWrite
	return t, nil
}

// Name is the interface name inside the namespace.
func (t *Tap) Name() string { return t.name }

// MTU implements Device.
func (t *Tap) MTU() int { return t.mtu }

// Close implements Device. It wakes a blocked ReadBatch or WriteBatch, which
// then return ErrClosed. The interface disappears with its last descriptor.
func (t *Tap) Close() error {
	if t.closed.Swap(true) {
		return nil
	}
	return t.f.Close()
}

// ReadBatch implements Device. The first read waits in the poller; once a
// frame has arrived the rest of the batch is whatever the kernel already has
// queued, taken with non-blocking reads until EAGAIN.
func (t *Tap) ReadBatch(frames []*Frame) (int, error) {
	t.rFrames, t.rn, t.rErr = frames, 0, nil
	err := t.rc.Read(t.readFn)
	n, rerr := t.rn, t.rErr
	t.rFrames = nil
	if n > 0 {
		// Frames first; a read error shows up again on the next call.
		return n, nil
	}
	return 0, t.readError(err, rerr)
}

// readError turns the poller's error (err) or the read's (rerr) into what
// ReadBatch and ReadLoop return.
func (t *Tap) readError(err, rerr error) error {
	switch {
	case err != nil:
		if t.closed.Load() || errors.Is(err, os.ErrClosed) {
			return ErrClosed
		}
		if err == os.ErrDeadlineExceeded {
			return err // not a failure: SetReadDeadline asked for it
		}
		return fmt.Errorf("tap %s: read: %w", t.name, err)
	case rerr == unix.EBADFD || rerr == unix.EBADF:
		// The interface went away with its namespace.
		return ErrClosed
	default:
		return fmt.Errorf("tap %s: read: %w", t.name, rerr)
	}
}

// ReadLoop reads batches into frames, as ReadBatch does, and calls handle
// with the number read after each, for as long as handle returns true. It
// returns nil when handle returns false, os.ErrDeadlineExceeded when the
// read deadline passes while it waits, and otherwise what ReadBatch would.
// handle owns frames[:n] while it runs and must leave every slot of frames
// holding a frame with a whole buffer for the next batch (it may replace
// slots).
//
// The point is to wait without leaving the poller's read loop: a
// ReadBatch that ended on EAGAIN must, on its next call, try a read that
// fails again before it may wait, because entering a read resets the
// descriptor's recorded readiness. Here the wait follows the EAGAIN
// directly, which saves a system call per batch: a quarter of the tap
// reads of a request/response exchange.
func (t *Tap) ReadLoop(frames []*Frame, handle func(n int) bool) error {
	t.rFrames, t.rHandle, t.rErr, t.rStopped = frames, handle, nil, false
	err := t.rc.Read(t.loopFn)
	rerr, stopped := t.rErr, t.rStopped
	t.rFrames, t.rHandle = nil, nil
	if stopped && rerr == nil {
		return nil
	}
	return t.readError(err, rerr)
}

// doLoop is ReadLoop's poller callback.
func (t *Tap) doLoop(fd uintptr) bool {
	for {
		n, empty, err := t.fill(fd, t.rFrames)
		if err != 0 {
			t.rErr = err
			if n > 0 {
				t.rStopped = !t.rHandle(n)
			}
			return true
		}
		if n > 0 && !t.rHandle(n) {
			t.rStopped = true
			return true
		}
		if empty {
			return false // wait in the poller, readiness intact
		}
	}
}

// doRead is ReadBatch's poller callback.
func (t *Tap) doRead(fd uintptr) bool {
	n, empty, err := t.fill(fd, t.rFrames)
	t.rn = n
	if err != 0 {
		t.rErr = err
		return true
	}
	return !empty || n > 0 // nothing yet: let the poller wait
}

// fill reads frames into the batch until it is full, the queue is empty
// (EAGAIN) or a read fails, and returns how many it read.
func (t *Tap) fill(fd uintptr, frames []*Frame) (n int, empty bool, err unix.Errno) {
	for n < len(frames) {
		buf := frames[n].Data[:cap(frames[n].Data)]
		m, e := nbsys.Read(int(fd), buf)
		switch e {
		case 0:
			if m > 0 {
				frames[n].Data = buf[:m]
				n++
			}
		case unix.EINTR:
		case unix.EAGAIN:
			return n, true, 0
		default:
			return n, false, e
		}
	}
	return n, false, 0
}

// SetReadDeadline makes a ReadBatch that is waiting, or will wait, for a
// frame at or after time d return os.ErrDeadlineExceeded instead; the zero
// time means no deadline. The dispatcher uses it to do periodic work in the
// goroutine that reads, without a second goroutine and a hand-over per
// batch.
func (t *Tap) SetReadDeadline(d time.Time) error { return t.f.SetReadDeadline(d) }

// ENOBUFS is not something the poller can wait for: the kernel failed an
// allocation. Retry a few times with a short pause before giving a frame up.
const (
	noBufRetries = 6
	noBufPause   = 100 * time.Microsecond
)

// WriteBatch implements Device. A tap takes one frame per write(2). When the
// kernel says EAGAIN the write waits in the poller for the descriptor to
// become writable again and then resumes with the same frame, so a burst
// is delayed, never cut short.
func (t *Tap) WriteBatch(frames []*Frame) error {
	t.wFrames, t.wi, t.wRetries, t.wErr = frames, 0, 0, nil
	err := t.rc.Write(t.writeFn)
	werr := t.wErr
	t.wFrames = nil
	if err != nil {
		if t.closed.Load() || errors.Is(err, os.ErrClosed) {
			return ErrClosed
		}
		return fmt.Errorf("tap %s: write: %w", t.name, err)
	}
	if werr == unix.EBADFD || werr == unix.EBADF {
		return ErrClosed
	}
	if werr != nil {
		return fmt.Errorf("tap %s: write: %w", t.name, werr)
	}
	return nil
}

// doWrite is WriteBatch's poller callback.
func (t *Tap) doWrite(fd uintptr) bool {
	maxLen := 65535 + 14
	if t.mtu > 0 && t.mtu+14 < maxLen {
		maxLen = t.mtu + 14
	}
	frames := t.wFrames
	for t.wi < len(frames) {
		p := frames[t.wi].Data
		if len(p) < 14 || len(p) > maxLen {
			t.Skipped.Add(1)
			t.wi++
			continue
		}
		_, err := nbsys.Write(int(fd), p)
		switch err {
		case 0:
			t.wi, t.wRetries = t.wi+1, 0
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		case unix.ENOBUFS, unix.ENOMEM:
			if t.wRetries < noBufRetries {
				t.wRetries++
				time.Sleep(noBufPause << t.wRetries)
				continue
			}
			fallthrough
		case unix.EIO, unix.EINVAL, unix.EMSGSIZE:
			// EIO: the interface is down (the guest has not brought it
			// up yet). The frame is lost, the link is fine.
			t.Skipped.Add(1)
			t.wi, t.wRetries = t.wi+1, 0
		default:
			t.wErr = err
			return true
		}
	}
	return true
}
