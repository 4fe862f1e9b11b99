package dispatcher

import (
	"testing"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/icmp"
	"github.com/gopasta/gopasta/actors/tcp"
	"github.com/gopasta/gopasta/actors/udp"
	"github.com/gopasta/gopasta/link"
)

// startFunc is what a test's Protocol does on a flow-table miss.
type startFunc func(env *actors.Env, k actors.Key, f *link.Frame) *actors.Handle

// testProto is a Protocol whose flows a test starts (or refuses, or
// panics on), to watch what the dispatcher starts.
type testProto struct {
	env   *actors.Env
	start startFunc
}

func (p testProto) Start(k actors.Key, f *link.Frame) *actors.Handle { return p.start(p.env, k, f) }
func (testProto) AddStats(map[string]uint64)                         {}
func (testProto) Close()                                             {}

// setStarts makes the dispatcher start TCP, UDP and ICMP flows with the
// test's functions; a nil one leaves that protocol as it was.
func (d *Dispatcher) setStarts(tcpF, udpF, icmpF startFunc) {
	for _, s := range []struct {
		p *actors.Protocol
		f startFunc
	}{{&d.protos.TCP, tcpF}, {&d.protos.UDP, udpF}, {&d.protos.ICMP, icmpF}} {
		if s.f != nil {
			*s.p = testProto{d.env, s.f}
		}
	}
}

// realProtocols returns the actors' protocols for env, as the daemon makes
// them, closed when the test ends.
func realProtocols(tb testing.TB, env *actors.Env) actors.Protocols {
	tb.Helper()
	tp, err := tcp.New(env)
	if err != nil {
		tb.Fatal(err)
	}
	ps := actors.Protocols{TCP: tp, UDP: udp.New(env), ICMP: icmp.New(env)}
	tb.Cleanup(ps.Close)
	return ps
}
