package tcp

import (
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/internal/nbsys"
	"github.com/gopasta/gopasta/link"
)

// Guest -> host: the guest's payload is accepted in sequence into pend,
// holding its frames (or, for what stays, right-sized copies: compact), and
// written to the socket with one sendmsg per inbox drain. The guest is acknowledged only for bytes the socket took, and the
// window offered to it is the socket's free send space less what we hold,
// never moving its right edge backwards, and no larger than the flow's
// memory budget covers (budgetWindow). Whatever arrives inside that edge
// is kept until written, however long the socket stays full: this is the
// difference from pasta, which drops the tail of a partial write and makes
// the guest wait out a retransmission timeout.

// onData accepts payload (and fin) at seq from frame f. It returns true if
// the frame is now held by the flow.
func (c *tcpConn) onData(f *link.Frame, seq uint32, payload []byte, fin bool) bool {
	if c.state&tcpGuestFin != 0 {
		c.ack.due, c.ack.force = true, true // a retransmission after the FIN: repeat our ACK
		return false
	}
	if seqLT(seq, c.rcv.nxt) {
		d := c.rcv.nxt - seq
		if d > uint32(len(payload)) || d == uint32(len(payload)) && !fin {
			// Old data. If we acknowledged it already, our ACK was lost
			// or the guest probes (keepalive): say where we are, once.
			// If we hold it, unwritten, the guest's timer fired before
			// the socket took it: the ACK comes when the socket does,
			// and a duplicate now would only make the guest retransmit
			// more.
			if seqLE(seq+uint32(len(payload)), c.ackNum()) {
				c.ack.due, c.ack.force = true, true
			}
			return false
		}
		payload = payload[d:]
		seq = c.rcv.nxt
	}
	if seq != c.rcv.nxt {
		// A hole before this segment: hold it, and send a duplicate ACK
		// so that the guest retransmits the missing part quickly.
		c.ack.dupDue = min(c.ack.dupDue+1, 3)
		return c.oooInsert(f, seq, payload, fin)
	}
	kept := c.accept(f, payload, fin)
	if len(c.rcv.ooo) > 0 {
		c.oooPull()
	}
	return kept
}

// accept appends in-sequence payload at rcv.nxt.
func (c *tcpConn) accept(f *link.Frame, payload []byte, fin bool) bool {
	if room := c.rcv.edge - c.rcv.nxt; seqGT(c.rcv.nxt+uint32(len(payload)), c.rcv.edge) {
		// Beyond what we offered (a window probe, or a guest ignoring
		// our window): take what fits, the guest will send the rest.
		if int32(room) < 0 {
			room = 0
		}
		payload = payload[:room]
		fin = false
		c.ack.force = true
		c.env.Stats.TCPBeyondWindow.Add(1)
	}
	c.ack.due = true
	kept := false
	if len(payload) > 0 {
		c.rcv.pend = append(c.rcv.pend, tcpSeg{f: f, b: payload})
		c.rcv.pendBytes += len(payload)
		c.rcv.held += cap(f.Data)
		c.rcv.nxt += uint32(len(payload))
		kept = true
		if c.rcv.nxt == c.rcv.edge {
			// The window is full: say so even if the socket took
			// nothing, so that the guest knows it is closed.
			c.ack.force = true
		}
	}
	if fin {
		c.setState(c.state|tcpGuestFin, "FIN from the guest")
		c.debugf("FIN from guest")
	}
	return kept
}

// oooInsert holds a segment that arrived after a hole, if it is inside our
// window and there is room. Its payload is copied into a right-sized
// buffer if its frame is mostly empty: it reports whether f itself is kept.
func (c *tcpConn) oooInsert(f *link.Frame, seq uint32, payload []byte, fin bool) bool {
	if len(payload) == 0 {
		return false
	}
	if !seqLT(seq, c.rcv.edge) {
		c.env.Stats.TCPBeyondWindow.Add(1)
		return false
	}
	if room := c.rcv.edge - seq; uint32(len(payload)) > room {
		payload, fin = payload[:room], false
		c.env.Stats.TCPBeyondWindow.Add(1)
	}
	if len(c.rcv.ooo) >= actors.TCPMaxOOO {
		c.env.Stats.TCPOOODropped.Add(1)
		return false
	}
	i := len(c.rcv.ooo)
	for i > 0 && seqGT(c.rcv.ooo[i-1].seq, seq) {
		i--
	}
	if i > 0 && c.rcv.ooo[i-1].seq == seq {
		return false
	}
	kept := true
	if 2*len(payload) < cap(f.Data) {
		g := link.GetBuffer(len(payload))
		copy(g.Data, payload)
		f, payload, kept = g, g.Data, false
	}
	c.rcv.held += cap(f.Data)
	c.rcv.ooo = append(c.rcv.ooo, tcpSeg{})
	copy(c.rcv.ooo[i+1:], c.rcv.ooo[i:])
	c.rcv.ooo[i] = tcpSeg{f: f, b: payload, seq: seq, fin: fin}
	return kept
}

// oooPull moves held segments that the hole's filling made contiguous.
func (c *tcpConn) oooPull() {
	n := 0
	for n < len(c.rcv.ooo) && seqLE(c.rcv.ooo[n].seq, c.rcv.nxt) && c.state&tcpGuestFin == 0 {
		s := c.rcv.ooo[n]
		n++
		c.rcv.held -= cap(s.f.Data) // accept counts it again if it keeps it
		d := c.rcv.nxt - s.seq
		if d > uint32(len(s.b)) || d == uint32(len(s.b)) && !s.fin {
			s.f.Release()
			continue
		}
		if !c.accept(s.f, s.b[d:], s.fin) {
			s.f.Release()
		}
	}
	m := copy(c.rcv.ooo, c.rcv.ooo[n:])
	clear(c.rcv.ooo[m:])
	c.rcv.ooo = c.rcv.ooo[:m]
}

// compact moves the payload of pend entries added since the last call
// whose buffer is less than half used into packed buffers of ours, one
// after another, so that what the flow holds costs at most twice its bytes
// plus the last buffer's room (budget.go). A bulk transfer's full-sized
// segments stay where they are; only the frames of small segments, or of
// mid-sized ones in 64 KiB buffers, are copied and released. Entries
// before rcv.pendNew are never looked at again: their cost was bounded when
// they were compacted, and a partial write only frees memory.
func (c *tcpConn) compact() {
	j := c.rcv.pendNew
	for i := c.rcv.pendNew; i < len(c.rcv.pend); i++ {
		s := c.rcv.pend[i]
		if 2*len(s.b) >= cap(s.f.Data) {
			c.rcv.pend[j] = s
			j++
			continue
		}
		b := s.b
		for len(b) > 0 {
			if j > 0 {
				if t := &c.rcv.pend[j-1]; t.own && cap(t.f.Data) > len(t.f.Data) {
					l := len(t.f.Data)
					k := min(cap(t.f.Data)-l, len(b))
					t.f.Data = t.f.Data[:l+k]
					copy(t.f.Data[l:], b[:k])
					t.b = t.b[:len(t.b)+k]
					b = b[k:]
					continue
				}
			}
			g := link.GetBuffer(max(len(b), link.SmallFrameSize))
			g.Data = g.Data[:0]
			c.rcv.held += cap(g.Data)
			c.rcv.pend[j] = tcpSeg{f: g, b: g.Data, own: true}
			j++
		}
		c.rcv.held -= cap(s.f.Data)
		s.f.Release()
	}
	clear(c.rcv.pend[j:])
	c.rcv.pend = c.rcv.pend[:j]
	c.rcv.pendNew = j
}

// budgetWindow returns the largest window, at most w, whose filling the
// flow's reservation covers, growing the reservation towards it first: the
// guest can make us hold what is held now, plus at most twice the bytes
// it may still send beyond rcv.nxt, plus actors.TCPBudgetSlack.
func (c *tcpConn) budgetWindow(w int) int {
	ahead := int64(w - c.rcv.pendBytes)
	if ahead <= 0 {
		return w
	}
	want := min(int64(c.rcv.held)+actors.TCPBudgetSlack+2*ahead, c.env.Opts.FlowBuffer)
	if want > c.rcv.charge {
		c.setCharge(c.env.Reserve(c.rcv.charge, want))
	}
	room := (c.rcv.charge - int64(c.rcv.held) - actors.TCPBudgetSlack) / 2
	w = min(w, c.rcv.pendBytes+int(max(room, 0)))
	switch {
	case c.rcv.charge >= want:
		c.tm.budgetAt, c.tm.budgetDly = time.Time{}, 0
	case w < actors.TCPInitWindow/2 && c.tm.budgetAt.IsZero():
		// Starved by the daemon-wide budget, with too small a window
		// for the guest's data to bring us back here soon: look again
		// later, less often the longer it lasts.
		c.tm.budgetDly = min(max(2*c.tm.budgetDly, tcpBudgetRetry), time.Second)
		c.tm.budgetAt = c.tm.now.Add(c.tm.budgetDly)
	}
	return w
}

// tcpBudgetRetry is the first delay before a starved flow looks again.
const tcpBudgetRetry = 10 * time.Millisecond

// setCharge sets the flow's share of the daemon-wide budget to n, giving
// back or counting the difference (reserve already took it), and keeps
// the count of flows sharing the budget.
func (c *tcpConn) setCharge(n int64) {
	switch {
	case c.rcv.charge == 0 && n > 0:
		c.env.BudgetFlows.Add(1)
	case c.rcv.charge > 0 && n == 0:
		c.env.BudgetFlows.Add(-1)
	}
	if n < c.rcv.charge {
		c.env.Uncharge(c.rcv.charge - n)
	}
	c.rcv.charge = n
}

// trimCharge gives back the part of the flow's reservation that neither
// what it holds nor the window it advertised can need any more.
func (c *tcpConn) trimCharge() {
	need := int64(c.rcv.held)
	if seqGT(c.rcv.edge, c.rcv.nxt) {
		need += actors.TCPBudgetSlack + 2*int64(c.rcv.edge-c.rcv.nxt)
	}
	if need < c.rcv.charge-actors.TCPBudgetSlack || need == 0 {
		// Not for every byte the socket takes: a request/response flow
		// would give back and take again at every exchange.
		c.setCharge(need)
	}
}

// flush writes held payload to the socket, releasing the frames it took,
// and shuts the socket down for writing once the guest's FIN is reached.
func (c *tcpConn) flush() {
	for len(c.rcv.pend) > 0 && c.state&tcpClosed == 0 {
		n := min(len(c.rcv.pend), tcpMaxIov)
		for i := 0; i < n; i++ {
			setIov(&c.sock.iov[i], c.rcv.pend[i].b)
		}
		c.sock.clear(sockWritable)
		w, err := c.sock.sendmsg(n)
		if err == unix.EAGAIN {
			w = 0
		} else if err != nil {
			c.hostError("write", err)
			return
		}
		c.rcv.pendBytes -= w
		c.rcv.outqEst += w
		c.rcv.outqAge += w
		c.ack.due = c.ack.due || w > 0
		i := 0
		for ; i < n && w >= len(c.rcv.pend[i].b); i++ {
			w -= len(c.rcv.pend[i].b)
			c.rcv.held -= cap(c.rcv.pend[i].f.Data)
			c.rcv.pend[i].f.Release()
		}
		if i < len(c.rcv.pend) {
			c.rcv.pend[i].b = c.rcv.pend[i].b[w:]
		}
		m := copy(c.rcv.pend, c.rcv.pend[i:])
		clear(c.rcv.pend[m:])
		c.rcv.pend = c.rcv.pend[:m]
		c.rcv.pendNew = max(c.rcv.pendNew-i, 0)
		if i < n {
			// The socket is full: keep the rest and wait for room.
			if !c.obs.heldTraced {
				c.obs.heldTraced = true
				c.tracef(func() string {
					return "socket send buffer full: holding " + strconv.Itoa(c.rcv.pendBytes) + " bytes from the guest"
				})
			}
			c.sock.arm(sockWritable)
			c.compact()
			c.trimCharge()
			return
		}
	}
	if c.obs.heldTraced {
		c.obs.heldTraced = false
		c.tracef(func() string { return "socket took the held bytes" })
	}
	if int(c.rcv.edge-c.rcv.nxt) < c.rcv.winCap/2 && c.rcv.winCap < tcpMaxWindow && c.rcv.edge != c.rcv.capEdge {
		// The socket took everything and the guest used most of the
		// window we offered: it could use more. Once per window offered;
		// never while the socket is full, which limits the flow anyway.
		c.rcv.winCap *= 2
		c.rcv.capEdge = c.rcv.edge
	}
	if c.rcv.charge != 0 {
		c.trimCharge()
	}
	if c.state&(tcpGuestFin|tcpSockShut) == tcpGuestFin && c.state&tcpClosed == 0 {
		if e := nbsys.Shutdown(c.sock.fd, unix.SHUT_WR); e != 0 && e != unix.ENOTCONN {
			c.hostError("shutdown", e)
			return
		}
		c.setState(c.state|tcpSockShut, "everything before the guest's FIN written, socket shut down for writing")
		c.ack.due = true
	}
}

// rcvWindowRaw is the room we can offer the guest, in bytes: the socket's
// free send space plus half its size again (so that writes do fill it, and
// the kernel's autotuning grows it), less what we already hold.
//
// The send queue is measured (SIOCOUTQ, with SO_SNDBUF) only once an
// eighth of the buffer has been written since the last measurement, when
// the socket reported room, or when the estimate leaves less than half the
// buffer free. In between, the last measurement plus
// what was written since is an upper bound of the queue, which only
// drains, so the window errs on the small side and never offers room the
// socket lacks. Request/response flows ask the kernel once per thousands
// of exchanges instead of once per segment.
func (c *tcpConn) rcvWindowRaw() int {
	if c.sock == nil {
		return 0
	}
	if c.rcv.sndbuf == 0 || c.rcv.outqAge > c.rcv.sndbuf/8 {
		c.measureSendQueue()
	}
	free := c.rcv.sndbuf + c.rcv.sndbuf/2 - c.rcv.outqEst - c.rcv.pendBytes
	if free < c.rcv.sndbuf/2 && c.rcv.outqAge > 0 {
		// Small, maybe only because the estimate is stale: a window
		// held small on a guess would be reopened by nothing but an
		// EPOLLOUT edge, which the kernel raises only after a write
		// has failed for lack of room. Measure instead.
		c.measureSendQueue()
		free = c.rcv.sndbuf + c.rcv.sndbuf/2 - c.rcv.outqEst - c.rcv.pendBytes
	}
	if c.rcv.max > 0 {
		free = min(free, c.rcv.max)
	}
	free = min(free, c.rcv.winCap)
	return max(c.budgetWindow(free), 0)
}

// rcvWindow returns the window field for our next segment and records the
// right edge it offers. The edge never moves backwards (RFC 9293 3.8.6):
// if the socket's room shrank, we keep offering what we offered and hold
// whatever the guest sends into it.
func (c *tcpConn) rcvWindow() uint16 {
	ws := max(c.rcv.ws, 0)
	ack := c.ackNum()
	free := c.rcvWindowRaw()
	if d := c.rcv.edge - ack; seqGT(c.rcv.edge, ack) && int(d) > free {
		free = int(d)
	}
	w := free >> ws
	if w > 0xffff {
		w = 0xffff
	}
	if e := ack + uint32(w<<ws); seqGT(e, c.rcv.edge) {
		c.rcv.edge = e
	}
	// Arm for a window update if the socket is what keeps us small.
	if w<<ws < c.rcv.max/4 && c.state&tcpGuestFin == 0 {
		c.sock.arm(sockWritable)
	}
	if (w == 0) != (c.ack.lastWin == 0) && c.state&tcpEstablished != 0 {
		c.tracef(func() string {
			if w == 0 {
				return "our window closed: the socket's send buffer is full, " + strconv.Itoa(c.rcv.pendBytes) + " bytes held"
			}
			return "our window opened to " + strconv.Itoa(w<<ws)
		})
	}
	c.ack.lastWin = uint16(w)
	return uint16(w)
}

// measureSendQueue refreshes the send buffer size and queue length.
func (c *tcpConn) measureSendQueue() {
	old := c.rcv.sndbuf
	c.rcv.sndbuf = c.sock.getInt(unix.SOL_SOCKET, unix.SO_SNDBUF)
	if old != 0 && old != c.rcv.sndbuf {
		c.tracef(func() string {
			return "socket send buffer " + strconv.Itoa(old) + " -> " + strconv.Itoa(c.rcv.sndbuf) + " bytes"
		})
	}
	c.rcv.outqEst = c.sock.sendQueued()
	c.rcv.outqAge = 0
}

// tcpOutqStale marks the send queue measurement as stale (rcv.outqAge).
const tcpOutqStale = 1 << 30
