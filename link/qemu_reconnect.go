package link

// Theory of operation: one Device across QEMU clients.
//
// The dispatcher's reader calls ReadBatch until ErrClosed and the Writer
// stops at ErrClosed, but in passt mode a VM may disconnect and reconnect
// (a reboot of QEMU, a migration, libvirt restarting it) while every flow,
// forwarder and timer of gopasta carries on, as passt's do. So passt mode
// hands the dispatcher a ReconnectingDevice: it never ends while clients
// come and go, and only says ErrClosed when it is closed (or, with OneOff,
// when the first client has left).
//
// Three goroutines touch it, each with a single job:
//   - the accept goroutine (owned by the device, ends on Close) accepts
//     clients; while one is being served it accepts and closes any other
//     at once (passt's "discarding connection"), so QEMU fails fast instead
//     of hanging in the listen backlog. A client that arrives after the
//     previous one hung up, but before the reader noticed, is kept;
//   - the reader (ReadBatch) takes over a new client, runs OnConnect before
//     the first frame of that client is returned, reads until the client
//     goes, closes it and waits for the next. It alone retires clients, so
//     "a client is connected" has exactly one writer;
//   - the Writer (WriteBatch) writes to whatever client the reader has
//     published, and drops (and counts) frames while there is none: a guest
//     that is not there cannot receive, and blocking would stall every actor
//     behind the back-pressure.

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// ReconnectConfig configures a ReconnectingDevice. Every hook is optional.
type ReconnectConfig struct {
	// MTU is what MTU reports (0: QemuMTU).
	MTU int

	// OneOff makes the device end (ErrClosed) once its first client has
	// disconnected, like passt's -1/--one-off.
	OneOff bool

	// OnConnect runs on the ReadBatch goroutine when a new client is taken
	// over, before any of its frames is returned and before WriteBatch
	// writes to it: the place to forget the previous guest's MAC
	// (Peer.SetMAC(Broadcast)) and to log "accepted connection from PID".
	OnConnect func(c *QemuDevice)

	// OnDisconnect runs on the ReadBatch goroutine when a client has gone
	// (it is already closed; its Stats are final).
	OnDisconnect func(c *QemuDevice)

	// OnRefused runs on the accept goroutine for every client turned away
	// because another one is connected; pid is the peer's (-1: unknown).
	OnRefused func(pid int)

	// OnAcceptError runs on the accept goroutine when accept(2) fails for
	// a reason other than Close (e.g. EMFILE); accepting resumes after a
	// short pause.
	OnAcceptError func(err error)
}

// ReconnectingDevice is a Device for passt mode that outlives its clients:
// it serves one QEMU client at a time from a QemuListener, and the next one
// after that one disconnects. Create it with NewReconnectingDevice.
//
// ReadBatch blocks while no client is connected. WriteBatch drops and counts
// frames while no client is connected. Both return ErrClosed only after
// Close, or with OneOff after the first client left.
type ReconnectingDevice struct {
	cfg ReconnectConfig
	ln  *QemuListener

	ctx    context.Context // cancelled by Close: stops the accept goroutine
	cancel context.CancelFunc
	done   chan struct{} // closed when the accept goroutine has exited

	mu      sync.Mutex
	pending *QemuDevice // accepted, not yet taken over by the reader
	active  *QemuDevice // taken over by the reader, until it has gone
	served  bool        // a client was accepted (for OneOff)
	closed  bool
	arrived chan struct{} // capacity 1: "pending was set"

	// cur is the client WriteBatch writes to: set by the reader after
	// OnConnect, cleared by the reader or by a failed write.
	cur atomic.Pointer[QemuDevice]

	// TxDropped counts frames WriteBatch dropped because no client was
	// connected or the client went away during the write.
	TxDropped atomic.Uint64
	// Connects counts clients served, Refused clients turned away.
	Connects, Refused atomic.Uint64
}

// NewReconnectingDevice returns a device serving clients of ln, which it
// takes over (Close closes it and removes the socket file), and starts
// accepting.
func NewReconnectingDevice(ln *QemuListener, cfg ReconnectConfig) *ReconnectingDevice {
	if cfg.MTU == 0 {
		cfg.MTU = QemuMTU
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &ReconnectingDevice{
		cfg: cfg, ln: ln, ctx: ctx, cancel: cancel,
		done:    make(chan struct{}),
		arrived: make(chan struct{}, 1),
	}
	go r.acceptLoop()
	return r
}

// Path is the listening socket's path.
func (r *ReconnectingDevice) Path() string { return r.ln.Path() }

// Current returns the client being written to, or nil, for status output.
func (r *ReconnectingDevice) Current() *QemuDevice { return r.cur.Load() }

// acceptLoop accepts clients until Close, queueing the first for the reader
// and refusing any other while one is pending or active.
func (r *ReconnectingDevice) acceptLoop() {
	defer close(r.done)
	for {
		c, err := r.ln.Accept(r.ctx)
		if err != nil {
			if r.ctx.Err() != nil || errors.Is(err, ErrClosed) {
				return
			}
			if r.cfg.OnAcceptError != nil {
				r.cfg.OnAcceptError(err)
			}
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		r.mu.Lock()
		switch {
		case r.closed:
			r.mu.Unlock()
			c.Close()
			return
		case r.pending != nil || (r.active != nil && !r.active.PeerGone()) || (r.cfg.OneOff && r.served):
			// Busy. A client whose predecessor has hung up but not yet
			// been retired by the reader is not refused: it waits as
			// pending and is taken over right after the retirement, so
			// a quickly reconnecting QEMU is not turned away by a race.
			r.mu.Unlock()
			c.Close()
			r.Refused.Add(1)
			if r.cfg.OnRefused != nil {
				r.cfg.OnRefused(c.PeerPID())
			}
			continue
		}
		r.pending, r.served = c, true
		r.mu.Unlock()
		select {
		case r.arrived <- struct{}{}:
		default:
		}
	}
}

// ReadBatch implements Device: it reads from the connected client, waiting
// for one if there is none.
func (r *ReconnectingDevice) ReadBatch(frames []*Frame) (int, error) {
	for {
		r.mu.Lock()
		c, closed := r.active, r.closed
		r.mu.Unlock()
		if closed {
			return 0, ErrClosed
		}
		if c == nil {
			if c = r.takeOver(); c == nil {
				return 0, ErrClosed
			}
		}
		n, err := c.ReadBatch(frames)
		if err == nil {
			return n, nil
		}
		r.retire(c)
		if r.cfg.OneOff {
			r.Close()
			return 0, ErrClosed
		}
	}
}

// takeOver waits for a pending client and makes it the active one, or
// returns nil once closed.
func (r *ReconnectingDevice) takeOver() *QemuDevice {
	for {
		select {
		case <-r.arrived:
		case <-r.ctx.Done():
			return nil
		}
		r.mu.Lock()
		c := r.pending
		if r.closed {
			r.mu.Unlock()
			return nil
		}
		r.pending, r.active = nil, c
		r.mu.Unlock()
		if c == nil {
			continue
		}
		c.SetMTU(r.cfg.MTU)
		r.Connects.Add(1)
		if r.cfg.OnConnect != nil {
			r.cfg.OnConnect(c)
		}
		r.cur.Store(c)
		return c
	}
}

// retire forgets a client that has gone, so the next one can be accepted.
func (r *ReconnectingDevice) retire(c *QemuDevice) {
	r.cur.CompareAndSwap(c, nil)
	c.Close()
	r.mu.Lock()
	if r.active == c {
		r.active = nil
	}
	r.mu.Unlock()
	if r.cfg.OnDisconnect != nil {
		r.cfg.OnDisconnect(c)
	}
}

// WriteBatch implements Device: it writes to the connected client, or drops
// and counts the frames if there is none. Frames stay the caller's.
func (r *ReconnectingDevice) WriteBatch(frames []*Frame) error {
	c := r.cur.Load()
	if c == nil {
		if r.isClosed() {
			return ErrClosed
		}
		r.TxDropped.Add(uint64(len(frames)))
		return nil
	}
	if err := c.WriteBatch(frames); err != nil {
		// The client is gone (its device closed itself, which wakes the
		// reader to retire it); stop writing to it meanwhile.
		r.cur.CompareAndSwap(c, nil)
		if r.isClosed() {
			return ErrClosed
		}
		r.TxDropped.Add(uint64(len(frames)))
	}
	return nil
}

func (r *ReconnectingDevice) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// MTU implements Device.
func (r *ReconnectingDevice) MTU() int { return r.cfg.MTU }

// KeepFileOnClose makes Close leave the socket file in place
// (QemuListener.KeepFileOnClose).
func (r *ReconnectingDevice) KeepFileOnClose() { r.ln.KeepFileOnClose() }

// Close implements Device: it stops accepting, removes the socket file,
// disconnects the client if any and waits for the accept goroutine to exit.
// Pending and later ReadBatch and WriteBatch calls return ErrClosed.
func (r *ReconnectingDevice) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		<-r.done
		return nil
	}
	r.closed = true
	p, a := r.pending, r.active
	r.pending = nil
	r.mu.Unlock()
	r.cur.Store(nil)
	r.cancel()
	err := r.ln.Close()
	if p != nil {
		p.Close()
	}
	if a != nil {
		a.Close()
	}
	<-r.done
	return err
}
