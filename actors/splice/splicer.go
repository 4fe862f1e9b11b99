package splice

import (
	"sync/atomic"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/internal/poll"
)

// Splicer is one daemon's loopback splice: the counters of its spliced
// connections and datagrams, the budget its pairs take descriptors from,
// and the poller its TCP pairs are watched on for hang-ups. Every pair
// and relay reaches it through the pointer it was started with, so two
// daemons in one process count apart.
type Splicer struct {
	env  *actors.Env  // nil in some tests: no descriptor budget
	poll *poll.Poller // nil: no hang-up watch (pumps read until EAGAIN)

	// Stats are the counters of this daemon's splice.
	Stats Counters
}

// Counters count spliced connections and datagrams, for tests and logs.
type Counters struct {
	TCPOpened, TCPActive, TCPResets atomic.Int64
	// TCPFamilyRetries counts connections joined in the other IP
	// family after the first was refused (Alt).
	TCPFamilyRetries       atomic.Int64
	UDPFlows, UDPDatagrams atomic.Int64
	// TCPEmptyReads counts reads of a spliced socket that found nothing
	// (EAGAIN). With the hang-up watch they are rare: a pump that has
	// just emptied its socket waits without one (see splicePump).
	TCPEmptyReads atomic.Int64
	// OnlyRefused counts clients that are not on loopback, turned away
	// under --splice-only: TCP connections reset (UDP datagrams dropped
	// are the UDP protocol's SpliceOnlyRefused, reported under the same
	// name).
	OnlyRefused atomic.Int64
}

// New returns a splice whose pairs hold descriptors of env's budget (env
// may be nil) and are watched for hang-ups on p (the daemon's TCP poller;
// may be nil).
func New(env *actors.Env, p *poll.Poller) *Splicer {
	return &Splicer{env: env, poll: p}
}

// Env is the Env the splice was made for (nil in some tests).
func (sp *Splicer) Env() *actors.Env { return sp.env }

// AddStats adds the loopback splice counters to m, by the names the
// statistics log uses.
func (sp *Splicer) AddStats(m map[string]uint64) {
	s := &sp.Stats
	m["splice_tcp_opened"] = uint64(max(s.TCPOpened.Load(), 0))
	m["splice_tcp_active"] = uint64(max(s.TCPActive.Load(), 0))
	m["splice_tcp_resets"] = uint64(max(s.TCPResets.Load(), 0))
	m["splice_tcp_empty_reads"] = uint64(max(s.TCPEmptyReads.Load(), 0))
	m["splice_tcp_family_retries"] = uint64(max(s.TCPFamilyRetries.Load(), 0))
	m["splice_udp_flows"] = uint64(max(s.UDPFlows.Load(), 0))
	m["splice_udp_datagrams"] = uint64(max(s.UDPDatagrams.Load(), 0))
	m["splice_only_refused"] += uint64(max(s.OnlyRefused.Load(), 0))
}
