package udp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/link/wire"
)

// TestUDPEcho sends datagrams from the guest to a host echo server through
// the gateway mapping and checks every byte of the replies as the guest
// sees them, for both families.
func TestUDPEcho(t *testing.T) {
	for _, tc := range []struct {
		name        string
		listen      string
		guest, gw   netip.Addr
		etherType   uint16
		wantHostSrc netip.Addr
	}{
		{"v4", "127.0.0.1:0", actorstest.Guest4, actorstest.GW4, wire.EtherTypeIPv4, actorstest.Lo4},
		{"v6", "[::1]:0", actorstest.Guest6, actorstest.GW6, wire.EtherTypeIPv6, netip.IPv6Loopback()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			te := actorstest.New(t, actors.Options{})
			proto := New(te.Env)
			echo := actorstest.UDPEcho(t, tc.listen)
			gport := actorstest.FreeUDPPort(t, tc.listen)
			guest := netip.AddrPortFrom(tc.guest, gport)
			far := netip.AddrPortFrom(tc.gw, echo.Port())
			h := proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, []byte("first")))
			if h == nil {
				t.Fatal("StartUDP returned nil")
			}
			if h.Key != actorstest.UDPKey(guest, far) {
				t.Fatalf("handle key %v", h.Key)
			}
			for i := 0; i < 50; i++ {
				var payload []byte
				if i == 0 {
					payload = []byte("first")
				} else {
					payload = bytes.Repeat([]byte{byte(i)}, i*37)
					actorstest.Put(t, h, actorstest.GuestUDP(t, guest, far, payload))
				}
				b, p := te.ReadGuest(t, 2*time.Second)
				if p.EtherType != tc.etherType || p.Proto != wire.ProtoUDP {
					t.Fatalf("reply ethertype %#x proto %d", p.EtherType, p.Proto)
				}
				if got := netip.AddrPortFrom(p.Src, p.SrcPort); got != far {
					t.Fatalf("reply from %v, want %v", got, far)
				}
				if got := netip.AddrPortFrom(p.Dst, p.DstPort); got != guest {
					t.Fatalf("reply to %v, want %v", got, guest)
				}
				if !bytes.Equal(b[p.Payload:p.End], payload) {
					t.Fatalf("datagram %d: payload mismatch (%d bytes, want %d)", i, p.End-p.Payload, len(payload))
				}
			}
			// No port translation: the host socket uses the guest's port.
			checkHostPortBusy(t, te, tc.listen, gport)
		})
	}
}

// checkHostPortBusy asserts that port is bound on the host (by the actor).
func checkHostPortBusy(t *testing.T, te *actorstest.Env, listen string, port uint16) {
	t.Helper()
	host, _, _ := net.SplitHostPort(listen)
	c, err := net.ListenPacket("udp", net.JoinHostPort(host, fmt.Sprint(port)))
	if err == nil {
		c.Close()
		t.Fatalf("host port %d is free: the actor did not bind the guest's port", port)
	}
}

// TestUDPBatch queues many datagrams before the actor runs, so that they
// go out in sendmmsg batches, and checks that all come back intact.
func TestUDPBatch(t *testing.T) {
	te := actorstest.New(t, actors.Options{})
	proto := New(te.Env)
	echo := actorstest.UDPEcho(t, "127.0.0.1:0")
	guest := netip.AddrPortFrom(actorstest.Guest4, actorstest.FreeUDPPort(t, "127.0.0.1:0"))
	far := netip.AddrPortFrom(actorstest.GW4, echo.Port())
	const n = 200
	pl := func(i int) []byte { return []byte(fmt.Sprintf("datagram %04d %s", i, bytes.Repeat([]byte("x"), i))) }
	h := proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, pl(0)))
	for i := 1; i < n; i++ {
		actorstest.Put(t, h, actorstest.GuestUDP(t, guest, far, pl(i)))
	}
	seen := make(map[string]bool)
	for range n {
		b, p := te.ReadGuest(t, 2*time.Second)
		seen[string(b[p.Payload:p.End])] = true
	}
	for i := 0; i < n; i++ {
		if !seen[string(pl(i))] {
			t.Fatalf("datagram %d lost", i)
		}
	}
}

// TestUDPAnyFarEnd checks STUN-style traffic: once the guest sent from a
// port, a datagram from a far end it never talked to reaches it, and the
// guest's datagram to a second far end (a second flow, so a second
// Start) leaves from the same host port.
func TestUDPAnyFarEnd(t *testing.T) {
	te := actorstest.New(t, actors.Options{})
	proto := New(te.Env)
	echo := actorstest.UDPEcho(t, "127.0.0.1:0")
	gport := actorstest.FreeUDPPort(t, "127.0.0.1:0")
	guest := netip.AddrPortFrom(actorstest.Guest4, gport)
	far := netip.AddrPortFrom(actorstest.GW4, echo.Port())
	h1 := proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, []byte("hello")))
	te.ReadGuest(t, 2*time.Second)

	other, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	oport := other.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	if _, err := other.WriteToUDPAddrPort([]byte("unsolicited"), netip.AddrPortFrom(actorstest.Lo4, gport)); err != nil {
		t.Fatal(err)
	}
	b, p := te.ReadGuest(t, 2*time.Second)
	if got := netip.AddrPortFrom(p.Src, p.SrcPort); got != netip.AddrPortFrom(actorstest.GW4, oport) {
		t.Fatalf("unsolicited datagram from %v", got)
	}
	if netip.AddrPortFrom(p.Dst, p.DstPort) != guest || string(b[p.Payload:p.End]) != "unsolicited" {
		t.Fatalf("unsolicited datagram to %v:%d %q", p.Dst, p.DstPort, b[p.Payload:p.End])
	}

	// The guest answers: a new 4-tuple for the dispatcher.
	far2 := netip.AddrPortFrom(actorstest.GW4, oport)
	h2 := proto.Start(actorstest.UDPKey(guest, far2), actorstest.GuestUDP(t, guest, far2, []byte("answer")))
	if h2 == nil || h2 == h1 || h2.Key != actorstest.UDPKey(guest, far2) {
		t.Fatalf("second flow handle %+v", h2)
	}
	if h2.Q == nil || h2.Q != h1.Q {
		t.Fatal("second flow of the same guest port got its own actor")
	}
	buf := make([]byte, 100)
	_ = other.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, from, err := other.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != "answer" || from.Port() != gport {
		t.Fatalf("answer %q from %v, want from port %d", buf[:n], from, gport)
	}
}

// TestUDPIdleTimeout checks that idle flows end (each Handle reported once
// on Ended) and that the host socket is closed with them.
func TestUDPIdleTimeout(t *testing.T) {
	te := actorstest.New(t, actors.Options{UDPTimeout: 150 * time.Millisecond})
	proto := New(te.Env)
	echo := actorstest.UDPEcho(t, "127.0.0.1:0")
	echo2 := actorstest.UDPEcho(t, "127.0.0.1:0")
	base := actorstest.FDCount(t)
	gport := actorstest.FreeUDPPort(t, "127.0.0.1:0")
	guest := netip.AddrPortFrom(actorstest.Guest4, gport)
	far := netip.AddrPortFrom(actorstest.GW4, echo.Port())
	far2 := netip.AddrPortFrom(actorstest.GW4, echo2.Port())
	start := time.Now()
	h1 := proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, []byte("a")))
	h2 := proto.Start(actorstest.UDPKey(guest, far2), actorstest.GuestUDP(t, guest, far2, []byte("b")))
	te.ReadGuest(t, time.Second)
	te.ReadGuest(t, time.Second)
	if got := actorstest.FDCount(t); got <= base {
		t.Fatalf("fd count %d, base %d: no socket?", got, base)
	}
	got := map[*actors.Handle]int{}
	for len(got) < 2 {
		select {
		case h := <-te.Ended:
			got[h]++
		case <-time.After(2 * time.Second):
			t.Fatalf("flows did not end; ended so far %v", got)
		}
	}
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Fatalf("flows ended after %v, before the timeout", el)
	}
	if got[h1] != 1 || got[h2] != 1 {
		t.Fatalf("ended %v", got)
	}
	ok := false
	for range 100 {
		if actorstest.FDCount(t) == base {
			ok = true
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !ok {
		t.Fatalf("fd count %d, want %d: socket leaked", actorstest.FDCount(t), base)
	}
	// The port is free again.
	c, err := net.ListenPacket("udp", fmt.Sprintf("0.0.0.0:%d", gport))
	if err != nil {
		t.Fatalf("guest port still bound: %v", err)
	}
	c.Close()
	select {
	case h := <-te.Ended:
		t.Fatalf("extra Ended %v", h.Key)
	case <-time.After(50 * time.Millisecond):
	}
}

// TestUDPPortUnreachable sends to a closed port and decodes the ICMP error
// the guest gets, field by field.
func TestUDPPortUnreachable(t *testing.T) {
	for _, tc := range []struct {
		name      string
		listen    string
		guest, gw netip.Addr
	}{
		{"v4", "127.0.0.1:0", actorstest.Guest4, actorstest.GW4},
		{"v6", "[::1]:0", actorstest.Guest6, actorstest.GW6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			te := actorstest.New(t, actors.Options{})
			proto := New(te.Env)
			closed := actorstest.FreeUDPPort(t, tc.listen)
			guest := netip.AddrPortFrom(tc.guest, actorstest.FreeUDPPort(t, tc.listen))
			far := netip.AddrPortFrom(tc.gw, closed)
			payload := []byte("is anybody there?")
			before := proto.stats.ICMPErrors.Load()
			proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, payload))
			b, p := te.ReadGuest(t, 2*time.Second)
			v6 := tc.guest.Is6()
			ipLen := wire.IPv4MinLen
			if v6 {
				ipLen = wire.IPv6Len
			}
			if p.Src != tc.gw || p.Dst != tc.guest {
				t.Fatalf("error from %v to %v", p.Src, p.Dst)
			}
			m := wire.ICMP(b[p.L4:p.End])
			switch {
			case !v6 && (p.Proto != wire.ProtoICMP || m.Type() != wire.ICMPv4DestUnreach || m.Code() != 3):
				t.Fatalf("ICMP proto %d type %d code %d, want port unreachable", p.Proto, m.Type(), m.Code())
			case v6 && (p.Proto != wire.ProtoICMPv6 || m.Type() != wire.ICMPv6DestUnreach || m.Code() != 4):
				t.Fatalf("ICMPv6 type %d code %d, want port unreachable", m.Type(), m.Code())
			}
			inner := m[wire.ICMPLen:]
			if len(inner) != ipLen+wire.UDPLen+len(payload) {
				t.Fatalf("quoted %d bytes, want %d", len(inner), ipLen+wire.UDPLen+len(payload))
			}
			var isrc, idst netip.Addr
			if v6 {
				ih := wire.IPv6(inner)
				isrc, idst = ih.Src(), ih.Dst()
				if ih.NextHeader() != wire.ProtoUDP || ih.PayloadLen() != wire.UDPLen+len(payload) {
					t.Fatalf("inner next %d len %d", ih.NextHeader(), ih.PayloadLen())
				}
			} else {
				ih := wire.IPv4(inner)
				isrc, idst = ih.Src(), ih.Dst()
				if ih.Protocol() != wire.ProtoUDP || ih.TotalLen() != ipLen+wire.UDPLen+len(payload) {
					t.Fatalf("inner proto %d len %d", ih.Protocol(), ih.TotalLen())
				}
				if wire.Fold(wire.Checksum(inner[:ipLen], 0)) != 0 {
					t.Fatal("inner IPv4 header checksum wrong")
				}
			}
			if isrc != tc.guest || idst != tc.gw {
				t.Fatalf("inner %v -> %v", isrc, idst)
			}
			u := wire.UDP(inner[ipLen:])
			if u.SrcPort() != guest.Port() || u.DstPort() != closed || u.Length() != wire.UDPLen+len(payload) {
				t.Fatalf("inner UDP %d -> %d len %d", u.SrcPort(), u.DstPort(), u.Length())
			}
			if !bytes.Equal(u[wire.UDPLen:], payload) {
				t.Fatal("inner payload differs")
			}
			// The quoted datagram is the guest's own, checksum included.
			gs, fs := tc.guest.AsSlice(), tc.gw.AsSlice()
			if s := wire.Fold(wire.Checksum(u, wire.PseudoHeaderSum(gs, fs, wire.ProtoUDP, len(u)))); s != 0 {
				t.Fatalf("inner UDP checksum does not verify (%#x)", s)
			}
			if proto.stats.ICMPErrors.Load() == before {
				t.Fatal("ICMPErrors counter did not move")
			}
		})
	}
}

// TestUDPMalformed feeds frames whose UDP length lies and checks they are
// dropped and counted, not sent.
func TestUDPMalformed(t *testing.T) {
	te := actorstest.New(t, actors.Options{})
	proto := New(te.Env)
	echo := actorstest.UDPEcho(t, "127.0.0.1:0")
	guest := netip.AddrPortFrom(actorstest.Guest4, actorstest.FreeUDPPort(t, "127.0.0.1:0"))
	far := netip.AddrPortFrom(actorstest.GW4, echo.Port())
	h := proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, []byte("ok")))
	te.ReadGuest(t, time.Second)
	before := proto.stats.Malformed.Load()
	f := actorstest.GuestUDP(t, guest, far, []byte("bad length"))
	binary.BigEndian.PutUint16(f.Data[f.L4+4:], 2000)
	actorstest.Put(t, h, f)
	f = actorstest.GuestUDP(t, guest, far, []byte("short"))
	f.L4 = len(f.Data) - 3
	actorstest.Put(t, h, f)
	te.NoGuestFrame(t, 200*time.Millisecond)
	if got := proto.stats.Malformed.Load() - before; got != 2 {
		t.Fatalf("Malformed grew by %d, want 2", got)
	}
	actorstest.Put(t, h, actorstest.GuestUDP(t, guest, far, []byte("still works")))
	b, p := te.ReadGuest(t, time.Second)
	if string(b[p.Payload:p.End]) != "still works" {
		t.Fatal("flow broken after malformed frames")
	}
}

// TestUDPNoUDP checks that --no-udp refuses flows.
func TestUDPNoUDP(t *testing.T) {
	te := actorstest.New(t, actors.Options{NoUDP: true})
	proto := New(te.Env)
	guest := netip.AddrPortFrom(actorstest.Guest4, 40000)
	far := netip.AddrPortFrom(actorstest.GW4, 53)
	if h := proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, nil)); h != nil {
		t.Fatal("flow started with NoUDP")
	}
}

// TestUDPFromPortZero: a guest datagram from port 0 ("no reply", RFC 768)
// still goes out, but an answer has no port to go to in the guest: it is
// counted, not sent as a frame to port 0.
func TestUDPFromPortZero(t *testing.T) {
	te := actorstest.New(t, actors.Options{})
	proto := New(te.Env)
	srv, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 100)
		n, from, err := srv.ReadFrom(buf)
		if err != nil {
			return
		}
		got <- string(buf[:n])
		srv.WriteTo([]byte("answer"), from)
	}()
	guest := netip.AddrPortFrom(actorstest.Guest4, 0)
	far := netip.AddrPortFrom(actorstest.GW4, uint16(srv.LocalAddr().(*net.UDPAddr).Port))
	before := proto.stats.Unmappable.Load()
	if h := proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, []byte("one-way"))); h == nil {
		t.Fatal("StartUDP returned nil")
	}
	select {
	case s := <-got:
		if s != "one-way" {
			t.Fatalf("server got %q", s)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("datagram from port 0 not delivered")
	}
	te.NoGuestFrame(t, 300*time.Millisecond)
	if proto.stats.Unmappable.Load() == before {
		t.Error("the answer to port 0 was not counted")
	}
}
