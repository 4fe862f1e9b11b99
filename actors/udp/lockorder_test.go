package udp

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link"
)

// directWithin plays the dispatcher offering f to h.Direct, as it does for
// a frame that came alone in its batch, and fails the test with every
// goroutine's stack if Direct has not returned within d: the dispatcher
// is the only goroutine that drains Env.Register and Env.Ended, so if it
// waits for a flow whose goroutine waits for those channels, the daemon's
// data path stops for good. Then it cancels the flows' context, which lets
// the stuck goroutines go, so that the test ends instead of hanging.
func directWithin(t *testing.T, cancel context.CancelFunc, h *actors.Handle, f *link.Frame, d time.Duration) bool {
	t.Helper()
	done := make(chan bool, 1)
	go func() { done <- h.Direct(f) }()
	select {
	case took := <-done:
		return took
	case <-time.After(d):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		cancel()
		t.Fatalf("the dispatcher's Direct did not return within %v: it waits for a flow's lock held by a goroutine that waits for the dispatcher\n%s", d, buf)
		return false
	}
}

// TestUDPReceiverRegisterFullNoDeadlock fills Env.Register, then makes an
// inbound binding's receiver register a new client while the dispatcher
// sends a guest datagram of another of its flows directly. The receiver
// must not wait for the dispatcher while holding what sendDirect needs;
// once the dispatcher drains Register, the new client's datagram reaches
// the guest and the guest's reply its client.
func TestUDPReceiverRegisterFullNoDeadlock(t *testing.T) {
	hostPort := actorstest.FreeUDPPort(t, "127.0.0.1:0")
	cfg := &conf.Config{IPv4Only: true, UDPPorts: []conf.PortSpec{{
		Raw: "test", Option: "-u", Bind: actorstest.Lo4,
		Ranges: []conf.PortRange{{First: hostPort, Last: hostPort, To: hostPort}},
	}}}
	te := actorstest.New(t, actors.OptionsFrom(cfg))
	te.Register = make(chan *actors.Handle, 1) // full after one registration
	ctx, cancel := context.WithCancel(te.Env.Ctx)
	defer cancel()
	te.Env.Ctx = ctx
	te.Env.Reg.Register = te.Register
	stop, err := startListeners(te.Env, cfg.UDPPorts)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	listener := netip.AddrPortFrom(actorstest.Lo4, hostPort)
	client := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := client(), client()

	// Client a: its flow's registration fills Register, undrained.
	if _, err := a.WriteToUDPAddrPort([]byte("from a"), listener); err != nil {
		t.Fatal(err)
	}
	buf, p := te.ReadGuest(t, 2*time.Second)
	if string(buf[p.Payload:p.End]) != "from a" {
		t.Fatalf("guest got %q", buf[p.Payload:p.End])
	}
	if len(te.Register) != 1 {
		t.Fatalf("%d registrations queued, want 1", len(te.Register))
	}
	hA := <-te.Register
	te.Register <- hA // back in the queue: Register stays full

	// Client b: a new flow, whose registration must wait for room. The
	// receiver reaches it within microseconds; nothing outside it shows
	// that it has (Received moves only after), so give it ample time.
	if _, err := b.WriteToUDPAddrPort([]byte("from b"), listener); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)

	// The guest answers a: the dispatcher sends it directly.
	reply := actorstest.GuestUDP(t, hA.Key.Guest, hA.Key.Far, []byte("to a"))
	if !directWithin(t, cancel, hA, reply, 3*time.Second) {
		t.Fatal("Direct declined a datagram for an idle binding")
	}
	_ = a.SetReadDeadline(time.Now().Add(2 * time.Second))
	rb := make([]byte, 100)
	n, from, err := a.ReadFromUDPAddrPort(rb)
	if err != nil || string(rb[:n]) != "to a" || from != listener {
		t.Fatalf("client a got %q from %v, %v", rb[:n], from, err)
	}

	// The dispatcher drains Register: a's flow, then b's.
	if h := <-te.Register; h != hA {
		t.Fatalf("registered %v first", h.Key)
	}
	var hB *actors.Handle
	select {
	case hB = <-te.Register:
	case <-time.After(2 * time.Second):
		t.Fatal("b's flow never registered")
	}
	if hB.Key.Far.Port() != b.LocalAddr().(*net.UDPAddr).AddrPort().Port() {
		t.Fatalf("registered %v for client b", hB.Key)
	}
	buf, p = te.ReadGuest(t, 2*time.Second)
	if string(buf[p.Payload:p.End]) != "from b" {
		t.Fatalf("guest got %q", buf[p.Payload:p.End])
	}
}

// TestUDPSweepEndedFullNoDeadlock fills Env.Ended, lets the sweep end an
// idle flow, and meanwhile has the dispatcher send a new guest datagram of
// that binding directly: the sweep must not wait for the dispatcher while
// holding what sendDirect needs. The datagram still reaches the far end
// (and its echo the guest), and the flow's Handle is on Ended once.
func TestUDPSweepEndedFullNoDeadlock(t *testing.T) {
	te := actorstest.New(t, actors.Options{UDPTimeout: 100 * time.Millisecond})
	proto := New(te.Env)
	te.Ended = make(chan *actors.Handle, 1)
	ctx, cancel := context.WithCancel(te.Env.Ctx)
	defer cancel()
	te.Env.Ctx = ctx
	te.Env.Reg.Ended = te.Ended
	filler := &actors.Handle{}
	te.Ended <- filler // Ended stays full until the dispatcher drains it
	echo := actorstest.UDPEcho(t, "127.0.0.1:0")
	guest := netip.AddrPortFrom(actorstest.Guest4, actorstest.FreeUDPPort(t, "127.0.0.1:0"))
	far := netip.AddrPortFrom(actorstest.GW4, echo.Port())
	flows0 := te.Env.Stats.UDPFlows.Load()
	h := proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, []byte("one")))
	if h == nil {
		t.Fatal("no handle")
	}
	buf, p := te.ReadGuest(t, 2*time.Second)
	if string(buf[p.Payload:p.End]) != "one" {
		t.Fatalf("guest got %q", buf[p.Payload:p.End])
	}
	// The sweep has ended the flow (its count drops before it is
	// reported) and now waits for room in Ended.
	deadline := time.Now().Add(3 * time.Second)
	for te.Env.Stats.UDPFlows.Load() != flows0 {
		if time.Now().After(deadline) {
			t.Fatal("the flow never timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)

	if !directWithin(t, cancel, h, actorstest.GuestUDP(t, guest, far, []byte("two")), 3*time.Second) {
		t.Fatal("Direct declined a datagram for an idle binding")
	}
	buf, p = te.ReadGuest(t, 2*time.Second)
	if string(buf[p.Payload:p.End]) != "two" {
		t.Fatalf("guest got %q", buf[p.Payload:p.End])
	}
	if got := <-te.Ended; got != filler {
		t.Fatalf("ended %v first", got.Key)
	}
	select {
	case got := <-te.Ended:
		if got != h {
			t.Fatalf("ended %v, want the flow's handle", got.Key)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the flow's end was never reported")
	}
}

// TestUDPErrorsFullLinkNoWait: with the link Writer's queue full, the
// receiver waits to hand an ICMP error to the guest (it may: that is
// back-pressure), and the dispatcher then sends a guest datagram directly
// whose send finds another error pending. Direct must not wait, neither
// for the error queue's lock, which the receiver must not hold while it
// waits, nor for room in the queue: the error it read is dropped and
// counted instead, and the datagram is sent.
func TestUDPErrorsFullLinkNoWait(t *testing.T) {
	te := actorstest.New(t, actors.Options{})
	proto := New(te.Env)
	ctx, cancel := context.WithCancel(te.Env.Ctx)
	defer cancel()
	te.Env.Ctx = ctx
	full := link.NewWriter(link.NewNullDevice(1500), 1) // never run
	full.Send(link.GetFrame(60))
	te.Env.Out = full

	closed := actorstest.FreeUDPPort(t, "127.0.0.1:0")
	guest := netip.AddrPortFrom(actorstest.Guest4, actorstest.FreeUDPPort(t, "127.0.0.1:0"))
	far := netip.AddrPortFrom(actorstest.GW4, closed)
	errs0 := proto.stats.ICMPErrors.Load()
	h := proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, []byte("one")))
	if h == nil {
		t.Fatal("no handle")
	}
	// The port unreachable reaches the receiver, which now waits for
	// room in the Writer's queue.
	deadline := time.Now().Add(3 * time.Second)
	for proto.stats.ICMPErrors.Load() == errs0 {
		if time.Now().After(deadline) {
			t.Fatal("no ICMP error for a datagram to a closed port")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)

	// This send makes another port unreachable, which the receiver
	// cannot read: it is busy. The next send finds it pending.
	sent0 := proto.stats.Sent.Load()
	if !directWithin(t, cancel, h, actorstest.GuestUDP(t, guest, far, []byte("two")), 3*time.Second) {
		t.Fatal("Direct declined a datagram for an idle binding")
	}
	time.Sleep(20 * time.Millisecond)
	if !directWithin(t, cancel, h, actorstest.GuestUDP(t, guest, far, []byte("three")), 3*time.Second) {
		t.Fatal("Direct declined a datagram for an idle binding")
	}
	if got := proto.stats.Sent.Load() - sent0; got != 2 {
		t.Fatalf("%d datagrams sent directly, want 2", got)
	}
	if full.Dropped.Load() == 0 {
		t.Fatal("the error Direct read was neither queued nor counted as dropped")
	}
}
