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

// TestUDPDirectOrder mixes datagrams the dispatcher would send itself
// (Handle.Direct) with queued ones on one binding: Direct must decline
// while anything queued before is unsent, so the host receives every
// datagram, in the guest's order (loopback keeps it), and some of them
// were sent directly.
func TestUDPDirectOrder(t *testing.T) {
	te := actorstest.New(t, actors.Options{})
	proto := New(te.Env)
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	// Read as they come: a burst of hundreds would overflow the socket's
	// default buffer, which is not what is tested.
	got := make(chan string, 1024)
	go func() {
		buf := make([]byte, 2048)
		for {
			m, _, err := srv.ReadFromUDP(buf)
			if err != nil {
				close(got)
				return
			}
			got <- string(buf[:m])
		}
	}()
	far := netip.AddrPortFrom(actorstest.GW4, uint16(srv.LocalAddr().(*net.UDPAddr).Port))
	guest := netip.AddrPortFrom(actorstest.Guest4, actorstest.FreeUDPPort(t, "127.0.0.1:0"))
	const n = 300
	pl := func(i int) []byte { return []byte(fmt.Sprintf("datagram %04d", i)) }
	direct0 := proto.stats.Direct.Load()
	h := proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, pl(0)))
	if h == nil || h.Direct == nil {
		t.Fatal("no UDP handle with Direct")
	}
	declined := 0
	for i := 1; i < n; i++ {
		f := actorstest.GuestUDP(t, guest, far, pl(i))
		if i%7 < 3 {
			actorstest.Put(t, h, f) // a burst: queued
			continue
		}
		if i%7 == 3 {
			// Let the actor finish the burst, mostly: then Direct
			// may take the next ones, or must decline.
			time.Sleep(time.Millisecond)
		}
		if !h.Direct(f) {
			declined++
			actorstest.Put(t, h, f)
		}
	}
	for i := 0; i < n; i++ {
		select {
		case g := <-got:
			if g != string(pl(i)) {
				t.Fatalf("datagram %d: got %q", i, g)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("datagram %d never came", i)
		}
	}
	if d := proto.stats.Direct.Load() - direct0; d == 0 {
		t.Fatalf("nothing sent directly (%d declined)", declined)
	}
}
