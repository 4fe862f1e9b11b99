package icmp

import (
	"sync"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/internal/poll"
)

// Protocol is one daemon's ICMP and ICMPv6 echo: its counters and the
// warnings it rate-limits, which no other daemon's flows touch. Each echo
// flow reaches it through the pointer it was started with.
type Protocol struct {
	env *actors.Env

	// Stats are the counters of this daemon's echo flows.
	stats counters

	// socketLog rate-limits the warnings about ping sockets that could
	// not be had: out of descriptors, they would come once an echo
	// request. pingWarn logs the ping_group_range hint once.
	socketLog actors.RateLog
	pingWarn  sync.Once

	// poll is the epoll instance the echo sockets are watched on, made
	// with the first flow (a daemon whose guest never pings has none);
	// pollErr is why it could not be.
	pollOnce sync.Once
	poll     *poll.Poller
	pollErr  error
}

var _ actors.Protocol = (*Protocol)(nil)

// New returns env's ICMP.
func New(env *actors.Env) *Protocol { return &Protocol{env: env} }

// poller returns the echo sockets' poller, starting it on first use.
func (p *Protocol) poller() (*poll.Poller, error) {
	p.pollOnce.Do(func() { p.poll, p.pollErr = poll.New() })
	return p.poll, p.pollErr
}

// Close stops the poller, once env.Ctx is done: every echo flow owns its
// socket and goroutine and ends with env.Ctx.
func (p *Protocol) Close() {
	p.pollOnce.Do(func() {}) // no poller starts after this
	if p.poll != nil {
		p.poll.Close()
	}
}
