package vhostuser

import (
	"time"
)

// Notifications that never come.
//
// Both sides of a split virtqueue sleep on the other's notification, and
// both suppress notifications while the other is busy (event indexes, or
// the NO_NOTIFY/NO_INTERRUPT flags). Going to sleep is then a store
// (avail_event: "kick me past here"), a full barrier, and a load (the
// avail index: "did anything come meanwhile?"); the driver's side is the
// mirror image (store the avail index, barrier, load avail_event). If both
// barriers are real, at least one side sees the other's store, and nothing
// is lost. The guest's barrier is not always real: QEMU's TCG with one
// vCPU emits no barriers for guest fences at all (no other vCPU could see
// the difference; a back end in another process can), and a guest kernel
// may be buggy. Then both sides can read the old value, the driver does
// not kick, we sleep, and as the driver kicks only when its index crosses
// avail_event, later frames do not kick either: the queue is stuck for
// good. A guest TCP connection then hangs with no retransmission, since
// Linux does not retransmit a segment whose first copy is still in the
// device's hands. (The gopasta VM test caught this about once in twenty
// runs, with the transmit zero copy's timing.) The same can happen to an
// interrupt: the driver re-enables interrupts (used_event) as we publish
// a used entry, each reads the other's old value, and the driver waits
// for an interrupt that was never sent.
//
// So whoever sleeps on a kick wakes up on its own as well: first
// pollFirst after going to sleep (the lost kick races with going to
// sleep, so it is found at once), then at doubling intervals up to
// pollMax while nothing happens, which keeps an idle device nearly
// asleep. Each such wake-up of the reader also re-sends an interrupt the
// driver asked for and did not get (its event index lies between our
// last interrupt and what we have published, or, without event indexes,
// interrupts are on and entries were published since the last one). What
// polling found is counted: FoundByPoll (also kicks that were merely late:
// a TCG vCPU's thread may be descheduled between making a chain available
// and kicking), InterruptsResent.

const (
	// pollFirst is Device.pollFirst's default (the tests that count
	// sleeps set it longer).
	pollFirst = 2 * time.Millisecond
	pollMax   = time.Second
)

// backoff is a sleeper's polling interval; its zero value means the first.
type backoff time.Duration

// next returns the interval to sleep now, first after a kick.
func (b backoff) next(first time.Duration) time.Duration {
	if b == 0 {
		return first
	}
	return time.Duration(b)
}

// after records how the sleep ended: a kick starts over, a timeout doubles.
func (b *backoff) after(kicked bool, slept time.Duration) {
	if kicked {
		*b = 0
		return
	}
	*b = backoff(max(min(2*slept, pollMax), slept))
}

// noteInterrupt records the used index published when queue i's driver
// was interrupted. Called by interrupt, with the queue's used side held.
func (d *Device) noteInterrupt(i int) {
	if u := d.vq[i].used; u != nil {
		d.irqUsed[i].Store(uint32(le16(u[2:])))
	}
}

// resendInterrupts interrupts every running queue whose driver waits for
// an interrupt it should have had; see above. It reads only what is
// published in the rings and what interrupt recorded, so it needs neither
// queue's lock. mu held shared.
func (d *Device) resendInterrupts() {
	for i := range d.vq {
		q := &d.vq[i]
		if !d.running(i) || q.used == nil || q.avail == nil {
			continue
		}
		used := le16(q.used[2:])
		last := uint16(d.irqUsed[i].Load())
		if used == last {
			continue
		}
		var want bool
		if q.eventIdx {
			ev := le16(q.avail[4+2*q.num:])
			want = used-ev-1 < used-last
		} else {
			want = le16(q.avail[0:])&availFNoInterrupt == 0
		}
		if want {
			d.Stats.InterruptsResent.Add(1)
			d.interrupt(i)
		}
	}
}
