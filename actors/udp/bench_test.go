package udp

import (
	"context"
	"io"
	"net/netip"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/actors/nat"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// notifyDevice is a link that only reports how many frames were written,
// so a benchmark can see its own allocations and nothing else's.
type notifyDevice struct {
	written chan int
}

func (d *notifyDevice) ReadBatch([]*link.Frame) (int, error) { return 0, link.ErrClosed }
func (d *notifyDevice) WriteBatch(fs []*link.Frame) error    { d.written <- len(fs); return nil }
func (d *notifyDevice) MTU() int                             { return 65520 }
func (d *notifyDevice) Close() error                         { return nil }

// BenchmarkUDPRoundTrip measures the per-datagram path of a request and
// response: guest frame into the actor's inbox, sendmmsg to a host echo
// server on loopback, recvmmsg of the reply into a pooled frame, headers
// and checksum, the link Writer. It must not allocate.
func BenchmarkUDPRoundTrip(b *testing.B) {
	for _, size := range []int{64, 1400} {
		b.Run(map[int]string{64: "64B", 1400: "1400B"}[size], func(b *testing.B) {
			dev := &notifyDevice{written: make(chan int, 16)}
			w := link.NewWriter(dev, 256)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { _ = w.Run(ctx) }()
			log := logrus.New()
			log.SetOutput(io.Discard)
			peer := &link.Peer{OurMAC: conf.DefaultMAC}
			peer.SetMAC(wiretest.GuestMAC)
			env := &actors.Env{Ctx: ctx, Opts: actors.OptionsFrom(&conf.Config{}), Out: w, Peer: peer, Log: log,
				NAT: &nat.NAT{HostLoopback4: actorstest.GW4}, Reg: actors.NewRegistrar()}
			proto := New(env)
			echo := actorstest.UDPEcho(b, "127.0.0.1:0")
			guest := netip.AddrPortFrom(actorstest.Guest4, actorstest.FreeUDPPort(b, "127.0.0.1:0"))
			far := netip.AddrPortFrom(actorstest.GW4, echo.Port())
			tmpl := wiretest.IP(guest.Addr(), far.Addr(), wire.ProtoUDP, wiretest.UDP(guest.Port(), far.Port(), make([]byte, size)))
			var p wire.Parsed
			if err := wire.ParseFrame(tmpl, &p); err != nil {
				b.Fatal(err)
			}
			frame := func() *link.Frame {
				f := link.GetFrame(len(tmpl))
				copy(f.Data, tmpl)
				f.L3, f.L4, f.Payload = p.L3, p.L4, p.Payload
				return f
			}
			h := proto.Start(actorstest.UDPKey(guest, far), frame())
			<-dev.written
			b.SetBytes(int64(2 * size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				actorstest.Put(b, h, frame())
				<-dev.written
			}
			b.StopTimer()
			if proto.stats.SendDropped.Load() != 0 {
				b.Fatalf("dropped %d", proto.stats.SendDropped.Load())
			}
		})
	}
}

// TestUDPRoundTripAllocs keeps the zero-allocation property from
// regressing without running benchmarks.
func TestUDPRoundTripAllocs(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("short, or the race detector allocates")
	}
	r := testing.Benchmark(BenchmarkUDPRoundTrip)
	if r.N == 0 {
		t.Skip("benchmark did not run")
	}
	if a := r.AllocsPerOp(); a > 0 {
		t.Fatalf("%d allocations per round trip", a)
	}
}
