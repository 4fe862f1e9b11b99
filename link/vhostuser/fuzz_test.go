package vhostuser

import (
	"encoding/binary"
	"errors"
	"testing"
	"unsafe"

	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// fuzzMem is a fake memory table over Go memory: two regions with a gap
// between them, so that buffers may straddle a region's end or fall in
// the hole.
func fuzzMem(data []byte) (*memTable, [][]byte) {
	a := make([]byte, 8192)
	b := make([]byte, 4096)
	copy(a, data)
	if len(data) > len(a) {
		copy(b, data[len(a):])
	}
	t := &memTable{regions: []region{
		{gpa: 0x1000, qva: 0x10000, size: uint64(len(a)), mem: a},
		{gpa: 0x3000 + 0x1000, qva: 0x20000, size: uint64(len(b)), mem: b},
	}}
	return t, [][]byte{a, b}
}

// fuzzQueue makes a device on guest memory data (fuzzMem) with its queue
// qi running: rings at fixed addresses, the size and event indexes from
// lognum. It returns the device, the queue and the memory's regions.
func fuzzQueue(t *testing.T, data []byte, lognum uint8, qi int) (*Device, *vring, [][]byte) {
	m, mems := fuzzMem(data)
	m.refs.Store(1)
	d := newDevice(Config{Log: quietLog()})
	d.mem, d.acked, d.hdrLen = m, Features, virtioNetHdrSize
	q := &d.vq[qi]
	q.num, q.descQVA, q.availQVA, q.usedQVA = 1<<(lognum%5), 0x10000, 0x10100, 0x10200
	q.addrSet, q.eventIdx = true, lognum&0x80 != 0
	if err := q.mapRings(m); err != nil {
		t.Fatalf("mapRings: %v", err)
	}
	q.start()
	q.enabled, q.started = true, true
	return d, q, mems
}

// inside reports whether s lies wholly within one of mems.
func inside(s []byte, mems [][]byte) bool {
	if len(s) == 0 {
		return false
	}
	p := uintptr(unsafe.Pointer(&s[0]))
	for _, m := range mems {
		lo := uintptr(unsafe.Pointer(&m[0]))
		if p >= lo && p+uintptr(len(s)) <= lo+uintptr(len(m)) {
			return true
		}
	}
	return false
}

// FuzzRing feeds the ring walker and the used ring arbitrary guest memory:
// descriptor tables, indirect tables, avail indexes and heads are all
// fuzzer-chosen. Whatever the guest wrote, taking chains ends (with chains
// or an errRing), every segment is mapped memory, and nothing panics.
func FuzzRing(f *testing.F) {
	// A valid chain (head 0: 2 descriptors) and an indirect one (head 2).
	seed := make([]byte, 8192)
	put := func(off int, addr uint64, n uint32, flags, next uint16) {
		binary.LittleEndian.PutUint64(seed[off:], addr)
		binary.LittleEndian.PutUint32(seed[off+8:], n)
		binary.LittleEndian.PutUint16(seed[off+12:], flags)
		binary.LittleEndian.PutUint16(seed[off+14:], next)
	}
	put(0, 0x1800, 100, descFNext, 1)
	put(16, 0x1900, 5000, descFWrite, 0)
	put(32, 0x1a00, 32, descFIndirect, 0)
	put(0xa00, 0x1b00, 10, descFNext, 1)
	put(0xa10, 0x1c00, 10, 0, 0)
	binary.LittleEndian.PutUint16(seed[0x100+2:], 2) // avail idx
	binary.LittleEndian.PutUint16(seed[0x100+4:], 0)
	binary.LittleEndian.PutUint16(seed[0x100+6:], 2)
	f.Add(seed[:0x400], uint8(3), uint16(0))
	f.Add(seed, uint8(7), uint16(0xfffe))
	f.Fuzz(func(t *testing.T, data []byte, lognum uint8, base uint16) {
		m, mems := fuzzMem(data)
		// Rings at fixed places of region a (QVA 0x10000 = GPA 0x1000):
		// descriptors at 0, avail at 0x100, used at 0x200.
		q := &vring{num: 1 << (lognum % 5), descQVA: 0x10000, availQVA: 0x10100, usedQVA: 0x10200,
			addrSet: true, eventIdx: lognum&0x80 != 0, base: base}
		if err := q.mapRings(m); err != nil {
			t.Fatalf("mapRings: %v", err)
		}
		q.start()
		q.enabled, q.started = true, true
		c := newChain()
		hdr := make([]byte, 12)
		for range 64 {
			ok, err := q.pop(m, c)
			if err != nil {
				if !errors.Is(err, errRing) {
					t.Fatalf("error not a ring error: %v", err)
				}
				return
			}
			if !ok {
				break
			}
			if len(c.rd)+len(c.wr) > maxSegs {
				t.Fatalf("%d segments", len(c.rd)+len(c.wr))
			}
			n := 0
			for _, s := range append(c.rd, c.wr...) {
				if !inside(s, mems) {
					t.Fatalf("segment outside guest memory")
				}
				n += len(s)
			}
			if n != c.rdLen+c.wrLen {
				t.Fatalf("lengths %d+%d, segments %d", c.rdLen, c.wrLen, n)
			}
			buf := make([]byte, c.rdLen)
			gather(buf, c.rd, 0)
			if len(buf) >= 12 {
				completeCsum(buf[12:], buf[:12])
			}
			scatter(c.wr, 0, hdr)
			q.fill(c.head, uint32(c.wrLen))
		}
		q.flush()
		q.notify(true)
		q.notify(false)
	})
}

// The walker sees through region boundaries and refuses the gap.
func TestWalkAcrossRegions(t *testing.T) {
	m, _ := fuzzMem(nil)
	q := &vring{num: 4, descQVA: 0x10000, availQVA: 0x10100, usedQVA: 0x10200, addrSet: true}
	if err := q.mapRings(m); err != nil {
		t.Fatal(err)
	}
	a := m.regions[0].mem
	set := func(i int, addr uint64, n uint32, flags, next uint16) {
		binary.LittleEndian.PutUint64(a[16*i:], addr)
		binary.LittleEndian.PutUint32(a[16*i+8:], n)
		binary.LittleEndian.PutUint16(a[16*i+12:], flags)
		binary.LittleEndian.PutUint16(a[16*i+14:], next)
	}
	c := newChain()
	// The end of region a, exactly.
	set(0, 0x1000+8192-100, 100, 0, 0)
	if err := q.walk(m, 0, c); err != nil || c.rdLen != 100 || len(c.rd) != 1 {
		t.Errorf("buffer at the end of a region: %v, %d bytes in %d", err, c.rdLen, len(c.rd))
	}
	// One byte more runs into the hole.
	set(0, 0x1000+8192-100, 101, 0, 0)
	if err := q.walk(m, 0, c); !errors.Is(err, errRing) {
		t.Errorf("buffer running into the hole: %v", err)
	}
	// A ring that does not fit its region is refused.
	q.usedQVA = 0x10000 + 8192 - 8
	if err := q.mapRings(m); err == nil {
		t.Error("used ring past the end of its region accepted")
	}
}

// FuzzLend lends receive chains from a ring the guest wrote as it
// pleased: every lent segment is inside guest memory, a bad ring is a
// ring error that stops the device, and whatever is lent, written or
// released comes back (nothing lent at the end).
func FuzzLend(f *testing.F) {
	seed := make([]byte, 8192)
	for i := range 4 {
		binary.LittleEndian.PutUint64(seed[16*i:], uint64(0x1800+0x300*i))
		binary.LittleEndian.PutUint32(seed[16*i+8:], 0x300)
		binary.LittleEndian.PutUint16(seed[16*i+12:], descFWrite)
		binary.LittleEndian.PutUint16(seed[0x100+4+2*i:], uint16(i))
	}
	binary.LittleEndian.PutUint16(seed[0x100+2:], 4) // avail idx
	f.Add(seed[:0x400], uint8(3), uint16(1000), uint8(0x5a))
	f.Fuzz(func(t *testing.T, data []byte, lognum uint8, pay uint16, ops uint8) {
		d, _, mems := fuzzQueue(t, data, lognum, rxQ)
		d.rxStopLocked(false)
		batch := make([]*link.Frame, 1)
		for i := range 8 {
			fr := d.Lend(54, int(pay))
			if fr == nil {
				continue
			}
			segs := fr.Loan.Payload()
			n := 0
			for _, s := range segs {
				if !inside(s, mems) {
					t.Fatal("lent segment outside guest memory")
				}
				n += len(s)
			}
			if n == 0 || n > int(pay) {
				t.Fatalf("lent %d bytes for %d", n, pay)
			}
			fr.Loan.Commit(n-i, 34, 16)
			if ops>>i&1 != 0 {
				batch[0] = fr
				_ = d.WriteBatch(batch)
			}
			fr.Release()
		}
		if lent, _ := lentStash(d); lent != 0 {
			t.Fatalf("%d chains still lent", lent)
		}
	})
}

// FuzzExt reads frames from a transmit ring the guest wrote as it
// pleased, leaving TCP payloads in guest memory: every Ext segment is
// inside guest memory, the headers in the frame are the guest's bytes,
// the parser reads only what the frame holds, flattening gives the
// frame as the guest wrote it, and once every frame is released every
// chain taken has its used entry.
func FuzzExt(f *testing.F) {
	seed := make([]byte, 8192)
	// Two chains: a virtio-net header, then an IPv4/TCP segment of 2000
	// payload bytes over two descriptors.
	p := make([]byte, 54+2000)
	binary.BigEndian.PutUint16(p[12:], 0x0800)
	p[14], p[14+9] = 0x45, 6
	binary.BigEndian.PutUint16(p[14+2:], uint16(len(p)-14))
	p[34+12] = 5 << 4
	copy(seed[0x1000:], p)
	for i := range 2 {
		d := 48 * i
		put := func(off int, addr uint64, n uint32, flags, next uint16) {
			binary.LittleEndian.PutUint64(seed[off:], addr)
			binary.LittleEndian.PutUint32(seed[off+8:], n)
			binary.LittleEndian.PutUint16(seed[off+12:], flags)
			binary.LittleEndian.PutUint16(seed[off+14:], next)
		}
		put(d, 0x1000+0x3f0, 12, descFNext, uint16(3*i+1))
		put(d+16, 0x1000+0x1000, 100, descFNext, uint16(3*i+2))
		put(d+32, 0x1000+0x1000+100, uint32(len(p)-100), 0, 0)
		binary.LittleEndian.PutUint16(seed[0x100+4+2*i:], uint16(3*i))
	}
	binary.LittleEndian.PutUint16(seed[0x100+2:], 2) // avail idx
	f.Add(seed, uint8(3), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, lognum uint8, ops uint8) {
		d, q, mems := fuzzQueue(t, data, lognum, txQ)
		start := q.usedIdx
		frames := newFrames(8)
		d.mu.RLock()
		n, err := d.fromGuest(frames)
		d.mu.RUnlock()
		if err != nil && !errors.Is(err, errRing) {
			t.Fatalf("error not a ring error: %v", err)
		}
		taken := q.lastAvail - q.base
		for i, fr := range frames[:n] {
			if fr.Ext == nil {
				continue
			}
			if fr.ExtOff <= 0 || fr.ExtOff > txPrefix || fr.ExtOff > len(fr.Data) {
				t.Fatalf("ExtOff %d of %d", fr.ExtOff, len(fr.Data))
			}
			k := 0
			for _, s := range fr.Ext.Segs() {
				if !inside(s, mems) {
					t.Fatal("Ext segment outside guest memory")
				}
				k += len(s)
			}
			if k != len(fr.Data)-fr.ExtOff {
				t.Fatalf("Ext of %d bytes for %d", k, len(fr.Data)-fr.ExtOff)
			}
			var parsed wire.Parsed
			if wire.ParseFrameTrustedL4(fr.Data, &parsed) == nil && parsed.Proto == wire.ProtoTCP && parsed.Payload > fr.ExtOff {
				t.Fatalf("parsed payload at %d, past the Ext at %d", parsed.Payload, fr.ExtOff)
			}
			if ops>>i&1 != 0 {
				if !fr.Flatten() {
					t.Fatal("Flatten of mapped memory failed")
				}
			}
			fr.Release()
		}
		if got := q.usedIdx - start; err == nil && got != taken {
			t.Fatalf("%d used entries for %d chains taken", got, taken)
		}
	})
}
