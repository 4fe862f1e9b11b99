package actors

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors/flowtrace"
)

// A UDP flow counts its datagrams both ways, and a subscriber sees the
// ones to the guest.
func TestUDPStatsAndTrace(t *testing.T) {
	te := newUDPTestEnv(t, nil)
	te.Env.Trace = &flowtrace.Hub{}
	echo := udpEcho(t, "127.0.0.1:0")
	sub := te.Env.Trace.Subscribe(flowtrace.Filter{Proto: 17, Port: echo.Port()}, 100)
	defer sub.Close()
	gport := freeUDPPort(t, "127.0.0.1:0")
	guest := netip.AddrPortFrom(tGuest4, gport)
	far := netip.AddrPortFrom(tGW4, echo.Port())
	h := StartUDP(te.Env, udpKey(guest, far), guestUDP(t, guest, far, []byte("first")))
	if h == nil {
		t.Fatal("StartUDP returned nil")
	}
	te.readGuest(t, 2*time.Second)
	put(t, h, guestUDP(t, guest, far, []byte("second!")))
	te.readGuest(t, 2*time.Second)
	s := waitStats(t, h, func(s FlowSnapshot) bool { return s.FarSegs == 2 })
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
	desc := traceDesc(h.ID, h.Key)
	if !strings.HasSuffix(got[0], desc+": out datagram, 5 bytes") || !strings.HasSuffix(got[1], desc+": out datagram, 7 bytes") {
		t.Fatalf("lines %q", got)
	}
}
