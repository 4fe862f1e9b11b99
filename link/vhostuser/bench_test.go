package vhostuser

import (
	"testing"

	"github.com/gopasta/gopasta/link"
)

// BenchmarkWriteBatch: host to guest, 64 KiB frames into 4 KiB mergeable
// buffers (what Linux posts), 8 frames a batch.
func BenchmarkWriteBatch(b *testing.B) {
	r := newRig(b, Config{})
	f := r.connect(defaultFeatures)
	q := f.q[rxQ]
	const size, bufSize, batch = 65534, 4096, 8
	bufs := make([]uint64, fakeQSize)
	for i := range bufs {
		bufs[i] = r.g.alloc(bufSize)
	}
	frames := make([]*link.Frame, batch)
	for i := range frames {
		frames[i] = &link.Frame{Data: testFrame(i, size)}
	}
	per := (size + 12 + bufSize - 1) / bufSize
	b.SetBytes(size * batch)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		// The driver recycles what we used, as NAPI does.
		for j := range per * batch {
			q.addChain(seg{bufs[j%fakeQSize], bufSize, true})
		}
		if err := r.d.WriteBatch(frames); err != nil {
			b.Fatal(err)
		}
		q.usedSeen = q.availIdx
	}
}

// BenchmarkReadBatch: guest to host, 64 KiB frames, 16 a batch.
func BenchmarkReadBatch(b *testing.B) {
	r := newRig(b, Config{})
	f := r.connect(defaultFeatures)
	q := f.q[txQ]
	const size, batch = 65534, 16
	hdr := r.g.alloc(12)
	buf := r.g.alloc(size)
	frames := newFrames(batch)
	b.SetBytes(size * batch)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		for range batch {
			q.addChain(seg{hdr, 12, false}, seg{buf, size, false})
		}
		n := 0
		for n < batch {
			k, err := r.d.ReadBatch(frames[n:])
			if err != nil {
				b.Fatal(err)
			}
			n += k
		}
	}
}
