package link

import (
	"sync"
	"sync/atomic"
)

// NullDevice is the link of --splice-only: the namespace has no interface
// of gopasta's, so no frame ever arrives and a frame sent (a router
// advertisement, say) goes nowhere. Only the loopback splice path carries
// traffic then, socket to socket.
type NullDevice struct {
	mtu    int
	once   sync.Once
	closed chan struct{}

	// Dropped counts frames written to the device.
	Dropped atomic.Uint64
}

// NewNullDevice returns a NullDevice that reports mtu.
func NewNullDevice(mtu int) *NullDevice {
	return &NullDevice{mtu: mtu, closed: make(chan struct{})}
}

// ReadBatch implements Device: it waits for Close.
func (d *NullDevice) ReadBatch([]*Frame) (int, error) {
	<-d.closed
	return 0, ErrClosed
}

// WriteBatch implements Device: it drops the frames.
func (d *NullDevice) WriteBatch(frames []*Frame) error {
	d.Dropped.Add(uint64(len(frames)))
	return nil
}

// MTU implements Device.
func (d *NullDevice) MTU() int { return d.mtu }

// Close implements Device.
func (d *NullDevice) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}
