package udp

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/actors/flowtrace"
)

// A UDP flow counts its datagrams both ways, and a subscriber sees the
// ones to the guest.
func TestUDPStatsAndTrace(t *testing.T) {
	te := actorstest.New(t, actors.Options{})
	proto := New(te.Env)
	te.Env.Trace = &flowtrace.Hub{}
	echo := actorstest.UDPEcho(t, "127.0.0.1:0")
	sub := te.Env.Trace.Subscribe(flowtrace.Filter{Proto: 17, Port: echo.Port()}, 100)
	defer sub.Close()
	gport := actorstest.FreeUDPPort(t, "127.0.0.1:0")
	guest := netip.AddrPortFrom(actorstest.Guest4, gport)
	far := netip.AddrPortFrom(actorstest.GW4, echo.Port())
	h := proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, []byte("first")))
	if h == nil {
		t.Fatal("StartUDP returned nil")
	}
	te.ReadGuest(t, 2*time.Second)
	actorstest.Put(t, h, actorstest.GuestUDP(t, guest, far, []byte("second!")))
	te.ReadGuest(t, 2*time.Second)
	s := actorstest.WaitStats(t, h, func(s actors.FlowSnapshot) bool { return s.FarSegs == 2 })
	if s.GuestSegs != 2 || s.GuestBytes != 12 || s.FarBytes != 12 || s.State != "ACTIVE" || s.ID == 0 {
		t.Fatalf("snapshot %+v", s)
	}
	var got []string
	for len(got) < 2 {
		select {
		case l := <-sub.Lines():
			got = append(got, l)
		case <-time.After(2 * time.Second):
			t.Fatalf("lines %q", got)
		}
	}
	desc := actors.TraceDesc(h.ID, h.Key)
	if !strings.HasSuffix(got[0], desc+": out datagram, 5 bytes") || !strings.HasSuffix(got[1], desc+": out datagram, 7 bytes") {
		t.Fatalf("lines %q", got)
	}
}
