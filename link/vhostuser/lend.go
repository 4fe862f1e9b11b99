package vhostuser

import (
	"encoding/binary"
	"runtime/debug"
	"sync"

	"github.com/gopasta/gopasta/internal/nbsys"
	"github.com/gopasta/gopasta/link"
)

// Lending receive buffers (link.Lender): the TCP actors read host data
// straight into the guest's receive buffers, so that a segment's payload
// is copied once, by the kernel, instead of into a frame and again into
// the guest.
//
// # What a loan is
//
// Lend takes receive chains off the ring for one frame, as put does, but
// on an actor's goroutine; the chains' writable memory past the room for
// the virtio-net header and the frame's headers is the loan's payload,
// which the actor fills with one recvmsg (kernel writes only: a fault is
// EFAULT, not a crash). The headers travel in the frame's Data; the
// writer, when the frame's turn comes, writes the virtio-net header and
// the frame headers in front of the payload (under the data path's fault
// guard), fills the used entries of the chains the frame took, and gives
// back the ones it did not need. Used entries are published by the writer
// alone, in the order frames are written, so the chains of one frame are
// consecutive (num_buffers) and flows keep their order; split rings allow
// used entries in any order relative to the avail ring, as we do not
// offer VIRTIO_F_IN_ORDER.
//
// # Giving chains back
//
// A chain taken and not used (the peek returned less than lent, the flow
// was reset, the writer dropped the frame) cannot go back onto the avail
// ring: another goroutine may have taken a later one meanwhile. It goes
// to the stash, which every taker (Lend and the writer's put) empties
// before popping the ring. Release, which Frame.Release calls, is the only
// way back, so every path that ends a frame returns its chains. When the
// receive queue stops (GET_VRING_BASE) the stash is returned to the guest
// as used entries of length zero, which drivers drop as runts; chains
// lent at that moment are lost to that ring's incarnation (the guest's
// driver has them back on its next reset).
//
// # Memory and epochs
//
// A loan holds a reference on the memory table it was taken from
// (memTable.acquire): a new table or a disconnect unmaps the old one only
// once the last loan on it is released, so the kernel never writes a
// peek into memory that was unmapped and perhaps mapped again for
// something else. A loan also carries the receive queue's epoch, which
// every stop, start, resize or move of that queue advances: the writer
// drops a loan from another epoch, and its release forgets its chains.
//
// # Bounds and locks
//
// Loans hold at most half the ring's chains between them, so that the
// writer, which must not wait for chains lent to frames queued behind
// the one it is writing, always finds the other half coming back from
// the guest. The writer sleeping for buffers is woken through our own
// kick eventfd when a release stashes chains.
//
// Lock order: Device.mu (shared: Lend, Release, the writer; exclusive:
// the control goroutine) before Device.rxMu, which guards the receive
// ring's avail side (lastAvail), the stash, the epoch and the lent count.
// rxMu is never held while sending on a channel, waiting for the guest or
// calling out of the package.

const (
	// maxLoanChains and maxLoanSegs bound one loan: a 64 KiB frame in
	// Linux's page-sized mergeable buffers takes 17 chains.
	maxLoanChains = 64
	maxLoanSegs   = 64
)

// loan is a link.Loan of receive chains for one frame.
type loan struct {
	d     *Device
	mem   *memTable // referenced while the loan lives
	epoch uint64
	hlen  int // frame header bytes the frame's Data brings

	heads []uint16 // the chains, in order
	lens  []int    // writable bytes of each chain
	segs  [][]byte // the chains' writable segments, in order
	pay   [][]byte // the payload's part of segs

	n       int  // Commit's
	filling bool // lent and not yet committed: counted in Device.filling
}

var loanPool = sync.Pool{New: func() any {
	return &loan{heads: make([]uint16, 0, maxLoanChains), lens: make([]int, 0, maxLoanChains),
		segs: make([][]byte, 0, maxLoanSegs), pay: make([][]byte, 0, maxLoanSegs)}
}}

// Payload implements link.Loan.
func (l *loan) Payload() [][]byte { return l.pay }

// Commit implements link.Loan.
// The checksum's place is not needed: the frame goes as DATA_VALID.
func (l *loan) Commit(n, _, _ int) {
	l.n = max(0, min(n, payLen(l.pay)))
	l.filled()
}

// filled ends the part of the loan's life in which its producer may
// write into it (drain waits for it).
func (l *loan) filled() {
	if l.filling {
		l.filling = false
		l.d.filling.Add(-1)
	}
}

// Len implements link.Loan.
func (l *loan) Len() int { return l.n }

func payLen(segs [][]byte) int {
	n := 0
	for _, s := range segs {
		n += len(s)
	}
	return n
}

// Release implements link.Loan: chains not consumed go to the stash (if
// their queue has not moved on), and the memory reference is dropped.
func (l *loan) Release() {
	d := l.d
	if d == nil {
		return
	}
	l.filled()
	if len(l.heads) > 0 {
		d.mu.RLock()
		d.rxMu.Lock()
		d.giveBackLocked(l)
		d.rxMu.Unlock()
		d.mu.RUnlock()
	}
	l.mem.release()
	l.d, l.mem = nil, nil
	l.heads, l.lens = l.heads[:0], l.lens[:0]
	clear(l.segs)
	clear(l.pay)
	l.segs, l.pay = l.segs[:0], l.pay[:0]
	loanPool.Put(l)
}

// giveBackLocked stashes the loan's chains, waking the writer if it
// sleeps for buffers. mu held shared, rxMu held.
func (d *Device) giveBackLocked(l *loan) {
	if l.epoch == d.rxEpoch {
		d.stash = append(d.stash, l.heads...)
		d.lent -= len(l.heads)
		d.rxReturns++
		if d.rxWaiting {
			d.rxWaiting = false
			if fd := d.kickFD[rxQ]; fd >= 0 {
				_, _ = nbsys.Write(fd, d.poke[:])
			}
		}
	}
	l.heads, l.lens = l.heads[:0], l.lens[:0]
}

// Lend implements link.Lender, for the whole payLen or not at all. It
// lends only with mergeable buffers (a frame may take several chains, as
// upstream's TCP path does) and with VIRTIO_NET_F_GUEST_CSUM, which lets
// the frame go without a transport checksum: it is marked DATA_VALID, so
// the guest's stack treats it as verified, and nobody reads the payload
// to sum it.
func (d *Device) Lend(hlen, payLen int) *link.Frame {
	if payLen <= 0 || d.cfg.Copy {
		return nil
	}
	const need = 1<<fNetMrgRxbuf | 1<<fNetGuestCsum
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed || !d.running(rxQ) || d.acked&need != need || d.hdrLen != virtioNetHdrSize {
		return nil
	}
	l := loanPool.Get().(*loan)
	room := d.hdrLen + hlen
	d.rxMu.Lock()
	if d.draining.Load() {
		// A ring is stopping (drain): no new loans.
		d.rxMu.Unlock()
		loanPool.Put(l)
		return nil
	}
	total, err := d.takeLoanLocked(l, room+payLen)
	l.d, l.epoch = d, d.rxEpoch
	if err == nil && total < room+payLen {
		// Too few buffers for the whole segment: a shorter one would
		// cost the guest, whose per-packet work is what limits it,
		// a packet more for the same bytes. The copy path waits for
		// buffers and sends whole segments.
		d.giveBackLocked(l)
	}
	if len(l.heads) > 0 {
		// Counted before drain can look, which it does under rxMu.
		l.filling = true
		d.filling.Add(1)
	}
	d.rxMu.Unlock()
	if err != nil {
		d.fail(err)
	}
	if len(l.heads) == 0 {
		l.d = nil
		clear(l.segs)
		l.segs = l.segs[:0]
		loanPool.Put(l)
		return nil
	}
	// The payload: the segments past the header room, at most payLen.
	l.pay = appendRange(l.pay, l.segs, room, payLen)
	l.mem = d.mem
	l.mem.acquire()
	l.hlen, l.n = hlen, 0
	f := link.GetFrame(hlen)
	f.Loan = l
	return f
}

// takeLoanLocked takes chains for want bytes into l, from the stash first,
// as many as the bounds allow and the guest has posted, and returns the
// bytes they hold. mu held shared, rxMu held.
func (d *Device) takeLoanLocked(l *loan, want int) (total int, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer guard(&err)
	q, c, m := &d.vq[rxQ], d.lendChain, d.mem
	limit := min(maxLoanChains, int(q.num/2)-d.lent)
	for total < want && len(l.heads) < limit {
		stashed := len(d.stash) > 0
		if stashed {
			err = q.walk(m, d.stash[len(d.stash)-1], c)
		} else {
			var ok bool
			if ok, err = q.pop(m, c); !ok {
				break
			}
		}
		if err != nil {
			break
		}
		if c.wrLen < d.hdrLen {
			err = ringErr("receive chain %d of %d bytes, less than the header", c.head, c.wrLen)
			break
		}
		if len(l.segs)+len(c.wr) > maxLoanSegs {
			if !stashed {
				q.unpop(1)
			}
			break
		}
		if stashed {
			d.stash = d.stash[:len(d.stash)-1]
		}
		l.heads = append(l.heads, c.head)
		l.lens = append(l.lens, c.wrLen)
		l.segs = append(l.segs, c.wr...)
		d.lent++
		total += c.wrLen
	}
	return total, err
}

// putLoan writes lent frame f into its chains: the virtio-net header and
// f's headers in front of the payload the producer read there, the used
// entries of the chains it fills, the rest stashed. A loan from another
// epoch or device, or with headers of another size, is dropped (its
// Release forgets or stashes the chains). mu held shared, inside
// toGuest's fault guard.
func (d *Device) putLoan(q *vring, f *link.Frame) bool {
	l, ok := f.Loan.(*loan)
	d.rxMu.Lock()
	defer d.rxMu.Unlock()
	if !ok || l.d != d || l.epoch != d.rxEpoch || len(f.Data) != l.hlen || l.n == 0 {
		d.Stats.TxDropped.Add(1)
		return false
	}
	total := d.hdrLen + len(f.Data) + l.n
	k, rem := 0, total
	for ; rem > 0 && k < len(l.heads); k++ {
		rem -= l.lens[k]
	}
	// DATA_VALID, as on copied frames and as upstream passt marks its
	// own: the guest negotiated GUEST_CSUM (Lend requires it), and the
	// payload is the bytes a TCP socket delivered, so there is nothing
	// to verify, and neither we nor the guest spend a pass over the
	// payload on it. The checksum field is left as the producer wrote it.
	var hdr [virtioNetHdrSize]byte
	hdr[0] = hdrFDataValid
	binary.LittleEndian.PutUint16(hdr[10:], uint16(k))
	scatter(l.segs, 0, hdr[:d.hdrLen])
	scatter(l.segs, d.hdrLen, f.Data)
	rem = total
	for i := 0; i < k; i++ {
		n := min(l.lens[i], rem)
		q.fill(l.heads[i], uint32(n))
		rem -= n
	}
	d.lent -= k
	// The chains it did not need go to the stash (moved down, so that
	// the pooled slices keep their capacity).
	l.heads = l.heads[:copy(l.heads, l.heads[k:])]
	l.lens = l.lens[:copy(l.lens, l.lens[k:])]
	d.giveBackLocked(l)
	d.Stats.Lent.Add(1)
	d.Stats.LentBytes.Add(uint64(l.n))
	return true
}

// rxStopLocked ends the receive queue's epoch: loans still out are
// forgotten, the stash is returned to the guest as empty used entries if
// ret is set and the ring can take them. mu held exclusively.
func (d *Device) rxStopLocked(ret bool) {
	d.rxMu.Lock()
	defer d.rxMu.Unlock()
	q := &d.vq[rxQ]
	if n := int(q.num); cap(d.stash) < n {
		d.stash = make([]uint16, 0, n)
	}
	if ret && q.started && q.used != nil && len(d.stash) > 0 {
		for _, h := range d.stash {
			q.fill(h, 0)
		}
		if q.flush() {
			d.interrupt(rxQ)
		}
	}
	d.stash = d.stash[:0]
	d.lent = 0
	d.rxEpoch++
}
