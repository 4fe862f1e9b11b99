package tcp

import (
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/link"
)

// Guest -> host without a copy: on a vhost-user link a segment's payload
// may still be in the guest's memory (link.Frame.Ext), the frame holding
// only its headers. A segment that is next in sequence, fits the window,
// and finds nothing held before it goes to the socket straight from
// there, with one sendmsg. Everything else is copied into the frame first
// (Flatten) and takes the ordinary path (onData): what the flow holds is
// then in our buffers, and the guest has its memory back as soon as the
// frame is handled, however long the socket stays full.

// onExtData handles the payload of f at seq, in guest memory, fin the
// segment's FIN. It reports whether it is done with the segment, and if
// so whether the flow holds f now; if not, f has been flattened and
// payload (which Data now holds) is onData's.
func (c *tcpConn) onExtData(f *link.Frame, seq uint32, payload []byte, fin bool) (done, kept bool) {
	n := len(payload)
	if s := c.sock; len(c.rcv.pend) > 0 && s != nil && (s.armed.Load()&sockWritable == 0 || s.pending.Load()&sockWritable != 0) {
		// Bytes held before this segment (a small segment of the same
		// drain, copied; or what a full socket left, which now has
		// room): write them now, so that this one need not be held
		// behind them. Not while the socket is known to be full.
		c.flush()
	}
	if seq != c.rcv.nxt || len(c.rcv.pend) > 0 || len(c.rcv.ooo) > 0 || c.state&(tcpGuestFin|tcpClosed) != 0 ||
		c.sock == nil || seqGT(c.rcv.nxt+uint32(n), c.rcv.edge) || f.Payload > f.ExtOff {
		return !c.flattenExt(f), false
	}
	iv := 0
	if f.Payload < f.ExtOff {
		setIov(&c.sock.iov[0], f.Data[f.Payload:f.ExtOff])
		iv++
	}
	left := len(f.Data) - f.ExtOff
	for _, b := range f.Ext.Segs() {
		if left == 0 {
			break
		}
		if iv == tcpMaxIov {
			return !c.flattenExt(f), false
		}
		b = b[:min(len(b), left)]
		setIov(&c.sock.iov[iv], b)
		iv++
		left -= len(b)
	}
	c.sock.clear(sockWritable)
	w, err := c.sock.sendmsg(iv)
	switch {
	case err == unix.EAGAIN:
		w = 0
	case err == unix.EFAULT:
		// The guest's memory went away under the kernel (the front
		// end shrank it): the segment is lost, as on a broken link.
		// Nothing is acknowledged; the device stops on its own.
		c.env.Stats.TCPGuestFault.Add(1)
		return true, false
	case err != nil:
		c.hostError("write", err)
		return true, false
	}
	c.rcv.outqEst += w
	c.rcv.outqAge += w
	c.rcv.nxt += uint32(w)
	c.ack.due = true
	if w == n {
		if c.rcv.nxt == c.rcv.edge {
			c.ack.force = true // the window is full: say so
		}
		if fin {
			c.accept(f, nil, true)
		}
		return true, false
	}
	// The socket took part: the rest is held, as flush would hold it,
	// in our memory. accept counts it from rcvNxt, past what went.
	if !c.flattenExt(f) {
		return true, false
	}
	return true, c.accept(f, payload[w:], fin)
}

// flattenExt copies f's payload from guest memory into f. A fault on the
// guest's memory drops the segment (false): nothing of it is acknowledged.
func (c *tcpConn) flattenExt(f *link.Frame) bool {
	if f.Flatten() {
		return true
	}
	c.env.Stats.TCPGuestFault.Add(1)
	return false
}
