package tcp

import (
	"sync/atomic"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/internal/poll"
)

// Protocol is one daemon's TCP: what all its TCP flows share and no other
// daemon's flows see. It owns the epoll instance every flow socket (and
// every spliced socket, watched for hang-ups) is registered with and the
// harvester goroutine behind it, and the counters of inline runs. Each
// flow reaches it through the pointer it was started with.
type Protocol struct {
	env  *actors.Env
	poll *poll.Poller

	// Inline counts inline runs (inline.go): guest segments the
	// dispatcher handled (Segments) and socket events the harvester
	// handled (Events), and runs that found the link Writer's queue full
	// and handed the rest to the actor (Parked).
	Inline struct{ Segments, Events, Parked atomic.Uint64 }
}

var _ actors.Protocol = (*Protocol)(nil)

// New returns env's TCP, its poller running. Close it once the daemon's
// flows are told to end (env.Ctx is done).
func New(env *actors.Env) (*Protocol, error) {
	p, err := poll.New()
	if err != nil {
		return nil, err
	}
	return &Protocol{env: env, poll: p}, nil
}

// Poller is the epoll instance the protocol's sockets are registered
// with, for the loopback splice's hang-up watch.
func (p *Protocol) Poller() *poll.Poller { return p.poll }

// Close stops the poller and waits for its harvester, which may be
// running a flow inline and writing to the link: close it once env.Ctx is
// done and the link's device is closed, so that no such write can wait.
// Flows still running hear of no more socket events.
func (p *Protocol) Close() { p.poll.Close() }

// AddStats adds the TCP counters to m, by the names the statistics log
// uses. The flow counts are the Env's (actors.StatsSnapshot).
func (p *Protocol) AddStats(m map[string]uint64) {
	m["tcp_inline_segments"] = p.Inline.Segments.Load()
	m["tcp_inline_events"] = p.Inline.Events.Load()
	m["tcp_inline_parked"] = p.Inline.Parked.Load()
}
