package actors_test

import (
	"bytes"
	"context"
	"maps"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/actors/icmp"
	"github.com/gopasta/gopasta/actors/tcp"
	"github.com/gopasta/gopasta/actors/udp"

	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// daemon is what a gopasta daemon has of the actors: an Env and its
// protocols, here with the test playing the dispatcher and the guest.
type daemon struct {
	te     *actorstest.Env
	cancel context.CancelFunc
	tcp    *tcp.Protocol
	udp    *udp.Protocol
	protos actors.Protocols

	// One TCP flow, established, and its host end.
	th   *actors.Handle
	tk   actors.Key
	host *net.TCPConn
	// One UDP flow.
	uk        actors.Key
	udpHandle *actors.Handle
}

func newDaemon(t *testing.T) *daemon {
	t.Helper()
	d := &daemon{te: actorstest.New(t, actors.Options{})}
	ctx, cancel := context.WithCancel(d.te.Env.Ctx)
	d.te.Env.Ctx, d.cancel = ctx, cancel
	tp, err := tcp.New(d.te.Env)
	if err != nil {
		t.Fatal(err)
	}
	d.tcp, d.udp = tp, udp.New(d.te.Env)
	d.protos = actors.Protocols{TCP: d.tcp, UDP: d.udp, ICMP: icmp.New(d.te.Env)}
	t.Cleanup(d.close)
	return d
}

// close stops the daemon as cmd/gopasta does: flows told to end, then the
// protocols closed.
func (d *daemon) close() {
	d.cancel()
	d.protos.Close()
}

// stats are the protocols' counters, as the statistics log shows them.
func (d *daemon) stats() map[string]uint64 {
	m := map[string]uint64{}
	d.protos.AddStats(m)
	return m
}

// next returns the next frame to the guest that ok accepts, skipping others.
func (d *daemon) next(t *testing.T, ok func(b []byte, p wire.Parsed) bool) ([]byte, wire.Parsed) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, p := d.te.ReadGuest(t, time.Until(deadline))
		if ok(b, p) {
			return b, p
		}
	}
	t.Fatal("no such frame to the guest")
	return nil, wire.Parsed{}
}

// connect opens a TCP flow from the guest's port to srv and completes the
// handshake.
func (d *daemon) connect(t *testing.T, srv interface {
	Port() uint16
	Accept(testing.TB) *net.TCPConn
}, port uint16) {
	t.Helper()
	guest := netip.AddrPortFrom(actorstest.Guest4, port)
	far := netip.AddrPortFrom(actorstest.GW4, srv.Port())
	d.tk = actors.Key{Proto: wire.ProtoTCP, Guest: guest, Far: far}
	const iss = 1000
	syn := actorstest.GuestFrame(t, guest.Addr(), far.Addr(), wire.ProtoTCP, wiretest.TCP(port, far.Port(), iss, 0, wire.TCPSyn, nil))
	if d.th = d.tcp.Start(d.tk, syn); d.th == nil {
		t.Fatal("no flow for a SYN")
	}
	b, p := d.next(t, func(_ []byte, p wire.Parsed) bool { return p.Proto == wire.ProtoTCP })
	if p.TCPFlags&(wire.TCPSyn|wire.TCPAck) != wire.TCPSyn|wire.TCPAck {
		t.Fatalf("flags %#x, want SYN,ACK", p.TCPFlags)
	}
	ack := wire.TCP(b[p.L4:]).Seq() + 1
	actorstest.Put(t, d.th, actorstest.GuestFrame(t, guest.Addr(), far.Addr(), wire.ProtoTCP,
		wiretest.TCP(port, far.Port(), iss+1, ack, wire.TCPAck, nil)))
	d.host = srv.Accept(t)
}

// hostSends has the host end of the TCP flow send msg and waits for it
// to reach the guest.
func (d *daemon) hostSends(t *testing.T, msg []byte) {
	t.Helper()
	if _, err := d.host.Write(msg); err != nil {
		t.Fatal(err)
	}
	d.next(t, func(b []byte, p wire.Parsed) bool {
		return p.Proto == wire.ProtoTCP && bytes.Equal(b[p.Payload:p.End], msg)
	})
}

// udpRoundTrip sends a datagram from the guest's port to the echo server
// and waits for the echo.
func (d *daemon) udpRoundTrip(t *testing.T, port uint16, echo netip.AddrPort, msg []byte) {
	t.Helper()
	guest := netip.AddrPortFrom(actorstest.Guest4, port)
	far := netip.AddrPortFrom(actorstest.GW4, echo.Port())
	f := actorstest.GuestUDP(t, guest, far, msg)
	if d.uk.Guest.IsValid() {
		actorstest.Put(t, d.udpHandle, f)
	} else {
		d.uk = actorstest.UDPKey(guest, far)
		if d.udpHandle = d.udp.Start(d.uk, f); d.udpHandle == nil {
			t.Fatal("no flow for a datagram")
		}
	}
	d.next(t, func(b []byte, p wire.Parsed) bool {
		return p.Proto == wire.ProtoUDP && bytes.Equal(b[p.Payload:p.End], msg)
	})
}

// TestTwoDaemonsShareNothing: two daemons in one process, each with TCP
// and UDP flows of its own. What one does moves its own protocols'
// counters and not the other's; closing one stops its poller and leaves
// the other's running, with its flows served.
func TestTwoDaemonsShareNothing(t *testing.T) {
	echo := actorstest.UDPEcho(t, "127.0.0.1:0")
	ds := [2]*daemon{newDaemon(t), newDaemon(t)}
	for i, d := range ds {
		d.connect(t, actorstest.NewServer(t, "tcp4", "127.0.0.1:0"), uint16(40000+i))
	}
	ports := [2]uint16{actorstest.FreeUDPPort(t, "0.0.0.0:0"), actorstest.FreeUDPPort(t, "0.0.0.0:0")}
	for i, d := range ds {
		other := ds[1-i]
		before := other.stats()
		own := d.stats()
		d.udpRoundTrip(t, ports[i], echo, []byte("ping"))
		// Socket events of an idle established flow run on the poller's
		// harvester and are counted by its protocol; which event finds
		// the actor idle is the scheduler's call, so send until one has.
		for n := 0; d.tcp.Inline.Events.Load() == own["tcp_inline_events"]; n++ {
			if n == 50 {
				t.Fatal("no socket event ran on the harvester")
			}
			d.hostSends(t, []byte{'d', byte('0' + i), byte(n)})
			time.Sleep(5 * time.Millisecond)
		}
		after := d.stats()
		for _, name := range []string{"udp_sent", "udp_received", "udp_bindings", "tcp_inline_events"} {
			if after[name] <= own[name] {
				t.Errorf("daemon %d: %s %d, was %d: its own work not counted", i, name, after[name], own[name])
			}
		}
		if got := other.stats(); !maps.Equal(got, before) {
			t.Errorf("daemon %d's work moved daemon %d's counters:\nbefore %v\nafter  %v", i, 1-i, before, got)
		}
	}

	ds[0].close()
	if ds[0].tcp.Poller().Running() {
		t.Fatal("a closed daemon's poller still runs")
	}
	if !ds[1].tcp.Poller().Running() {
		t.Fatal("closing one daemon stopped the other's poller")
	}
	// The other daemon's flows are served still: its TCP flow hears of
	// its socket through its own poller, its UDP flow from its binding.
	ds[1].hostSends(t, []byte("after the other closed"))
	ds[1].udpRoundTrip(t, ports[1], echo, []byte("still here"))
}
