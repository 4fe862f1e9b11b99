package udp

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
)

// TestUDPBindingBudget: bindings are capped like flows: a new guest port
// beyond the budget is dropped and counted, while a new far end of a port
// already bound needs nothing more.
func TestUDPBindingBudget(t *testing.T) {
	te := actorstest.New(t, actors.Options{})
	proto := New(te.Env)
	te.Limits.SetFDBudget(1)
	echo := actorstest.UDPEcho(t, "127.0.0.1:0")
	echo2 := actorstest.UDPEcho(t, "127.0.0.1:0")
	g1 := netip.AddrPortFrom(actorstest.Guest4, actorstest.FreeUDPPort(t, "127.0.0.1:0"))
	g2 := netip.AddrPortFrom(actorstest.Guest4, actorstest.FreeUDPPort(t, "127.0.0.1:0"))
	far := netip.AddrPortFrom(actorstest.GW4, echo.Port())
	far2 := netip.AddrPortFrom(actorstest.GW4, echo2.Port())
	refused := proto.stats.BindingsRefused.Load()
	if proto.Start(actorstest.UDPKey(g1, far), actorstest.GuestUDP(t, g1, far, []byte("a"))) == nil {
		t.Fatal("first binding refused")
	}
	te.ReadGuest(t, 2*time.Second)
	if proto.Start(actorstest.UDPKey(g2, far), actorstest.GuestUDP(t, g2, far, []byte("b"))) != nil {
		t.Fatal("a second binding beyond the budget of one")
	}
	if n := proto.stats.BindingsRefused.Load() - refused; n != 1 {
		t.Errorf("bindings refused: %d", n)
	}
	if proto.Start(actorstest.UDPKey(g1, far2), actorstest.GuestUDP(t, g1, far2, []byte("c"))) == nil {
		t.Fatal("a new far end of a bound port refused")
	}
	te.ReadGuest(t, 2*time.Second)
}

// TestUDPBindingEndsWithLastFlow: a far end the guest never sent to can
// reach the guest's port, but cannot keep the binding, and with it the
// host port and a descriptor, alive once the guest's flows are over.
func TestUDPBindingEndsWithLastFlow(t *testing.T) {
	te := actorstest.New(t, actors.Options{UDPTimeout: 200 * time.Millisecond})
	proto := New(te.Env)
	echo := actorstest.UDPEcho(t, "127.0.0.1:0")
	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	base := actorstest.FDCount(t)
	gport := actorstest.FreeUDPPort(t, "127.0.0.1:0")
	guest := netip.AddrPortFrom(actorstest.Guest4, gport)
	far := netip.AddrPortFrom(actorstest.GW4, echo.Port())
	h := proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, []byte("hello")))
	te.ReadGuest(t, 2*time.Second)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				_, _ = stranger.WriteToUDPAddrPort([]byte("keepalive"), netip.AddrPortFrom(actorstest.Lo4, gport))
			}
		}
	}()
	select {
	case e := <-te.Ended:
		if e != h {
			t.Fatalf("ended %v", e.Key)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the guest's flow did not end")
	}
	var berr error
	if !actorstest.Eventually(2*time.Second, func() bool {
		c, err := net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", gport))
		if berr = err; err == nil {
			c.Close()
		}
		return err == nil
	}) {
		t.Fatalf("the guest's port is still bound on the host after its last flow: %v", berr)
	}
	if !actorstest.Eventually(time.Second, func() bool { return actorstest.FDCount(t) <= base }) {
		t.Fatalf("descriptors %d, base %d: the binding outlived its last flow", actorstest.FDCount(t), base)
	}
}

// TestUDPHostPortChoice: the host port of a guest's flow is the guest's
// own source port, as pasta chooses it; a port a host program has stays
// the program's (the flow leaves from another port, and the program still
// gets what is sent to its port).
func TestUDPHostPortChoice(t *testing.T) {
	te := actorstest.New(t, actors.Options{})
	proto := New(te.Env)
	echo := actorstest.UDPEcho(t, "127.0.0.1:0")
	far := netip.AddrPortFrom(actorstest.GW4, echo.Port())
	seen := make(chan netip.AddrPort, 4)
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	farSink := netip.AddrPortFrom(actorstest.GW4, uint16(sink.LocalAddr().(*net.UDPAddr).Port))
	go func() {
		buf := make([]byte, 100)
		for {
			_, from, err := sink.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			seen <- from
		}
	}()
	from := func() netip.AddrPort {
		select {
		case a := <-seen:
			return a
		case <-time.After(2 * time.Second):
			t.Fatal("nothing reached the host")
		}
		return netip.AddrPort{}
	}

	free := actorstest.FreeUDPPort(t, "0.0.0.0:0")
	g := netip.AddrPortFrom(actorstest.Guest4, free)
	proto.Start(actorstest.UDPKey(g, farSink), actorstest.GuestUDP(t, g, farSink, []byte("x")))
	if a := from(); a.Port() != free {
		t.Errorf("guest port %d free on the host: the flow left from %v", free, a)
	}

	// A host program has this port (no SO_REUSEADDR, as most do).
	owner, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	taken := uint16(owner.LocalAddr().(*net.UDPAddr).Port)
	g2 := netip.AddrPortFrom(actorstest.Guest4, taken)
	proto.Start(actorstest.UDPKey(g2, farSink), actorstest.GuestUDP(t, g2, farSink, []byte("y")))
	if a := from(); a.Port() == taken || a.Port() == 0 {
		t.Errorf("guest port %d taken on the host: the flow left from %v", taken, a)
	}
	// The program still has its port, and the guest its answers.
	c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(taken)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("for the program"))
	owner.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 100)
	if n, _, err := owner.ReadFromUDP(buf); err != nil || string(buf[:n]) != "for the program" {
		t.Fatalf("the program's port: %q %v", buf[:n], err)
	}
	proto.Start(actorstest.UDPKey(g2, far), actorstest.GuestUDP(t, g2, far, []byte("z")))
	for {
		b, p := te.ReadGuest(t, 2*time.Second)
		if netip.AddrPortFrom(p.Src, p.SrcPort) == far && string(b[p.Payload:p.End]) == "z" {
			if got := netip.AddrPortFrom(p.Dst, p.DstPort); got != g2 {
				t.Fatalf("answer to %v, want %v", got, g2)
			}
			break
		}
	}
}
