package vhostuser

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// tcpFrame is an Ethernet/IPv4/TCP segment (or IPv6 if v6) with a
// payload of pay bytes and a complete checksum.
func tcpFrame(v6 bool, pay int) []byte {
	ipLen, et := 20, uint16(wire.EtherTypeIPv4)
	if v6 {
		ipLen, et = 40, wire.EtherTypeIPv6
	}
	l4 := 14 + ipLen
	p := make([]byte, l4+20+pay)
	wire.Ethernet(p).Set([6]byte{2, 0, 0, 0, 0, 1}, [6]byte{2, 0, 0, 0, 0, 2}, et)
	var pseudo uint32
	if v6 {
		s, d := [16]byte{0xfd, 15: 2}, [16]byte{0xfd, 15: 1}
		wire.IPv6(p[14:]).SetHeader(20+pay, wire.ProtoTCP, 64, s, d)
		pseudo = wire.PseudoHeaderSum(s[:], d[:], wire.ProtoTCP, 20+pay)
	} else {
		s, d := [4]byte{192, 0, 2, 2}, [4]byte{192, 0, 2, 1}
		wire.IPv4(p[14:]).SetHeader(20+20+pay, 1, 64, wire.ProtoTCP, s, d)
		pseudo = wire.PseudoHeaderSum(s[:], d[:], wire.ProtoTCP, 20+pay)
	}
	th := wire.TCP(p[l4:])
	th.SetPorts(40000, 80)
	th.SetSeqAck(1, 1)
	th.SetFlagsWindow(20, wire.TCPAck, 1000)
	for i := range pay {
		p[l4+20+i] = byte(i*7 + 3)
	}
	th.SetChecksum(wire.Fold(wire.Checksum(p[l4:], pseudo)))
	return p
}

// txSplit makes frame p available on the transmit queue with header hdr
// (nil: zeros), the frame split over descriptors of the given sizes (the
// last takes the rest), and returns the head and the frame's guest
// address.
func txSplit(q *fakeQueue, hdr, p []byte, sizes ...int) (uint16, uint64) {
	h := q.g.alloc(virtioNetHdrSize)
	hb := q.g.at(h, virtioNetHdrSize)
	clear(hb)
	copy(hb, hdr)
	b := q.g.alloc(len(p))
	copy(q.g.at(b, len(p)), p)
	segs := []seg{{h, virtioNetHdrSize, false}}
	off := 0
	for _, n := range append(sizes, len(p)) {
		n = min(n, len(p)-off)
		if n > 0 {
			segs = append(segs, seg{b + uint64(off), uint32(n), false})
			off += n
		}
	}
	return q.addChain(segs...), b
}

func readOne(t *testing.T, d *Device, q *fakeQueue) *link.Frame {
	t.Helper()
	q.doKick()
	frames := newFrames(1)
	if n, err := d.ReadBatch(frames); n != 1 || err != nil {
		t.Fatalf("ReadBatch: %d %v", n, err)
	}
	return frames[0]
}

// A TCP segment's payload stays in guest memory: the frame has the
// headers, privately; a socket written from the Ext gets what the guest's
// memory holds at that moment (no copy was made); the chain's used entry
// waits for the release.
func TestTransmitExt(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		r := newRig(t, Config{})
		f := r.connect(defaultFeatures)
		q := f.q[txQ]
		p := tcpFrame(v6, 8000)
		hl := len(p) - 8000
		head, gpa := txSplit(q, nil, p, 30, 3000, 1)
		fr := readOne(t, r.d, q)
		if fr.Ext == nil || fr.ExtOff != hl || len(fr.Data) != len(p) {
			t.Fatalf("v6 %v: Ext %v at %d of %d bytes, want the payload at %d of %d", v6, fr.Ext, fr.ExtOff, len(fr.Data), hl, len(p))
		}
		if !bytes.Equal(fr.Data[:hl], p[:hl]) {
			t.Fatal("headers not copied")
		}
		if u := q.takeUsed(); len(u) != 0 {
			t.Fatalf("used entries %v published while the payload is lent", u)
		}
		// The guest rewrites its buffer: the headers we parse stay, the
		// payload that goes to the socket is the memory's.
		g := r.g.at(gpa, len(p))
		g[20] ^= 0xff
		for i := hl; i < len(g); i++ {
			g[i] = byte(i)
		}
		if !bytes.Equal(fr.Data[:hl], p[:hl]) {
			t.Fatal("headers changed with guest memory")
		}
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20)
		w, err := unix.Writev(fds[0], fr.Ext.Segs())
		if err != nil || w != 8000 {
			t.Fatalf("writev from the Ext: %d %v", w, err)
		}
		got := make([]byte, 8000)
		if _, err := unix.Read(fds[1], got); err != nil {
			t.Fatal(err)
		}
		unix.Close(fds[0])
		unix.Close(fds[1])
		if !bytes.Equal(got, g[hl:]) {
			t.Fatal("the socket did not get the guest memory's bytes")
		}
		fr.Release()
		if u := q.takeUsed(); len(u) != 1 || u[0].id != head {
			t.Fatalf("used entries %v after release, want head %d", u, head)
		}
		if s := &r.d.Stats; s.Ext.Load() != 1 || s.ExtBytes.Load() != 8000 || s.ExtCopiedBytes.Load() != 0 {
			t.Errorf("Ext %d, ExtBytes %d, copied %d", s.Ext.Load(), s.ExtBytes.Load(), s.ExtCopiedBytes.Load())
		}
	}
}

// Flatten makes the frame what the copy would have been, with the
// checksum the guest left to us (NEEDS_CSUM) completed, and gives the
// chain back.
func TestTransmitExtFlatten(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	q := f.q[txQ]
	p := tcpFrame(false, 5000)
	want := append([]byte(nil), p...)
	l4 := p[34:]
	l4[16], l4[17] = 0, 0
	src, dst := p[26:30], p[30:34]
	binary.BigEndian.PutUint16(l4[16:], ^wire.Fold(wire.PseudoHeaderSum(src, dst, wire.ProtoTCP, len(l4))))
	hdr := make([]byte, virtioNetHdrSize)
	hdr[0] = hdrFNeedsCsum
	binary.LittleEndian.PutUint16(hdr[6:], 34)
	binary.LittleEndian.PutUint16(hdr[8:], 16)
	head, _ := txSplit(q, hdr, p, 100, 1)
	fr := readOne(t, r.d, q)
	if fr.Ext == nil {
		t.Fatal("no Ext")
	}
	var parsed wire.Parsed
	if err := wire.ParseFrameTrustedL4(fr.Data, &parsed); err != nil || parsed.Payload != fr.ExtOff {
		t.Fatalf("parse of the headers: %v, payload at %d", err, parsed.Payload)
	}
	if !fr.Flatten() || fr.Ext != nil {
		t.Fatal("Flatten failed")
	}
	if !bytes.Equal(fr.Data, want) {
		t.Fatal("flattened frame differs from the segment with its checksum")
	}
	if u := q.takeUsed(); len(u) != 1 || u[0].id != head {
		t.Fatalf("used entries %v after Flatten, want head %d", u, head)
	}
	if c := r.d.Stats.ExtCopiedBytes.Load(); c != 5000 {
		t.Errorf("ExtCopiedBytes %d, want 5000", c)
	}
	fr.Release()
	if u := q.takeUsed(); len(u) != 0 {
		t.Fatalf("used entries %v after a second release", u)
	}
}

// Frames that are not TCP segments with enough payload, and every frame
// with Config.Copy, are copied whole and their chains used at once.
func TestTransmitExtNotTaken(t *testing.T) {
	udp := tcpFrame(false, 5000)
	udp[14+9] = wire.ProtoUDP
	frag := tcpFrame(false, 5000)
	frag[14+6] = 0x20 // more fragments
	for _, c := range []struct {
		name string
		cfg  Config
		p    []byte
	}{
		{"small", Config{}, tcpFrame(false, 1000)},
		{"udp", Config{}, udp},
		{"fragment", Config{}, frag},
		{"copy", Config{Copy: true}, tcpFrame(true, 5000)},
	} {
		r := newRig(t, c.cfg)
		f := r.connect(defaultFeatures)
		q := f.q[txQ]
		txSplit(q, nil, c.p, 64)
		fr := readOne(t, r.d, q)
		if fr.Ext != nil || !bytes.Equal(fr.Data, c.p) {
			t.Errorf("%s: Ext %v, frame equal %v", c.name, fr.Ext, bytes.Equal(fr.Data, c.p))
		}
		if u := q.takeUsed(); len(u) != 1 {
			t.Errorf("%s: used entries %v", c.name, u)
		}
	}
}

// A release after the queue stopped (a flow that held on longer than
// the stop waits for) publishes nothing into the old ring; after a new
// memory table the old memory stays mapped until then.
func TestTransmitExtAfterStop(t *testing.T) {
	old := drainWait
	drainWait = 10 * time.Millisecond
	t.Cleanup(func() { drainWait = old })
	r := newRig(t, Config{Log: quietLog()})
	f := r.connect(defaultFeatures)
	q := f.q[txQ]
	p := tcpFrame(false, 4000)
	txSplit(q, nil, p)
	fr := readOne(t, r.d, q)
	if fr.Ext == nil {
		t.Fatal("no Ext")
	}
	half := uint64(fakeMemSize / 2)
	mp, fds := memTablePayload(r.g.fd,
		regionDesc{GPA: fakeGPA, Size: half, QVA: fakeQVA},
		regionDesc{GPA: fakeGPA + half, Size: half, QVA: fakeQVA + half, MmapOffset: half})
	if st := f.acked(reqSetMemTable, mp, fds...); st != 0 {
		t.Fatalf("SET_MEM_TABLE status %d", st)
	}
	got := make([]byte, len(p))
	copy(got, fr.Data[:fr.ExtOff])
	if !fr.Ext.CopyTo(got, fr.ExtOff) || !bytes.Equal(got, p) {
		t.Fatal("the Ext's memory changed with the memory table")
	}
	f.call(reqGetVringBase, state(txQ, 0))
	q.takeUsed()
	fr.Release()
	if u := q.takeUsed(); len(u) != 0 {
		t.Fatalf("used entries %v published after the queue stopped", u)
	}
}

// A stop of the rings waits for the flows to let go of guest memory they
// may still read (an Ext) or write (a loan not yet committed): the used
// entry is published and only then does the front end get its answer,
// after which the guest may reuse the buffers.
func TestStopWaitsForFlows(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	q := f.q[txQ]
	txSplit(q, nil, tcpFrame(false, 4000))
	fr := readOne(t, r.d, q)
	if fr.Ext == nil {
		t.Fatal("no Ext")
	}
	rxBuffers(f.q[rxQ], 8, 4096)
	lent := r.d.Lend(54, 3000)
	if lent == nil {
		t.Fatal("Lend refused")
	}
	answered := make(chan struct{})
	go func() {
		f.call(reqGetVringBase, state(txQ, 0))
		close(answered)
	}()
	select {
	case <-answered:
		t.Fatal("GET_VRING_BASE answered while a flow holds transmit memory")
	case <-time.After(100 * time.Millisecond):
	}
	if r.d.Lend(54, 3000) != nil {
		t.Error("Lend lends while a ring stops")
	}
	fr.Release()
	select {
	case <-answered:
		t.Fatal("GET_VRING_BASE answered while a loan may still be written")
	case <-time.After(100 * time.Millisecond):
	}
	lent.Loan.Commit(0, 0, 0)
	select {
	case <-answered:
	case <-time.After(5 * time.Second):
		t.Fatal("GET_VRING_BASE not answered after the flows let go")
	}
	lent.Release()
	if u := q.takeUsed(); len(u) != 1 {
		t.Errorf("used entries %v: the Ext's chain was not given back before the stop", u)
	}
}

// TestTransmitExtCap: flows that keep their segments (a slow flow's inbox
// is as deep as the ring) hold at most half the guest's transmit ring in
// its memory; past that the device copies, so the guest keeps buffers to
// send with.
func TestTransmitExtCap(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	q := f.q[txQ]
	half := int(r.d.vq[txQ].num / 2)
	var held []*link.Frame
	for i := 0; i < half+3; i++ {
		txSplit(q, nil, tcpFrame(false, 2000), 3000)
		fr := readOne(t, r.d, q)
		if (fr.Ext != nil) != (i < half) {
			t.Fatalf("segment %d: Ext %v with %d held, want one only below %d", i, fr.Ext, i, half)
		}
		held = append(held, fr)
	}
	if c := r.d.Stats.ExtCapped.Load(); c != 3 {
		t.Fatalf("%d capped, want 3", c)
	}
	for _, fr := range held {
		fr.Release()
	}
	txSplit(q, nil, tcpFrame(false, 2000), 3000)
	if fr := readOne(t, r.d, q); fr.Ext == nil {
		t.Fatal("no Ext once the flows let go")
	} else {
		fr.Release()
	}
}
