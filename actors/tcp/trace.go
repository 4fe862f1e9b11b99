package tcp

import (
	"strconv"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/flowtrace"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// A TCP flow's story, for --trace and for `gopasta ctl trace`: every
// segment either way in tcpdump's notation ("in" from the guest, "out" to
// it; sequence numbers relative to the initial ones, as tcpdump shows
// them, except on SYNs), every state change with its cause, the windows
// closing and opening, the socket's buffer filling and draining,
// retransmissions and timeouts, resets with their reason, and a closing
// line with the totals.
//
// Every line costs nothing unless somebody reads it: tracing is two atomic
// loads (a subscriber at all, the logger's level) while nobody does, and
// the text is built only past that check.

// tracing reports whether the flow's lines are wanted now: by a subscriber
// whose filter selects the flow, or by the daemon's own log at trace level.
func (c *tcpConn) tracing() bool {
	if c.env.Trace.Active() && c.obs.tap.On(c.env.Trace, c.key.Proto, c.key.Guest, c.key.Far, c.h.ID, c.desc) {
		return true
	}
	return c.env.Log.IsLevelEnabled(logrus.TraceLevel)
}

func (c *tcpConn) desc() string { return actors.TraceDesc(c.h.ID, c.key) }

// emit sends a line to the subscribers that want the flow and to the log
// at trace level. Call it only after tracing said yes.
func (c *tcpConn) emit(text string) {
	if c.env.Trace.Active() && c.obs.tap.On(c.env.Trace, c.key.Proto, c.key.Guest, c.key.Far, c.h.ID, c.desc) {
		c.obs.tap.Emit(flowtrace.Stamp(time.Now()), text)
	}
	if c.env.Log.IsLevelEnabled(logrus.TraceLevel) {
		c.log().WithField("id", c.h.ID).Trace(text)
	}
}

// traceSeg describes segment f, from the guest (in) or to it.
func (c *tcpConn) traceSeg(in bool, f *link.Frame, l4 int) {
	d := f.Data
	if l4+wire.TCPMinLen > len(d) {
		return
	}
	th := wire.TCP(d[l4:])
	doff := th.DataOffset()
	s := flowtrace.Segment{Flags: th.Flags(), Seq: th.Seq(), Ack: th.Ack(), Win: th.Window(), WScale: -1}
	end := len(d)
	if in {
		end = segEnd(f)
	}
	if n := end - l4 - doff; n > 0 {
		s.Len = n
	}
	if !in && f.Loan != nil {
		s.Len = f.Loan.Len() // the payload is in the guest's buffers
	}
	if s.Flags&wire.TCPSyn != 0 {
		if doff > wire.TCPMinLen && l4+doff <= len(d) {
			o := wire.ParseTCPOptions(d[l4+wire.TCPMinLen : l4+doff])
			s.MSS, s.WScale = int(o.MSS), o.WScale
		}
	} else if in {
		s.Seq -= c.rcv.irs
		s.Ack -= c.snd.iss
	} else {
		s.Seq -= c.snd.iss
		s.Ack -= c.rcv.irs
	}
	b := make([]byte, 0, 96)
	if in {
		b = append(b, "in  "...)
	} else {
		b = append(b, "out "...)
	}
	c.emit(string(flowtrace.AppendTCP(b, s)))
}

// countOut counts a segment to the guest, and traces it. Called before
// the frame is handed to the writer, while the flow still owns it.
func (c *tcpConn) countOut(f *link.Frame) {
	l4 := c.tmpl.l4
	if f.Loan != nil {
		c.obs.outBytes += uint64(f.Loan.Len())
	} else if n := len(f.Data) - c.tmpl.hlen; n > 0 && len(f.Data) > l4+wire.TCPMinLen {
		n = len(f.Data) - l4 - wire.TCP(f.Data[l4:]).DataOffset()
		c.obs.outBytes += uint64(max(n, 0))
	}
	c.obs.outSegs++
	if c.tracing() {
		c.traceSeg(false, f, l4)
	}
}

// setState changes the state bits, tracing the change and its cause.
func (c *tcpConn) setState(s uint16, cause string) {
	if s != c.state && c.tracing() {
		c.emit(stateChange(c.state, s) + " (" + cause + ")")
	}
	c.state = s
}

// tracef traces a line built only if it is wanted.
func (c *tcpConn) tracef(f func() string) {
	if c.tracing() {
		c.emit(f())
	}
}

// publish copies the flow's counters to its Handle for snapshots. Once per
// wake-up of the flow, whoever runs it, gate held.
func (c *tcpConn) publish() {
	s := &c.h.Stats
	s.State.Store(uint32(c.state))
	s.GuestBytes.Store(c.obs.inBytes)
	s.GuestSegs.Store(c.obs.inSegs)
	s.FarBytes.Store(c.obs.outBytes)
	s.FarSegs.Store(c.obs.outSegs)
	s.Retrans.Store(c.obs.retrans)
	s.GuestWindow.Store(c.snd.wnd)
	s.OurWindow.Store(uint32(c.ack.lastWin) << max(c.rcv.ws, 0))
	s.Unacked.Store(c.snd.nxt - c.snd.una)
	held := c.rcv.pendBytes
	for _, o := range c.rcv.ooo {
		held += len(o.b)
	}
	s.Held.Store(int64(held))
}

// traceEnd is the flow's last line: how it ended and what it moved.
func (c *tcpConn) traceEnd() {
	if !c.tracing() {
		return
	}
	why := c.obs.closeReason
	if why == "" {
		why = "ended"
	}
	c.emit("end (" + why + ") after " + time.Since(c.h.Stats.Start).Round(time.Microsecond).String() +
		": from guest " + strconv.FormatUint(c.obs.inBytes, 10) + " bytes in " + strconv.FormatUint(c.obs.inSegs, 10) +
		" segments, to guest " + strconv.FormatUint(c.obs.outBytes, 10) + " bytes in " + strconv.FormatUint(c.obs.outSegs, 10) +
		" segments, " + strconv.FormatUint(c.obs.retrans, 10) + " retransmissions")
}

// stateChange describes a change of the state bits: the bits set or
// cleared when that is all that happened ("state +HOST_EOF"), both states
// otherwise ("state SYN_RCVD -> ESTABLISHED").
func stateChange(from, to uint16) string {
	switch {
	case from != 0 && to&from == from:
		return "state +" + stateString(to&^from)
	case to != 0 && from&to == to:
		return "state -" + stateString(from&^to)
	}
	return "state " + stateString(from) + " -> " + stateString(to)
}
