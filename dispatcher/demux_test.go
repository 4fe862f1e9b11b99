package dispatcher

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/linktest"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

type (
	envT    = actors.Env
	keyT    = actors.Key
	frameT  = link.Frame
	handleT = actors.Handle
)

// started is what a fake starter saw: the key and a copy of the frame
// with its offsets.
type started struct {
	key             keyT
	data            []byte
	l3, l4, payload int
	handle          *handleT
}

// fakeActors records every start and returns a handle whose inbox has
// depth slots (or nil when refuse is set).
type fakeActors struct {
	mu     sync.Mutex
	starts []started
	depth  int
	refuse bool
}

func (fa *fakeActors) start(_ *envT, k keyT, f *frameT) *handleT {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	s := started{key: k, data: append([]byte(nil), f.Data...), l3: f.L3, l4: f.L4, payload: f.Payload}
	f.Release()
	if !fa.refuse {
		s.handle = &handleT{Key: k, In: make(chan *frameT, fa.depth)}
	}
	fa.starts = append(fa.starts, s)
	return s.handle
}

func (fa *fakeActors) get(i int) started {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	return fa.starts[i]
}

func (fa *fakeActors) count() int {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	return len(fa.starts)
}

func withFakes(fa *fakeActors) func(*Dispatcher) {
	return func(d *Dispatcher) { d.setStarts(fa.start, fa.start, fa.start) }
}

func recvFrame(t *testing.T, h *handleT) *frameT {
	t.Helper()
	select {
	case f := <-h.In:
		return f
	case <-time.After(3 * time.Second):
		t.Fatal("no frame in the inbox")
		return nil
	}
}

func TestDemuxTCP(t *testing.T) {
	fa := &fakeActors{depth: 4}
	h := newHarness(t, nil, withFakes(fa))
	syn := wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 1, 0, wire.TCPSyn, []byte("hi")))
	padded := append(append([]byte(nil), syn...), 0, 0, 0, 0) // Ethernet padding
	h.send(padded)
	h.waitStat("flows_started", 1)
	s := fa.get(0)
	want := keyT{Proto: wire.ProtoTCP, Guest: netip.MustParseAddrPort("10.0.2.100:40000"), Far: netip.MustParseAddrPort("93.184.216.34:80")}
	if s.key != want {
		t.Fatalf("key %v", s.key)
	}
	if s.l3 != 14 || s.l4 != 34 || s.payload != 54 || string(s.data) != string(syn) {
		t.Fatalf("offsets %d %d %d, %d bytes (padding must be trimmed)", s.l3, s.l4, s.payload, len(s.data))
	}

	// The next segment goes to the inbox, not to a new actor; a large
	// one too (it changes hands rather than being copied).
	ack := wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 3, 1, wire.TCPAck, []byte("more")))
	big := wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 7, 1, wire.TCPAck, make([]byte, 30000)))
	h.send(ack)
	h.send(big)
	for i, w := range [][]byte{ack, big} {
		f := recvFrame(t, s.handle)
		if string(f.Data) != string(w) || f.L3 != 14 || f.L4 != 34 || f.Payload != 54 {
			t.Fatalf("frame %d: %d bytes, offsets %d %d %d", i, len(f.Data), f.L3, f.L4, f.Payload)
		}
		f.Release()
	}
	if fa.count() != 1 {
		t.Fatalf("%d starts", fa.count())
	}
	h.waitStat("frames_to_flows", 3)
	if h.env.Peer.Addr4() != guest4 || h.env.Peer.MAC() != guestMAC {
		t.Fatalf("peer learned %s %x", h.env.Peer.Addr4(), h.env.Peer.MAC())
	}

	// IPv6 likewise, with the v6 key.
	h.send(wiretest.IP(guest6, far6, wire.ProtoTCP, wiretest.TCP(40001, 443, 1, 0, wire.TCPSyn, nil)))
	h.waitStat("flows_started", 2)
	s = fa.get(1)
	if s.key.Guest != netip.AddrPortFrom(guest6, 40001) || s.key.Far != netip.AddrPortFrom(far6, 443) || s.l4 != 54 || s.payload != 74 {
		t.Fatalf("v6 start %+v", s)
	}
	if h.env.Peer.Addr6() != guest6 {
		t.Fatalf("peer addr6 %s", h.env.Peer.Addr6())
	}
}

func TestDemuxInboxFullAndEnded(t *testing.T) {
	bothReaders(t, testDemuxInboxFullAndEnded)
}

// bothReaders runs test on the single-goroutine dispatcher (tap) and on
// the split reader (passt).
func bothReaders(t *testing.T, test func(*testing.T, func(*testing.T, func(*conf.Config), func(*Dispatcher)) *harness)) {
	t.Run("inline", func(t *testing.T) { test(t, newHarness) })
	t.Run("split", func(t *testing.T) { test(t, newSplitHarness) })
}

func testDemuxInboxFullAndEnded(t *testing.T, newHarness func(*testing.T, func(*conf.Config), func(*Dispatcher)) *harness) {
	fa := &fakeActors{depth: 1}
	h := newHarness(t, nil, withFakes(fa))
	seg := func(seq uint32) []byte {
		return wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(5000, 53, []byte{byte(seq)}))
	}
	h.send(seg(0)) // starts the flow
	h.send(seg(1)) // fills the inbox
	h.send(seg(2)) // dropped
	h.waitStat("drop_inbox_full", 1)
	s := fa.get(0)
	f := recvFrame(t, s.handle)
	if f.Data[f.Payload] != 1 {
		t.Fatalf("inbox holds %d", f.Data[f.Payload])
	}
	f.Release()

	// A stale Ended (another handle for the key) changes nothing.
	h.env.Reg.Ended <- &handleT{Key: s.key}
	h.waitStat("flows_ended_stale", 1)
	h.waitStat("flows_active", 1)

	h.env.Reg.Ended <- s.handle
	h.waitStat("flows_ended", 1)
	h.waitStat("flows_active", 0)

	// The next datagram starts a new actor.
	h.send(seg(3))
	h.waitStat("flows_started", 2)
	if fa.count() != 2 || fa.get(1).key != s.key {
		t.Fatal("no restart")
	}
}

func TestDemuxFlowLimit(t *testing.T) {
	fa := &fakeActors{depth: 4}
	h := newHarness(t, func(c *conf.Config) { c.FlowLimit = 2 }, withFakes(fa))
	for port := uint16(1000); port < 1004; port++ {
		h.send(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(port, 80, 1, 0, wire.TCPSyn, nil)))
	}
	h.waitStat("drop_flow_limit", 2)
	h.waitStat("flows_started", 2)
	if h.env.Stats.Refused.Load() != 2 {
		t.Fatalf("refused %d", h.env.Stats.Refused.Load())
	}
	// An existing flow still gets its frames.
	h.send(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(1000, 80, 2, 1, wire.TCPAck, nil)))
	f := recvFrame(t, fa.get(0).handle)
	f.Release()
}

func TestDemuxICMP(t *testing.T) {
	fa := &fakeActors{depth: 4}
	h := newHarness(t, nil, withFakes(fa))
	h.send(wiretest.IP(guest4, far4, wire.ProtoICMP, wiretest.ICMPEcho(wire.ICMPv4EchoRequest, 0x1234, 1, []byte("ping"))))
	h.send(wiretest.IP(guest6, far6, wire.ProtoICMPv6, wiretest.ICMPEcho(wire.ICMPv6EchoRequest, 0x4321, 1, []byte("ping"))))
	h.waitStat("flows_started", 2)
	if k := fa.get(0).key; k != (keyT{Proto: wire.ProtoICMP, Guest: netip.AddrPortFrom(guest4, 0x1234), Far: netip.AddrPortFrom(far4, 0)}) {
		t.Fatalf("key %v", k)
	}
	if k := fa.get(1).key; k != (keyT{Proto: wire.ProtoICMPv6, Guest: netip.AddrPortFrom(guest6, 0x4321), Far: netip.AddrPortFrom(far6, 0)}) {
		t.Fatalf("key %v", k)
	}
	if s := fa.get(0); s.payload != s.l4+8 {
		t.Fatalf("payload offset %d", s.payload)
	}
	// Replies and errors from the guest go nowhere.
	h.send(wiretest.IP(guest4, far4, wire.ProtoICMP, wiretest.ICMPEcho(wire.ICMPv4EchoReply, 1, 1, nil)))
	h.send(wiretest.IP(guest4, far4, wire.ProtoICMP, append([]byte{wire.ICMPv4DestUnreach, 3, 0, 0, 0, 0, 0, 0}, make([]byte, 28)...)))
	h.waitStat("drop_icmp_other", 2)
}

func TestDemuxPolicy(t *testing.T) {
	fa := &fakeActors{depth: 4}
	h := newHarness(t, func(c *conf.Config) { c.NoTCP, c.NoUDP, c.NoICMP = true, true, true }, withFakes(fa))
	h.send(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(1, 80, 1, 0, wire.TCPSyn, nil)))
	h.send(wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(1, 53, nil)))
	h.send(wiretest.IP(guest4, far4, wire.ProtoICMP, wiretest.ICMPEcho(8, 1, 1, nil)))
	h.send(wiretest.IP(guest4, far4, 47, make([]byte, 8))) // GRE
	h.waitStat("drop_no_tcp", 1)
	h.waitStat("drop_no_udp", 1)
	h.waitStat("drop_no_icmp", 1)
	h.waitStat("drop_unknown_proto", 1)
	if fa.count() != 0 {
		t.Fatal("actor started")
	}
}

// TestDemuxNoProtocol: a daemon without one of the protocols drops its
// frames as if it were disabled, and starts the others' flows.
func TestDemuxNoProtocol(t *testing.T) {
	fa := &fakeActors{depth: 4}
	h := newHarness(t, nil, func(d *Dispatcher) {
		d.setStarts(fa.start, nil, fa.start)
		d.protos.UDP = nil
	})
	h.send(wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(1, 53, nil)))
	h.waitStat("drop_no_udp", 1)
	h.send(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(1, 80, 1, 0, wire.TCPSyn, nil)))
	h.waitStat("flows_started", 1)
	if fa.count() != 1 || fa.get(0).key.Proto != wire.ProtoTCP {
		t.Fatalf("%d flows started, want the TCP one", fa.count())
	}
}

func TestDemuxBadDestinations(t *testing.T) {
	fa := &fakeActors{depth: 4}
	h := newHarness(t, nil, withFakes(fa))
	h.send(wiretest.IP(guest4, netip.MustParseAddr("224.0.0.251"), wire.ProtoUDP, wiretest.UDP(5353, 5353, nil)))
	h.send(wiretest.IP(guest4, netip.MustParseAddr("255.255.255.255"), wire.ProtoUDP, wiretest.UDP(5353, 9, nil)))
	h.send(wiretest.IP(guest6, netip.MustParseAddr("ff02::fb"), wire.ProtoUDP, wiretest.UDP(5353, 5353, nil)))
	h.send(wiretest.IP(guest4, netip.MustParseAddr("239.255.255.250"), wire.ProtoTCP, wiretest.TCP(1, 80, 1, 0, wire.TCPSyn, nil)))
	h.send(wiretest.IP(guest4, netip.IPv4Unspecified(), wire.ProtoICMP, wiretest.ICMPEcho(8, 1, 1, nil)))
	h.send(wiretest.IP(netip.IPv4Unspecified(), far4, wire.ProtoUDP, wiretest.UDP(1, 9, nil)))
	h.waitStat("drop_bad_dest", 5)
	h.waitStat("drop_bad_source", 1)
	// Routable multicast goes to an actor (SSDP and friends).
	h.send(wiretest.IP(guest4, netip.MustParseAddr("239.255.255.250"), wire.ProtoUDP, wiretest.UDP(1900, 1900, nil)))
	h.waitStat("flows_started", 1)
}

func TestRegisterAndNotStarted(t *testing.T) {
	bothReaders(t, testRegisterAndNotStarted)
}

func testRegisterAndNotStarted(t *testing.T, newHarness func(*testing.T, func(*conf.Config), func(*Dispatcher)) *harness) {
	fa := &fakeActors{depth: 4, refuse: true}
	h := newHarness(t, nil, withFakes(fa))
	k := keyT{Proto: wire.ProtoTCP, Guest: netip.AddrPortFrom(guest4, 8080), Far: netip.AddrPortFrom(far4, 50000)}
	in := &handleT{Key: k, In: make(chan *frameT, 4)}
	// The guest's answer comes after the registration, and the dispatcher
	// takes every queued registration before a batch: with an idle link it
	// may not look sooner (its tick is long while the table is empty).
	h.env.Reg.Register <- in
	h.send(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(8080, 50000, 1, 1, wire.TCPSyn|wire.TCPAck, nil)))
	f := recvFrame(t, in)
	f.Release()
	h.waitStat("flows_registered", 1)

	// A second actor for the same key does not displace the first.
	h.env.Reg.Register <- &handleT{Key: k, In: make(chan *frameT, 4)}
	h.send(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(8080, 50000, 2, 1, wire.TCPAck, nil)))
	f = recvFrame(t, in)
	f.Release()
	h.waitStat("flows_register_conflict", 1)

	// A starter that declines leaves no entry behind.
	h.send(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(1, 2, 1, 1, wire.TCPAck, nil)))
	h.waitStat("flows_not_started", 1)
	h.waitStat("flows_active", 1)
}

func TestRunStops(t *testing.T) {
	// ctx cancelled: Run closes the device and returns promptly.
	h := newHarness(t, nil, nil)
	h.send(arpRequest(guest4, gw4))
	h.recv(isARP)
	start := time.Now()
	if err := h.stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	if time.Since(start) > time.Second {
		t.Fatal("slow to stop")
	}
	if _, err := h.ours.ReadBatch([]*frameT{link.GetFrame(100)}); err != link.ErrClosed {
		t.Fatalf("device not closed: %v", err)
	}

	// The device closing under Run: Run returns ErrClosed.
	ours, _ := linktest.NewMemoryPair(1500, 4)
	log := logrus.New()
	log.Out = io.Discard
	env := &actors.Env{Ctx: context.Background(), Opts: actors.OptionsFrom(testConfig()), Out: link.NewWriter(ours, 4), Peer: &link.Peer{OurMAC: ourMAC}, Log: log, Reg: actors.NewRegistrar()}
	d := New(testConfig(), ours, env, log, realProtocols(t, env))
	errc := make(chan error, 1)
	go func() { errc <- d.Run(context.Background()) }()
	time.Sleep(10 * time.Millisecond)
	ours.Close()
	select {
	case err := <-errc:
		if err != link.ErrClosed {
			t.Fatalf("Run returned %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Run did not return on ErrClosed")
	}
}

func TestMalformedCounted(t *testing.T) {
	fa := &fakeActors{depth: 4}
	h := newHarness(t, nil, withFakes(fa))
	good := wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(5000, 53, []byte("abcd")))
	corrupt := func(i int, x byte) []byte {
		b := append([]byte(nil), good...)
		b[i] ^= x
		return b
	}
	sends := []struct {
		b    []byte
		name string
	}{
		{good[:20], "drop_short"}, // MemoryDevice does not carry frames under 14 bytes
		{corrupt(24, 1), "drop_ip_checksum"},
		{corrupt(len(good)-1, 1), "drop_l4_checksum"},
		{corrupt(14, 0x01), "drop_ip_header"}, // IHL 4
		{wiretest.IP(netip.MustParseAddr("127.0.0.1"), far4, wire.ProtoUDP, wiretest.UDP(1, 2, nil)), "drop_loopback"},
		{func() []byte { b := corrupt(20, 0x20); fixIPv4(b); return b }(), "drop_fragment"},
		{wiretest.Eth(ourMAC, guestMAC, 0x88cc, make([]byte, 50)), "drop_unknown_ethertype"},
	}
	for _, s := range sends {
		h.send(s.b)
	}
	h.waitStat("frames_in", uint64(len(sends)))
	st := h.d.Stats()
	for _, s := range sends {
		if st[s.name] == 0 {
			t.Errorf("%s not counted (stats %v)", s.name, nonzero(st))
		}
	}
	if fa.count() != 0 {
		t.Fatal("malformed frame started a flow")
	}
}

func fixIPv4(b []byte) {
	h := b[14:]
	h[10], h[11] = 0, 0
	c := wire.Fold(wire.Checksum(h[:int(h[0]&15)*4], 0))
	h[10], h[11] = byte(c>>8), byte(c)
}

// TestTruncatedEverywhere feeds every prefix of every kind of frame the
// dispatcher handles, services included, then checks it is still alive and
// never started a flow from a cut frame.
func TestTruncatedEverywhere(t *testing.T) {
	fa := &fakeActors{depth: 4}
	h := newHarness(t, nil, withFakes(fa))
	frames := serviceSeeds()
	total := 0
	for _, b := range frames {
		for n := 14; n < len(b); n++ {
			h.send(b[:n])
			total++
		}
	}
	h.waitStat("frames_in", uint64(total))
	if fa.count() != 0 {
		t.Fatalf("%d flows from truncated frames", fa.count())
	}
	st := h.d.Stats()
	if st["arp_replies"]+st["ndp_neighbor_adverts"]+st["dhcp_offers"]+st["dhcpv6_advertises"] != 0 {
		t.Fatalf("answered a truncated frame: %v", nonzero(st))
	}
	h.send(arpRequest(guest4, gw4))
	h.recv(isARP)
}

// A flow whose Handle has Direct gets a frame that came alone through
// Direct; when Direct declines, the frame goes to the inbox as always,
// with its offsets, and is counted once either way.
func TestDemuxDirect(t *testing.T) {
	h, hd := startedUDPFlow(t, newHarness)
	var mu sync.Mutex
	accept := true
	var took []string
	hd.Direct = func(f *link.Frame) bool {
		mu.Lock()
		defer mu.Unlock()
		if !accept {
			return false
		}
		took = append(took, string(f.Data[f.Payload:]))
		f.Release()
		return true
	}
	h.send(wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(40000, 53, []byte("direct"))))
	h.waitStat("frames_direct", 1)
	mu.Lock()
	if len(took) != 1 || took[0] != "direct" {
		t.Fatalf("Direct took %q", took)
	}
	accept = false
	mu.Unlock()
	h.send(wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(40000, 53, []byte("queued"))))
	f := recvFrame(t, hd)
	if got := string(f.Data[f.Payload:]); got != "queued" || f.L4 != 34 {
		t.Fatalf("inbox got %q (l4 %d)", got, f.L4)
	}
	f.Release()
	h.waitStat("frames_to_flows", 3)
	h.waitStat("frames_direct", 1)
}

// With the split reader of passt mode, Direct is never offered a frame:
// an inline run may write to the link, and a QEMU socket that is not read
// would then stop the dispatcher.
func TestDemuxNoDirectWhenSplit(t *testing.T) {
	h, hd := startedUDPFlow(t, newSplitHarness)
	var called atomic.Int32
	hd.Direct = func(f *link.Frame) bool {
		called.Add(1)
		f.Release()
		return true
	}
	h.send(wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(40000, 53, []byte("queued"))))
	f := recvFrame(t, hd)
	if got := string(f.Data[f.Payload:]); got != "queued" {
		t.Fatalf("inbox got %q", got)
	}
	f.Release()
	if n := called.Load(); n != 0 {
		t.Fatalf("Direct called %d times on the split reader", n)
	}
	h.waitStat("frames_direct", 0)
}

// startedUDPFlow starts a harness with fake actors and one UDP flow
// (guest4:40000 -> far4:53), and returns the harness and the flow's handle.
func startedUDPFlow(t *testing.T, newH func(*testing.T, func(*conf.Config), func(*Dispatcher)) *harness) (*harness, *handleT) {
	t.Helper()
	fa := &fakeActors{depth: 4}
	h := newH(t, nil, withFakes(fa))
	h.send(wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(40000, 53, []byte("first"))))
	h.waitStat("flows_started", 1)
	return h, fa.get(0).handle
}
