// Package link is gopasta's edge towards the guest: the tap device inside a
// network namespace (pasta mode) or QEMU's stream socket (passt mode), both
// behind the small Device interface, plus the frame buffers that travel from
// the link through the dispatcher and the actors and back to the link.
//
// # Buffer ownership
//
// A *Frame has exactly one owner at a time. Whoever holds it may read and
// write Data; sending it on a channel or passing it to Writer.Send hands it
// over, and the sender must not touch it afterwards. The last owner calls
// Release, which returns the buffer to its pool. Frames are never shared, so
// no frame needs a lock.
package link

import (
	"errors"
	"sync"
)

// Buffer size classes. Small frames (ACKs, ARP, DHCP, most UDP) use the small
// class so that a queue of them does not pin 64 KiB each; anything that might
// be a full 65520-byte-MTU segment uses the large class.
const (
	// SmallFrameSize fits a 1500-byte-MTU frame with room to spare.
	SmallFrameSize = 2048
	// MaxFrameSize is the largest frame gopasta reads or writes: a 65535-byte
	// IP packet plus the Ethernet header, rounded up.
	MaxFrameSize = 65536 + 128
)

// Frame is one Ethernet frame in a pooled buffer.
type Frame struct {
	// Data is the frame, from the destination MAC on. Its capacity is the
	// whole buffer, so a producer may reslice it up to cap(Data).
	Data []byte

	// Offsets filled in by the dispatcher when it hands a parsed frame to an
	// actor, so the actor need not parse the headers again: L3 is where the
	// IP header starts, L4 the transport header, Payload the transport
	// payload. They are only meaningful on frames received from the guest.
	L3, L4, Payload int

	// Loan, when set, is the frame's payload in buffers the link lent
	// (the guest's own receive buffers, see Lender): Data then holds
	// only the headers, and the link puts them in front of the payload
	// when it writes the frame. Release returns the loan.
	Loan Loan

	pool *sync.Pool
}

// Lender is a Device that can lend a producer the guest's receive buffers,
// so that a host socket's bytes are read straight into the guest's memory
// and the frame travels without its payload. Only the vhost-user device
// is one; producers must cope with Lend refusing.
type Lender interface {
	// Lend returns a frame with hlen bytes of Data for the headers and
	// a Loan of guest buffers for up to payLen bytes of payload (maybe
	// fewer: as many as the buffers it could take hold), or nil when it
	// cannot lend now (no buffers posted, the queue stopped, features
	// that do not allow it). The caller owns the frame as any other.
	Lend(hlen, payLen int) *Frame
}

// Loan is guest memory lent for one frame's payload. Its producer writes
// the payload into Payload only with system calls (a recvmsg), never from
// Go code: the memory belongs to a guest that may fault it away, which
// the kernel reports as EFAULT and the link guards against itself.
type Loan interface {
	// Payload returns the lent memory, in order.
	Payload() [][]byte
	// Commit says how many payload bytes were written, and where the
	// transport checksum goes: at csumStart+csumOff of the frame, over
	// everything from csumStart on, the field holding the pseudo-header
	// sum (what a NIC's checksum offload is given). A link that can
	// tell its guest the frame needs no verification (vhost-user with
	// VIRTIO_NET_F_GUEST_CSUM) leaves it at that.
	Commit(n, csumStart, csumOff int)
	// Len is the payload length committed.
	Len() int
	// Release gives back whatever the link did not consume. It is
	// called by Frame.Release; nobody else calls it.
	Release()
}

var (
	smallPool = sync.Pool{New: func() any { return &Frame{Data: make([]byte, SmallFrameSize)} }}
	largePool = sync.Pool{New: func() any { return &Frame{Data: make([]byte, MaxFrameSize)} }}
)

// ErrFrameSize is TryGetFrame's refusal of a size no frame can have.
var ErrFrameSize = errors.New("frame larger than the largest frame")

// TryGetFrame is GetFrame for a size that depends on what the guest sent
// (a service's reply): a size over MaxFrameSize, or negative, is an error
// instead of a panic.
func TryGetFrame(size int) (*Frame, error) {
	if size < 0 || size > MaxFrameSize {
		return nil, ErrFrameSize
	}
	return GetFrame(size), nil
}

// GetFrame returns a frame whose buffer can hold at least size bytes, with
// Data resliced to size. The caller owns it until it hands it over or calls
// Release. size must be at most MaxFrameSize, which callers whose sizes are
// bounded by construction (headers plus at most an MSS or an MTU) know;
// any other caller uses TryGetFrame.
func GetFrame(size int) *Frame {
	p := &largePool
	if size <= SmallFrameSize {
		p = &smallPool
	}
	f := p.Get().(*Frame)
	f.pool = p
	f.Data = f.Data[:size]
	f.L3, f.L4, f.Payload = 0, 0, 0
	return f
}

// Release returns the frame's buffer to its pool. The caller must be its
// owner and must not use the frame afterwards.
func (f *Frame) Release() {
	if f == nil {
		return
	}
	if f.Loan != nil {
		f.Loan.Release()
		f.Loan = nil
	}
	if f.pool == nil {
		return
	}
	p := f.pool
	f.pool = nil
	f.Data = f.Data[:cap(f.Data)]
	p.Put(f)
}

// ReleaseAll releases every frame in fs and clears the slice's elements.
func ReleaseAll(fs []*Frame) {
	for i, f := range fs {
		f.Release()
		fs[i] = nil
	}
}
