package udp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/conf"
)

// TestUDPInbound forwards a host port to a remapped guest port: a client's
// datagram registers a flow and reaches the guest from the client as the
// guest sees it, and the guest's reply reaches the client from the address
// and port it sent to. The wildcard case checks the reply source with a
// client that sends to 127.0.0.2, which only IP_PKTINFO gets right.
func TestUDPInbound(t *testing.T) {
	for _, tc := range []struct {
		name       string
		bind       netip.Addr
		network    string
		clientAddr string
		sendTo     netip.Addr
		guest, gw  netip.Addr
	}{
		{"v4-bound", actorstest.Lo4, "udp4", "127.0.0.1:0", actorstest.Lo4, actorstest.Guest4, actorstest.GW4},
		{"v4-wildcard", netip.Addr{}, "udp4", "127.0.0.1:0", netip.MustParseAddr("127.0.0.2"), actorstest.Guest4, actorstest.GW4},
		{"v6-wildcard", netip.Addr{}, "udp6", "[::1]:0", netip.IPv6Loopback(), actorstest.Guest6, actorstest.GW6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hostPort := actorstest.FreeUDPPort(t, "[::]:0")
			guestPort := hostPort + 1
			cfg := &conf.Config{UDPPorts: []conf.PortSpec{{
				Raw: "test", Option: "-u", Bind: tc.bind,
				Ranges: []conf.PortRange{{First: hostPort, Last: hostPort, To: guestPort}},
			}}}
			if tc.guest.Is4() {
				cfg.IPv4Only = true
			} else {
				cfg.IPv6Only = true
			}
			te := actorstest.New(t, actors.OptionsFrom(cfg))
			stop, err := startListeners(te.Env, cfg.UDPPorts)
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			client, err := net.ListenPacket(tc.network, tc.clientAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			cport := client.LocalAddr().(*net.UDPAddr).AddrPort().Port()
			uc := client.(*net.UDPConn)
			if _, err := uc.WriteToUDPAddrPort([]byte("query"), netip.AddrPortFrom(tc.sendTo, hostPort)); err != nil {
				t.Fatal(err)
			}
			var h *actors.Handle
			select {
			case h = <-te.Register:
			case <-time.After(2 * time.Second):
				t.Fatal("no flow registered")
			}
			wantKey := actorstest.UDPKey(netip.AddrPortFrom(tc.guest, guestPort), netip.AddrPortFrom(tc.gw, cport))
			if h.Key != wantKey {
				t.Fatalf("registered %v, want %v", h.Key, wantKey)
			}
			b, p := te.ReadGuest(t, 2*time.Second)
			if netip.AddrPortFrom(p.Src, p.SrcPort) != wantKey.Far || netip.AddrPortFrom(p.Dst, p.DstPort) != wantKey.Guest {
				t.Fatalf("datagram %v:%d -> %v:%d", p.Src, p.SrcPort, p.Dst, p.DstPort)
			}
			if string(b[p.Payload:p.End]) != "query" {
				t.Fatalf("payload %q", b[p.Payload:p.End])
			}
			// The guest answers twice; the second time in a batch of two.
			actorstest.Put(t, h, actorstest.GuestUDP(t, wantKey.Guest, wantKey.Far, []byte("answer 1")))
			actorstest.Put(t, h, actorstest.GuestUDP(t, wantKey.Guest, wantKey.Far, []byte("answer 2")))
			buf := make([]byte, 100)
			for i := 1; i <= 2; i++ {
				_ = uc.SetReadDeadline(time.Now().Add(2 * time.Second))
				n, from, err := uc.ReadFromUDPAddrPort(buf)
				if err != nil {
					t.Fatal(err)
				}
				if want := netip.AddrPortFrom(tc.sendTo, hostPort); from != want {
					t.Fatalf("reply from %v, want %v", from, want)
				}
				if want := "answer " + string(rune('0'+i)); string(buf[:n]) != want {
					t.Fatalf("reply %q, want %q", buf[:n], want)
				}
			}
			// A second datagram of the same client does not register again.
			if _, err := uc.WriteToUDPAddrPort([]byte("again"), netip.AddrPortFrom(tc.sendTo, hostPort)); err != nil {
				t.Fatal(err)
			}
			te.ReadGuest(t, 2*time.Second)
			select {
			case h := <-te.Register:
				t.Fatalf("registered again: %v", h.Key)
			default:
			}
			stop()
			select {
			case got := <-te.Ended:
				if got != h {
					t.Fatalf("ended %v", got.Key)
				}
			case <-time.After(time.Second):
				t.Fatal("stop did not end the flow")
			}
		})
	}
}

// TestUDPForwarderBindError checks that a taken port is a clear error.
func TestUDPForwarderBindError(t *testing.T) {
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	cfg := &conf.Config{UDPPorts: []conf.PortSpec{
		{Raw: "auto", Option: "-u", Auto: true},
		{Raw: "127.0.0.1/x", Option: "-u", Bind: actorstest.Lo4, Ranges: []conf.PortRange{{First: p, Last: p, To: p}}},
	}}
	te := actorstest.New(t, actors.OptionsFrom(cfg))
	stop, err := startListeners(te.Env, cfg.UDPPorts)
	if err == nil {
		stop()
		t.Fatal("bind on a taken port succeeded")
	}
	t.Log(err)
}

// startListeners binds a listener binding for each port of the -u
// specifications, as actors/forward does for the daemon, and runs them.
//
// Every forwarded port gets a listening socket per IP family (one family
// when the spec names a bind address), each a Binding in inbound mode:
// its actor receives the clients' datagrams, registers a flow per client
// with the dispatcher, and sends the guest's replies from the listening
// socket. "auto" and "all" are not implemented yet and only logged.
func startListeners(env *actors.Env, specs []conf.PortSpec) (stop func(), err error) {
	if env.Opts.NoUDP {
		return func() {}, nil
	}
	proto := New(env)
	ctx, cancel := context.WithCancel(env.Ctx)
	var bs []*Binding
	fail := func(err error) (func(), error) {
		cancel()
		for _, b := range bs {
			b.Sock.Close()
		}
		return nil, err
	}
	for _, spec := range specs {
		if spec.None {
			continue
		}
		for _, r := range spec.Ranges {
			for p := int(r.First); p <= int(r.Last); p++ {
				if excluded(spec.Excluded, uint16(p)) {
					continue
				}
				to := r.To + uint16(p-int(r.First))
				for _, v6 := range listenFamilies(env.Opts, spec, r) {
					b, err := proto.NewListenerBinding(spec, r.ToAddr, uint16(p), to, v6)
					if err != nil {
						if !spec.Bind.IsValid() && v6 && (err == unix.EAFNOSUPPORT || err == unix.EADDRNOTAVAIL) {
							env.Log.Warnf("udp: %s %s: no IPv6 on the host, forwarding IPv4 only", spec.Option, spec.Raw)
							continue
						}
						return fail(fmt.Errorf("udp: %s %s: port %d: %w", spec.Option, spec.Raw, p, err))
					}
					b.Done = ctx.Done()
					bs = append(bs, b)
				}
			}
		}
	}
	var wg sync.WaitGroup
	for _, b := range bs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.Run()
		}()
	}
	return func() { cancel(); wg.Wait() }, nil
}

func excluded(ex []conf.PortRange, p uint16) bool {
	for _, r := range ex {
		if p >= r.First && p <= r.Last {
			return true
		}
	}
	return false
}

// listenFamilies lists the families to listen on for one range: the bind
// address's, the target address's, or both unless -4/-6 says otherwise.
func listenFamilies(o actors.Options, spec conf.PortSpec, r conf.PortRange) []bool {
	switch {
	case spec.Bind.IsValid():
		return []bool{spec.Bind.Is6() && !spec.Bind.Is4In6()}
	case r.ToAddr.IsValid():
		return []bool{r.ToAddr.Is6()}
	case o.IPv4Only:
		return []bool{false}
	case o.IPv6Only:
		return []bool{true}
	}
	return []bool{false, true}
}
