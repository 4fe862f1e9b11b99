package integration

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestMapGuestAddrFollowsHost: podman's host.containers.internal
// (--map-guest-addr) must keep reaching the host after the host's address
// changes under a running container (a new DHCP lease, another network):
// the alias follows the host's address, the guest keeps its own. pasta
// goes on connecting to the address that is gone (podman #24970).
func TestMapGuestAddrFollowsHost(t *testing.T) {
	gp := StartGopasta(t, "--map-guest-addr", "169.254.1.2", "--no-map-gw")
	l := ListenTCPIn(t, gp.Host, "tcp4", "0.0.0.0:0")
	alias := hostPort("169.254.1.2", lport(l))

	// reaches connects through the alias and checks which host address
	// the connection arrived at, and that bytes go both ways.
	reaches := func(want string) {
		t.Helper()
		c := mustDial(t, gp.Guest, "tcp4", alias)
		s := acceptOne(t, l)
		if got := netip.MustParseAddrPort(s.LocalAddr().String()).Addr().String(); got != want {
			t.Errorf("connection through the alias arrived at %s, want %s", got, want)
		}
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		s.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := s.Read(buf); err != nil || string(buf) != "ping" {
			t.Fatalf("host read %q, %v", buf, err)
		}
		s.Write([]byte("pong"))
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(buf); err != nil || string(buf) != "pong" {
			t.Fatalf("guest read %q, %v", buf, err)
		}
	}
	reaches(HostAddr4)

	// A new lease: the old address goes (taking the default route with
	// it), the new one comes, the route is put back.
	gp.Host.Exec(t, "ip", "addr", "del", HostAddr4+"/24", "dev", HostIf)
	gp.Host.Exec(t, "ip", "addr", "add", "198.51.100.77/24", "dev", HostIf)
	gp.Host.Exec(t, "ip", "route", "replace", "default", "via", HostGW4)
	if !Eventually(5*time.Second, func() bool { return strings.Contains(gp.Log(), "alias leads to 198.51.100.77") }) {
		t.Fatalf("no move of the alias logged:\n%s", tail(gp.Log(), 2000))
	}
	reaches("198.51.100.77")

	// The guest keeps the address it was given.
	if out := gp.Guest.Exec(t, "ip", "-4", "addr", "show"); !strings.Contains(out, HostAddr4+"/24") {
		t.Errorf("guest address changed:\n%s", out)
	}
}

// TestLocalModeThenNetwork: a host without a network at start (a container
// started at boot before DHCP; podman #22190, #26678) puts the guest in
// local mode. When the host's network comes up, the guest needs no change
// to reach it: its default route leads to gopasta, which uses the host's
// sockets and routes, and the --map-guest-addr alias leads to the host's
// new address.
func TestLocalModeThenNetwork(t *testing.T) {
	h := NewNetns(t, "h")
	up := NewNetns(t, "u")
	peer := "gpu" + uniq()[:6]
	run(t, "ip", "link", "add", HostIf, "netns", h.Name, "type", "veth", "peer", "name", peer, "netns", up.Name)
	up.Exec(t, "ip", "addr", "add", HostGW4+"/24", "dev", peer)
	up.Exec(t, "ip", "link", "set", peer, "up")
	h.Exec(t, "ip", "link", "set", HostIf, "up")

	gp := LaunchGopastaIn(t, h, "--config-net", "-4", "--map-guest-addr", "169.254.1.2")
	if log := gp.Log(); !strings.Contains(log, "local mode") {
		t.Fatalf("not in local mode:\n%s", log)
	}

	// The network comes up.
	h.Exec(t, "ip", "addr", "add", HostAddr4+"/24", "dev", HostIf)
	h.Exec(t, "ip", "route", "add", "default", "via", HostGW4)
	if !Eventually(5*time.Second, func() bool { return strings.Contains(gp.Log(), "alias leads to "+HostAddr4) }) {
		t.Fatalf("alias not moved:\n%s", tail(gp.Log(), 2000))
	}
	l := ListenTCPIn(t, h, "tcp4", "0.0.0.0:0")
	for _, dial := range []string{"169.254.1.2", HostAddr4} {
		c := mustDial(t, gp.Guest, "tcp4", hostPort(dial, lport(l)))
		s := acceptOne(t, l)
		if got := netip.MustParseAddrPort(s.LocalAddr().String()).Addr().String(); got != HostAddr4 {
			t.Errorf("dialing %s arrived at %s, want %s", dial, got, HostAddr4)
		}
		c.Write([]byte("x"))
		s.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := s.Read(make([]byte, 1)); err != nil {
			t.Errorf("dialing %s: %v", dial, err)
		}
	}
}

// TestVPNTemplate: the host's default route is a VPN's tun device, which
// has no MAC and no gateway (podman #22320: container creation failed
// until -M was given). gopasta starts, gives the guest's tap a MAC of its
// own, and the guest reaches the host over the device route it copied.
func TestVPNTemplate(t *testing.T) {
	h := NewNetns(t, "h")
	h.Exec(t, "ip", "tuntap", "add", "tun0", "mode", "tun")
	h.Exec(t, "ip", "addr", "add", "10.8.0.2/24", "dev", "tun0")
	h.Exec(t, "ip", "link", "set", "tun0", "up")
	h.Exec(t, "ip", "route", "add", "default", "dev", "tun0")
	h.Exec(t, "ip", "addr", "add", "192.0.2.1/32", "dev", "lo")

	gp := LaunchGopastaIn(t, h, "--config-net", "-4")
	link := gp.Guest.Exec(t, "ip", "-o", "link", "show", "tun0")
	if !strings.Contains(link, "link/ether") || strings.Contains(link, "link/ether 00:00:00:00:00:00") {
		t.Errorf("guest interface has no MAC of its own: %s", link)
	}
	if addrs := gp.Guest.Exec(t, "ip", "-4", "addr", "show", "tun0"); !strings.Contains(addrs, "10.8.0.2/24") {
		t.Errorf("guest lacks the host's address:\n%s", addrs)
	}
	l := ListenTCPIn(t, h, "tcp4", "192.0.2.1:0")
	c := mustDial(t, gp.Guest, "tcp4", hostPort("192.0.2.1", lport(l)))
	s := acceptOne(t, l)
	c.Write([]byte("through the vpn"))
	buf := make([]byte, 15)
	s.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "through the vpn" {
		t.Fatalf("host read %q, %v", buf, err)
	}
}

// TestInboundFromHostOwnAddress: with --no-map-gw (podman always passes
// it) a host client that connects from the host's own address -- which is
// also the guest's, since the guest copies it -- reaches the guest from
// gopasta's own tap address, as with pasta: the gateway for IPv4 (without
// --map-guest-addr), the link-local address router advertisements come
// from for IPv6; TCP and UDP, and replies find their way back. A reset
// ("no way to show it to the guest") would break podman's
// `-p [host IPv6]:P:P` for every client on the host itself.
func TestInboundFromHostOwnAddress(t *testing.T) {
	port := randPort()
	p := fmt.Sprint(port)
	gp := StartGopasta(t, "--no-map-gw", "-t", p, "-u", p, "-T", "none", "-U", "none")
	ourLL := "fe80::9855:9aff:fe55:9a55" // from gopasta's MAC, 9a:55:9a:55:9a:55

	ServeInfo(ListenTCPIn(t, gp.Guest, "tcp", ":"+p))
	// The UDP server answers with the address it saw the datagram from.
	srv := ListenUDPIn(t, gp.Guest, "udp", ":"+p)
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = srv.WriteToUDPAddrPort([]byte(from.String()), from)
		}
	}()

	for _, c := range []struct{ network, dst, want string }{
		{"tcp4", HostAddr4, HostGW4},
		{"tcp6", HostAddr6, ourLL},
		{"udp4", HostAddr4, HostGW4},
		{"udp6", HostAddr6, ourLL},
	} {
		t.Run(c.network, func(t *testing.T) {
			var peer string
			if strings.HasPrefix(c.network, "tcp") {
				_, pr, err := askInfo(t, gp.Host, c.network, hostPort(c.dst, port))
				if err != nil {
					t.Fatalf("from the host's own address to %s: %v", hostPort(c.dst, port), err)
				}
				peer = pr
			} else {
				conn := DialUDPIn(t, gp.Host, c.network, hostPort(c.dst, port))
				if got := netip.MustParseAddrPort(conn.LocalAddr().String()).Addr(); got.String() != c.dst {
					t.Fatalf("client not on the host's own address: %s", got)
				}
				buf := make([]byte, 100)
				if !Eventually(3*time.Second, func() bool {
					conn.Write([]byte("hi"))
					conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
					n, err := conn.Read(buf)
					peer = string(buf[:n])
					return err == nil
				}) {
					t.Fatalf("no UDP answer from the guest through %s", hostPort(c.dst, port))
				}
			}
			ap, err := netip.ParseAddrPort(peer)
			if err != nil {
				t.Fatalf("peer %q: %v", peer, err)
			}
			if got := ap.Addr().WithZone("").Unmap(); got.String() != c.want {
				t.Errorf("the guest sees the client from %s, want %s", got, c.want)
			}
		})
	}
}
