package udp

import (
	"net/netip"
	"sync"

	"github.com/gopasta/gopasta/actors"
)

// Protocol is one daemon's UDP: the registry of its outbound bindings and
// its counters, which no other daemon's flows see. Each binding reaches it
// through the pointer it was made with.
type Protocol struct {
	env *actors.Env

	// reg is the registry of outbound bindings by the guest's address
	// and port. Its mutex also guards every binding's pending list.
	reg struct {
		sync.Mutex
		m map[netip.AddrPort]*Binding
	}

	// Stats are the counters of this daemon's UDP flows.
	stats counters

	// socketLog rate-limits the warnings about host sockets a new
	// binding could not have: out of descriptors, they would come once a
	// datagram.
	socketLog actors.RateLog
}

var _ actors.Protocol = (*Protocol)(nil)

// New returns env's UDP.
func New(env *actors.Env) *Protocol {
	p := &Protocol{env: env}
	p.reg.m = make(map[netip.AddrPort]*Binding)
	return p
}

// Close does nothing: the bindings end with env.Ctx and own their
// goroutines; the registry holds no resource of its own.
func (p *Protocol) Close() {}
