package link

import "sync"

// sink is the Device the Writer tests write to: it keeps a copy of every
// frame, in order, for the test to read, and blocks a writer while depth
// frames are unread, as a slow guest would. (linktest.MemoryDevice imports
// link, so link's own tests cannot use it.)
type sink struct {
	mtu    int
	frames chan []byte
	once   sync.Once
	closed chan struct{}
}

func newSink(mtu, depth int) *sink {
	return &sink{mtu: mtu, frames: make(chan []byte, depth), closed: make(chan struct{})}
}

// ReadBatch implements Device: nothing arrives from a sink.
func (s *sink) ReadBatch([]*Frame) (int, error) {
	<-s.closed
	return 0, ErrClosed
}

// WriteBatch implements Device.
func (s *sink) WriteBatch(frames []*Frame) error {
	for _, f := range frames {
		select {
		case s.frames <- append([]byte(nil), f.Data...):
		case <-s.closed:
			return ErrClosed
		}
	}
	return nil
}

// ReadFrame returns the next frame written, or nil once closed.
func (s *sink) ReadFrame() []byte {
	select {
	case p := <-s.frames:
		return p
	case <-s.closed:
		return nil
	}
}

// Frames returns the frames written, for tests that must not wait.
func (s *sink) Frames() <-chan []byte { return s.frames }

func (s *sink) MTU() int { return s.mtu }

func (s *sink) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}
