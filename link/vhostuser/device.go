package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/internal/nbsys"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// Config configures a Device. Every hook is optional.
type Config struct {
	// MTU is what MTU reports (0: link.QemuMTU).
	MTU int
	// OneOff ends the device (ErrClosed) once its first front end has
	// disconnected, like passt's -1.
	OneOff bool
	// Log receives protocol errors and life-cycle events (nil: the
	// standard logger).
	Log logrus.FieldLogger
	// OnConnect runs when a front end has connected, before any of its
	// frames is read; pid is the peer's (-1: unknown).
	OnConnect func(pid int)
	// OnDisconnect runs when the front end has gone and its state is
	// released.
	OnDisconnect func(pid int)
	// OnRefused runs for every front end turned away because another one
	// is connected.
	OnRefused func(pid int)
	// Copy makes Lend refuse, so that every frame to the guest is
	// copied from gopasta's buffers, and every frame from the guest is
	// copied whole into them (no link.Ext).
	Copy bool
}

// Stats counts what a Device did. All fields may be read at any time.
type Stats struct {
	// RxFrames counts frames read from the guest, RxDropped chains from the
	// guest that were not a frame (too short, too long).
	RxFrames, RxDropped atomic.Uint64
	// TxFrames counts frames written to the guest; TxDropped frames that
	// could not be (no running queue, bad size, too big for the buffers
	// of a guest without mergeable buffers).
	TxFrames, TxDropped atomic.Uint64
	// Lent counts frames written whose payload a producer read straight
	// into the guest's buffers (Lend); LentBytes their payload: bytes
	// not copied a second time.
	Lent, LentBytes atomic.Uint64
	// Ext counts frames from the guest whose payload stayed in guest
	// memory (link.Ext), ExtBytes that payload; ExtCopiedBytes the part
	// of it that was copied after all (Flatten): ExtBytes less
	// ExtCopiedBytes went to sockets straight from the guest's memory.
	Ext, ExtBytes, ExtCopiedBytes atomic.Uint64
	// ExtCapped counts TCP segments copied because flows held half the
	// transmit ring in guest memory already.
	ExtCapped atomic.Uint64
	// Interrupts counts call-fd notifications sent, Waits sleeps on a kick.
	Interrupts, Waits atomic.Uint64
	// TxInterrupts and TxWaits are the part of Interrupts and Waits on
	// the guest's receive queue: per frame written, they are what the
	// guest pays for being told of frames and what the writer loses
	// waiting for the guest's buffers.
	TxInterrupts, TxWaits atomic.Uint64
	// Connects counts front ends served, Refused those turned away,
	// Broken sessions stopped for a malformed ring.
	Connects, Refused, Broken atomic.Uint64
	// FoundByPoll counts sleeps on a kick that ended by polling (see
	// missed.go) and found chains the driver had not told us of: a
	// kick lost, or one still on its way from a descheduled vCPU;
	// InterruptsResent interrupts sent because the driver waited for
	// one it had not been sent.
	FoundByPoll, InterruptsResent atomic.Uint64
}

// Device is a vhost-user back end for virtio-net serving one front end
// (QEMU) at a time, as a link.Device: ReadBatch takes frames from the
// guest's transmit queue and WriteBatch puts them in its receive queue.
// See doc.go.
type Device struct {
	cfg  Config
	log  logrus.FieldLogger
	ln   *net.UnixListener // nil when serving a single inherited socket
	path string
	wg   sync.WaitGroup // the accept and serve goroutines

	// mu guards the session state below. The control goroutine takes it
	// to change anything; the data path holds it shared for a batch, so
	// memory is never unmapped, nor a ring moved, under its feet.
	mu       sync.RWMutex
	mem      *memTable
	vq       [numQueues]vring
	kick     [numQueues]*os.File
	kickRC   [numQueues]syscall.RawConn // kick's, for reads without the runtime's bookkeeping
	kickFD   [numQueues]int             // kick's descriptor (-1: none), for the poke
	call     [numQueues]int
	acked    uint64 // features the driver accepted
	protocol uint64 // protocol features the front end accepted
	hdrLen   int
	flags    byte          // virtio-net header flags on frames we write
	changed  chan struct{} // closed (and replaced) on every state change
	active   *net.UnixConn // the front end being served
	served   bool
	closed   bool

	// broken is set by the data path when the guest broke a ring: the
	// session is being torn down.
	broken atomic.Bool

	// Data-path scratch: rdChain/rdKick for ReadBatch's goroutine,
	// wrChain/wrKick for WriteBatch's.
	rdChain, wrChain *chain
	rdKick, wrKick   [8]byte
	kickFn           [numQueues]func(fd uintptr) bool // reads rdKick, wrKick: see wait
	rdPoll, wrPoll   backoff                          // missed.go
	pollFirst        time.Duration                    // missed.go

	// The reader's deadline (SetReadDeadline). rdlMu guards rdl and
	// rdWait and orders a wake-up against the reader arming its kick; it
	// comes after mu.
	rdlMu  sync.Mutex
	rdl    time.Time     // zero: none
	rdWait *os.File      // the kick ReadBatch sleeps on, or nil
	rdWake chan struct{} // (1) wakes a ReadBatch that sleeps with no kick

	// irqUsed is, per queue, the used index published at its last
	// interrupt (missed.go).
	irqUsed [numQueues]atomic.Uint32

	// Lending (lend.go). rxMu guards the receive ring's avail side and
	// the fields below; it comes after mu.
	rxMu      sync.Mutex
	rxEpoch   uint64   // advanced when the receive queue stops or moves
	stash     []uint16 // chains taken and given back unused
	lent      int      // chains held by loans
	rxReturns uint64   // stash additions, for the writer's wait
	rxWaiting bool     // the writer sleeps for buffers: poke it
	lendChain *chain   // Lend's scratch
	poke      [8]byte  // what Release writes to our own kick

	// Guest memory lent on the transmit side (txext.go). txMu
	// serialises the transmit queue's used side (fill, flush) between
	// the reader and Ext releases; it comes after mu. txEpoch changes
	// under mu held exclusively.
	txMu     sync.Mutex
	txEpoch  uint64
	txIrqDue bool // txIrq

	// Guest memory the data path lets others write into or read from
	// (drain): draining makes Lend refuse and the reader copy; filling
	// counts loans not yet committed (the producer's recvmsg may still
	// write), extOut Exts not yet released (a sendmsg may still read).
	draining        atomic.Bool
	filling, extOut atomic.Int64

	// Stats counts frames and events.
	Stats Stats
}

func newDevice(cfg Config) *Device {
	if cfg.MTU == 0 {
		cfg.MTU = link.QemuMTU
	}
	d := &Device{cfg: cfg, log: cfg.Log, changed: make(chan struct{}),
		rdChain: newChain(), wrChain: newChain(), lendChain: newChain(), poke: [8]byte{1},
		rdWake: make(chan struct{}, 1)}
	if d.log == nil {
		d.log = logrus.StandardLogger()
	}
	d.call = [numQueues]int{-1, -1}
	d.kickFD = [numQueues]int{-1, -1}
	d.kickFn[txQ] = func(fd uintptr) bool { _, e := nbsys.Read(int(fd), d.rdKick[:]); return e != unix.EAGAIN }
	d.kickFn[rxQ] = func(fd uintptr) bool { _, e := nbsys.Read(int(fd), d.wrKick[:]); return e != unix.EAGAIN }
	d.pollFirst = pollFirst
	d.hdrLen = virtioNetHdrSize
	return d
}

// Listen serves front ends connecting to the UNIX socket ln, which the
// device takes over (Close closes it).
func Listen(ln *net.UnixListener, path string, cfg Config) *Device {
	d := newDevice(cfg)
	d.ln, d.path = ln, path
	d.wg.Add(1)
	go d.acceptLoop()
	return d
}

// FromFD serves the front end on fd, a connected UNIX stream socket
// inherited from our parent (--fd). The device takes ownership of fd;
// when that front end leaves, the device is closed.
func FromFD(fd int, cfg Config) (*Device, error) {
	uc, err := link.InheritedUnixStream(fd, "vhost-user")
	if err != nil {
		return nil, err
	}
	cfg.OneOff = true
	d := newDevice(cfg)
	d.active, d.served = uc, true
	d.wg.Add(1)
	go d.serve(uc)
	return d, nil
}

// Path is the listening socket's path ("" with FromFD).
func (d *Device) Path() string { return d.path }

// PeerPID returns the process id of the connected front end, or -1.
func PeerPID(c *net.UnixConn) int {
	pid := -1
	if rc, err := c.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			if uc, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
				pid = int(uc.Pid)
			}
		})
	}
	return pid
}

// acceptLoop accepts front ends until Close: one is served at a time, any
// other is refused at once so that it fails instead of hanging.
func (d *Device) acceptLoop() {
	defer d.wg.Done()
	for {
		c, err := d.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			d.log.WithError(err).Warn("accept on the vhost-user socket failed")
			time.Sleep(100 * time.Millisecond)
			continue
		}
		d.mu.Lock()
		if d.closed || d.active != nil || (d.cfg.OneOff && d.served) {
			closed := d.closed
			d.mu.Unlock()
			pid := PeerPID(c)
			c.Close()
			if closed {
				return
			}
			d.Stats.Refused.Add(1)
			if d.cfg.OnRefused != nil {
				d.cfg.OnRefused(pid)
			}
			continue
		}
		d.active, d.served = c, true
		d.wg.Add(1)
		d.mu.Unlock()
		go d.serve(c)
	}
}

// serve runs the control protocol with one front end until it leaves or
// breaks the protocol, then releases everything it set up.
func (d *Device) serve(c *net.UnixConn) {
	defer d.wg.Done()
	pid := PeerPID(c)
	d.Stats.Connects.Add(1)
	d.broken.Store(false)
	if d.cfg.OnConnect != nil {
		d.cfg.OnConnect(pid)
	}
	k := newConn(c)
	m := &msg{}
	for {
		err := k.read(m)
		if err == nil {
			err = d.handle(k, m)
			m.closeFDs()
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !d.broken.Load() {
				d.log.WithError(err).Error("vhost-user: closing the connection")
			}
			break
		}
	}
	c.Close()
	d.mu.Lock()
	d.resetLocked()
	d.active = nil
	d.wakeLocked()
	d.mu.Unlock()
	// Before a one-off device reports ErrClosed: its owner takes the end
	// of the session for an orderly one (cmd: exit 0), not a broken link.
	// Meanwhile the data path finds no front end and waits, and the
	// accept loop refuses newcomers (served).
	if d.cfg.OnDisconnect != nil {
		d.cfg.OnDisconnect(pid)
	}
	if d.cfg.OneOff {
		d.mu.Lock()
		d.closed = true
		if d.ln != nil {
			d.ln.Close()
		}
		d.wakeLocked()
		d.mu.Unlock()
	}
}

// resetLocked forgets everything the front end set up: the rings stop,
// descriptors are closed, memory unmapped. mu held.
func (d *Device) resetLocked() {
	d.rxStopLocked(false)
	d.txStopLocked()
	for i := range d.vq {
		d.closeKickLocked(i)
		if d.call[i] >= 0 {
			unix.Close(d.call[i])
			d.call[i] = -1
		}
		d.vq[i] = vring{}
	}
	d.mem.release()
	d.mem = nil
	// Until SET_FEATURES says otherwise, the virtio 1 header.
	d.acked, d.protocol, d.hdrLen, d.flags = 0, 0, virtioNetHdrSize, 0
}

func (d *Device) closeKickLocked(i int) {
	if d.kick[i] != nil {
		d.kick[i].Close() // wakes a data-path goroutine waiting on it
		d.kick[i], d.kickRC[i], d.kickFD[i] = nil, nil, -1
	}
}

// wakeLocked wakes data-path goroutines waiting for a kick or a state
// change, so they look at the new state. mu held.
func (d *Device) wakeLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
	for _, k := range d.kick {
		if k != nil {
			_ = k.SetReadDeadline(time.Unix(1, 0))
		}
	}
}

// fail stops a session whose guest broke a ring: the error is logged once
// and the control connection closed, which makes QEMU see the back end
// gone (and a -1 daemon exit). Called by the data path, mu held shared.
func (d *Device) fail(err error) {
	if !d.broken.CompareAndSwap(false, true) {
		return
	}
	d.Stats.Broken.Add(1)
	d.log.WithError(err).Error("vhost-user: guest broke a virtqueue, stopping the device")
	if d.active != nil {
		d.active.Close()
	}
}

// Close implements link.Device: it stops accepting, disconnects the front
// end and waits for the device's goroutines.
func (d *Device) Close() error {
	d.mu.Lock()
	if !d.closed {
		d.closed = true
		d.wakeLocked()
	}
	if d.active != nil {
		d.active.Close()
	}
	d.mu.Unlock()
	if d.ln != nil {
		d.ln.Close()
	}
	d.wg.Wait()
	return nil
}

// MTU implements link.Device.
func (d *Device) MTU() int { return d.cfg.MTU }

// Connected reports whether a front end is connected.
func (d *Device) Connected() bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.active != nil
}

// running reports whether queue i may be used now. mu held.
func (d *Device) running(i int) bool {
	return d.vq[i].ready() && !d.broken.Load()
}

// wait sleeps until queue i is kicked, the state changes, or its polling
// interval (p, see missed.go) has passed, and reports whether the interval
// passed. It is called with mu held shared and releases it. The kick's
// deadline is set while mu is held, so a wakeLocked after the release
// cannot be missed.
func (d *Device) wait(i int, p *backoff) (polled bool) {
	k, rc, ch := d.kick[i], d.kickRC[i], d.changed
	dl := p.next(d.pollFirst)
	var start time.Time
	if k != nil {
		start = time.Now()
		at := start.Add(dl)
		if i == txQ {
			// Armed under rdlMu: a SetReadDeadline that comes after
			// this sees rdWait and moves the kick's deadline itself.
			d.rdlMu.Lock()
			if !d.rdl.IsZero() && d.rdl.Before(at) {
				at = d.rdl
			}
			_ = k.SetReadDeadline(at)
			d.rdWait = k
			d.rdlMu.Unlock()
		} else {
			_ = k.SetReadDeadline(at)
		}
	}
	d.mu.RUnlock()
	d.Stats.Waits.Add(1)
	if i == rxQ {
		d.Stats.TxWaits.Add(1)
	}
	if k == nil {
		if i == txQ {
			d.sleepNoKick(ch)
		} else {
			<-ch
		}
		return false
	}
	// The read itself is a raw system call (see the nbsys package: through
	// the runtime's it would wake sysmon, as every kick would); the wait
	// for the kick is the runtime poller's, deadline and all.
	err := rc.Read(d.kickFn[i])
	if i == txQ {
		d.rdlMu.Lock()
		d.rdWait = nil
		d.rdlMu.Unlock()
	}
	// A wakeLocked or the reader's deadline (an interval cut short) is
	// no poll: it neither counts nor backs off.
	polled = err != nil && time.Since(start) >= dl
	if err == nil || polled {
		p.after(err == nil, dl)
	}
	return polled
}

// sleepNoKick is the reader's wait while its queue has no kick (no front
// end, or one setting up): until the state changes, its deadline passes
// or SetReadDeadline wakes it.
func (d *Device) sleepNoKick(changed chan struct{}) {
	d.rdlMu.Lock()
	dl := d.rdl
	d.rdlMu.Unlock()
	var expired <-chan time.Time
	if !dl.IsZero() {
		t := time.NewTimer(time.Until(dl))
		defer t.Stop()
		expired = t.C
	}
	select {
	case <-changed:
	case <-d.rdWake:
	case <-expired:
	}
}

// SetReadDeadline makes ReadBatch return os.ErrDeadlineExceeded once t
// has passed with nothing to read; the zero t means no deadline. It lets
// the dispatcher read the device on its own goroutine and still wake for
// its timers, and a t not after now wakes a ReadBatch that sleeps (the
// dispatcher's wake). The kick's own deadline stays the polling interval
// (missed.go) when that is earlier.
func (d *Device) SetReadDeadline(t time.Time) error {
	d.rdlMu.Lock()
	d.rdl = t
	if !t.IsZero() && !t.After(time.Now()) {
		if d.rdWait != nil {
			_ = d.rdWait.SetReadDeadline(time.Unix(1, 0))
		}
		select {
		case d.rdWake <- struct{}{}:
		default:
		}
	}
	d.rdlMu.Unlock()
	return nil
}

// rdExpired reports whether the reader's deadline has passed.
func (d *Device) rdExpired() bool {
	d.rdlMu.Lock()
	dl := d.rdl
	d.rdlMu.Unlock()
	return !dl.IsZero() && !time.Now().Before(dl)
}

// interrupt signals queue i's call descriptor. mu held shared.
func (d *Device) interrupt(i int) {
	if fd := d.call[i]; fd >= 0 {
		var one = [8]byte{1}
		d.noteInterrupt(i)
		// Raw (the nbsys package): an eventfd write does not block.
		_, _ = nbsys.Write(fd, one[:])
		d.Stats.Interrupts.Add(1)
		if i == rxQ {
			d.Stats.TxInterrupts.Add(1)
		}
	}
}

// guard turns a fault on guest memory (the front end shrank a region under
// us) into a ring error instead of a crash, and so any runtime error while
// reading the guest's rings: whatever the guest wrote, it stops its own
// session and nothing else. Deferred by the data path, which runs with
// debug.SetPanicOnFault.
func guard(err *error) {
	if r := recover(); r != nil {
		if _, ok := r.(runtime.Error); !ok {
			panic(r)
		}
		*err = fmt.Errorf("%w: %v", errRing, r)
	}
}

// ReadBatch implements link.Device: it blocks until the guest has
// transmitted at least one frame and returns up to len(frames).
func (d *Device) ReadBatch(frames []*link.Frame) (int, error) {
	polled := false
	for {
		d.mu.RLock()
		if d.closed {
			d.mu.RUnlock()
			return 0, link.ErrClosed
		}
		if polled {
			d.resendInterrupts()
		}
		if d.running(txQ) {
			d.txIrq()
			n, err := d.fromGuest(frames)
			if err == nil && n == 0 {
				d.txIrq()
				// Nothing: ask for a kick, and look once more in
				// case the guest added a frame meanwhile.
				d.vq[txQ].notify(true)
				var more bool
				if more, err = d.vq[txQ].hasAvail(); err == nil && more {
					d.mu.RUnlock()
					continue
				}
			}
			if err != nil {
				d.fail(err)
			} else if n > 0 {
				if polled {
					d.Stats.FoundByPoll.Add(1)
					d.rdPoll = 0
				}
				d.mu.RUnlock()
				return n, nil
			}
		}
		if d.rdExpired() {
			d.mu.RUnlock()
			return 0, os.ErrDeadlineExceeded
		}
		polled = d.wait(txQ, &d.rdPoll)
	}
}

// fromGuest takes up to len(frames) chains from the transmit queue and
// copies their frames, without the virtio-net header, into frames. mu
// held shared.
func (d *Device) fromGuest(frames []*link.Frame) (n int, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer guard(&err)
	q, c, m, hl := &d.vq[txQ], d.rdChain, d.mem, d.hdrLen
	q.notify(false)
	d.txMu.Lock()
	ext := !d.cfg.Copy && !d.draining.Load() // under txMu: see drain
	defer d.txMu.Unlock()
	for n < len(frames) {
		var ok bool
		if ok, err = q.pop(m, c); err != nil || !ok {
			break
		}
		f := frames[n]
		buf := f.Data[:cap(f.Data)]
		size := c.rdLen - hl
		if size < 14 || size > len(buf) || size > link.QemuMaxFrame {
			q.fill(c.head, 0)
			d.Stats.RxDropped.Add(1)
			continue
		}
		var h [virtioNetHdrSize]byte
		gather(h[:hl], c.rd, 0)
		pre := min(size, txPrefix)
		gather(buf[:pre], c.rd, hl)
		f.Data = buf[:size]
		if ext && d.extTail(c, f, buf[:pre], size, h[:]) {
			n++ // its used entry waits for the Ext's release
			continue
		}
		q.fill(c.head, 0)
		gather(buf[pre:size], c.rd, hl+pre)
		if h[0]&hdrFNeedsCsum != 0 && !completeCsum(f.Data, h[:]) {
			d.Stats.RxDropped.Add(1)
			continue
		}
		n++
	}
	if q.flush() {
		d.txIrqDue = true // see txIrq
	}
	d.Stats.RxFrames.Add(uint64(n))
	return n, err
}

// txIrq sends the transmit queue's interrupt that the reader's last batch
// left due. The reader sends it when it comes back for more, not when it
// publishes the batch's used entries: by then the caller (the dispatcher)
// has handled the batch, so the guest gets our answer to it (the data
// its ACKs made room for, through the receive queue) before its transmit
// completion, as from upstream passt, and the eventfd write, which wakes
// QEMU and often hands it our CPU there and then, comes when we are done
// rather than before we start. mu held shared.
func (d *Device) txIrq() {
	d.txMu.Lock()
	if d.txIrqDue {
		d.txIrqDue = false
		d.interrupt(txQ)
	}
	d.txMu.Unlock()
}

// completeCsum fills in the checksum a guest left to us (NEEDS_CSUM with
// VIRTIO_NET_F_CSUM): the one's-complement sum from csum_start to the end
// of the frame, over the pseudo-header sum the guest put in the field,
// stored at csum_start+csum_offset. It reports false for offsets outside
// the frame.
func completeCsum(p []byte, hdr []byte) bool {
	start := int(binary.LittleEndian.Uint16(hdr[6:]))
	off := int(binary.LittleEndian.Uint16(hdr[8:]))
	if start >= len(p) || start+off+2 > len(p) {
		return false
	}
	c := wire.Fold(wire.Checksum(p[start:], 0))
	if c == 0 {
		c = 0xffff // the same in one's complement, and UDP's "no checksum" is 0
	}
	binary.BigEndian.PutUint16(p[start+off:], c)
	return true
}

// gather copies the bytes of segs from offset skip on into dst, which is
// no longer than what they hold.
func gather(dst []byte, segs [][]byte, skip int) {
	for _, s := range segs {
		if skip >= len(s) {
			skip -= len(s)
			continue
		}
		k := copy(dst, s[skip:])
		skip = 0
		dst = dst[k:]
		if len(dst) == 0 {
			return
		}
	}
}

// scatter copies src into segs from offset off on, as far as they go, and
// returns how many bytes it copied.
func scatter(segs [][]byte, off int, src []byte) int {
	n := 0
	for _, s := range segs {
		if off >= len(s) {
			off -= len(s)
			continue
		}
		k := copy(s[off:], src[n:])
		off = 0
		n += k
		if n == len(src) {
			break
		}
	}
	return n
}

// WriteBatch implements link.Device: every frame goes into the guest's
// receive buffers, waiting for the guest to post more if they run out.
// Frames are dropped (and counted) while the queue is not running: a
// guest without a driver cannot receive, and blocking would stall every
// flow behind the Writer.
func (d *Device) WriteBatch(frames []*link.Frame) error {
	polled := false
	for len(frames) > 0 {
		d.mu.RLock()
		if d.closed {
			d.mu.RUnlock()
			return link.ErrClosed
		}
		if !d.running(rxQ) {
			d.Stats.TxDropped.Add(uint64(len(frames)))
			d.mu.RUnlock()
			return nil
		}
		d.rxMu.Lock()
		seen := d.rxReturns
		d.rxMu.Unlock()
		n, err := d.toGuest(frames)
		if polled && n > 0 {
			d.Stats.FoundByPoll.Add(1)
			d.wrPoll = 0
		}
		frames = frames[n:]
		if err == nil && len(frames) > 0 {
			// The buffers ran out, or there are some but not enough
			// for the next frame: wait for the guest to add more (a
			// kick once its avail index passes where it is now), or
			// for chains given back meanwhile (lend.go), which raise
			// no kick: look at them, or have the next return poke us.
			q := &d.vq[rxQ]
			var more bool
			if more, err = q.hasAvail(); err == nil {
				idx := q.availIdx()
				q.notifyAfter(idx)
				d.rxMu.Lock()
				more = d.rxReturns != seen
				d.rxWaiting = !more
				d.rxMu.Unlock()
				more = more || q.availIdx() != idx
			}
			if err == nil && more {
				d.mu.RUnlock()
				continue
			}
		}
		if err != nil {
			d.fail(err)
			d.Stats.TxDropped.Add(uint64(len(frames)))
			d.mu.RUnlock()
			return nil
		}
		if len(frames) == 0 {
			d.mu.RUnlock()
			return nil
		}
		polled = d.wait(rxQ, &d.wrPoll)
		d.rxMu.Lock()
		d.rxWaiting = false
		d.rxMu.Unlock()
	}
	return nil
}

// TryWriteBatch implements link.TryWriter: WriteBatch without the wait,
// for the frames the guest has posted receive buffers for now. Lent
// frames (lend.go) are always consumed: their buffers are taken already.
func (d *Device) TryWriteBatch(frames []*link.Frame) (int, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return 0, link.ErrClosed
	}
	if !d.running(rxQ) {
		d.Stats.TxDropped.Add(uint64(len(frames)))
		return len(frames), nil
	}
	n, err := d.toGuest(frames)
	if err != nil {
		d.fail(err)
		d.Stats.TxDropped.Add(uint64(len(frames) - n))
		return len(frames), nil
	}
	return n, nil
}

// toGuest writes frames into the receive queue until they are all written
// or the buffers run out, and returns how many it consumed (written or
// dropped). mu held shared.
func (d *Device) toGuest(frames []*link.Frame) (n int, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer guard(&err)
	q := &d.vq[rxQ]
	q.notify(false)
	written := 0
	for n < len(frames) {
		if frames[n].Loan != nil {
			if d.putLoan(q, frames[n]) {
				written++
			}
			n++
			continue
		}
		p := frames[n].Data
		if len(p) < 14 || len(p) > link.QemuMaxFrame {
			d.Stats.TxDropped.Add(1)
			n++
			continue
		}
		var ok bool
		if ok, err = d.put(q, p); err != nil || !ok {
			break
		}
		n++
		written++
	}
	if q.flush() {
		d.interrupt(rxQ)
	}
	d.Stats.TxFrames.Add(uint64(written))
	return n, err
}

// put writes one frame with its virtio-net header into as many receive
// chains as it takes (one without mergeable buffers). It returns false,
// having taken nothing, if the guest has not posted enough buffers.
//
// Chains come from the stash of given-back loans first (lend.go), then the
// avail ring; on failure the stash is left as it was and the ring rewound,
// which rxMu, held throughout, makes safe against concurrent Lends.
func (d *Device) put(q *vring, p []byte) (bool, error) {
	c, m, hl := d.wrChain, d.mem, d.hdrLen
	mrg := d.acked&(1<<fNetMrgRxbuf) != 0
	var hdr [virtioNetHdrSize]byte
	hdr[0] = d.flags
	var nb [2][]byte // where num_buffers went, patched at the end
	pending := q.pending
	var chains, popped uint16
	stashed := 0 // taken from the stash's end
	d.rxMu.Lock()
	defer d.rxMu.Unlock()
	undo := func() {
		q.unpop(popped)
		q.pending = pending
	}
	done := 0
	for first := true; first || done < len(p); first = false {
		var ok bool
		var err error
		if stashed < len(d.stash) {
			stashed++
			ok, err = true, q.walk(m, d.stash[len(d.stash)-stashed], c)
		} else if ok, err = q.pop(m, c); ok && err == nil {
			popped++
		}
		if err != nil {
			return false, err
		}
		if !ok {
			undo()
			// Chains lent to frames queued behind this one come back
			// only after it: count them as not there.
			if uint32(chains)+uint32(d.lent) >= q.num {
				// The whole ring is too small for the frame:
				// waiting cannot help.
				d.Stats.TxDropped.Add(1)
				return true, nil
			}
			return false, nil
		}
		chains++
		if c.wrLen == 0 {
			return false, ringErr("receive chain %d holds no buffer", c.head)
		}
		off := 0
		if first {
			if c.wrLen < hl {
				return false, ringErr("receive buffer of %d bytes, less than the header", c.wrLen)
			}
			scatter(c.wr, 0, hdr[:hl])
			if hl == virtioNetHdrSize {
				nb[0], nb[1] = byteAt(c.wr, 10), byteAt(c.wr, 11)
			}
			off = hl
		}
		k := scatter(c.wr, off, p[done:])
		done += k
		q.fill(c.head, uint32(off+k))
		if !mrg && done < len(p) {
			// One chain per frame, and it is too small: the frame
			// is dropped, the buffer left for a smaller one.
			undo()
			d.Stats.TxDropped.Add(1)
			return true, nil
		}
	}
	d.stash = d.stash[:len(d.stash)-stashed]
	if nb[0] != nil {
		nb[0][0], nb[1][0] = byte(chains), byte(chains>>8)
	}
	return true, nil
}

// byteAt returns the one-byte slice at offset off of segs.
func byteAt(segs [][]byte, off int) []byte {
	for _, s := range segs {
		if off < len(s) {
			return s[off : off+1]
		}
		off -= len(s)
	}
	return nil
}

// handle carries out one front-end request.
func (d *Device) handle(k *conn, m *msg) (err error) {
	switch m.req {
	case reqGetVringBase, reqResetOwner, reqSetVringNum, reqSetVringAddr, reqSetVringKick:
		// The front end stops or moves a ring, after which the guest
		// may reuse its buffers: first let go of the ones flows are
		// reading or writing.
		d.drain()
		defer d.draining.Store(false)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.wakeLocked()
	// Starting a ring reads guest memory: a fault there is an error too.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer guard(&err)
	d.log.Debugf("vhost-user: %s", reqName(m.req))
	replied := false
	err = func() error {
		switch m.req {
		case reqGetFeatures:
			replied = true
			return k.replyU64(m.req, Features)
		case reqSetFeatures:
			v, err := m.u64()
			if err != nil {
				return err
			}
			if v&^Features != 0 {
				d.log.Warnf("vhost-user: front end acked features %#x we did not offer", v&^Features)
			}
			d.setFeaturesLocked(v & Features)
		case reqGetProtocolFeatures:
			replied = true
			return k.replyU64(m.req, ProtocolFeatures)
		case reqSetProtocolFeatures:
			v, err := m.u64()
			if err != nil {
				return err
			}
			d.protocol = v & ProtocolFeatures
		case reqSetOwner:
		case reqResetOwner:
			// Stop the rings, as libvhost-user does; the memory
			// table stays until the front end replaces it.
			d.rxStopLocked(true)
			d.txStopLocked()
			for i := range d.vq {
				d.vq[i].started = false
				d.closeKickLocked(i)
			}
		case reqGetQueueNum:
			replied = true
			return k.replyU64(m.req, numQueues/2)
		case reqSetMemTable:
			return d.setMemTableLocked(m)
		case reqSetVringNum, reqSetVringBase, reqSetVringEnable:
			i, v, err := vringState(m)
			if err != nil {
				return err
			}
			q := &d.vq[i]
			if i == rxQ && m.req == reqSetVringNum {
				d.rxStopLocked(true)
			}
			if i == txQ && m.req == reqSetVringNum {
				d.txStopLocked()
			}
			switch m.req {
			case reqSetVringNum:
				if v == 0 || v > maxQueueSize || v&(v-1) != 0 {
					return fmt.Errorf("%w: queue %d size %d", errProto, i, v)
				}
				q.num = v
				// The mapped rings must always match the size.
				if err := q.mapRings(d.mem); err != nil {
					return fmt.Errorf("%w: queue %d: %v", errProto, i, err)
				}
			case reqSetVringBase:
				q.base = uint16(v)
			case reqSetVringEnable:
				q.enabled = v != 0
			}
		case reqGetVringBase:
			i, _, err := vringState(m)
			if err != nil {
				return err
			}
			// Stopping: every batch ended with its used entries
			// published, so the next one to take is the base.
			if i == rxQ {
				d.rxStopLocked(true)
			} else {
				d.txStopLocked()
			}
			q := &d.vq[i]
			base := q.lastAvail
			if !q.started {
				base = q.base
			}
			q.started = false
			q.base = base
			d.closeKickLocked(i)
			var b [8]byte
			binary.LittleEndian.PutUint32(b[0:], uint32(i))
			binary.LittleEndian.PutUint32(b[4:], uint32(base))
			replied = true
			return k.reply(m.req, b[:])
		case reqSetVringAddr:
			return d.setVringAddrLocked(m)
		case reqSetVringKick, reqSetVringCall, reqSetVringErr:
			return d.setVringFDLocked(m)
		case reqSendRARP:
		case reqSetLogBase, reqSetLogFD:
			return fmt.Errorf("%w: %s without dirty-page logging negotiated", errProto, reqName(m.req))
		default:
			if m.flags&flagNeedReply == 0 {
				d.log.Warnf("vhost-user: ignoring unsupported %s", reqName(m.req))
				return nil
			}
			return fmt.Errorf("%w: unsupported %s", errProto, reqName(m.req))
		}
		return nil
	}()
	if !replied && m.flags&flagNeedReply != 0 && d.protocol&(1<<pfReplyAck) != 0 {
		var status uint64
		if err != nil {
			status = 1
		}
		if e := k.replyU64(m.req, status); e != nil && err == nil {
			err = e
		}
	}
	return err
}

// setFeaturesLocked applies the driver's features: the header size, the
// header flags, event indexes, and, without the protocol extension,
// rings that run as soon as they start.
func (d *Device) setFeaturesLocked(v uint64) {
	d.acked = v
	d.hdrLen = 10
	if v&(1<<fVersion1|1<<fNetMrgRxbuf) != 0 {
		d.hdrLen = virtioNetHdrSize
	}
	d.flags = 0
	if v&(1<<fNetGuestCsum) != 0 {
		// Our checksums are complete and right: the guest may skip
		// verifying them.
		d.flags = hdrFDataValid
	}
	for i := range d.vq {
		d.vq[i].eventIdx = v&(1<<fRingEventIdx) != 0
		if v&(1<<fProtocolFeats) == 0 {
			d.vq[i].enabled = true
		}
	}
}

func vringState(m *msg) (int, uint32, error) {
	if m.size < 8 {
		return 0, 0, fmt.Errorf("%w: %s payload of %d bytes", errProto, reqName(m.req), m.size)
	}
	i := binary.LittleEndian.Uint32(m.payload[0:])
	if i >= numQueues {
		return 0, 0, fmt.Errorf("%w: %s for queue %d", errProto, reqName(m.req), i)
	}
	return int(i), binary.LittleEndian.Uint32(m.payload[4:]), nil
}

// setMemTableLocked maps the new memory table, moves the rings onto it and
// unmaps the old one.
func (d *Device) setMemTableLocked(m *msg) error {
	b := m.body()
	if len(b) < 8 {
		return fmt.Errorf("%w: SET_MEM_TABLE payload of %d bytes", errProto, len(b))
	}
	n := binary.LittleEndian.Uint32(b[0:])
	if n == 0 || n > maxRegions || len(b) < 8+int(n)*32 {
		return fmt.Errorf("%w: SET_MEM_TABLE with %d regions in %d bytes", errProto, n, len(b))
	}
	descs := make([]regionDesc, n)
	for i := range descs {
		r := b[8+32*i:]
		descs[i] = regionDesc{
			GPA:        binary.LittleEndian.Uint64(r[0:]),
			Size:       binary.LittleEndian.Uint64(r[8:]),
			QVA:        binary.LittleEndian.Uint64(r[16:]),
			MmapOffset: binary.LittleEndian.Uint64(r[24:]),
		}
	}
	t, err := mapRegions(descs, m.fds)
	if err != nil {
		return fmt.Errorf("%w: SET_MEM_TABLE: %v", errProto, err)
	}
	old := d.mem
	d.mem = t
	old.release() // unmapped once no loan holds it
	for i := range d.vq {
		if err := d.vq[i].mapRings(t); err != nil {
			return fmt.Errorf("%w: queue %d: %v", errProto, i, err)
		}
	}
	return nil
}

func (d *Device) setVringAddrLocked(m *msg) error {
	b := m.body()
	if len(b) < 40 {
		return fmt.Errorf("%w: SET_VRING_ADDR payload of %d bytes", errProto, len(b))
	}
	i := binary.LittleEndian.Uint32(b[0:])
	if i >= numQueues {
		return fmt.Errorf("%w: SET_VRING_ADDR for queue %d", errProto, i)
	}
	if i == rxQ {
		d.rxStopLocked(true)
	} else {
		d.txStopLocked()
	}
	q := &d.vq[i]
	q.descQVA = binary.LittleEndian.Uint64(b[8:])
	q.usedQVA = binary.LittleEndian.Uint64(b[16:])
	q.availQVA = binary.LittleEndian.Uint64(b[24:])
	q.addrSet = true
	if err := q.mapRings(d.mem); err != nil {
		return fmt.Errorf("%w: queue %d: %v", errProto, i, err)
	}
	return nil
}

// setVringFDLocked handles SET_VRING_KICK, _CALL and _ERR. A kick starts
// the queue.
func (d *Device) setVringFDLocked(m *msg) error {
	v, err := m.u64()
	if err != nil {
		return err
	}
	i := int(v & vringIdxMask)
	if i >= numQueues {
		return fmt.Errorf("%w: %s for queue %d", errProto, reqName(m.req), i)
	}
	fd := -1
	if v&vringNoFD == 0 {
		if fd = m.takeFD(); fd < 0 {
			return fmt.Errorf("%w: %s without a descriptor", errProto, reqName(m.req))
		}
	}
	switch m.req {
	case reqSetVringErr:
		// We never report errors through it.
		if fd >= 0 {
			unix.Close(fd)
		}
	case reqSetVringCall:
		if d.call[i] >= 0 {
			unix.Close(d.call[i])
		}
		d.call[i] = fd
	case reqSetVringKick:
		d.closeKickLocked(i)
		if fd < 0 {
			return fmt.Errorf("%w: queue %d without a kick descriptor (polling is not supported)", errProto, i)
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return err
		}
		k := os.NewFile(uintptr(fd), "vhost-user-kick")
		rc, err := k.SyscallConn()
		if err != nil {
			k.Close()
			return err
		}
		d.kick[i], d.kickRC[i], d.kickFD[i] = k, rc, fd
		q := &d.vq[i]
		if q.desc == nil {
			if err := q.mapRings(d.mem); err != nil || q.desc == nil {
				return fmt.Errorf("%w: queue %d started without rings in guest memory: %v", errProto, i, err)
			}
		}
		if i == rxQ {
			d.rxStopLocked(true)
		} else {
			d.txStopLocked()
		}
		q.started = true
		q.start()
	}
	return nil
}
