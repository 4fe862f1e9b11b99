package dispatcher

import (
	"context"
	"io"
	"net"
	"net/netip"
	"runtime"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/nat"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/linktest"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// serviceSeeds returns one valid frame of every kind the dispatcher
// handles.
func serviceSeeds() [][]byte {
	disc, _ := dhcpv4.NewDiscovery(net.HardwareAddr(guestMAC[:]))
	req, _ := dhcpv4.NewRequestFromOffer(disc)
	sol, _ := dhcpv6.NewSolicit(net.HardwareAddr(guestMAC[:]))
	return [][]byte{
		arpRequest(guest4, gw4),
		ns(guestLL, wiretest.SolicitedNode(gw6), gw6, true),
		ns(netip.IPv6Unspecified(), wiretest.SolicitedNode(guest6), guest6, false),
		rs(guestLL, true),
		dhcpFrame(disc),
		dhcpFrame(req),
		dhcpv6Frame(sol),
		dhcpv6FromPort(sol, 0),
		wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 1, 0, wire.TCPSyn, []byte("x"))),
		wiretest.IP(guest6, far6, wire.ProtoUDP, wiretest.UDP(4000, 53, []byte("abc"))),
		wiretest.IP(guest4, far4, wire.ProtoICMP, wiretest.ICMPEcho(8, 7, 1, []byte("p"))),
		wiretest.IP(guest6, far6, wire.ProtoICMPv6, wiretest.ICMPEcho(128, 7, 1, []byte("p"))),
	}
}

// offline returns a Dispatcher that is not running, for driving
// handleBatch directly, with its Writer running into an in-memory link
// whose guest end is returned. Starters are fakes whose handles the caller
// drains with drainFakes.
func offline(tb testing.TB) (*Dispatcher, *linktest.MemoryDevice, *[]*actors.Handle) {
	cfg := testConfig()
	ours, guest := linktest.NewMemoryPair(65520, 1024)
	log := logrus.New()
	log.Out = io.Discard
	ctx, cancel := context.WithCancel(context.Background())
	w := link.NewWriter(ours, 256)
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	tb.Cleanup(func() { cancel(); <-done; ours.Close(); guest.Close() })
	env := &actors.Env{Ctx: ctx, Opts: actors.OptionsFrom(cfg), Out: w, Peer: &link.Peer{OurMAC: cfg.OurMAC}, Log: log, NAT: &nat.NAT{}, Reg: actors.NewRegistrar()}
	d := New(cfg, ours, env, log, actors.Protocols{})
	handles := new([]*actors.Handle)
	start := func(_ *actors.Env, k actors.Key, f *link.Frame) *actors.Handle {
		f.Release()
		h := &actors.Handle{Key: k, In: make(chan *link.Frame, 2)}
		*handles = append(*handles, h)
		return h
	}
	d.setStarts(start, start, start)
	return d, guest, handles
}

func drainFakes(handles []*actors.Handle) {
	for _, h := range handles {
		for {
			select {
			case f := <-h.In:
				if f.Payload > len(f.Data) || f.L4 > f.Payload || f.L3 != wire.EthernetLen {
					panic("bad offsets handed to an actor")
				}
				f.Release()
				continue
			default:
			}
			break
		}
	}
}

func FuzzDispatch(f *testing.F) {
	for _, b := range serviceSeeds() {
		f.Add(b, true)
	}
	d, guest, handles := offline(f)
	batch := make([]*link.Frame, 1)
	var p wire.Parsed
	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		if len(b) > link.MaxFrameSize {
			return
		}
		if fix {
			// Let mutations reach the DHCP, NDP and demux code
			// rather than dying at a checksum.
			fixChecksums(b)
		}
		if batch[0] == nil {
			batch[0] = link.GetFrame(link.MaxFrameSize)
		}
		fr := batch[0]
		fr.Data = fr.Data[:copy(fr.Data[:cap(fr.Data)], b)]
		before := d.Stats()["frames_in"]
		d.handleBatch(batch)
		if d.Stats()["frames_in"] != before+1 {
			t.Fatal("frame not counted")
		}
		// handleBatch survives a panic; the fuzzer must still see it.
		if d.Stats()["dispatcher_panics"] != 0 {
			t.Fatalf("handling panicked: %x", b)
		}
		drainFakes(*handles)
		// Whatever the dispatcher answered must pass our own strict
		// parser (lengths, checksums). The writer first puts all of
		// this input's replies on the link, so that a bad one is blamed
		// on the input that caused it.
		for !d.env.Out.Idle() {
			runtime.Gosched()
		}
		for {
			select {
			case out := <-guest.Frames():
				if err := wire.ParseFrame(out, &p); err != nil {
					t.Fatalf("reply does not parse (%v): %x", err, out)
				}
				continue
			default:
			}
			break
		}
	})
}

// fixChecksums repairs the IPv4 header and transport checksums of b where
// its structure allows, leaving other damage alone.
func fixChecksums(b []byte) {
	var p wire.Parsed
	if len(b) >= wire.EthernetLen+wire.IPv4MinLen && wire.Ethernet(b).Type() == wire.EtherTypeIPv4 {
		if hl := int(b[14]&15) * 4; hl >= wire.IPv4MinLen && len(b) >= 14+hl {
			fixIPv4(b)
		}
	}
	if wire.ParseFrame(b, &p) == wire.ReasonL4Checksum {
		wiretest.FixChecksum(p.Src, p.Dst, p.Proto, b[p.L4:p.End])
	}
}

// BenchmarkDispatchTCP measures a guest TCP segment going from a read batch
// to its flow's inbox: parse with checksum, table lookup, copy into a
// small frame, channel send. It must not allocate.
func BenchmarkDispatchTCP(b *testing.B) {
	for _, size := range []int{0, 1400, 32000} {
		b.Run(itoa(size), func(b *testing.B) {
			d, _, _ := offline(b)
			seg := wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 1, 1, wire.TCPAck, make([]byte, size)))
			k := actors.Key{Proto: wire.ProtoTCP, Guest: netip.AddrPortFrom(guest4, 40000), Far: netip.AddrPortFrom(far4, 80)}
			h := actors.NewHandle(k)
			d.flows[k] = h
			batch := make([]*link.Frame, 1)
			b.SetBytes(int64(len(seg)))
			b.ReportAllocs()
			for b.Loop() {
				if batch[0] == nil {
					batch[0] = link.GetFrame(link.MaxFrameSize)
				}
				fr := batch[0]
				fr.Data = fr.Data[:copy(fr.Data[:cap(fr.Data)], seg)]
				d.handleBatch(batch)
				(<-h.In).Release()
			}
		})
	}
}

func itoa(n int) string {
	s := ""
	for {
		s = string(rune('0'+n%10)) + s
		n /= 10
		if n == 0 {
			return s
		}
	}
}
