package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
)

// Split virtqueue layout (virtio 1.x, section 2.7). Everything in the rings
// is little-endian and lives in guest memory, where the guest may change it
// at any time: every value is read once into a local, then checked.
const (
	descSize = 16 // addr u64, len u32, flags u16, next u16

	descFNext     = 1
	descFWrite    = 2
	descFIndirect = 4

	// availFNoInterrupt: the driver asks not to be interrupted (ignored
	// when event indexes are negotiated).
	availFNoInterrupt = 1
	// usedFNoNotify: the device asks not to be kicked.
	usedFNoNotify = 1

	// maxQueueSize is the largest split ring the specification allows.
	maxQueueSize = 32768

	// maxSegs bounds the memory segments one chain may translate to: a
	// chain is at most as long as its descriptor table, but a table can be
	// 32768 entries and each entry may straddle regions. Linux uses at
	// most a few dozen; QEMU refuses chains longer than 1024 itself.
	maxSegs = 1024

	// maxIndirect bounds an indirect table, as QEMU's VIRTQUEUE_MAX_SIZE.
	maxIndirect = 1024

	// maxChain bounds the descriptors of one chain, zero-length ones
	// included, so that the work a guest can make us do per chain does
	// not grow with the ring size (32768 descriptors, times a chain per
	// receive buffer, would stall the writer for seconds). Linux chains
	// are at most a few dozen long.
	maxChain = 1024
)

// errRing is wrapped by every error that a malformed ring causes.
var errRing = errors.New("malformed virtqueue")

func ringErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errRing}, a...)...)
}

// chain is one descriptor chain, translated to mapped guest memory: the
// device-readable segments and the device-writable ones, in order. Its
// slices are reused from chain to chain, so walking allocates nothing.
type chain struct {
	head   uint16
	rd, wr [][]byte
	rdLen  int // total bytes in rd
	wrLen  int // total bytes in wr
}

func newChain() *chain {
	return &chain{rd: make([][]byte, 0, maxSegs), wr: make([][]byte, 0, maxSegs)}
}

// vring is one split virtqueue: what the front end configured, the rings
// mapped from guest memory, and the device's own indexes. The control
// goroutine changes it under the device's write lock; the data path uses
// it under the read lock, each queue from one goroutine only.
type vring struct {
	// Configuration (SET_VRING_*).
	num                        uint32
	descQVA, availQVA, usedQVA uint64
	addrSet, enabled, started  bool
	eventIdx                   bool // VIRTIO_RING_F_EVENT_IDX negotiated
	base                       uint16

	// Rings, mapped by mapRings.
	desc, avail, used []byte

	// Device indexes: the next avail entry to take, the used index as
	// published plus entries filled but not yet published (pending).
	lastAvail uint16
	usedIdx   uint16
	pending   uint16

	// Interrupt suppression with event indexes: the used index at the
	// last interrupt.
	signalledUsed  uint16
	signalledValid bool

	fence atomic.Uint32 // target of the full barrier, see barrier
}

// barrier is a full memory barrier between our stores to the rings and our
// loads from them (the store-load order event indexes need), and a
// compiler barrier for everything else: Go's atomics are sequentially
// consistent, which on amd64 is a locked instruction.
func (q *vring) barrier() { q.fence.Add(1) }

// ready reports whether the queue may be used: configured, mapped, started
// (kick fd received) and enabled.
func (q *vring) ready() bool {
	return q.started && q.enabled && q.desc != nil
}

// mapRings translates the ring addresses through m. It fails on a ring that
// is not wholly inside one region or is misaligned.
func (q *vring) mapRings(m *memTable) error {
	q.desc, q.avail, q.used = nil, nil, nil
	if !q.addrSet || m == nil {
		return nil
	}
	n := uint64(q.num)
	if n == 0 || n > maxQueueSize || n&(n-1) != 0 {
		return fmt.Errorf("queue size %d", n)
	}
	if q.descQVA%16 != 0 || q.availQVA%2 != 0 || q.usedQVA%4 != 0 {
		return errors.New("misaligned ring")
	}
	desc := m.qva(q.descQVA, descSize*n)
	avail := m.qva(q.availQVA, 6+2*n)
	used := m.qva(q.usedQVA, 6+8*n)
	if desc == nil || avail == nil || used == nil {
		return fmt.Errorf("ring outside guest memory (desc %#x avail %#x used %#x, size %d)",
			q.descQVA, q.availQVA, q.usedQVA, n)
	}
	q.desc, q.avail, q.used = desc, avail, used
	return nil
}

// start begins processing where the front end said (SET_VRING_BASE) and
// where the used ring is.
func (q *vring) start() {
	q.lastAvail = q.base
	q.usedIdx = le16(q.used[2:])
	q.pending = 0
	q.signalledValid = false
}

func le16(b []byte) uint16 { return binary.LittleEndian.Uint16(b) }

// availIdx reads the driver's avail index.
func (q *vring) availIdx() uint16 {
	i := le16(q.avail[2:4])
	q.barrier() // the ring entries are read after the index
	return i
}

// hasAvail reports whether the driver has made chains available that we
// have not taken; a driver claiming more than the ring holds is an error.
func (q *vring) hasAvail() (bool, error) {
	n := q.availIdx() - q.lastAvail
	if uint32(n) > q.num {
		return false, ringErr("avail index %d is %d entries ahead of %d, ring size %d",
			q.lastAvail+n, n, q.lastAvail, q.num)
	}
	return n != 0, nil
}

// pop walks the next available chain into c. It returns false if there is
// none.
func (q *vring) pop(m *memTable, c *chain) (bool, error) {
	ok, err := q.hasAvail()
	if !ok || err != nil {
		return false, err
	}
	head := le16(q.avail[4+2*(uint32(q.lastAvail)&(q.num-1)):])
	if err := q.walk(m, head, c); err != nil {
		return false, err
	}
	q.lastAvail++
	return true, nil
}

// unpop gives back the last n chains taken (not yet filled).
func (q *vring) unpop(n uint16) { q.lastAvail -= n }

// walk translates the chain starting at descriptor head into c. It is the
// one place guest descriptors are read: indexes are checked against the
// table, a chain is at most as long as its table (so a loop ends as an
// error), an indirect table must be the chain's only descriptor, inside
// guest memory, a whole number of descriptors and not itself indirect, and
// every buffer is translated piecewise through the memory table.
func (q *vring) walk(m *memTable, head uint16, c *chain) error {
	c.head = head
	c.rd, c.wr = c.rd[:0], c.wr[:0]
	c.rdLen, c.wrLen = 0, 0
	table := q.desc
	count := q.num
	idx := uint32(head)
	indirect := false
	walked := 0
	for n := uint32(0); ; n++ {
		if idx >= count {
			return ringErr("descriptor index %d out of a table of %d", idx, count)
		}
		if n >= count {
			return ringErr("descriptor chain from %d longer than its table (%d): a loop", head, count)
		}
		if walked++; walked > maxChain {
			return ringErr("descriptor chain from %d longer than %d", head, maxChain)
		}
		d := table[idx*descSize : idx*descSize+descSize]
		addr := binary.LittleEndian.Uint64(d[0:])
		ln := binary.LittleEndian.Uint32(d[8:])
		flags := le16(d[12:])
		next := le16(d[14:])
		if flags&descFIndirect != 0 {
			switch {
			case indirect:
				return ringErr("nested indirect descriptor")
			case n != 0 || flags&descFNext != 0:
				return ringErr("indirect descriptor chained")
			case ln == 0 || ln%descSize != 0 || ln/descSize > maxIndirect:
				return ringErr("indirect table of %d bytes", ln)
			}
			t := m.gpaFull(addr, uint64(ln))
			if t == nil {
				return ringErr("indirect table at %#x+%d outside guest memory", addr, ln)
			}
			table, count, idx, indirect = t, ln/descSize, 0, true
			n = ^uint32(0) // the loop's n++ makes it 0
			continue
		}
		if err := c.add(m, addr, ln, flags&descFWrite != 0); err != nil {
			return err
		}
		if flags&descFNext == 0 {
			return nil
		}
		idx = uint32(next)
	}
}

// add appends the buffer at guest address addr, ln bytes, to c, split
// where it crosses regions.
func (c *chain) add(m *memTable, addr uint64, ln uint32, write bool) error {
	a, left := addr, uint64(ln)
	for left > 0 {
		b := m.gpa(a, left)
		if len(b) == 0 {
			return ringErr("buffer at %#x+%d outside guest memory", addr, ln)
		}
		if len(c.rd)+len(c.wr) == maxSegs {
			return ringErr("descriptor chain of more than %d segments", maxSegs)
		}
		if write {
			c.wr = append(c.wr, b)
			c.wrLen += len(b)
		} else {
			c.rd = append(c.rd, b)
			c.rdLen += len(b)
		}
		a += uint64(len(b))
		left -= uint64(len(b))
	}
	return nil
}

// fill records chain head as used with ln bytes written, unpublished until
// flush.
func (q *vring) fill(head uint16, ln uint32) {
	e := q.used[4+8*(uint32(q.usedIdx+q.pending)&(q.num-1)):]
	binary.LittleEndian.PutUint32(e[0:], uint32(head))
	binary.LittleEndian.PutUint32(e[4:], ln)
	q.pending++
}

// flush publishes the filled entries to the driver and reports whether
// it should be interrupted, per the negotiated suppression scheme.
func (q *vring) flush() bool {
	if q.pending == 0 {
		return false
	}
	old := q.usedIdx
	q.usedIdx += q.pending
	q.pending = 0
	q.barrier() // entries before the index
	binary.LittleEndian.PutUint16(q.used[2:], q.usedIdx)
	q.barrier() // the index before reading the driver's wish
	if !q.eventIdx {
		return le16(q.avail[0:])&availFNoInterrupt == 0
	}
	// Interrupt only if the driver's used_event lies in (old, new]; after
	// a start we know nothing of earlier interrupts, so interrupt.
	if q.signalledValid {
		old = q.signalledUsed
	}
	valid := q.signalledValid
	q.signalledUsed, q.signalledValid = q.usedIdx, true
	if !valid {
		return true
	}
	ev := le16(q.avail[4+2*q.num:])
	return q.usedIdx-ev-1 < q.usedIdx-old
}

// notifyAfter asks the driver to kick us once it makes chains available
// beyond avail index idx (with event indexes; without, any addition
// kicks once notifications are on). For a writer that holds too few
// buffers for its frame: asking at lastAvail would never be answered,
// the driver being past it already.
func (q *vring) notifyAfter(idx uint16) {
	if q.eventIdx {
		binary.LittleEndian.PutUint16(q.used[4+8*q.num:], idx)
		q.barrier()
		return
	}
	q.notify(true)
}

// notify says whether the driver should kick us when it adds buffers:
// before sleeping on the kick, on; while busy, off. With event indexes the
// driver kicks when its avail index passes avail_event, so "on" publishes
// where we are and "off" is a no-op. The caller rechecks for buffers after
// turning it on, as the driver may have added some meanwhile.
func (q *vring) notify(on bool) {
	if q.eventIdx {
		if on {
			binary.LittleEndian.PutUint16(q.used[4+8*q.num:], q.lastAvail)
		}
	} else {
		f := le16(q.used[0:]) &^ usedFNoNotify
		if !on {
			f |= usedFNoNotify
		}
		binary.LittleEndian.PutUint16(q.used[0:], f)
	}
	q.barrier()
}
