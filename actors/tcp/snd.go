package tcp

import (
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// Host -> guest: the socket's receive queue is our retransmission buffer.
// Bytes from snd.una to snd.nxt have been sent to the guest and are still in
// the queue; the kernel's peek offset (SO_PEEK_OFF) points at snd.nxt, so a
// peek returns the next bytes to send. One recvmsg scatters them straight
// into the payload areas of up to tcpSendFrames pooled frames, whose headers
// are then filled from the flow's template: the data is copied once, from
// the kernel into the frame that goes to the link. On a link that lends the
// guest's receive buffers (vhost-user, link.Lender) the payload areas are
// those buffers, and the frame carries only its headers: the data is copied
// once, from the kernel into the guest. When the guest
// acknowledges, as many bytes are discarded from the queue (MSG_TRUNC), at
// the end of the run that handled the ACK, once its answer is peeked
// (consume); to retransmit we set the peek offset back to zero.

// trySend sends what the guest's window allows, if the socket may have data.
func (c *tcpConn) trySend() {
	if !c.snd.sockData || c.state&(tcpFinSent|tcpClosed) != 0 {
		return
	}
	for range tcpSendBatches {
		if !c.sendBatch() || len(c.parked) > 0 {
			// Parked: the link is full and this is an inline run,
			// which leaves the rest to the actor (inline.go).
			return
		}
	}
}

// sendBatch peeks once and sends the segments. It returns true if it
// should be called again (the window and the socket may both have more).
func (c *tcpConn) sendBatch() bool {
	inflight := c.snd.nxt - c.snd.una
	wnd := min(c.snd.wnd, tcpMaxWindow)
	if inflight >= wnd {
		if wnd == 0 && c.tm.persistAt.IsZero() && !c.outstanding() {
			c.tm.persistAt = c.tm.now.Add(c.tm.rto)
		}
		return false
	}
	c.tm.persistAt = time.Time{}
	room := int(wnd - inflight)
	s := c.sock
	hlen := c.tmpl.hlen
	iv := 0
	if !s.peekOff && inflight > 0 {
		setIov(&s.iov[0], getDiscard()[:inflight])
		iv = 1
	}
	want := 0
	nf := 0
	lender := c.env.Out.Lender()
	for nf < tcpSendFrames && room > 0 && iv < tcpMaxIov {
		l := min(c.snd.mss, room)
		var f *link.Frame
		if lender != nil {
			if f = lender.Lend(hlen, l); f != nil {
				p := f.Loan.Payload()
				if iv+len(p) > tcpMaxIov {
					f.Release()
					break
				}
				l = 0
				for _, b := range p {
					setIov(&s.iov[iv], b)
					iv++
					l += len(b)
				}
			}
		}
		if f == nil {
			f = link.GetFrame(hlen + c.snd.mss)
			setIov(&s.iov[iv], f.Data[hlen:hlen+l])
			iv++
		}
		c.snd.frames[nf] = f
		c.snd.fcap[nf] = l
		nf++
		room -= l
		want += l
	}
	s.clear(sockReadable)
	n, err := s.recvmsg(iv, unix.MSG_PEEK)
	if !s.peekOff && err == nil && n > 0 {
		if n -= int(inflight); n <= 0 {
			err = unix.EAGAIN // nothing beyond what is in flight
		}
	}
	switch {
	case err == unix.EAGAIN:
		c.releaseFrames(0, nf)
		c.snd.sockData = false
		s.arm(sockReadable)
		return false
	case err != nil:
		c.releaseFrames(0, nf)
		c.hostError("read", err)
		return false
	case n <= 0:
		c.releaseFrames(0, nf)
		c.snd.sockData = false
		c.setState(c.state|tcpHostEOF, "end of stream from the host")
		c.debugf("end of stream from host")
		c.sendFin()
		return false
	}
	mac := c.env.Peer.MAC()
	ack := c.ackNum()
	win := c.rcvWindow()
	seq := c.snd.nxt
	off := 0
	i := 0
	lent := false
	for ; off < n; i++ {
		l := min(c.snd.fcap[i], n-off)
		flags := uint8(wire.TCPAck)
		if off+l == n {
			flags |= wire.TCPPsh
		}
		f := c.snd.frames[i]
		if f.Loan != nil {
			c.tmpl.fillLent(f, mac, seq+uint32(off), ack, flags, win, l)
			lent = true
		} else {
			c.tmpl.fill(f, mac, seq+uint32(off), ack, flags, win, 0, l)
		}
		off += l
	}
	c.releaseFrames(i, nf)
	c.sendPeeked(c.snd.frames[:i], lent)
	c.noteSent(ack, win)
	c.ack.dupDue = 0
	if !c.rtt.on && seq == c.snd.high {
		c.rtt.on, c.rtt.seq, c.rtt.at = true, seq+uint32(n), c.tm.now
	}
	c.snd.nxt += uint32(n)
	if seqGT(c.snd.nxt, c.snd.high) {
		c.snd.high = c.snd.nxt
	}
	if c.tm.rtoAt.IsZero() {
		c.tm.rtoAt = c.tm.now.Add(c.tm.rto)
	}
	if n < want && !s.hungUp() {
		// The queue is drained: wait for more. (An end of stream or
		// error whose event came before our last clear raises no new
		// edge: after one, peek on until the socket says so itself.)
		c.snd.sockData = false
		s.arm(sockReadable)
		return false
	}
	return true
}

// sendPeeked sends the segments of one peek, frames (which it clears). A
// burst of frames in the guest's own buffers (lent) goes to the link in
// one batch when it is idle: the writer then fills the guest's used ring
// once for all of them, and the guest, which is interrupted at most once
// per batch, pays for one interrupt per burst instead of one per segment
// the writer goroutine happened to wake up for (its handler is dear under
// emulation). The segments themselves are in the guest already, so
// nothing is lost by writing them here rather than on the writer's
// goroutine. Copied frames keep the writer's goroutine: writing them is
// the copy, which runs beside our next peek.
func (c *tcpConn) sendPeeked(frames []*link.Frame, lent bool) {
	if len(frames) == 1 {
		c.send(frames[0]) // the whole answer in one segment
		frames[0] = nil
		return
	}
	if !lent {
		for i, f := range frames {
			c.sendBurst(f)
			frames[i] = nil
		}
		return
	}
	for _, f := range frames {
		c.countOut(f)
	}
	if c.inline {
		c.offerBatch(frames)
		return
	}
	c.unpark()
	c.env.Out.SendBatchNow(c.env.Ctx, frames)
}

func (c *tcpConn) releaseFrames(from, to int) {
	for i := from; i < to; i++ {
		c.snd.frames[i].Release()
		c.snd.frames[i] = nil
	}
}

// sendFin sends our FIN once every byte before it has been sent.
func (c *tcpConn) sendFin() {
	if c.state&tcpFinSent != 0 {
		return
	}
	c.snd.finSeq = c.snd.nxt
	c.snd.finEver = true
	c.setState(c.state|tcpFinSent, "FIN to the guest")
	f := link.GetFrame(c.tmpl.hlen)
	ack, win := c.ackNum(), c.rcvWindow()
	c.tmpl.fill(f, c.env.Peer.MAC(), c.snd.finSeq, ack, wire.TCPFin|wire.TCPAck, win, 0, 0)
	c.noteSent(ack, win)
	c.send(f)
	if c.tm.rtoAt.IsZero() {
		c.tm.rtoAt = c.tm.now.Add(c.tm.rto)
	}
}

// outstanding reports whether anything we sent awaits the guest's ACK.
func (c *tcpConn) outstanding() bool {
	return c.snd.nxt != c.snd.una || c.state&(tcpFinSent|tcpFinAcked) == tcpFinSent
}

// onAck processes the guest's acknowledgement and window.
func (c *tcpConn) onAck(th wire.TCP, payLen int) {
	ack := th.Ack()
	win := uint32(th.Window()) << c.snd.ws
	high := c.snd.high
	if c.snd.finEver {
		high = c.snd.finSeq + 1
	}
	switch {
	case seqGT(ack, high):
		c.ack.due, c.ack.force = true, true // acknowledges what we never sent
		return
	case seqLT(ack, c.snd.una):
		return // old
	case ack == c.snd.una:
		if payLen == 0 && win == c.snd.wnd && c.outstanding() && th.Flags()&wire.TCPFin == 0 {
			if c.snd.dupAcks++; c.snd.dupAcks == 3 {
				c.retransmit("3 duplicate ACKs")
			}
		}
		c.setSndWnd(win)
		return
	}
	data := ack
	if c.snd.finEver && ack == c.snd.finSeq+1 {
		c.setState(c.state|tcpFinAcked, "the guest acknowledged our FIN")
		data = c.snd.finSeq
		c.debugf("guest acknowledged our FIN")
	}
	if n := data - c.snd.una; n > 0 {
		c.snd.acked += int(n)
		if !c.sock.peekOff && !c.consume() {
			return
		}
	}
	c.snd.una = data
	if seqLT(c.snd.nxt, c.snd.una) {
		c.snd.nxt = c.snd.una // acknowledged beyond a rewind
		if !c.consume() {
			return
		}
		c.sock.setPeekOff(0)
	}
	c.setSndWnd(win)
	c.snd.dupAcks = 0
	c.tm.retries = 0
	if c.rtt.on && seqGE(ack, c.rtt.seq) {
		c.rttSample(c.tm.now.Sub(c.rtt.at))
		c.rtt.on = false
	}
	if c.outstanding() {
		c.tm.rtoAt = c.tm.now.Add(c.tm.rto)
	} else {
		c.tm.rtoAt = time.Time{}
	}
}

// consume takes the bytes the guest has acknowledged out of the socket's
// receive queue; it reports false if that failed (the flow is closing).
//
// With a peek offset the discard waits for the end of the run that
// handled the ACK (output calls consume after trySend): the data the ACK
// made room for is peeked and on its way to the guest first. The discard
// is the system call in which the host's kernel sends its window update
// to the host peer and, on loopback, in the same softirq, runs the peer's
// ACK processing and the transmission it clocks (a tenth of our CPU in a
// download); none of that need come between the guest's ACK and our
// answer. The peek offset is the kernel's, which moves back by what is
// discarded, so the order does not change what is peeked. Holding
// acknowledged bytes any longer, across runs, would not do: a partly
// consumed buffer stays charged to the receive buffer at its full size,
// the window towards the host closes, and nothing reopens it
// (TestTCPSmallWindowLargeAnswer). Everything that assumes the queue
// starts at snd.una (a rewind to it, a peek without an offset) consumes
// first.
func (c *tcpConn) consume() bool {
	if c.snd.acked == 0 || c.sock == nil {
		c.snd.acked = 0
		return true
	}
	n := c.snd.acked
	c.snd.acked = 0
	if err := c.sock.discard(n); err != nil {
		c.hostError("discard", err)
		return false
	}
	if !c.sock.peekOff && c.sock.hungUp() {
		// Without a peek offset, the end of stream shows only once
		// the queue is empty, and its event has come and gone.
		c.snd.sockData = true
	}
	return true
}

// retransmit rewinds to the oldest unacknowledged byte (go-back-N: without
// SACK there is nothing better to know) and clears the FIN so that it is
// sent again after the data.
func (c *tcpConn) retransmit(why string) {
	c.debugf("retransmit from %d (%s)", c.snd.una, why)
	c.obs.retrans++
	c.tracef(func() string {
		return "retransmit from seq " + strconv.FormatUint(uint64(c.snd.una-c.snd.iss), 10) + " (" + why + "), " +
			strconv.FormatUint(uint64(c.snd.nxt-c.snd.una), 10) + " bytes in flight"
	})
	c.snd.nxt = c.snd.una
	if !c.consume() {
		return
	}
	c.sock.setPeekOff(0)
	if c.state&(tcpFinSent|tcpFinAcked) == tcpFinSent {
		c.setState(c.state&^tcpFinSent, "FIN to be sent again")
		if c.state&tcpHostEOF != 0 && c.snd.una == c.snd.finSeq {
			c.sendFin()
			return
		}
	}
	c.snd.sockData = true
	c.rtt.on = false
	c.snd.dupAcks = 0
}

// rttSample updates the smoothed RTT and the RTO as RFC 6298 says.
func (c *tcpConn) rttSample(r time.Duration) {
	if c.rtt.srtt == 0 {
		c.rtt.srtt, c.rtt.rttvar = r, r/2
	} else {
		d := c.rtt.srtt - r
		if d < 0 {
			d = -d
		}
		c.rtt.rttvar = (3*c.rtt.rttvar + d) / 4
		c.rtt.srtt = (7*c.rtt.srtt + r) / 8
	}
	c.tm.rto = min(max(c.rtt.srtt+max(4*c.rtt.rttvar, time.Millisecond), tcpRTOMin), tcpRTOMax)
}

// setSndWnd takes the guest's new window, tracing it closing and opening.
func (c *tcpConn) setSndWnd(win uint32) {
	if (win == 0) != (c.snd.wnd == 0) {
		c.tracef(func() string {
			if win == 0 {
				return "the guest's window closed, " + strconv.FormatUint(uint64(c.snd.nxt-c.snd.una), 10) + " bytes in flight"
			}
			return "the guest's window opened to " + strconv.FormatUint(uint64(win), 10)
		})
	}
	c.snd.wnd = win
}
