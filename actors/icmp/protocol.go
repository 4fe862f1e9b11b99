package icmp

import (
	"sync"

	"github.com/gopasta/gopasta/actors"
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
}

var _ actors.Protocol = (*Protocol)(nil)

// New returns env's ICMP.
func New(env *actors.Env) *Protocol { return &Protocol{env: env} }

// Close does nothing: every echo flow owns its socket and goroutine and
// ends with env.Ctx.
func (p *Protocol) Close() {}
