package icmp

import (
	"bytes"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/actors/internal/sockutil"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// setPingGroupRange sets net.ipv4.ping_group_range of the calling thread's
// network namespace (call actorstest.InPrivateNetns first).
func setPingGroupRange(t *testing.T, r string) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte(r), 0o644); err != nil {
		t.Fatalf("ping_group_range: %v", err)
	}
}

func echoKey(v6 bool, guest netip.Addr, id uint16, far netip.Addr) actors.Key {
	p := uint8(wire.ProtoICMP)
	if v6 {
		p = wire.ProtoICMPv6
	}
	return actors.Key{Proto: p, Guest: netip.AddrPortFrom(guest, id), Far: netip.AddrPortFrom(far, 0)}
}

func guestEcho(t testing.TB, guest, far netip.Addr, id, seq uint16, payload []byte) []byte {
	typ, proto := uint8(wire.ICMPv4EchoRequest), uint8(wire.ProtoICMP)
	if guest.Is6() {
		typ, proto = wire.ICMPv6EchoRequest, wire.ProtoICMPv6
	}
	_ = proto
	return wiretest.ICMPEcho(typ, id, seq, payload)
}

// TestICMPEcho pings the host's loopback through the gateway mapping from a
// private namespace and checks identifier, sequence and payload of every
// reply, including when the guest's identifier is taken on the host and
// must be rewritten.
func TestICMPEcho(t *testing.T) {
	actorstest.InPrivateNetns(t)
	setPingGroupRange(t, "0 2147483647")
	for _, tc := range []struct {
		name      string
		guest, gw netip.Addr
		taken     bool
	}{
		{"v4", actorstest.Guest4, actorstest.GW4, false},
		{"v6", actorstest.Guest6, actorstest.GW6, false},
		{"v4-id-taken", actorstest.Guest4, actorstest.GW4, true},
		{"v6-id-taken", actorstest.Guest6, actorstest.GW6, true},
	} {
		v6 := tc.guest.Is6()
		const id = 0x1234
		if tc.taken {
			// Hold the identifier on the host, so the actor cannot bind it.
			s, err := sockutil.NewDgramSock(v6, map[bool]int{false: unix.IPPROTO_ICMP, true: unix.IPPROTO_ICMPV6}[v6], func(fd int) error {
				any := netip.IPv4Unspecified()
				if v6 {
					any = netip.IPv6Unspecified()
				}
				return sockutil.BindAddrPort(fd, netip.AddrPortFrom(any, id))
			})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
		}
		te := actorstest.New(t, actors.Options{})
		icmpP := New(te.Env)
		k := echoKey(v6, tc.guest, id, tc.gw)
		proto := k.Proto
		h := icmpP.Start(k, actorstest.GuestFrame(t, tc.guest, tc.gw, proto, guestEcho(t, tc.guest, tc.gw, id, 1, []byte("ping 1"))))
		if h == nil {
			t.Fatalf("%s: StartICMP returned nil", tc.name)
		}
		for seq := uint16(1); seq <= 5; seq++ {
			payload := bytes.Repeat([]byte{byte(seq)}, int(seq)*100)
			if seq == 1 {
				payload = []byte("ping 1")
			} else {
				h.In <- actorstest.GuestFrame(t, tc.guest, tc.gw, proto, guestEcho(t, tc.guest, tc.gw, id, seq, payload))
			}
			b, p := te.ReadGuest(t, 2*time.Second)
			m := wire.ICMP(b[p.L4:p.End])
			wantType := uint8(wire.ICMPv4EchoReply)
			if v6 {
				wantType = wire.ICMPv6EchoReply
			}
			if p.Proto != proto || m.Type() != wantType || m.Code() != 0 {
				t.Fatalf("%s: reply proto %d type %d code %d", tc.name, p.Proto, m.Type(), m.Code())
			}
			if p.Src != tc.gw || p.Dst != tc.guest {
				t.Fatalf("%s: reply %v -> %v", tc.name, p.Src, p.Dst)
			}
			if m.Ident() != id || m.Seq() != seq {
				t.Fatalf("%s: reply id %#x seq %d, want %#x %d", tc.name, m.Ident(), m.Seq(), id, seq)
			}
			if !bytes.Equal(m[wire.ICMPLen:], payload) {
				t.Fatalf("%s: reply payload differs", tc.name)
			}
		}
	}
}

// TestICMPIdleTimeout checks that an echo flow ends after ICMPTimeout,
// leaving no descriptor behind (the protocol's poller, made with its first
// flow, is the protocol's until Close).
func TestICMPIdleTimeout(t *testing.T) {
	actorstest.InPrivateNetns(t)
	setPingGroupRange(t, "0 2147483647")
	te := actorstest.New(t, actors.Options{ICMPTimeout: 100 * time.Millisecond})
	proto := New(te.Env)
	if _, err := proto.poller(); err != nil {
		t.Fatal(err)
	}
	base := actorstest.FDCount(t)
	k := echoKey(false, actorstest.Guest4, 77, actorstest.GW4)
	start := time.Now()
	h := proto.Start(k, actorstest.GuestFrame(t, actorstest.Guest4, actorstest.GW4, wire.ProtoICMP, guestEcho(t, actorstest.Guest4, actorstest.GW4, 77, 1, nil)))
	te.ReadGuest(t, time.Second)
	select {
	case got := <-te.Ended:
		if got != h {
			t.Fatalf("ended %v", got.Key)
		}
		if el := time.Since(start); el < 100*time.Millisecond {
			t.Fatalf("ended after %v", el)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("echo flow did not end")
	}
	for range 100 {
		if actorstest.FDCount(t) == base {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("fd count %d, want %d", actorstest.FDCount(t), base)
}

// TestICMPManyRepliesOneEdge: the echo socket is watched edge-triggered,
// and a wakeup takes at most 64 replies; the rest, which raise no new
// event, must still reach the guest.
func TestICMPManyRepliesOneEdge(t *testing.T) {
	actorstest.InPrivateNetns(t)
	setPingGroupRange(t, "0 2147483647")
	te := actorstest.New(t, actors.Options{})
	proto := New(te.Env)
	defer proto.Close()
	k := echoKey(false, actorstest.Guest4, 78, actorstest.GW4)
	const n = 200
	h := proto.Start(k, actorstest.GuestFrame(t, actorstest.Guest4, actorstest.GW4, wire.ProtoICMP, guestEcho(t, actorstest.Guest4, actorstest.GW4, 78, 0, nil)))
	for seq := uint16(1); seq < n; seq++ {
		if !h.Offer(actorstest.GuestFrame(t, actorstest.Guest4, actorstest.GW4, wire.ProtoICMP, guestEcho(t, actorstest.Guest4, actorstest.GW4, 78, seq, nil))) {
			t.Fatalf("inbox full at %d", seq)
		}
	}
	seen := map[uint16]bool{}
	for len(seen) < n {
		b, p := te.ReadGuest(t, 2*time.Second)
		seen[wire.ICMP(b[p.L4:p.End]).Seq()] = true
	}
	if got := proto.stats.EchoReplies.Load(); got != n {
		t.Fatalf("%d replies counted, want %d", got, n)
	}
}

// TestICMPPingGroupRange checks that a forbidden ping socket drops the
// request, counted, without a flow.
func TestICMPPingGroupRange(t *testing.T) {
	actorstest.InPrivateNetns(t)
	setPingGroupRange(t, "1 0")
	te := actorstest.New(t, actors.Options{})
	proto := New(te.Env)
	before := proto.stats.EchoDropped.Load()
	k := echoKey(false, actorstest.Guest4, 5, actorstest.GW4)
	if h := proto.Start(k, actorstest.GuestFrame(t, actorstest.Guest4, actorstest.GW4, wire.ProtoICMP, guestEcho(t, actorstest.Guest4, actorstest.GW4, 5, 1, nil))); h != nil {
		t.Fatal("echo flow started without ping sockets")
	}
	if proto.stats.EchoDropped.Load() == before {
		t.Fatal("drop not counted")
	}
}
