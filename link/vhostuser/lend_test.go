package vhostuser

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/link"
)

// rxDriver is the fake driver's receive side: buffers of one size, each
// posted again once the device has used it, and the frames reassembled
// from the used ring as Linux's mergeable-buffer path does.
type rxDriver struct {
	t      *testing.T
	q      *fakeQueue
	size   int
	addr   map[uint16]uint64 // head -> buffer
	posted int               // buffers made available, ever
	used   int               // used entries seen, ever
}

func newRxDriver(t *testing.T, q *fakeQueue, n, size int) *rxDriver {
	d := &rxDriver{t: t, q: q, size: size, addr: map[uint16]uint64{}}
	for range n {
		d.post(q.g.alloc(size))
	}
	return d
}

func (d *rxDriver) post(a uint64) {
	d.addr[d.q.addChain(seg{a, uint32(d.size), true})] = a
	d.posted++
}

// frames returns the frames (headers and payload, virtio-net header
// stripped) the device published, with each one's virtio-net header, and
// posts the buffers again. Entries of length zero are runts, given back
// unused: counted, skipped.
func (d *rxDriver) frames() (frames, hdrs [][]byte, runts int) {
	used := d.q.takeUsed()
	d.used += len(used)
	for i := 0; i < len(used); {
		e := used[i]
		a, ok := d.addr[e.id]
		if !ok {
			d.t.Fatalf("used entry for head %d, which was never posted", e.id)
		}
		delete(d.addr, e.id)
		if e.len == 0 {
			runts++
			i++
			d.post(a)
			continue
		}
		b := d.q.g.at(a, int(e.len))
		hdr := append([]byte(nil), b[:virtioNetHdrSize]...)
		nb := int(binary.LittleEndian.Uint16(hdr[10:]))
		if nb == 0 || i+nb > len(used) {
			d.t.Fatalf("num_buffers %d with %d used entries left", nb, len(used)-i)
		}
		p := append([]byte(nil), b[virtioNetHdrSize:]...)
		d.post(a)
		for j := 1; j < nb; j++ {
			e := used[i+j]
			a := d.addr[e.id]
			delete(d.addr, e.id)
			p = append(p, d.q.g.at(a, int(e.len))...)
			d.post(a)
		}
		i += nb
		frames, hdrs = append(frames, p), append(hdrs, hdr)
	}
	return frames, hdrs, runts
}

// tcpPair returns the two ends of a loopback TCP connection, the
// receiving one as a blocking fd of its own.
func tcpPair(t *testing.T) (net.Conn, int) { return benchPair(t) }

func benchPair(t testing.TB) (net.Conn, int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	f, err := s.(*net.TCPConn).File()
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); unix.Close(fd) })
	return c, fd
}

const lendHlen = 54 // Ethernet, IPv4, TCP

func lendHeaders(seq int) []byte {
	h := make([]byte, lendHlen)
	for i := range h {
		h[i] = byte(seq + i)
	}
	return h
}

// Bytes sent through a real TCP connection are read straight into the
// guest's buffers and arrive whole, in order, with the headers in front
// and marked DATA_VALID (no checksum to verify), and each frame's chains are
// consecutive and counted in num_buffers. Every chain comes back: at the
// end all the driver posted was used or is still available.
func TestLendThroughSocket(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	drv := newRxDriver(t, f.q[rxQ], 64, 4096)
	f.q[rxQ].doKick()
	c, fd := tcpPair(t)
	data := make([]byte, 3<<20)
	rand.Read(data)
	go func() {
		c.Write(data)
		c.Close()
	}()
	var got []byte
	sent, lentBytes := 0, 0
	for {
		fr := r.d.Lend(lendHlen, 65000-lendHlen)
		if fr == nil {
			t.Fatal("Lend refused with buffers posted")
		}
		n, err := unix.Readv(fd, fr.Loan.Payload())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			fr.Release()
			break
		}
		copy(fr.Data, lendHeaders(sent))
		fr.Loan.Commit(n, 34, 16)
		if err := r.d.WriteBatch([]*link.Frame{fr}); err != nil {
			t.Fatal(err)
		}
		fr.Release()
		frames, hdrs, _ := drv.frames()
		if len(frames) != 1 {
			t.Fatalf("frame %d: %d frames in the used ring", sent, len(frames))
		}
		h := hdrs[0]
		if h[0] != hdrFDataValid || binary.LittleEndian.Uint16(h[10:]) == 0 {
			t.Fatalf("virtio-net header %x: want DATA_VALID and num_buffers", h)
		}
		if !bytes.Equal(frames[0][:lendHlen], lendHeaders(sent)) || len(frames[0]) != lendHlen+n {
			t.Fatalf("frame %d: %d bytes, headers %x", sent, len(frames[0]), frames[0][:lendHlen])
		}
		got = append(got, frames[0][lendHlen:]...)
		sent++
		lentBytes += n
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("%d bytes arrived, %d sent, or corrupted", len(got), len(data))
	}
	if r.d.Stats.Lent.Load() != uint64(sent) || r.d.Stats.LentBytes.Load() != uint64(lentBytes) {
		t.Errorf("Lent %d/%d bytes, want %d/%d", r.d.Stats.Lent.Load(), r.d.Stats.LentBytes.Load(), sent, lentBytes)
	}
	checkAllBack(t, f, drv)
}

// lentStash returns how many chains are lent and stashed.
func lentStash(d *Device) (int, int) {
	d.rxMu.Lock()
	defer d.rxMu.Unlock()
	return d.lent, len(d.stash)
}

// checkAllBack stops the receive queue and checks that every buffer the
// driver posted was used (unused ones given back as runts) or is still
// in the avail ring past the base the device reports.
func checkAllBack(t *testing.T, f *fakeFront, drv *rxDriver) {
	t.Helper()
	p := f.call(reqGetVringBase, state(rxQ, 0))
	base := binary.LittleEndian.Uint32(p[4:])
	drv.frames()
	avail := int(uint16(drv.q.availIdx - uint16(base)))
	if drv.posted != drv.used+avail {
		t.Errorf("%d buffers posted, %d used, %d still available: %d lost", drv.posted, drv.used, avail, drv.posted-drv.used-avail)
	}
}

// A flow reset mid-transfer releases its lent frames unwritten, and the
// writer drops a lent frame it cannot deliver: their chains serve the
// next frames, and none is lost.
func TestLendReleaseReturnsChains(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	drv := newRxDriver(t, f.q[rxQ], 32, 2048)
	f.q[rxQ].doKick()
	var lent []*link.Frame
	for range 4 {
		fr := r.d.Lend(lendHlen, 5000)
		if fr == nil {
			t.Fatal("Lend refused")
		}
		lent = append(lent, fr)
	}
	if lent, _ := lentStash(r.d); lent != 4*3 {
		t.Fatalf("%d chains lent, want 12", lent)
	}
	// The flow is reset: two frames released unwritten; one written
	// with less than lent; one never committed, which the writer drops.
	lent[0].Release()
	lent[1].Release()
	copy(lent[2].Data, lendHeaders(2))
	lent[2].Loan.Commit(100, 34, 16)
	if err := r.d.WriteBatch(lent[2:]); err != nil {
		t.Fatal(err)
	}
	lent[2].Release()
	lent[3].Release()
	if lent, _ := lentStash(r.d); lent != 0 {
		t.Errorf("%d chains still lent after every frame was released", lent)
	}
	frames, _, _ := drv.frames()
	if len(frames) != 1 || len(frames[0]) != lendHlen+100 {
		t.Fatalf("frames %d", len(frames))
	}
	if d := r.d.Stats.TxDropped.Load(); d != 1 {
		t.Errorf("TxDropped = %d, want 1 (the uncommitted frame)", d)
	}
	// Copied frames take the given-back chains first.
	_, stash := lentStash(r.d)
	if stash == 0 {
		t.Fatal("nothing stashed")
	}
	if err := r.d.WriteBatch([]*link.Frame{{Data: testFrame(1, 1000)}}); err != nil {
		t.Fatal(err)
	}
	if _, now := lentStash(r.d); now != stash-1 {
		t.Errorf("stash %d -> %d, want one chain taken from it", stash, now)
	}
	checkAllBack(t, f, drv)
}

// Loans hold half the ring at most, so that the writer always has the
// other half.
func TestLendHalfRing(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	drv := newRxDriver(t, f.q[rxQ], 200, 2048)
	f.q[rxQ].doKick()
	chains := 0
	var lent []*link.Frame
	for {
		fr := r.d.Lend(lendHlen, 60000)
		if fr == nil {
			break
		}
		lent = append(lent, fr)
		chains += len(fr.Loan.(*loan).heads)
	}
	// 30 chains a loan: four fit in half the ring, a fifth does not.
	if chains != 4*30 {
		t.Errorf("%d chains lent, want 120 of at most half the ring, %d", chains, fakeQSize/2)
	}
	for _, fr := range lent {
		fr.Release()
	}
	checkAllBack(t, f, drv)
}

// The writer sleeping for buffers, all of them lent, wakes when a loan is
// released: no kick comes from the guest, which has nothing to post.
func TestLendReleaseWakesWriter(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	newRxDriver(t, f.q[rxQ], 4, 2048)
	f.q[rxQ].doKick()
	fr := r.d.Lend(lendHlen, 3000)
	if fr == nil || len(fr.Loan.(*loan).heads) != 2 {
		t.Fatal("Lend: want two chains")
	}
	// Two chains left, the frame needs three. The driver's kick has
	// been read already: only the release can wake the writer.
	var b [8]byte
	unix.Read(f.q[rxQ].kick, b[:])
	done := make(chan error, 1)
	go func() { done <- r.d.WriteBatch([]*link.Frame{{Data: testFrame(1, 5000)}}) }()
	waitUntil(t, "the writer to sleep", func() bool {
		r.d.rxMu.Lock()
		defer r.d.rxMu.Unlock()
		return r.d.rxWaiting
	})
	fr.Release()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the writer slept on after a loan was released")
	}
	if r.d.Stats.TxFrames.Load() != 1 {
		t.Errorf("TxFrames = %d", r.d.Stats.TxFrames.Load())
	}
}

// A new memory table, or the front end going away, while frames are lent:
// the old memory stays mapped until the last loan on it is released, so a
// peek into a lent buffer still lands in it (not in whatever the address
// is reused for), and the writer drops a loan from a stopped queue.
func TestLendAcrossMemTableAndReset(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	drv := newRxDriver(t, f.q[rxQ], 16, 2048)
	f.q[rxQ].doKick()
	fr := r.d.Lend(lendHlen, 1000)
	if fr == nil {
		t.Fatal("Lend refused")
	}
	l := fr.Loan.(*loan)
	old := l.mem
	p, fds := memTablePayload(r.g.fd, regionDesc{GPA: fakeGPA, Size: fakeMemSize, QVA: fakeQVA})
	if st := f.acked(reqSetMemTable, p, fds...); st != 0 {
		t.Fatalf("SET_MEM_TABLE status %d", st)
	}
	if old.regions == nil || old.refs.Load() != 1 {
		t.Fatalf("old table unmapped (%d refs) under a loan", old.refs.Load())
	}
	// The peek: the kernel writes into the lent buffer.
	c, fd := tcpPair(t)
	msg := bytes.Repeat([]byte("lent"), 250)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	n, err := unix.Readv(fd, l.Payload())
	if err != nil || n != len(msg) {
		t.Fatalf("peek into the lent buffer: %d, %v", n, err)
	}
	copy(fr.Data, lendHeaders(0))
	l.Commit(n, 34, 16)
	// Still the same ring: the frame is delivered from the old mapping,
	// which is the same memory.
	if err := r.d.WriteBatch([]*link.Frame{fr}); err != nil {
		t.Fatal(err)
	}
	fr.Release()
	if old.regions != nil || old.refs.Load() != 0 {
		t.Error("old table still mapped after its last loan")
	}
	frames, _, _ := drv.frames()
	if len(frames) != 1 || !bytes.Equal(frames[0][lendHlen:], msg) {
		t.Fatalf("frame through the old mapping: %d frames", len(frames))
	}
	// Now the front end goes with a frame lent.
	fr = r.d.Lend(lendHlen, 1000)
	if fr == nil {
		t.Fatal("Lend refused")
	}
	l = fr.Loan.(*loan)
	cur := l.mem
	f.c.Close()
	waitUntil(t, "the session to end", func() bool { return !r.d.Connected() })
	if cur.regions == nil {
		t.Fatal("memory unmapped under a loan at disconnect")
	}
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if n, err := unix.Readv(fd, l.Payload()); err != nil || n != len(msg) {
		t.Fatalf("peek after the disconnect: %d, %v", n, err)
	}
	l.Commit(n, 34, 16)
	dropped := r.d.Stats.TxDropped.Load()
	if err := r.d.WriteBatch([]*link.Frame{fr}); err != nil {
		t.Fatal(err)
	}
	if r.d.Stats.TxDropped.Load() != dropped+1 {
		t.Error("a loan from a stopped queue was not dropped")
	}
	fr.Release()
	if cur.regions != nil {
		t.Error("memory still mapped after the last loan of a gone session")
	}
}

// Without mergeable buffers or GUEST_CSUM, and with Copy, nothing is lent.
func TestLendRefused(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cfg      Config
		features uint64
	}{
		{"no mergeable buffers", Config{}, defaultFeatures &^ (1 << fNetMrgRxbuf)},
		{"no GUEST_CSUM", Config{}, defaultFeatures &^ (1 << fNetGuestCsum)},
		{"Copy", Config{Copy: true}, defaultFeatures},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, tc.cfg)
			f := r.connect(tc.features)
			newRxDriver(t, f.q[rxQ], 8, 2048)
			f.q[rxQ].doKick()
			if fr := r.d.Lend(lendHlen, 1000); fr != nil {
				t.Error("lent")
			}
		})
	}
}

// Too few buffers for the whole segment: nothing is lent (a shorter
// segment would cost the guest a packet more), and the chains looked at
// serve the copy path.
func TestLendWholeOrNothing(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	drv := newRxDriver(t, f.q[rxQ], 2, 2048)
	f.q[rxQ].doKick()
	if fr := r.d.Lend(lendHlen, 5000); fr != nil {
		t.Fatalf("lent %d chains for a segment they cannot hold", len(fr.Loan.(*loan).heads))
	}
	if lent, _ := lentStash(r.d); lent != 0 {
		t.Fatalf("%d chains lent after a refusal", lent)
	}
	p := testFrame(5, 3000)
	if err := r.d.WriteBatch([]*link.Frame{{Data: p}}); err != nil {
		t.Fatal(err)
	}
	frames, _, _ := drv.frames()
	if len(frames) != 1 || !bytes.Equal(frames[0], p) {
		t.Fatalf("copied frame after a refused loan: %d frames", len(frames))
	}
	checkAllBack(t, f, drv)
}
