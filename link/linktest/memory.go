// Package linktest holds test doubles for link: an in-memory pair of
// Devices that stands in for a tap or a QEMU socket, so that the dispatcher
// and the actors can be tested against a guest played by the test.
package linktest

import (
	"sync"
	"sync/atomic"

	"github.com/gopasta/gopasta/link"
)

// MemoryDevice is one end of an in-memory link: frames written to
// one end are read from the other, copied, in order. It never drops.
type MemoryDevice struct {
	mtu  int
	rx   chan []byte // frames for this end to read
	peer *MemoryDevice

	closeOnce sync.Once
	closed    chan struct{}

	// Written counts frames this end wrote.
	Written atomic.Uint64
}

// NewMemoryPair returns two connected in-memory devices with the given MTU
// and queue depth (frames each way).
func NewMemoryPair(mtu, depth int) (*MemoryDevice, *MemoryDevice) {
	a := &MemoryDevice{mtu: mtu, rx: make(chan []byte, depth), closed: make(chan struct{})}
	b := &MemoryDevice{mtu: mtu, rx: make(chan []byte, depth), closed: make(chan struct{})}
	a.peer, b.peer = b, a
	return a, b
}

// ReadBatch implements link.Device.
func (d *MemoryDevice) ReadBatch(frames []*link.Frame) (int, error) {
	var p []byte
	select {
	case p = <-d.rx:
	case <-d.closed:
		return 0, link.ErrClosed
	}
	n := 0
	for {
		frames[n].Data = frames[n].Data[:copy(frames[n].Data[:cap(frames[n].Data)], p)]
		n++
		if n == len(frames) {
			return n, nil
		}
		select {
		case p = <-d.rx:
		default:
			return n, nil
		}
	}
}

// WriteBatch implements link.Device.
func (d *MemoryDevice) WriteBatch(frames []*link.Frame) error {
	for _, f := range frames {
		if len(f.Data) < 14 || len(f.Data) > d.mtu+14 {
			continue
		}
		p := append([]byte(nil), f.Data...)
		select {
		case d.peer.rx <- p:
			d.Written.Add(1)
		case <-d.closed:
			return link.ErrClosed
		case <-d.peer.closed:
			return link.ErrClosed
		}
	}
	return nil
}

// WriteFrame writes one raw frame, for tests that inject hand-made frames.
func (d *MemoryDevice) WriteFrame(p []byte) error {
	f := &link.Frame{Data: p}
	return d.WriteBatch([]*link.Frame{f})
}

// ReadFrame reads one frame, for tests; it returns nil once closed.
func (d *MemoryDevice) ReadFrame() []byte {
	select {
	case p := <-d.rx:
		return p
	case <-d.closed:
		return nil
	}
}

// Frames returns the channel of frames arriving at this end, for tests that
// wait with a timeout.
func (d *MemoryDevice) Frames() <-chan []byte { return d.rx }

// MTU implements link.Device.
func (d *MemoryDevice) MTU() int { return d.mtu }

// Close implements link.Device.
func (d *MemoryDevice) Close() error {
	d.closeOnce.Do(func() { close(d.closed) })
	return nil
}
