package udp

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
)

// TestUDPSegmentation sends bursts in which runs of equal-sized datagrams
// of one flow (the case segmentation offload coalesces) mix with shorter
// ones, other sizes, an empty datagram and a second flow on the same
// guest port, and checks that the host receives every datagram whole,
// with its own length, in order per flow.
func TestUDPSegmentation(t *testing.T) {
	te := actorstest.New(t, actors.Options{})
	proto := New(te.Env)
	type rx struct {
		c   *net.UDPConn
		got [][]byte
	}
	var sinks [2]*rx
	for i := range sinks {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Skip(err)
		}
		c.SetReadBuffer(8 << 20)
		t.Cleanup(func() { c.Close() })
		sinks[i] = &rx{c: c}
	}
	guest := netip.AddrPortFrom(actorstest.Guest4, actorstest.FreeUDPPort(t, "127.0.0.1:0"))
	far := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(actorstest.GW4, uint16(sinks[i].c.LocalAddr().(*net.UDPAddr).Port))
	}
	// Datagram i of a burst: its flow, and a payload that names it.
	size := func(i int) int {
		switch {
		case i%50 == 49:
			return 0
		case i%10 == 9:
			return 300 // ends a run
		case i%37 == 0:
			return 1500 // longer: starts a new run
		}
		return 1200
	}
	flowOf := func(i int) int {
		if i%23 == 22 {
			return 1
		}
		return 0
	}
	payload := func(burst, i int) []byte {
		p := bytes.Repeat([]byte{byte(i)}, size(i))
		if len(p) >= 4 {
			binary.BigEndian.PutUint16(p, uint16(burst))
			binary.BigEndian.PutUint16(p[2:], uint16(i))
		}
		return p
	}
	const perBurst = 200
	var want [2][][]byte
	hs := [2]*actors.Handle{}
	before := proto.stats.Segmented.Load()
	for burst := 0; burst < 5; burst++ {
		for i := range perBurst {
			fl := flowOf(i)
			p := payload(burst, i)
			want[fl] = append(want[fl], p)
			f := actorstest.GuestUDP(t, guest, far(fl), p)
			if hs[fl] == nil {
				hs[fl] = proto.Start(actorstest.UDPKey(guest, far(fl)), f)
				if hs[fl] == nil {
					t.Fatal("StartUDP returned nil")
				}
				continue
			}
			actorstest.Put(t, hs[fl], f)
		}
		if burst >= 1 && proto.stats.Segmented.Load() > before {
			break // the coalescing path ran; enough
		}
	}
	buf := make([]byte, 65536)
	for fl, s := range sinks {
		for len(s.got) < len(want[fl]) {
			s.c.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, err := s.c.Read(buf)
			if err != nil {
				t.Fatalf("flow %d: %d of %d datagrams, then %v", fl, len(s.got), len(want[fl]), err)
			}
			s.got = append(s.got, append([]byte(nil), buf[:n]...))
		}
		for i := range want[fl] {
			if !bytes.Equal(s.got[i], want[fl][i]) {
				t.Fatalf("flow %d datagram %d: %d bytes, want %d (or content differs)", fl, i, len(s.got[i]), len(want[fl][i]))
			}
		}
	}
	if proto.stats.Segmented.Load() == before {
		t.Fatal("no datagram went out in a segmented message: the test did not exercise coalescing")
	}
}
