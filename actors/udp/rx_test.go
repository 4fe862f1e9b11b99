package udp

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
)

// rxPayload is datagram i of a burst: its number, then bytes derived from
// it, with sizes from empty to several frames' worth of a 1500-byte MTU.
func rxPayload(i int) []byte {
	n := (i * 613) % 4000
	if i%50 == 7 {
		n = 0
	}
	p := make([]byte, n)
	if n >= 4 {
		binary.BigEndian.PutUint32(p, uint32(i))
	}
	for j := 4; j < n; j++ {
		p[j] = byte(i*31 + j)
	}
	return p
}

// TestUDPReceiveBurst sends bursts of datagrams from the host to a guest
// port, many recvmmsg batches' worth at once, and checks that every one
// reaches the guest once, in order, byte for byte, with valid IP and UDP
// checksums (readGuest verifies them), from the far end's mapped address,
// and that Received counts them. The receiver writes batches to the link
// itself while it is idle and queues them behind the writer otherwise, so
// this also checks that the two paths never reorder or lose a frame.
func TestUDPReceiveBurst(t *testing.T) {
	for _, tc := range []struct {
		name      string
		listen    string
		guest, gw netip.Addr
		lo        netip.Addr
	}{
		{"v4", "127.0.0.1:0", actorstest.Guest4, actorstest.GW4, actorstest.Lo4},
		{"v6", "[::1]:0", actorstest.Guest6, actorstest.GW6, netip.IPv6Loopback()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			te := actorstest.New(t, actors.Options{})
			proto := New(te.Env)
			sink, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(tc.listen)))
			if err != nil {
				t.Fatal(err)
			}
			defer sink.Close()
			sport := sink.LocalAddr().(*net.UDPAddr).AddrPort().Port()
			guest := netip.AddrPortFrom(tc.guest, actorstest.FreeUDPPort(t, tc.listen))
			far := netip.AddrPortFrom(tc.gw, sport)
			if proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, []byte("open"))) == nil {
				t.Fatal("StartUDP returned nil")
			}
			buf := make([]byte, 100)
			_ = sink.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, from, err := sink.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatal(err)
			}

			before := proto.stats.Received.Load()
			const rounds, burst = 3, 400
			seq := 0
			for r := 0; r < rounds; r++ {
				for i := 0; i < burst; i++ {
					if _, err := sink.WriteToUDPAddrPort(rxPayload(seq+i), from); err != nil {
						t.Fatal(err)
					}
				}
				for i := 0; i < burst; i++ {
					b, p := te.ReadGuest(t, 2*time.Second)
					if got := netip.AddrPortFrom(p.Src, p.SrcPort); got != far {
						t.Fatalf("datagram from %v, want %v", got, far)
					}
					if got := netip.AddrPortFrom(p.Dst, p.DstPort); got != guest {
						t.Fatalf("datagram to %v, want %v", got, guest)
					}
					want := rxPayload(seq + i)
					got := b[p.Payload:p.End]
					if string(got) != string(want) {
						n := -1
						if len(got) >= 4 {
							n = int(binary.BigEndian.Uint32(got))
						}
						t.Fatalf("datagram %d: %d bytes (number %d), want %d bytes", seq+i, len(got), n, len(want))
					}
				}
				seq += burst
			}
			te.NoGuestFrame(t, 50*time.Millisecond)
			if got := proto.stats.Received.Load() - before; got != rounds*burst {
				t.Fatalf("Received counted %d datagrams, want %d", got, rounds*burst)
			}
		})
	}
}
