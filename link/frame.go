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

	// Ext, when set, is the frame's tail from ExtOff to the end of Data,
	// left where the guest wrote it (a frame received through vhost-user:
	// see Ext): Data[ExtOff:] holds nothing meaningful, only the headers
	// before it are ours to parse. Whoever needs the whole frame in Data
	// calls Flatten; Release gives the memory back.
	Ext    Ext
	ExtOff int

	pool *sync.Pool
}

// Ext is the tail of a frame received from the guest that stayed in the
// guest's memory, so that a TCP payload can go to its socket straight
// from there (one copy, by the kernel). The link keeps the guest from
// reusing that memory until Release: a holder must release it soon, the
// guest's transmit queue waiting on it, and copies what it must keep
// (Frame.Flatten).
type Ext interface {
	// Segs returns the tail's bytes, in order, at least len(Data)-ExtOff
	// of them (maybe more: Ethernet padding the frame was trimmed of).
	// Only system calls may read them (a sendmsg from them): the memory
	// is the guest's, which may fault it away, and the kernel reports
	// that as EFAULT where Go code would crash.
	Segs() [][]byte
	// CopyTo copies the tail into frame[off:], frame being the whole
	// frame's buffer with the headers in front and off the Frame's
	// ExtOff, completing the frame as the copying link would have (a
	// checksum the guest left to the link). It reports false if the
	// guest's memory faulted.
	CopyTo(frame []byte, off int) bool
	// Release gives the memory back to the guest. It is called by
	// Frame.Release and Flatten; nobody else calls it.
	Release()
}

// Flatten makes Data the whole frame: the Ext tail, if any, is copied in
// and given back. It reports false if the guest's memory could not be
// read; the frame must then be dropped.
func (f *Frame) Flatten() bool {
	if f.Ext == nil {
		return true
	}
	ok := f.Ext.CopyTo(f.Data, f.ExtOff)
	f.ReleaseExt()
	return ok
}

// ReleaseExt gives the Ext tail, if any, back to the guest without
// copying it: for a frame being dropped, whose Data is then only its
// headers.
func (f *Frame) ReleaseExt() {
	if f.Ext != nil {
		f.Ext.Release()
		f.Ext, f.ExtOff = nil, 0
	}
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
	f.ReleaseExt()
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
