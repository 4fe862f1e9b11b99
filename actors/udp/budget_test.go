package udp

import (
	"net/netip"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/link"
)

// TestUDPStashCharged: a binding's receive buffers are charged to the
// budget while it keeps them and given back once it is quiet.
func TestUDPStashCharged(t *testing.T) {
	te := actorstest.New(t, actors.Options{TotalBuffer: 1 << 20, UDPTimeout: 200 * time.Millisecond})
	proto := New(te.Env)
	echo := actorstest.UDPEcho(t, "127.0.0.1:0")
	gport := actorstest.FreeUDPPort(t, "127.0.0.1:0")
	guest := netip.AddrPortFrom(actorstest.Guest4, gport)
	far := netip.AddrPortFrom(actorstest.GW4, echo.Port())
	h := proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, []byte("first")))
	if h == nil {
		t.Fatal("StartUDP returned nil")
	}
	for i := range 100 {
		if i > 0 {
			actorstest.Put(t, h, actorstest.GuestUDP(t, guest, far, []byte("again")))
		}
		te.ReadGuest(t, 2*time.Second)
	}
	if got := te.Env.Stats.BufferBytes.Load(); got <= 0 || got > 1<<20+link.MaxFrameSize {
		t.Fatalf("a receiving binding charges %d bytes", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for te.Env.Stats.BufferBytes.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes still charged once the binding was quiet", te.Env.Stats.BufferBytes.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
