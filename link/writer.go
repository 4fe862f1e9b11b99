package link

import (
	"context"
	"sync/atomic"

	"github.com/gopasta/gopasta/internal/handoff"
)

// Writer is the one goroutine that writes to a Device. Producers (the
// dispatcher, every actor) hand it frames; it coalesces whatever is queued
// into one WriteBatch call, so that a burst from many flows costs one wakeup
// and, on links that allow it, one syscall.
//
// The queue is bounded: Send blocks when it is full, which is the
// back-pressure that makes actors stop reading their host sockets when the
// guest cannot keep up. The dispatcher must never block, so it uses TrySend.
//
// SendNow is the shortcut for a lone frame (request/response traffic):
// when nothing is queued or being written it writes the frame from the
// caller's goroutine, which saves waking the writer goroutine, often on the
// other CPU, for every reply. The writer goroutine is the owner of a
// handoff.Gate and a producer writing directly is a guest: the Gate's
// backlog counts every frame accepted and not yet written, and the Gate is
// held across every write, so a frame is only written directly when all
// frames accepted before it are on the link.
//
// Offer and OfferNow are Send and SendNow for the goroutines that must
// never wait (a guest run of a flow's Gate): when the queue is full they
// give the frame back instead.
type Writer struct {
	dev Device
	try TryWriter // dev, if it is one: see writeIn
	q   chan *Frame

	gate handoff.Gate // held while writing to dev; backlog: frames queued or being written
	one  [1]*Frame    // SendNow's batch; gate

	// Tee, if set before Run, sees every frame after it is written (pcap).
	// It must not keep the frame. A lent frame (Frame.Loan) shows only
	// its headers: set Capturing so that no frame is lent while a
	// capture runs.
	Tee func(*Frame)

	// Lend, if set before Run, is the device as a Lender, whose lent
	// frames the producers may then send (see Lender).
	Lend Lender
	// Capturing, if set before Run, reports whether a capture runs:
	// Lender then returns nil, so that captures see whole frames.
	Capturing func() bool

	// Dropped counts frames TrySend could not queue; Errors counts
	// WriteBatch failures.
	Dropped, Errors atomic.Uint64
	// Frames counts frames written.
	Frames atomic.Uint64
}

// NewWriter returns a Writer for dev with a queue of depth frames.
func NewWriter(dev Device, depth int) *Writer {
	w := &Writer{dev: dev, q: make(chan *Frame, depth)}
	w.try, _ = dev.(TryWriter)
	return w
}

// Lender returns Lend unless a capture runs.
func (w *Writer) Lender() Lender {
	if w.Lend == nil || w.Capturing != nil && w.Capturing() {
		return nil
	}
	return w.Lend
}

// Send queues f, blocking while the queue is full. Ownership of f passes to
// the Writer.
func (w *Writer) Send(f *Frame) {
	w.gate.Queue(1)
	w.q <- f
}

// SendCtx is Send that gives up when ctx is done; it returns false (and
// releases f) in that case.
func (w *Writer) SendCtx(ctx context.Context, f *Frame) bool {
	w.gate.Queue(1)
	select {
	case w.q <- f:
		return true
	case <-ctx.Done():
		w.gate.Done(1)
		f.Release()
		return false
	}
}

// SendNow writes f at once from the calling goroutine if no other frame is
// queued or being written, and otherwise queues it as SendCtx does. It
// returns false (f released) when ctx is done or the link is closed.
// Meant for a producer with a single frame to send; a burst is better
// queued, so that the writer goroutine writes it while the producer goes
// on reading.
func (w *Writer) SendNow(ctx context.Context, f *Frame) bool {
	if took, err := w.writeNow(f); took {
		return err != ErrClosed
	}
	return w.SendCtx(ctx, f)
}

// Offer queues f if there is room and reports whether it did, never
// waiting; when the queue is full the caller keeps f. It is Send for a
// goroutine that must not wait (a flow run inline): one that cannot hand
// a frame over hands it, and what follows it, to the flow's owner.
func (w *Writer) Offer(f *Frame) bool {
	w.gate.Queue(1)
	select {
	case w.q <- f:
		return true
	default:
		w.gate.Done(1)
		return false
	}
}

// OfferNow is SendNow that never waits for room: f is written at once if
// the link is idle, else queued if there is room. It reports whether it
// took f; when the queue is full the caller keeps f. The write in place
// never waits for the link's peer on a TryWriter (vhost-user): a frame it
// has no room for is queued, behind nothing, for the writer goroutine to
// wait with. On other devices it waits as long as the device makes any
// writer wait (a stream socket its peer does not read).
func (w *Writer) OfferNow(f *Frame) bool {
	if w.gate.TryEnter() {
		w.one[0] = f
		n := w.writeIn(w.one[:])
		w.one[0] = nil
		w.gate.Leave()
		return n == 1
	}
	return w.Offer(f)
}

// OfferBatchNow is OfferNow for a burst from one producer: written in
// place, in one WriteBatch, if the link is idle (as far as the link has
// room, on a TryWriter), the rest queued while there is room. It returns
// how many frames, from the front, it took; the caller keeps the others.
// The frames taken are cleared from frames.
func (w *Writer) OfferBatchNow(frames []*Frame) int {
	if w.gate.TryEnter() {
		n := w.writeIn(frames)
		w.gate.Leave()
		return n
	}
	return w.offerAll(frames)
}

// writeIn is the write in place of OfferNow and OfferBatchNow, gate held:
// it writes frames, as far as a TryWriter has room, and queues the rest
// while there is room; holding the Gate, nothing can be written past
// them meanwhile. It returns how many frames it took, and clears them.
func (w *Writer) writeIn(frames []*Frame) int {
	n := len(frames)
	if w.try != nil {
		var err error
		n, err = w.try.TryWriteBatch(frames)
		w.count(frames[:n], err)
	} else {
		w.write(frames)
	}
	ReleaseAll(frames[:n])
	return n + w.offerAll(frames[n:])
}

// offerAll Offers frames in order until one does not fit, clearing those
// taken, and returns how many it took.
func (w *Writer) offerAll(frames []*Frame) int {
	for i, f := range frames {
		if !w.Offer(f) {
			return i
		}
		frames[i] = nil
	}
	return len(frames)
}

// writeNow writes f from the calling goroutine, a guest of the Writer's
// Gate, if no frame is queued or being written, and releases it; it
// reports whether it did, and the device's error if it did.
func (w *Writer) writeNow(f *Frame) (took bool, err error) {
	if !w.gate.TryEnter() {
		return false, nil
	}
	w.one[0] = f
	err = w.write(w.one[:])
	w.one[0] = nil
	w.gate.Leave()
	f.Release()
	return true, err
}

// Idle reports whether no frame is queued or being written: a frame sent
// now would be written at once.
func (w *Writer) Idle() bool { return w.gate.Idle() }

// SendBatchNow is SendNow for a burst of frames from one producer: if no
// other frame is queued or being written, it writes them all from the
// calling goroutine with one WriteBatch, and otherwise queues them in
// order as SendCtx does. Ownership of every frame passes to the Writer
// (frames is cleared); it returns false when ctx is done or the link is
// closed, the frames not handed over then released.
//
// It suits a producer that reads bursts in batches anyway (a UDP socket
// drained with recvmmsg): writing them itself saves a goroutine wakeup,
// often on the other CPU, and a channel operation per frame, and the
// producer's next read simply waits for the link, as the queue would make
// it wait once full.
func (w *Writer) SendBatchNow(ctx context.Context, frames []*Frame) bool {
	if len(frames) == 0 {
		return true
	}
	if w.gate.TryEnter() {
		err := w.write(frames)
		w.gate.Leave()
		ReleaseAll(frames)
		return err != ErrClosed
	}
	for i, f := range frames {
		frames[i] = nil
		if !w.SendCtx(ctx, f) {
			ReleaseAll(frames[i+1:])
			return false
		}
	}
	return true
}

// write writes batch to the device and counts it; gate held.
func (w *Writer) write(batch []*Frame) error {
	err := w.dev.WriteBatch(batch)
	w.count(batch, err)
	return err
}

// count counts a write of batch that ended with err, and shows the
// frames to Tee; gate held.
func (w *Writer) count(batch []*Frame, err error) {
	if err != nil {
		w.Errors.Add(1)
	} else {
		w.Frames.Add(uint64(len(batch)))
	}
	if w.Tee != nil {
		for _, f := range batch {
			w.Tee(f)
		}
	}
}

// TrySend queues f if there is room and reports whether it did. If not, f is
// released and counted as dropped. Either way the caller no longer owns f.
func (w *Writer) TrySend(f *Frame) bool {
	if w.Offer(f) {
		return true
	}
	w.Dropped.Add(1)
	f.Release()
	return false
}

// Run writes queued frames until ctx is done or the device fails. The
// caller's goroutine becomes the writer goroutine.
func (w *Writer) Run(ctx context.Context) error {
	batch := make([]*Frame, 0, BatchSize)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case f := <-w.q:
			batch = append(batch[:0], f)
		}
	drain:
		for len(batch) < cap(batch) {
			select {
			case f := <-w.q:
				batch = append(batch, f)
			default:
				break drain
			}
		}
		w.gate.Enter()
		err := w.write(batch)
		w.gate.Done(len(batch))
		w.gate.Leave()
		ReleaseAll(batch)
		if err == ErrClosed {
			return err
		}
	}
}
