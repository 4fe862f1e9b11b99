package vhostuser

// A fake vhost-user front end and virtio-net driver for the tests: guest
// memory is a memfd both sides map, the control socket is real, and so
// are the kick and call eventfds. The fake driver lays out split rings
// the way Linux does and checks what the device put in them.

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/link"
)

const (
	fakeMemSize = 4 << 20
	fakeGPA     = 0x100000       // guest-physical base of the memory
	fakeQVA     = 0x7f0000000000 // the front end's virtual base
	fakeQSize   = 256
	fakeBufBase = 0x40000 // buffers live from here (offset in memory)
)

type fakeGuest struct {
	t   testing.TB
	fd  int
	mem []byte
	brk uint64 // next free buffer offset
}

func newFakeGuest(t testing.TB) *fakeGuest {
	fd, err := unix.MemfdCreate("fake-guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, fakeMemSize); err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(fd, 0, fakeMemSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	g := &fakeGuest{t: t, fd: fd, mem: m, brk: fakeBufBase}
	t.Cleanup(func() { unix.Munmap(m); unix.Close(fd) })
	return g
}

// alloc returns the guest-physical address of n fresh bytes.
func (g *fakeGuest) alloc(n int) uint64 {
	a := g.brk
	g.brk += uint64(n+15) &^ 15
	if g.brk > fakeMemSize {
		g.brk = fakeBufBase
		a = g.brk
		g.brk += uint64(n+15) &^ 15
	}
	return fakeGPA + a
}

func (g *fakeGuest) at(gpa uint64, n int) []byte { return g.mem[gpa-fakeGPA : gpa-fakeGPA+uint64(n)] }

// fakeQueue is the driver's side of one split ring.
type fakeQueue struct {
	g                 *fakeGuest
	idx               int
	desc, avail, used uint64 // guest-physical
	availIdx          uint16
	usedSeen          uint16
	nextDesc          uint16
	kick, call        int
}

func newFakeQueue(g *fakeGuest, i int) *fakeQueue {
	base := uint64(fakeGPA + i*0x10000)
	q := &fakeQueue{g: g, idx: i, desc: base, avail: base + 16*fakeQSize, used: base + 0x2000}
	var err error
	if q.kick, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		g.t.Fatal(err)
	}
	if q.call, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { unix.Close(q.kick); unix.Close(q.call) })
	return q
}

type seg struct {
	gpa   uint64
	n     uint32
	write bool
}

// setDesc writes descriptor i.
func (q *fakeQueue) setDesc(i uint16, addr uint64, n uint32, flags, next uint16) {
	d := q.g.at(q.desc+16*uint64(i), 16)
	binary.LittleEndian.PutUint64(d[0:], addr)
	binary.LittleEndian.PutUint32(d[8:], n)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
}

// addChain makes segs available as one chain and returns its head.
func (q *fakeQueue) addChain(segs ...seg) uint16 {
	head := q.nextDesc % fakeQSize
	for j, s := range segs {
		i := q.nextDesc % fakeQSize
		q.nextDesc++
		var flags uint16
		if s.write {
			flags |= descFWrite
		}
		if j < len(segs)-1 {
			flags |= descFNext
		}
		q.setDesc(i, s.gpa, s.n, flags, q.nextDesc%fakeQSize)
	}
	q.publish(head)
	return head
}

// publish puts head in the avail ring and moves the index.
func (q *fakeQueue) publish(head uint16) {
	binary.LittleEndian.PutUint16(q.g.at(q.avail+4+2*uint64(q.availIdx%fakeQSize), 2), head)
	q.availIdx++
	binary.LittleEndian.PutUint16(q.g.at(q.avail+2, 2), q.availIdx)
}

func (q *fakeQueue) doKick() {
	var one = [8]byte{1}
	unix.Write(q.kick, one[:])
}

// availEvent reads the device's avail_event.
func (q *fakeQueue) availEvent() uint16 {
	return binary.LittleEndian.Uint16(q.g.at(q.used+4+8*fakeQSize, 2))
}

// kickIfAsked kicks as a driver with event indexes does after moving its
// avail index on from old: only if that passed the device's avail_event.
func (q *fakeQueue) kickIfAsked(old uint16) {
	if q.availIdx-q.availEvent()-1 < q.availIdx-old {
		q.doKick()
	}
}

// rxData returns the bytes the device wrote into the single-buffer
// receive chain of used entry u.
func (q *fakeQueue) rxData(u usedElem) []byte {
	d := q.g.at(q.desc+16*uint64(u.id), 16)
	return q.g.at(binary.LittleEndian.Uint64(d), int(u.len))
}

// called reports (and clears) whether the device signalled the call fd.
func (q *fakeQueue) called() bool {
	var b [8]byte
	n, _ := unix.Read(q.call, b[:])
	return n == 8
}

type usedElem struct {
	id  uint16
	len uint32
}

// takeUsed returns the used entries published since the last call.
func (q *fakeQueue) takeUsed() []usedElem {
	idx := binary.LittleEndian.Uint16(q.g.at(q.used+2, 2))
	var out []usedElem
	for ; q.usedSeen != idx; q.usedSeen++ {
		e := q.g.at(q.used+4+8*uint64(q.usedSeen%fakeQSize), 8)
		out = append(out, usedElem{uint16(binary.LittleEndian.Uint32(e)), binary.LittleEndian.Uint32(e[4:])})
	}
	return out
}

// fakeFront is the front end: QEMU's side of the control socket.
type fakeFront struct {
	t testing.TB
	c *net.UnixConn
	g *fakeGuest
	q [2]*fakeQueue
}

func dialFront(t testing.TB, path string, g *fakeGuest) *fakeFront {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f := &fakeFront{t: t, c: c, g: g}
	f.q[0], f.q[1] = newFakeQueue(g, 0), newFakeQueue(g, 1)
	return f
}

func (f *fakeFront) send(req, flags uint32, payload []byte, fds ...int) {
	f.t.Helper()
	b := make([]byte, hdrSize+len(payload))
	binary.LittleEndian.PutUint32(b[0:], req)
	binary.LittleEndian.PutUint32(b[4:], flagVersion|flags)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(payload)))
	copy(b[hdrSize:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := f.c.WriteMsgUnix(b, oob, nil); err != nil {
		f.t.Fatalf("send %s: %v", reqName(req), err)
	}
}

// recv reads one reply; ok is false on EOF or timeout.
func (f *fakeFront) recv() (req uint32, payload []byte, ok bool) {
	f.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var h [hdrSize]byte
	if _, err := readFull(f.c, h[:]); err != nil {
		return 0, nil, false
	}
	if fl := binary.LittleEndian.Uint32(h[4:]); fl != flagVersion|flagReply {
		f.t.Errorf("reply flags %#x", fl)
	}
	p := make([]byte, binary.LittleEndian.Uint32(h[8:]))
	if _, err := readFull(f.c, p); err != nil {
		return 0, nil, false
	}
	return binary.LittleEndian.Uint32(h[0:]), p, true
}

func readFull(c *net.UnixConn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := c.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// call sends a request that has a reply and returns the reply's payload.
func (f *fakeFront) call(req uint32, payload []byte, fds ...int) []byte {
	f.t.Helper()
	f.send(req, 0, payload, fds...)
	r, p, ok := f.recv()
	if !ok || r != req {
		f.t.Fatalf("%s: no reply (got %s, ok %v)", reqName(req), reqName(r), ok)
	}
	return p
}

// acked sends a request with NEED_REPLY and returns the ack status.
func (f *fakeFront) acked(req uint32, payload []byte, fds ...int) uint64 {
	f.t.Helper()
	f.send(req, flagNeedReply, payload, fds...)
	r, p, ok := f.recv()
	if !ok || r != req || len(p) != 8 {
		f.t.Fatalf("%s: no ack (got %s %x, ok %v)", reqName(req), reqName(r), p, ok)
	}
	return binary.LittleEndian.Uint64(p)
}

func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func state(i, n uint32) []byte {
	return binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, i), n)
}

func memTablePayload(fd int, regions ...regionDesc) ([]byte, []int) {
	p := binary.LittleEndian.AppendUint32(nil, uint32(len(regions)))
	p = binary.LittleEndian.AppendUint32(p, 0)
	var fds []int
	for _, r := range regions {
		p = binary.LittleEndian.AppendUint64(p, r.GPA)
		p = binary.LittleEndian.AppendUint64(p, r.Size)
		p = binary.LittleEndian.AppendUint64(p, r.QVA)
		p = binary.LittleEndian.AppendUint64(p, r.MmapOffset)
		fds = append(fds, fd)
	}
	return p, fds
}

func (f *fakeFront) vringAddr(q *fakeQueue) []byte {
	p := binary.LittleEndian.AppendUint32(nil, uint32(q.idx))
	p = binary.LittleEndian.AppendUint32(p, 0)
	qva := func(gpa uint64) uint64 { return gpa - fakeGPA + fakeQVA }
	p = binary.LittleEndian.AppendUint64(p, qva(q.desc))
	p = binary.LittleEndian.AppendUint64(p, qva(q.used))
	p = binary.LittleEndian.AppendUint64(p, qva(q.avail))
	return binary.LittleEndian.AppendUint64(p, 0)
}

// start drives the device through what QEMU 7.2 sends when the guest's
// driver starts, with the given features.
func (f *fakeFront) start(features uint64) {
	f.t.Helper()
	if got := binary.LittleEndian.Uint64(f.call(reqGetFeatures, nil)); got != Features {
		f.t.Fatalf("GET_FEATURES = %#x, want %#x", got, Features)
	}
	if got := binary.LittleEndian.Uint64(f.call(reqGetProtocolFeatures, nil)); got != ProtocolFeatures {
		f.t.Fatalf("GET_PROTOCOL_FEATURES = %#x", got)
	}
	f.send(reqSetProtocolFeatures, 0, u64(1<<pfReplyAck))
	f.send(reqSetOwner, 0, nil)
	f.send(reqSetFeatures, 0, u64(features))
	p, fds := memTablePayload(f.g.fd, regionDesc{GPA: fakeGPA, Size: fakeMemSize, QVA: fakeQVA})
	if st := f.acked(reqSetMemTable, p, fds...); st != 0 {
		f.t.Fatalf("SET_MEM_TABLE status %d", st)
	}
	for _, q := range f.q {
		f.send(reqSetVringNum, 0, state(uint32(q.idx), fakeQSize))
		f.send(reqSetVringBase, 0, state(uint32(q.idx), uint32(q.availIdx)))
		f.send(reqSetVringAddr, 0, f.vringAddr(q))
		f.send(reqSetVringKick, 0, u64(uint64(q.idx)), q.kick)
		f.send(reqSetVringCall, 0, u64(uint64(q.idx)), q.call)
	}
	for _, q := range f.q {
		if st := f.acked(reqSetVringEnable, state(uint32(q.idx), 1)); st != 0 {
			f.t.Fatalf("SET_VRING_ENABLE status %d", st)
		}
	}
}

// defaultFeatures is what Linux's virtio-net driver accepts of ours.
const defaultFeatures = Features

// rig is a Device listening on a temporary socket.
type rig struct {
	t    testing.TB
	d    *Device
	path string
	g    *fakeGuest
}

func newRig(t testing.TB, cfg Config) *rig {
	path := filepath.Join(t.TempDir(), "vu.sock")
	ln, err := link.ListenUnixSocket(path)
	if err != nil {
		t.Fatal(err)
	}
	d := Listen(ln, path, cfg)
	// The tests count sleeps: no polling (missed.go) unless one asks.
	d.pollFirst = time.Hour
	t.Cleanup(func() { d.Close() })
	return &rig{t: t, d: d, path: path, g: newFakeGuest(t)}
}

// connect connects a front end and starts the driver.
func (r *rig) connect(features uint64) *fakeFront {
	f := dialFront(r.t, r.path, r.g)
	f.start(features)
	return f
}

func newFrames(n int) []*link.Frame {
	fs := make([]*link.Frame, n)
	for i := range fs {
		fs[i] = &link.Frame{Data: make([]byte, link.MaxFrameSize)}
	}
	return fs
}

func testFrame(seq, size int) []byte {
	p := make([]byte, size)
	for i := range p {
		p[i] = byte(seq*7 + i*13)
	}
	return p
}

// readAsync runs ReadBatch in the background.
func readAsync(d *Device, frames []*link.Frame) chan int {
	ch := make(chan int, 1)
	go func() {
		n, err := d.ReadBatch(frames)
		if err != nil {
			n = -1
		}
		ch <- n
	}()
	return ch
}

func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func fdFile(fd int) *os.File { return os.NewFile(uintptr(fd), "test") }

// quietLog discards the errors that tests provoke on purpose.
func quietLog() logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return l
}
