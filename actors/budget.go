package actors

import "github.com/gopasta/gopasta/link"

// Memory budget, theory of operation.
//
// What the guest sends is held in the daemon whenever it cannot go on at
// once: TCP payload waiting for room in its host socket (pend) or behind a
// hole (ooo), UDP datagrams waiting in a binding's inbox, and the buffers a
// binding's receiver keeps for recvmmsg. A guest chooses the sizes, so
// counting frames bounds nothing: a frame read from the link sits in a
// 64 KiB buffer whatever it carries. Everything held is therefore counted
// by the bytes it keeps alive (the capacity of its buffers), against a
// per-flow budget and one daemon-wide budget (Stats.BufferBytes, the
// "buffer_bytes" statistic; --flow-buffer and --total-buffer).
//
// TCP may not simply drop what is over budget: a byte inside the window we
// advertised must never be dropped (see tcp/tcp.go). So a flow reserves from
// the daemon-wide budget, before it advertises a window, what the guest
// could make it hold by filling that window, and the window is shrunk to
// what the reservation covers. To make that bound tight, held payload is
// kept in right-sized buffers (link.GetBuffer): a held segment whose frame
// is less than half used is copied, and in-order pieces are packed one
// after another (tcpConn.compact). Then n held bytes cost at most 2n plus a
// constant per flow (TCPBudgetSlack), and a window W costs at most 2W more.
// Copying rather than accounting the large buffers in full keeps the
// window of a flow with small segments as large as a flow with full ones;
// the copy is paid only for data that is actually held, and only when its
// frame is mostly empty, which a bulk transfer's full-sized segments never
// are.
//
// A reservation is only worth what it lets the guest send, and a flow
// that never fills its window does not need it: an idle connection
// reserving for the window its socket could take would leave nothing for
// the flows that move data. So, as Linux's receive-window autotuning does,
// a flow offers at most TCPInitWindow at first and doubles that each time
// the guest sends into the last half of it (tcpConn.winCap).
//
// Only the guest's data that stays beyond one pass of the actor is
// counted: the frames of one inbox drain (at most tcpDrain+1) are in
// flight, like the frames in the inboxes, which are bounded by count.

// Default budgets: a flow's is enough for a window larger than a Linux
// socket's default largest send buffer; the daemon's lets 16 such flows run
// at full window, and caps what a hostile guest can make the daemon hold.
const (
	DefaultFlowBuffer  = 16 << 20
	DefaultTotalBuffer = 256 << 20
)

// TCPInitWindow is the most a flow offers before the guest has filled a
// window: what Linux offers at first.
const TCPInitWindow = 64 << 10

// TCPBudgetSlack is what a flow's held payload may cost beyond twice its
// bytes: a minimum-sized buffer per out-of-order segment, the partly
// filled last buffer of the packed in-order data and the partly written
// first one.
// TCPMaxOOO is how many out-of-order segments a TCP flow holds.
const TCPMaxOOO = 64

const TCPBudgetSlack = TCPMaxOOO*link.MinBufferSize + 2*link.SmallFrameSize

// reserve grows a TCP flow's share of the daemon-wide budget from have
// towards want and returns the new share (never less than have). A flow
// takes at most half of what is free at a time, and grows no further than
// an equal share of the budget among the flows holding one, so that the
// flows that ask first cannot leave nothing to the others: a flow above
// its share shrinks to it as the guest uses its window (the right edge
// never moves back, so that takes a window's worth of data), and a flow
// whose window was starved looks again (tcpConn.budgetAt).
func (e *Env) Reserve(have, want int64) int64 {
	if want <= have {
		return have
	}
	limit := e.Opts.TotalBuffer
	n := e.BudgetFlows.Load()
	if have == 0 {
		n++
	}
	want = min(want, max(limit/max(n, 1), have))
	if want <= have {
		return have
	}
	for {
		used := e.Stats.BufferBytes.Load()
		free := limit - used
		grow := want - have
		if free < 2*TCPBudgetSlack {
			grow = min(grow, free)
		} else {
			grow = min(grow, free/2)
		}
		if grow <= 0 {
			return have
		}
		if e.Stats.BufferBytes.CompareAndSwap(used, used+grow) {
			return have + grow
		}
	}
}

// charge takes n bytes of the daemon-wide budget if they are free, for a
// holder that may drop instead (UDP).
func (e *Env) Charge(n int64) bool {
	limit := e.Opts.TotalBuffer
	for {
		used := e.Stats.BufferBytes.Load()
		if used+n > limit {
			return false
		}
		if e.Stats.BufferBytes.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

// uncharge gives n bytes back to the daemon-wide budget.
func (e *Env) Uncharge(n int64) {
	if n != 0 {
		e.Stats.BufferBytes.Add(-n)
	}
}
