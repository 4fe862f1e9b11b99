package udp

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
)

// TestUDPDNSForward sends queries to the --dns-forward address and checks
// that they reach a resolver on the host's loopback port 53 (127.0.0.53 as
// systemd-resolved has it, and ::1) and that the answers come back from the
// forward address. Port 53 needs a namespace of its own.
func TestUDPDNSForward(t *testing.T) {
	actorstest.InPrivateNetns(t)
	for _, tc := range []struct {
		name       string
		resolver   string
		fwd, guest netip.Addr
	}{
		{"v4", "127.0.0.53:53", actorstest.DNS4, actorstest.Guest4},
		{"v6", "[::1]:53", actorstest.DNS6, actorstest.Guest6},
	} {
		te := actorstest.New(t, actors.Options{})
		proto := New(te.Env)
		res, err := net.ListenPacket("udp", tc.resolver)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Close()
		rap := res.LocalAddr().(*net.UDPAddr).AddrPort()
		if tc.fwd.Is4() {
			te.NAT.DNSHost4 = rap.Addr()
		} else {
			te.NAT.DNSHost6 = rap.Addr()
		}
		guest := netip.AddrPortFrom(tc.guest, 33333)
		far := netip.AddrPortFrom(tc.fwd, 53)
		proto.Start(actorstest.UDPKey(guest, far), actorstest.GuestUDP(t, guest, far, []byte("query "+tc.name)))
		buf := make([]byte, 512)
		_ = res.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := res.(*net.UDPConn).ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("%s: resolver got nothing: %v", tc.name, err)
		}
		if string(buf[:n]) != "query "+tc.name || from.Port() != 33333 {
			t.Fatalf("%s: resolver got %q from %v", tc.name, buf[:n], from)
		}
		if _, err := res.(*net.UDPConn).WriteToUDPAddrPort([]byte("answer "+tc.name), from); err != nil {
			t.Fatal(err)
		}
		b, p := te.ReadGuest(t, 2*time.Second)
		if netip.AddrPortFrom(p.Src, p.SrcPort) != far || netip.AddrPortFrom(p.Dst, p.DstPort) != guest {
			t.Fatalf("%s: answer %v:%d -> %v:%d", tc.name, p.Src, p.SrcPort, p.Dst, p.DstPort)
		}
		if string(b[p.Payload:p.End]) != "answer "+tc.name {
			t.Fatalf("%s: answer %q", tc.name, b[p.Payload:p.End])
		}
	}
}
