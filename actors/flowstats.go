package actors

import (
	"sync/atomic"
	"time"

	"github.com/gopasta/gopasta/actors/flowtrace"
)

// Per-flow statistics, for `gopasta ctl flows`.
//
// A flow's numbers live in its Handle as atomics, so that a snapshot can
// read them from any goroutine while the flow runs, without a lock and
// without asking the actor. Who writes them: a TCP actor counts in plain
// fields of its own and publishes them all once per wake-up (publish), not
// per segment; UDP bindings and ICMP actors add per datagram, next to the
// protocol counters they already keep.

// flowIDs numbers flows for the operator: `flows` shows the id, `trace id
// N` selects by it.
var flowIDs atomic.Uint64

// FlowStats are a flow's counters. "Guest" counts go from the guest to the
// far end, "Far" counts the other way.
type FlowStats struct {
	Start time.Time // set before the Handle is shared, read-only after

	State                 atomic.Uint32 // TCP: the state bits (Handle.StateName)
	GuestBytes, GuestSegs atomic.Uint64 // payload and segments (datagrams) from the guest
	FarBytes, FarSegs     atomic.Uint64 // payload and segments to the guest
	Retrans               atomic.Uint64 // TCP: retransmissions to the guest
	GuestWindow           atomic.Uint32 // TCP: the guest's window, scaled: what we may send unacknowledged
	OurWindow             atomic.Uint32 // TCP: the window last advertised to the guest, scaled
	Unacked               atomic.Uint32 // TCP: bytes sent to the guest, not acknowledged yet
	Held                  atomic.Int64  // TCP: bytes from the guest held for a full socket (and beyond a hole)
}

// FlowSnapshot is a flow as `flows` shows it.
type FlowSnapshot struct {
	ID         uint64
	Key        Key
	Inbound    bool // opened from the host side (a -t/-u forward)
	State      string
	Age        time.Duration
	GuestBytes uint64
	GuestSegs  uint64
	FarBytes   uint64
	FarSegs    uint64
	Retrans    uint64
	GuestWnd   uint32
	OurWnd     uint32
	Unacked    uint32
	Held       int64
	Backlog    int // frames in the actor's inbox
}

// Snapshot reads h's statistics at now. Safe from any goroutine.
func (h *Handle) Snapshot(now time.Time) FlowSnapshot {
	s := &h.Stats
	fs := FlowSnapshot{
		ID: h.ID, Key: h.Key, Inbound: h.Inbound,
		Age:        now.Sub(s.Start),
		GuestBytes: s.GuestBytes.Load(), GuestSegs: s.GuestSegs.Load(),
		FarBytes: s.FarBytes.Load(), FarSegs: s.FarSegs.Load(),
		Retrans: s.Retrans.Load(), GuestWnd: s.GuestWindow.Load(), OurWnd: s.OurWindow.Load(),
		Unacked: s.Unacked.Load(), Held: s.Held.Load(), Backlog: h.Backlog(),
	}
	fs.State = "ACTIVE"
	if h.StateName != nil {
		fs.State = h.StateName(uint16(s.State.Load()))
	}
	return fs
}

// InitHandle gives a new Handle its id and start time.
func InitHandle(h *Handle) *Handle {
	h.ID = flowIDs.Add(1)
	h.Stats.Start = time.Now()
	return h
}

// TraceDesc is how a flow's trace lines start: "17 tcp 10.0.2.100:40000 >
// 93.184.216.34:80".
func TraceDesc(id uint64, k Key) string {
	return flowtrace.Desc(id, k.Proto, k.Guest, k.Far)
}
