package vhostuser

import (
	"encoding/binary"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"github.com/gopasta/gopasta/link"
)

// Guest to host without a copy (link.Ext): a TCP segment the guest
// transmits goes to its host socket straight from the guest's buffer.
//
// # What stays in guest memory
//
// ReadBatch copies a chain's headers into the frame, always: the
// dispatcher parses and the actors act on a private copy that the guest
// cannot change under them. If those headers are a plain TCP segment
// (IPv4 or IPv6 without extension headers, a whole header) with enough
// payload to be worth it, the payload is not copied: the frame's Ext
// refers to it in the guest's memory, and the chain's used entry is
// withheld until the frame lets go of it (Ext.Release, from
// Frame.Release or Flatten), so the guest does not reuse the buffer while
// the kernel reads it. The TCP actor writes the payload to the socket
// from there (sendmsg); whatever it has to hold because the socket is
// full it copies first (Flatten), so a chain is withheld for one trip
// through the dispatcher and the actor, never while a socket drains.
// Everything else (UDP, ICMP, control traffic, a frame a capture sees)
// is flattened by the dispatcher: copied as before.
//
// The guest may rewrite its buffer at any time; that changes only the
// bytes of its own segment that reach the host, as with a NIC reading
// them by DMA, never anything we parsed. The payload is read by the
// kernel (EFAULT if the front end truncated the memory) or by CopyTo
// under the data path's fault guard; never by Go code after Release.
//
// # Used entries, memory and epochs
//
// Used entries of the transmit queue are now written by the reader and by
// whichever goroutine releases an Ext, in any order (split rings allow
// it; we do not offer VIRTIO_F_IN_ORDER): txMu, after mu, serialises
// them. An Ext holds a reference on the memory table (so SET_MEM_TABLE or
// a disconnect unmaps the old one only after the last release) and the
// transmit queue's epoch, which every stop, start, resize or move of the
// queue advances: a release from an older epoch publishes nothing. Chains
// withheld when the queue stops are lost to that incarnation of the ring,
// as lent receive chains are (lend.go); the driver gets them back when it
// resets the device.

const (
	// txPrefix is how much of a frame is always copied: Ethernet, an
	// IPv4 header with options and a TCP header with options (134).
	txPrefix = 14 + 60 + 60
	// txExtMin is the least payload left in guest memory: below it the
	// copy costs less than withholding the chain.
	txExtMin = 1024
	// maxExtSegs bounds the segments of one Ext (Linux sends a 64 KiB
	// segment in at most 18: the linear part and 17 page fragments).
	maxExtSegs = 64
)

// txExt is a link.Ext: the payload of one transmit chain.
type txExt struct {
	d     *Device
	mem   *memTable // referenced while the Ext lives
	epoch uint64
	head  uint16
	segs  [][]byte // the payload, in order
	n     int      // bytes in segs

	// The checksum the guest left to us (NEEDS_CSUM), completed by
	// CopyTo only: a frame going to its socket needs none.
	csum               bool
	csumStart, csumOff int
}

var txExtPool = sync.Pool{New: func() any { return &txExt{segs: make([][]byte, 0, maxExtSegs)} }}

// Segs implements link.Ext.
func (e *txExt) Segs() [][]byte { return e.segs }

// CopyTo implements link.Ext.
func (e *txExt) CopyTo(frame []byte, off int) (ok bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if _, rt := r.(runtime.Error); !rt {
				panic(r)
			}
			ok = false
		}
	}()
	if off < 0 || off > len(frame) {
		return false
	}
	dst := frame[off:]
	gather(dst[:min(len(dst), e.n)], e.segs, 0)
	e.d.Stats.ExtCopiedBytes.Add(uint64(min(len(dst), e.n)))
	if e.csum {
		var h [virtioNetHdrSize]byte
		binary.LittleEndian.PutUint16(h[6:], uint16(e.csumStart))
		binary.LittleEndian.PutUint16(h[8:], uint16(e.csumOff))
		completeCsum(frame, h[:])
		e.csum = false
	}
	return true
}

// Release implements link.Ext: the chain's used entry is published (if
// its queue has not moved on) and the memory reference dropped.
func (e *txExt) Release() {
	d := e.d
	if d == nil {
		return
	}
	d.mu.RLock()
	d.txMu.Lock()
	if q := &d.vq[txQ]; e.epoch == d.txEpoch && q.used != nil {
		q.fill(e.head, 0)
		if q.flush() {
			d.interrupt(txQ)
		}
	}
	d.txMu.Unlock()
	d.mu.RUnlock()
	d.extOut.Add(-1)
	e.mem.release()
	e.d, e.mem = nil, nil
	clear(e.segs)
	e.segs = e.segs[:0]
	txExtPool.Put(e)
}

// tcpPayloadAt returns where the TCP payload starts in frame prefix p, for
// a plain TCP segment whose headers p holds whole: IPv4 (not a fragment)
// or IPv6 without extension headers. It returns 0 for anything else.
func tcpPayloadAt(p []byte) int {
	if len(p) < 14 {
		return 0
	}
	l4 := 0
	switch binary.BigEndian.Uint16(p[12:]) {
	case 0x0800:
		if len(p) < 14+20 || p[14]>>4 != 4 || p[14+9] != 6 {
			return 0
		}
		if binary.BigEndian.Uint16(p[14+6:])&0x3fff != 0 {
			return 0 // a fragment: the parser refuses it, let it see it all
		}
		l4 = 14 + int(p[14]&0xf)*4
		if l4 < 14+20 {
			return 0
		}
	case 0x86dd:
		if len(p) < 14+40 || p[14]>>4 != 6 || p[14+6] != 6 {
			return 0
		}
		l4 = 14 + 40
	default:
		return 0
	}
	if len(p) < l4+20 {
		return 0
	}
	doff := int(p[l4+12]>>4) * 4
	if doff < 20 || l4+doff > len(p) {
		return 0
	}
	return l4 + doff
}

// extTail leaves the payload of chain c, a frame of size bytes whose
// first len(prefix) bytes were copied into prefix, in guest memory as f's
// Ext, if it is a TCP segment with enough payload. It reports whether it
// did; the caller copies the rest otherwise. mu held shared, txMu held.
func (d *Device) extTail(c *chain, f *link.Frame, prefix []byte, size int, hdr []byte) bool {
	off := tcpPayloadAt(prefix)
	if off == 0 || size-off < txExtMin || len(c.rd) > maxExtSegs {
		return false
	}
	if d.extOut.Load() >= int64(d.vq[txQ].num/2) {
		// Flows hold half the guest's transmit ring already (a flow's
		// inbox is as deep as the ring): copy, so that the guest always
		// has buffers to send with, whatever a slow flow keeps.
		d.Stats.ExtCapped.Add(1)
		return false
	}
	csum := hdr[0]&hdrFNeedsCsum != 0
	start, coff := int(binary.LittleEndian.Uint16(hdr[6:])), int(binary.LittleEndian.Uint16(hdr[8:]))
	if csum && (start >= size || start+coff+2 > size) {
		return false // the copy drops it
	}
	e := txExtPool.Get().(*txExt)
	e.segs = appendRange(e.segs, c.rd, d.hdrLen+off, size-off)
	e.n = size - off
	e.d, e.epoch, e.head = d, d.txEpoch, c.head
	e.mem = d.mem
	e.mem.acquire()
	e.csum, e.csumStart, e.csumOff = csum, start, coff
	f.Ext, f.ExtOff = e, off
	d.extOut.Add(1)
	d.Stats.Ext.Add(1)
	d.Stats.ExtBytes.Add(uint64(e.n))
	return true
}

// drainWait bounds drain: a flow that does not let go by then (stuck
// behind a full writer queue, say) loses its chains to the ring's
// incarnation. A variable for the tests.
var drainWait = time.Second

// drain waits until no loan may still be written into and no Ext still
// read from, before a request that stops or moves a ring: once the
// front end has our answer the guest may reuse the buffers (a driver
// reset frees them), and a recvmsg into one, or a sendmsg from one,
// would then corrupt guest memory or the host stream. Meanwhile Lend
// refuses and the reader copies. No lock is held: the flows' Release
// needs mu. The caller clears draining when the request is done.
func (d *Device) drain() {
	// Under the locks under which the reader and Lend look at it and
	// count what they make: whatever they made before is counted.
	d.txMu.Lock()
	d.rxMu.Lock()
	d.draining.Store(true)
	d.rxMu.Unlock()
	d.txMu.Unlock()
	deadline := time.Now().Add(drainWait)
	for d.filling.Load() > 0 || d.extOut.Load() > 0 {
		if time.Now().After(deadline) {
			d.log.Warnf("vhost-user: %d lent buffers and %d transmit buffers still held by flows; the guest may see them again", d.filling.Load(), d.extOut.Load())
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// txStopLocked ends the transmit queue's epoch: Exts still out publish
// nothing when released. mu held exclusively.
func (d *Device) txStopLocked() {
	d.txEpoch++
}
