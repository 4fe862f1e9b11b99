package link

import "sync"

// Right-sized buffers for data that is kept, not just passed through.
//
// A frame read from the link sits in a buffer sized for the largest frame,
// and one that a flow keeps (guest payload waiting for a host socket, or
// out of order behind a hole) keeps all of that buffer alive, whatever its
// payload. GetBuffer gives a holder a buffer of the smallest class that
// fits, so that memory kept follows the bytes kept: a buffer of n bytes
// costs at most 2n+MinBufferSize. The classes are powers of two
// from MinBufferSize to 32 KiB, then the two frame classes of GetFrame,
// whose pools they share.

// MinBufferSize is the smallest buffer GetBuffer returns.
const MinBufferSize = 256

var sizedPools = func() (p [8]*sync.Pool) {
	for i := range p {
		size := MinBufferSize << i
		p[i] = &sync.Pool{New: func() any { return &Frame{Data: make([]byte, size)} }}
	}
	p[3] = &smallPool // 2048 = SmallFrameSize
	return p
}()

// GetBuffer returns a frame whose buffer is the smallest class holding
// size bytes, with Data resliced to size. Ownership is as for GetFrame.
func GetBuffer(size int) *Frame {
	if size > MinBufferSize<<(len(sizedPools)-1) {
		return GetFrame(size)
	}
	i := 0
	for MinBufferSize<<i < size {
		i++
	}
	p := sizedPools[i]
	f := p.Get().(*Frame)
	f.pool = p
	f.Data = f.Data[:size]
	f.L3, f.L4, f.Payload = 0, 0, 0
	return f
}

// BufferClass is the capacity of the buffer GetBuffer(size) returns.
func BufferClass(size int) int {
	if size > MinBufferSize<<(len(sizedPools)-1) {
		return MaxFrameSize
	}
	c := MinBufferSize
	for c < size {
		c <<= 1
	}
	return c
}
