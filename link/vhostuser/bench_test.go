package vhostuser

import (
	"encoding/binary"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

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

// BenchmarkSocketToGuest: a host TCP socket's bytes into the guest's 4 KiB
// mergeable buffers, 64 KiB frames: read into a frame and copied into
// the guest (copy), or read straight into lent guest buffers (lend). The
// driver posts every buffer the device used again, as NAPI does.
func BenchmarkSocketToGuest(b *testing.B) {
	for _, lend := range []bool{false, true} {
		name := "copy"
		if lend {
			name = "lend"
		}
		b.Run(name, func(b *testing.B) {
			r := newRig(b, Config{})
			f := r.connect(defaultFeatures)
			q := f.q[rxQ]
			const hlen, pay, bufSize = 54, 65480, 4096
			for range fakeQSize {
				q.addChain(seg{r.g.alloc(bufSize), bufSize, true})
			}
			c, fd := benchPair(b)
			go func() {
				p := make([]byte, 1<<20)
				for {
					if _, err := c.Write(p); err != nil {
						return
					}
				}
			}()
			frame := link.GetFrame(hlen + pay)
			iov := make([]unix.Iovec, maxLoanSegs)
			batch := make([]*link.Frame, 1)
			b.SetBytes(pay)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				fr := frame
				if lend {
					if fr = r.d.Lend(hlen, pay); fr == nil {
						b.Fatal("Lend refused")
					}
					n, err := readv(fd, iov, fr.Loan.Payload())
					if err != nil {
						b.Fatal(err)
					}
					fr.Loan.Commit(n, 34, 16)
				} else {
					n, err := unix.Read(fd, fr.Data[hlen:hlen+pay])
					if err != nil {
						b.Fatal(err)
					}
					fr.Data = fr.Data[:hlen+n]
				}
				batch[0] = fr
				if err := r.d.WriteBatch(batch); err != nil {
					b.Fatal(err)
				}
				if lend {
					fr.Release()
				} else {
					fr.Data = fr.Data[:cap(fr.Data)]
				}
				idx := binary.LittleEndian.Uint16(q.g.at(q.used+2, 2))
				for ; q.usedSeen != idx; q.usedSeen++ {
					e := q.g.at(q.used+4+8*uint64(q.usedSeen%fakeQSize), 8)
					q.publish(uint16(binary.LittleEndian.Uint32(e)))
				}
			}
		})
	}
}

// readv is unix.Readv without its allocation, as the actors do it.
func readv(fd int, iov []unix.Iovec, segs [][]byte) (int, error) {
	for i, s := range segs {
		iov[i].Base = &s[0]
		iov[i].SetLen(len(s))
	}
	n, _, e := unix.Syscall(unix.SYS_READV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(segs)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
