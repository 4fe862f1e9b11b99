package integration

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv6"

	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// TestHostileServiceFrames sends, from a packet socket in the guest, the
// frames that could kill the daemon or make it echo without bound: a
// DHCPv6 SOLICIT with 1600 IA_NAs (its reply would be larger than any
// frame, too large for GetFrame on the dispatcher's goroutine) and a DHCPv4
// DISCOVER carrying 30 KB each of options 82 and 61. The daemon must stay
// up and answer both, and then an ordinary client too.
func TestHostileServiceFrames(t *testing.T) {
	gp := StartGopasta(t, podmanArgs...)
	send, mac := guestRaw(t, gp.Guest)
	before := statsOf(t, gp)

	sol, err := dhcpv6.NewSolicit(net.HardwareAddr(mac[:]))
	if err != nil {
		t.Fatal(err)
	}
	sol.Options.Del(dhcpv6.OptionIANA)
	for i := range 1600 {
		sol.AddOption(&dhcpv6.OptIANA{IaId: [4]byte{0, 0, byte(i >> 8), byte(i)}})
	}
	ll := netip.MustParseAddr("fe80::1234")
	all := netip.MustParseAddr("ff02::1:2")
	send(wiretest.IPFrom(mac, wire.MulticastMAC(all), ll, all, wire.ProtoUDP, wiretest.UDP(546, 547, sol.ToBytes())))

	disc, err := dhcpv4.NewDiscovery(net.HardwareAddr(mac[:]))
	if err != nil {
		t.Fatal(err)
	}
	disc.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionRelayAgentInformation, bytes.Repeat([]byte{1}, 30000)))
	disc.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientIdentifier, bytes.Repeat([]byte{2}, 30000)))
	bcast := [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	send(wiretest.IPFrom(mac, bcast, netip.IPv4Unspecified(), netip.MustParseAddr("255.255.255.255"),
		wire.ProtoUDP, wiretest.UDP(68, 67, disc.ToBytes())))

	var after map[string]int
	ok := Eventually(5*time.Second, func() bool {
		if !gp.Alive() {
			return false
		}
		after = statsOf(t, gp)
		return after["dhcpv6_advertises"] > before["dhcpv6_advertises"] && after["dhcp_offers"] > before["dhcp_offers"]
	})
	if !gp.Alive() {
		t.Fatal("the daemon died")
	}
	if !ok {
		t.Fatalf("not answered: advertises %d, offers %d, stats %v", after["dhcpv6_advertises"], after["dhcp_offers"], after)
	}
	if after["dispatcher_panics"] != 0 || after["drop_reply_too_big"] != 0 {
		t.Fatalf("panics %d, replies too big %d", after["dispatcher_panics"], after["drop_reply_too_big"])
	}
	// An ordinary client still gets its lease.
	if out, err := gp.Guest.Try("busybox", "udhcpc", "-i", guestIf(t, gp.Guest), "-n", "-q", "-f", "-t", "3", "-T", "1", "-s", "/bin/true"); err != nil {
		t.Fatalf("udhcpc after the hostile frames: %v\n%s", err, out)
	}
}

// guestIf returns the name of the guest's non-loopback interface.
func guestIf(t *testing.T, g Netns) string {
	t.Helper()
	var name string
	InNetns(t, g, func() {
		ifs, _ := net.Interfaces()
		for _, ifi := range ifs {
			if ifi.Flags&net.FlagLoopback == 0 {
				name = ifi.Name
			}
		}
	})
	return name
}
