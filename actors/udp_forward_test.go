package actors

import (
	"net"
	"net/netip"
	"testing"
	"time"

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
		{"v4-bound", lo4, "udp4", "127.0.0.1:0", lo4, tGuest4, tGW4},
		{"v4-wildcard", netip.Addr{}, "udp4", "127.0.0.1:0", netip.MustParseAddr("127.0.0.2"), tGuest4, tGW4},
		{"v6-wildcard", netip.Addr{}, "udp6", "[::1]:0", netip.IPv6Loopback(), tGuest6, tGW6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hostPort := freeUDPPort(t, "[::]:0")
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
			te := newUDPTestEnv(t, cfg)
			stop, err := StartUDPForwarders(te.Env)
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
			var h *Handle
			select {
			case h = <-te.register:
			case <-time.After(2 * time.Second):
				t.Fatal("no flow registered")
			}
			wantKey := udpKey(netip.AddrPortFrom(tc.guest, guestPort), netip.AddrPortFrom(tc.gw, cport))
			if h.Key != wantKey {
				t.Fatalf("registered %v, want %v", h.Key, wantKey)
			}
			b, p := te.readGuest(t, 2*time.Second)
			if netip.AddrPortFrom(p.Src, p.SrcPort) != wantKey.Far || netip.AddrPortFrom(p.Dst, p.DstPort) != wantKey.Guest {
				t.Fatalf("datagram %v:%d -> %v:%d", p.Src, p.SrcPort, p.Dst, p.DstPort)
			}
			if string(b[p.Payload:p.End]) != "query" {
				t.Fatalf("payload %q", b[p.Payload:p.End])
			}
			// The guest answers twice; the second time in a batch of two.
			put(t, h, guestUDP(t, wantKey.Guest, wantKey.Far, []byte("answer 1")))
			put(t, h, guestUDP(t, wantKey.Guest, wantKey.Far, []byte("answer 2")))
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
			te.readGuest(t, 2*time.Second)
			select {
			case h := <-te.register:
				t.Fatalf("registered again: %v", h.Key)
			default:
			}
			stop()
			select {
			case got := <-te.ended:
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
	te := newUDPTestEnv(t, &conf.Config{UDPPorts: []conf.PortSpec{
		{Raw: "auto", Option: "-u", Auto: true},
		{Raw: "127.0.0.1/x", Option: "-u", Bind: lo4, Ranges: []conf.PortRange{{First: p, Last: p, To: p}}},
	}})
	stop, err := StartUDPForwarders(te.Env)
	if err == nil {
		stop()
		t.Fatal("bind on a taken port succeeded")
	}
	t.Log(err)
}
