package link

import "errors"

// Device is a link to the guest that carries Ethernet frames in batches: the
// tap device of pasta mode, the QEMU stream socket of passt mode, or an
// in-memory pipe in tests.
//
// ReadBatch is called from one goroutine only (the dispatcher's reader) and
// WriteBatch from one goroutine only (the Writer); the two may run
// concurrently with each other.
type Device interface {
	// ReadBatch blocks until at least one frame has arrived, then reads as
	// many more as are ready without blocking, up to len(frames). Each
	// frames[i] is supplied by the caller with a buffer of MaxFrameSize
	// bytes; ReadBatch reslices frames[i].Data to the received frame. It
	// returns the number of frames read. After Close it returns ErrClosed.
	ReadBatch(frames []*Frame) (int, error)

	// WriteBatch writes every frame whole and in order. Frames stay owned by
	// the caller. A frame the link cannot carry (too big, too small) is
	// skipped and counted, not reported: only a failure of the link itself
	// is an error.
	WriteBatch(frames []*Frame) error

	// MTU is the largest IP packet the link carries.
	MTU() int

	// Close makes pending and future ReadBatch calls return ErrClosed.
	Close() error
}

// TryWriter is implemented by a Device whose WriteBatch can wait for its
// peer (vhost-user: for the guest to post receive buffers): TryWriteBatch
// writes what it can at once, never waiting, so that a goroutine which
// must not wait (a flow run inline, see Writer.OfferNow) can still write
// in place on such a link. A Device whose writes never wait for a peer
// (the tap) need not implement it.
type TryWriter interface {
	// TryWriteBatch is WriteBatch up to the first frame the link has no
	// room for now: it returns how many frames from the front it
	// consumed (written, or skipped and counted); the rest were not
	// touched.
	TryWriteBatch(frames []*Frame) (int, error)
}

// ErrClosed is returned by a Device after Close, or when the peer went away.
var ErrClosed = errors.New("link closed")

// BatchSize is how many frames gopasta moves per batch on every edge.
const BatchSize = 64
