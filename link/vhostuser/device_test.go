package vhostuser

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// txFrame makes frame p available on the guest's transmit queue behind a
// zero virtio-net header, the header and the frame in separate
// descriptors as Linux does.
func txFrame(q *fakeQueue, p []byte) uint16 {
	h := q.g.alloc(virtioNetHdrSize)
	copy(q.g.at(h, virtioNetHdrSize), make([]byte, virtioNetHdrSize))
	b := q.g.alloc(len(p))
	copy(q.g.at(b, len(p)), p)
	return q.addChain(seg{h, virtioNetHdrSize, false}, seg{b, uint32(len(p)), false})
}

// rxBuffers posts n receive buffers of size bytes each.
func rxBuffers(q *fakeQueue, n, size int) []uint64 {
	var addrs []uint64
	for range n {
		a := q.g.alloc(size)
		q.addChain(seg{a, uint32(size), true})
		addrs = append(addrs, a)
	}
	return addrs
}

func TestHandshakeAndTransmit(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	frames := newFrames(8)
	want := [][]byte{testFrame(1, 60), testFrame(2, 1514), testFrame(3, 65535)}
	var heads []uint16
	for _, p := range want {
		heads = append(heads, txFrame(f.q[txQ], p))
	}
	f.q[txQ].doKick()
	got := 0
	for got < len(want) {
		n, err := r.d.ReadBatch(frames[got:])
		if err != nil {
			t.Fatal(err)
		}
		got += n
	}
	for i, p := range want {
		if !bytes.Equal(frames[i].Data, p) {
			t.Errorf("frame %d: got %d bytes, want %d (content differs: %v)", i, len(frames[i].Data), len(p), len(frames[i].Data) == len(p))
		}
	}
	used := f.q[txQ].takeUsed()
	if len(used) != len(want) {
		t.Fatalf("used entries %v, want %d", used, len(want))
	}
	for i, u := range used {
		if u.id != heads[i] || u.len != 0 {
			t.Errorf("used[%d] = %+v, want id %d len 0", i, u, heads[i])
		}
	}
	// The first batch after a start always interrupts, once the reader
	// comes back for more (txIrq): not before.
	if f.q[txQ].called() {
		t.Error("interrupted before the reader came back")
	}
	comeBack(t, r.d)
	if !f.q[txQ].called() {
		t.Error("no interrupt after the transmit queue was consumed")
	}
	if r.d.Stats.RxFrames.Load() != 3 {
		t.Errorf("RxFrames = %d", r.d.Stats.RxFrames.Load())
	}
}

func TestReceiveMergeable(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	q := f.q[rxQ]
	bufs := rxBuffers(q, 8, 2048)
	q.doKick()
	p := testFrame(9, 5000)
	if err := r.d.WriteBatch([]*link.Frame{{Data: p}}); err != nil {
		t.Fatal(err)
	}
	used := q.takeUsed()
	// 12 + 5000 bytes: 2048 + 2048 + 916.
	if len(used) != 3 || used[0].len != 2048 || used[1].len != 2048 || used[2].len != 12+5000-4096 {
		t.Fatalf("used = %+v", used)
	}
	hdr := r.g.at(bufs[0], virtioNetHdrSize)
	if hdr[0] != hdrFDataValid || binary.LittleEndian.Uint16(hdr[10:]) != 3 {
		t.Errorf("header %x: want DATA_VALID and num_buffers 3", hdr)
	}
	var got []byte
	got = append(got, r.g.at(bufs[0], 2048)[12:]...)
	got = append(got, r.g.at(bufs[1], 2048)...)
	got = append(got, r.g.at(bufs[2], int(used[2].len))...)
	if !bytes.Equal(got, p) {
		t.Error("frame corrupted across merged buffers")
	}
	if !q.called() {
		t.Error("no interrupt")
	}
}

// Without mergeable buffers a frame must fit one chain: one that does not
// is dropped, and the buffer stays for the next frame.
func TestReceiveWithoutMergeable(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures &^ (1 << fNetMrgRxbuf))
	q := f.q[rxQ]
	bufs := rxBuffers(q, 1, 1600)
	q.doKick()
	big, small := testFrame(1, 3000), testFrame(2, 1000)
	if err := r.d.WriteBatch([]*link.Frame{{Data: big}, {Data: small}}); err != nil {
		t.Fatal(err)
	}
	used := q.takeUsed()
	if len(used) != 1 || used[0].len != 12+1000 {
		t.Fatalf("used = %+v", used)
	}
	if !bytes.Equal(r.g.at(bufs[0]+12, 1000), small) {
		t.Error("small frame corrupted")
	}
	if r.d.Stats.TxDropped.Load() != 1 {
		t.Errorf("TxDropped = %d, want 1", r.d.Stats.TxDropped.Load())
	}
}

// WriteBatch waits for the guest to post buffers, and the frame arrives
// whole once it does.
func TestReceiveWaitsForBuffers(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	q := f.q[rxQ]
	p := testFrame(3, 3000)
	done := make(chan error, 1)
	go func() { done <- r.d.WriteBatch([]*link.Frame{{Data: p}}) }()
	bufs := rxBuffers(q, 1, 2048) // not enough for 3012 bytes
	q.doKick()
	select {
	case <-done:
		t.Fatal("WriteBatch returned without enough buffers")
	case <-time.After(100 * time.Millisecond):
	}
	bufs = append(bufs, rxBuffers(q, 1, 2048)...)
	q.doKick()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WriteBatch still waiting after buffers were posted")
	}
	used := q.takeUsed()
	if len(used) != 2 {
		t.Fatalf("used = %+v", used)
	}
	got := append(append([]byte(nil), r.g.at(bufs[0], 2048)[12:]...), r.g.at(bufs[1], int(used[1].len))...)
	if !bytes.Equal(got, p) {
		t.Error("frame corrupted")
	}
}

// Malformed rings stop the device with an error, close the connection,
// and leave the process and the other side alone.
func TestMalformedRings(t *testing.T) {
	cases := []struct {
		name   string
		queue  int
		break_ func(q *fakeQueue)
	}{
		{"loop", txQ, func(q *fakeQueue) {
			q.setDesc(5, fakeGPA+fakeBufBase, 100, descFNext, 6)
			q.setDesc(6, fakeGPA+fakeBufBase, 100, descFNext, 5)
			q.publish(5)
		}},
		{"index out of table", txQ, func(q *fakeQueue) {
			q.setDesc(5, fakeGPA+fakeBufBase, 100, descFNext, fakeQSize)
			q.publish(5)
		}},
		{"head out of table", txQ, func(q *fakeQueue) { q.publish(fakeQSize + 3) }},
		{"address outside memory", txQ, func(q *fakeQueue) {
			q.setDesc(5, fakeGPA+fakeMemSize+4096, 100, 0, 0)
			q.publish(5)
		}},
		{"length past the end", txQ, func(q *fakeQueue) {
			q.setDesc(5, fakeGPA+fakeMemSize-10, 100, 0, 0)
			q.publish(5)
		}},
		{"address wraps", txQ, func(q *fakeQueue) {
			q.setDesc(5, ^uint64(0)-10, 100, 0, 0)
			q.publish(5)
		}},
		{"avail index jump", txQ, func(q *fakeQueue) {
			binary.LittleEndian.PutUint16(q.g.at(q.avail+2, 2), q.availIdx+fakeQSize+1)
		}},
		{"nested indirect", txQ, func(q *fakeQueue) {
			tbl := q.g.alloc(32)
			d := q.g.at(tbl, 32)
			binary.LittleEndian.PutUint64(d[0:], tbl)
			binary.LittleEndian.PutUint32(d[8:], 32)
			binary.LittleEndian.PutUint16(d[12:], descFIndirect)
			q.setDesc(5, tbl, 32, descFIndirect, 0)
			q.publish(5)
		}},
		{"indirect loop", txQ, func(q *fakeQueue) {
			tbl := q.g.alloc(32)
			d := q.g.at(tbl, 32)
			for i := range 2 {
				e := d[16*i:]
				binary.LittleEndian.PutUint64(e[0:], fakeGPA+fakeBufBase)
				binary.LittleEndian.PutUint32(e[8:], 64)
				binary.LittleEndian.PutUint16(e[12:], descFNext)
				binary.LittleEndian.PutUint16(e[14:], uint16(1-i))
			}
			q.setDesc(5, tbl, 32, descFIndirect, 0)
			q.publish(5)
		}},
		{"indirect table ragged", txQ, func(q *fakeQueue) {
			q.setDesc(5, q.g.alloc(40), 40, descFIndirect, 0)
			q.publish(5)
		}},
		{"receive buffer smaller than header", rxQ, func(q *fakeQueue) {
			q.addChain(seg{q.g.alloc(8), 8, true})
		}},
		{"receive chain without a buffer", rxQ, func(q *fakeQueue) {
			q.addChain(seg{q.g.alloc(64), 64, true})
			q.addChain(seg{q.g.alloc(64), 64, false})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, Config{})
			f := r.connect(defaultFeatures)
			q := f.q[tc.queue]
			var rd chan int
			if tc.queue == txQ {
				rd = readAsync(r.d, newFrames(4))
			}
			tc.break_(q)
			q.doKick()
			if tc.queue == rxQ {
				if err := r.d.WriteBatch([]*link.Frame{{Data: testFrame(1, 100)}}); err != nil {
					t.Fatal(err)
				}
			}
			waitUntil(t, "the device to stop", func() bool { return r.d.Stats.Broken.Load() == 1 })
			if _, _, ok := f.recv(); ok {
				t.Error("connection still open after a malformed ring")
			}
			if rd != nil {
				select {
				case n := <-rd:
					t.Fatalf("ReadBatch returned %d from a broken ring", n)
				case <-time.After(50 * time.Millisecond):
				}
			}
			// The device serves the next front end.
			waitUntil(t, "the session to end", func() bool { return !r.d.Connected() })
			r.g = newFakeGuest(t) // a new VM: fresh memory
			f2 := r.connect(defaultFeatures)
			txFrame(f2.q[txQ], testFrame(5, 80))
			f2.q[txQ].doKick()
			if rd == nil {
				rd = readAsync(r.d, newFrames(4))
			}
			select {
			case n := <-rd:
				if n != 1 {
					t.Fatalf("ReadBatch after reconnecting: %d", n)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no frame after reconnecting")
			}
		})
	}
}

// Stopping a ring (GET_VRING_BASE, as QEMU does when the guest resets its
// device) reports where we stopped; frames for a stopped guest are
// dropped, and the restarted ring continues from the base.
func TestStopAndRestart(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	for i := range 3 {
		txFrame(f.q[txQ], testFrame(i, 100))
	}
	f.q[txQ].doKick()
	frames := newFrames(8)
	n := 0
	for n < 3 {
		k, err := r.d.ReadBatch(frames[n:])
		if err != nil {
			t.Fatal(err)
		}
		n += k
	}
	for _, q := range f.q {
		p := f.call(reqGetVringBase, state(uint32(q.idx), 0))
		if i, base := binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:]); i != uint32(q.idx) || base != uint32(q.availIdx) {
			t.Errorf("GET_VRING_BASE(%d) = %d %d, want base %d", q.idx, i, base, q.availIdx)
		}
	}
	if err := r.d.WriteBatch([]*link.Frame{{Data: testFrame(1, 100)}}); err != nil {
		t.Fatal(err)
	}
	if r.d.Stats.TxDropped.Load() != 1 {
		t.Errorf("TxDropped = %d after writing to a stopped queue", r.d.Stats.TxDropped.Load())
	}
	// Restart: the front end sets the base and the kick again.
	q := f.q[txQ]
	f.send(reqSetVringBase, 0, state(txQ, uint32(q.availIdx)))
	f.send(reqSetVringKick, 0, u64(txQ), q.kick)
	want := testFrame(7, 200)
	txFrame(q, want)
	q.doKick()
	k, err := r.d.ReadBatch(frames)
	if err != nil || k != 1 || !bytes.Equal(frames[0].Data, want) {
		t.Fatalf("after restart: %d frames, %v", k, err)
	}
}

// A new memory table replaces the old one; the rings follow it.
func TestMemTableChange(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	// The same memory again, from another fd and split in two regions
	// (at an offset into the file for the second), as after a hotplug.
	half := uint64(fakeMemSize / 2)
	p, fds := memTablePayload(r.g.fd,
		regionDesc{GPA: fakeGPA, Size: half, QVA: fakeQVA},
		regionDesc{GPA: fakeGPA + half, Size: half, QVA: fakeQVA + half, MmapOffset: half})
	if st := f.acked(reqSetMemTable, p, fds...); st != 0 {
		t.Fatalf("SET_MEM_TABLE status %d", st)
	}
	// A frame straddling the two regions.
	q := f.q[txQ]
	want := testFrame(4, 3000)
	a := fakeGPA + half - 1000
	copy(r.g.at(a, 12), make([]byte, 12))
	copy(r.g.at(a+12, len(want)), want)
	q.addChain(seg{a, uint32(12 + len(want)), false})
	q.doKick()
	frames := newFrames(4)
	n, err := r.d.ReadBatch(frames)
	if err != nil || n != 1 || !bytes.Equal(frames[0].Data, want) {
		t.Fatalf("frame across regions: %d, %v", n, err)
	}
}

// Requests that are wrong get a failure ack or end the session; they
// never crash the device.
func TestBadRequests(t *testing.T) {
	r := newRig(t, Config{})
	f := dialFront(t, r.path, r.g)
	f.send(reqSetProtocolFeatures, 0, u64(1<<pfReplyAck))
	if st := f.acked(reqSetVringNum, state(0, 1000)); st == 0 {
		t.Error("queue size 1000 accepted")
	}
	waitUntil(t, "the session to end", func() bool { return !r.d.Connected() })

	for _, tc := range []struct {
		name string
		req  uint32
		p    []byte
	}{
		{"queue index", reqSetVringNum, state(7, 256)},
		{"short payload", reqSetFeatures, []byte{1, 2}},
		{"mem table without fd", reqSetMemTable, func() []byte {
			p, _ := memTablePayload(0, regionDesc{GPA: 0, Size: 4096, QVA: 0})
			return p
		}()},
		{"wrapping region", reqSetMemTable, func() []byte {
			p, _ := memTablePayload(0, regionDesc{GPA: ^uint64(0) - 10, Size: 4096})
			return p
		}()},
		{"region larger than the file", reqSetMemTable, func() []byte {
			p, _ := memTablePayload(0, regionDesc{GPA: 0, Size: 2 * fakeMemSize})
			return p
		}()},
		{"region beyond the file", reqSetMemTable, func() []byte {
			p, _ := memTablePayload(0, regionDesc{GPA: 0, Size: 4096, MmapOffset: ^uint64(0) - 100})
			return p
		}()},
		{"kick without fd", reqSetVringKick, u64(0)},
		{"ring outside memory", reqSetVringAddr, make([]byte, 40)},
	} {
		f := dialFront(t, r.path, r.g)
		switch tc.req {
		case reqSetMemTable:
			if tc.name == "mem table without fd" {
				f.send(tc.req, 0, tc.p)
			} else {
				f.send(tc.req, 0, tc.p, r.g.fd)
			}
		case reqSetVringAddr:
			p, fds := memTablePayload(r.g.fd, regionDesc{GPA: fakeGPA, Size: fakeMemSize, QVA: fakeQVA})
			f.send(reqSetMemTable, 0, p, fds...)
			f.send(reqSetVringNum, 0, state(0, 256))
			f.send(tc.req, 0, tc.p)
		default:
			f.send(tc.req, 0, tc.p)
		}
		if _, _, ok := f.recv(); ok {
			t.Errorf("%s: connection still open", tc.name)
		}
		waitUntil(t, "the session to end", func() bool { return !r.d.Connected() })
	}
}

func TestRefuseSecondAndOneOff(t *testing.T) {
	var refused atomic.Int32
	r := newRig(t, Config{OneOff: true, OnRefused: func(int) { refused.Add(1) }})
	f := r.connect(defaultFeatures)
	f2 := dialFront(t, r.path, r.g)
	if _, _, ok := f2.recv(); ok {
		t.Error("second front end not refused")
	}
	waitUntil(t, "the refusal", func() bool { return refused.Load() == 1 })
	rd := readAsync(r.d, newFrames(2))
	f.c.Close()
	select {
	case n := <-rd:
		if n != -1 {
			t.Fatalf("ReadBatch = %d after the one-off front end left", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadBatch still blocked after the one-off front end left")
	}
	if err := r.d.WriteBatch([]*link.Frame{{Data: testFrame(1, 60)}}); !errors.Is(err, link.ErrClosed) {
		t.Errorf("WriteBatch after the end: %v", err)
	}
}

func TestReconnect(t *testing.T) {
	var connects atomic.Int32
	r := newRig(t, Config{OnConnect: func(int) { connects.Add(1) }})
	for i := range 3 {
		f := r.connect(defaultFeatures)
		want := testFrame(i, 500)
		txFrame(f.q[txQ], want)
		f.q[txQ].doKick()
		frames := newFrames(2)
		n, err := r.d.ReadBatch(frames)
		if err != nil || n != 1 || !bytes.Equal(frames[0].Data, want) {
			t.Fatalf("client %d: %d %v", i, n, err)
		}
		f.c.Close()
		waitUntil(t, "the session to end", func() bool { return !r.d.Connected() })
		r.g = newFakeGuest(t) // the next VM has other memory
	}
	if connects.Load() != 3 {
		t.Errorf("OnConnect ran %d times", connects.Load())
	}
}

func TestCloseUnblocks(t *testing.T) {
	r := newRig(t, Config{})
	r.connect(defaultFeatures)
	rd := readAsync(r.d, newFrames(2))
	wr := make(chan error, 1)
	go func() { wr <- r.d.WriteBatch([]*link.Frame{{Data: testFrame(1, 100)}}) }()
	time.Sleep(50 * time.Millisecond)
	r.d.Close()
	if n := <-rd; n != -1 {
		t.Errorf("ReadBatch after Close: %d", n)
	}
	select {
	case <-wr:
	case <-time.After(5 * time.Second):
		t.Fatal("WriteBatch still blocked after Close")
	}
}

// The data path allocates nothing per frame.
func TestZeroAllocs(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	frames := newFrames(4)
	p := testFrame(1, 1500)
	hdr := r.g.alloc(12)
	buf := r.g.alloc(1500)
	copy(r.g.at(buf, 1500), p)
	rxb := r.g.alloc(2048)
	out := []*link.Frame{{Data: p}}
	round := func() {
		f.q[txQ].addChain(seg{hdr, 12, false}, seg{buf, 1500, false})
		if n, err := r.d.ReadBatch(frames); n != 1 || err != nil {
			t.Fatalf("ReadBatch %d %v", n, err)
		}
		f.q[rxQ].addChain(seg{rxb, 2048, true})
		if err := r.d.WriteBatch(out); err != nil {
			t.Fatal(err)
		}
	}
	round()
	if a := testing.AllocsPerRun(200, round); a != 0 {
		t.Errorf("%.1f allocations per frame each way", a)
	}
}

// With VIRTIO_NET_F_CSUM the guest leaves the TCP checksum to us
// (NEEDS_CSUM, the pseudo-header sum in the field): the frame we hand on
// carries the complete checksum. Offsets outside the frame drop it.
func TestTransmitNeedsCsum(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	q := f.q[txQ]
	const l4len = 20 + 1000
	p := testFrame(1, 14+20+l4len)
	ip := p[14:34]
	src, dst := []byte{192, 0, 2, 2}, []byte{192, 0, 2, 1}
	copy(ip[12:], src)
	copy(ip[16:], dst)
	l4 := p[34:]
	pseudo := wire.PseudoHeaderSum(src, dst, wire.ProtoTCP, l4len)
	binary.BigEndian.PutUint16(l4[16:], ^wire.Fold(pseudo))
	send := func(start, off uint16) {
		h := r.g.alloc(12)
		hdr := r.g.at(h, 12)
		clear(hdr)
		hdr[0] = hdrFNeedsCsum
		binary.LittleEndian.PutUint16(hdr[6:], start)
		binary.LittleEndian.PutUint16(hdr[8:], off)
		b := r.g.alloc(len(p))
		copy(r.g.at(b, len(p)), p)
		q.addChain(seg{h, 12, false}, seg{b, uint32(len(p)), false})
	}
	send(34, 16)
	send(34, uint16(len(p))) // offset past the end
	q.doKick()
	frames := newFrames(4)
	n, err := r.d.ReadBatch(frames)
	if err != nil || n != 1 {
		t.Fatalf("ReadBatch: %d %v", n, err)
	}
	if got := wire.Fold(wire.Checksum(frames[0].Data[34:], pseudo)); got != 0 {
		t.Errorf("checksum not completed: verification gives %#x", got)
	}
	if r.d.Stats.RxDropped.Load() != 1 {
		t.Errorf("RxDropped = %d, want 1 (bad csum_offset)", r.d.Stats.RxDropped.Load())
	}
}

// A frame larger than the whole receive ring can hold is dropped, not
// waited for: no buffer the guest could add would make it fit.
func TestReceiveFrameLargerThanRing(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	q := f.q[rxQ]
	rxBuffers(q, fakeQSize, 64) // 16 KiB in all
	q.doKick()
	done := make(chan error, 1)
	go func() { done <- r.d.WriteBatch([]*link.Frame{{Data: testFrame(1, 20000)}, {Data: testFrame(2, 100)}}) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WriteBatch waits for a frame that can never fit")
	}
	if used := q.takeUsed(); len(used) != 2 || used[0].len != 64 || used[1].len != 12+100-64 {
		t.Errorf("used = %+v: want the small frame in two buffers", used)
	}
	if r.d.Stats.TxDropped.Load() != 1 {
		t.Errorf("TxDropped = %d", r.d.Stats.TxDropped.Load())
	}
}

// A front end that resizes a running ring does not crash the device: the
// rings are mapped again for the new size.
func TestResizeRunningRing(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	if st := f.acked(reqSetVringNum, state(txQ, 1024)); st != 0 {
		t.Fatalf("SET_VRING_NUM status %d", st)
	}
	frames := newFrames(4)
	for i := range 3 {
		want := testFrame(i, 100)
		rd := readAsync(r.d, frames)
		time.Sleep(10 * time.Millisecond) // let it wait for a kick
		txFrame(f.q[txQ], want)
		f.q[txQ].doKick()
		select {
		case n := <-rd:
			if n != 1 || !bytes.Equal(frames[0].Data, want) {
				t.Fatalf("ReadBatch %d after the resize: %d", i, n)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no frame %d after the resize", i)
		}
	}
}

// With some buffers posted but too few for the frame, the writer sleeps
// until the guest adds more (asking for a kick past the guest's current
// avail index, which is where the guest is) instead of spinning on the
// ones there are.
func TestReceiveWaitsForEnoughBuffers(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	q := f.q[rxQ]
	rxBuffers(q, 1, 2048)
	var b [8]byte
	unix.Read(q.kick, b[:])
	p := testFrame(3, 5000)
	done := make(chan error, 1)
	go func() { done <- r.d.WriteBatch([]*link.Frame{{Data: p}}) }()
	waitUntil(t, "the writer to sleep", func() bool { return r.d.Stats.Waits.Load() > 0 })
	time.Sleep(20 * time.Millisecond)
	if w := r.d.Stats.Waits.Load(); w != 1 {
		t.Errorf("%d waits for one frame: spinning", w)
	}
	if ev := binary.LittleEndian.Uint16(r.g.at(q.used+4+8*fakeQSize, 2)); ev != q.availIdx {
		t.Errorf("avail_event %d, want the driver's avail index %d", ev, q.availIdx)
	}
	rxBuffers(q, 2, 2048)
	q.doKick()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the writer slept on after the guest added buffers")
	}
	if used := q.takeUsed(); len(used) != 3 {
		t.Errorf("used = %+v", used)
	}
}

// A driver that kicks only when asked (event indexes) and adds receive
// buffers one at a time still gets a frame that needs several: the writer
// asks for a kick at each next buffer, sleeps once per buffer, and the
// frame arrives whole. Before the first buffer, it sleeps without
// spinning.
func TestReceiveBuffersOneAtATime(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	q := f.q[rxQ]
	p := testFrame(5, 7000) // 4 buffers of 2048 with the header
	done := make(chan error, 1)
	go func() { done <- r.d.WriteBatch([]*link.Frame{{Data: p}}) }()
	waitUntil(t, "the writer to sleep", func() bool { return r.d.Stats.TxWaits.Load() > 0 })
	time.Sleep(20 * time.Millisecond)
	if w := r.d.Stats.TxWaits.Load(); w != 1 {
		t.Fatalf("%d waits before any buffer: spinning", w)
	}
	for i := range 4 {
		old := q.availIdx
		rxBuffers(q, 1, 2048)
		q.kickIfAsked(old)
		if i < 3 {
			waitUntil(t, "the writer to sleep again", func() bool { return r.d.Stats.TxWaits.Load() > uint64(i+1) })
		}
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the writer never wrote the frame (%d waits)", r.d.Stats.TxWaits.Load())
	}
	if w := r.d.Stats.TxWaits.Load(); w != 4 {
		t.Errorf("%d waits, want 4: one before each buffer", w)
	}
	var got []byte
	for _, u := range q.takeUsed() {
		got = append(got, q.rxData(u)...)
	}
	if len(got) < virtioNetHdrSize || !bytes.Equal(got[virtioNetHdrSize:], p) {
		t.Errorf("frame corrupted: %d bytes back of %d", len(got)-virtioNetHdrSize, len(p))
	}
	if r.d.Stats.TxInterrupts.Load() == 0 || r.d.Stats.TxInterrupts.Load() != r.d.Stats.Interrupts.Load() {
		t.Errorf("interrupts %d, of them on the receive queue %d: want all, and some",
			r.d.Stats.Interrupts.Load(), r.d.Stats.TxInterrupts.Load())
	}
}
