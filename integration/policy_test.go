package integration

import (
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// podmanArgs are the options rootless podman gives pasta (less --netns,
// which the harness adds).
var podmanArgs = []string{"-t", "none", "-u", "none", "-T", "none", "-U", "none",
	"--no-map-gw", "--quiet", "--map-guest-addr", "169.254.1.2"}

// guestRaw opens a packet socket on the guest's interface and returns a
// function that sends one raw Ethernet frame on it, and the interface's
// MAC. send may be called from any goroutine (a failure is an Errorf).
func guestRaw(t *testing.T, g Netns) (send func([]byte), mac [6]byte) {
	t.Helper()
	var fd, ifindex int
	var err error
	InNetns(t, g, func() {
		var ifs []net.Interface
		if ifs, err = net.Interfaces(); err != nil {
			return
		}
		for _, ifi := range ifs {
			if ifi.Flags&net.FlagLoopback == 0 && len(ifi.HardwareAddr) == 6 {
				ifindex, mac = ifi.Index, [6]byte(ifi.HardwareAddr)
			}
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	})
	if err != nil || ifindex == 0 {
		t.Fatalf("packet socket in the guest: %v (ifindex %d)", err, ifindex)
	}
	t.Cleanup(func() { unix.Close(fd) })
	sa := &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6}
	return func(b []byte) {
		t.Helper()
		if err := unix.Sendto(fd, b, 0, sa); err != nil {
			t.Errorf("send raw frame: %v", err)
		}
	}, mac
}

// TestHostLoopbackUnreachable is the address policy end to end, in
// podman's configuration (--no-map-gw: nothing maps to the host's
// loopback): raw TCP SYNs and UDP datagrams from the guest's interface to
// every spelling of loopback, unspecified and IPv4-in-IPv6 must reach none
// of the services bound to the host's 127.0.0.1 and ::1, and each must be
// counted as a drop. A SYN to the --map-guest-addr address, by the same
// path, does arrive: the frames are good, only their addresses are not.
func TestHostLoopbackUnreachable(t *testing.T) {
	const port = 7171
	h := HostNetns(t)

	var accepts, datagrams atomic.Int64
	var listeners []net.Listener
	var conns []net.PacketConn
	InNetns(t, h, func() {
		for _, a := range []string{"127.0.0.1", "[::1]"} {
			l, err := net.Listen("tcp", a+":7171")
			if err != nil {
				t.Errorf("listen %s: %v", a, err)
				return
			}
			listeners = append(listeners, l)
			c, err := net.ListenPacket("udp", a+":7171")
			if err != nil {
				t.Errorf("listen udp %s: %v", a, err)
				return
			}
			conns = append(conns, c)
		}
	})
	ctl := ListenTCPIn(t, h, "tcp4", HostAddr4+":7172")
	for _, l := range listeners {
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				accepts.Add(1)
				c.Close()
			}
		}()
	}
	for _, c := range conns {
		t.Cleanup(func() { c.Close() })
		go func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := c.ReadFrom(buf); err != nil {
					return
				}
				datagrams.Add(1)
			}
		}()
	}
	var ctlAccepts atomic.Int64
	go func() {
		for {
			c, err := ctl.Accept()
			if err != nil {
				return
			}
			ctlAccepts.Add(1)
			c.Close()
		}
	}()

	gp := LaunchGopastaIn(t, h, append([]string{"--config-net"}, podmanArgs...)...)
	send, guestMAC := guestRaw(t, gp.Guest)
	src4, src6 := netip.MustParseAddr(HostAddr4), netip.MustParseAddr(HostAddr6)

	spellings := []struct {
		addr, counter string
	}{
		{"127.0.0.1", "drop_loopback"},
		{"127.1.2.3", "drop_loopback"},
		{"::1", "drop_loopback"},
		{"::ffff:127.0.0.1", "drop_loopback"},
		{"::127.0.0.1", "drop_loopback"},
		{"0.0.0.0", "drop_bad_dest"},
		{"::", "drop_bad_dest"},
		{"0.0.0.1", "drop_martian"},
		{"::ffff:0.0.0.0", "drop_martian"},
		{"::ffff:0.0.0.1", "drop_martian"},
		{"::0.0.0.2", "drop_martian"},
		{"::ffff:169.254.1.2", "drop_martian"},
		{"::ffff:198.51.100.2", "drop_martian"},
	}
	before := statsOf(t, gp)
	want := map[string]int{}
	for i, s := range spellings {
		dst := netip.MustParseAddr(s.addr)
		src := src6
		if dst.Is4() {
			src = src4
		}
		syn := wiretest.TCP(uint16(40000+i), port, 1000, 0, wire.TCPSyn, nil)
		send(wiretest.IPFrom(guestMAC, conf.DefaultMAC, src, dst, wire.ProtoTCP, syn))
		send(wiretest.IPFrom(guestMAC, conf.DefaultMAC, src, dst, wire.ProtoUDP, wiretest.UDP(uint16(40000+i), port, []byte("hello"))))
		want[s.counter] += 2
	}
	// The control: the same kind of frame to the --map-guest-addr
	// address, which leads to the host's own address.
	send(wiretest.IPFrom(guestMAC, conf.DefaultMAC, src4, netip.MustParseAddr("169.254.1.2"), wire.ProtoTCP,
		wiretest.TCP(41000, 7172, 1000, 0, wire.TCPSyn, nil)))
	if !Eventually(3*time.Second, func() bool { return ctlAccepts.Load() == 1 }) {
		t.Fatal("the control SYN to the --map-guest-addr address was not accepted: raw frames do not get through")
	}
	var after map[string]int
	Eventually(3*time.Second, func() bool {
		after = statsOf(t, gp)
		for c, n := range want {
			if after[c]-before[c] < n {
				return false
			}
		}
		return true
	})
	time.Sleep(200 * time.Millisecond)
	if n, m := accepts.Load(), datagrams.Load(); n != 0 || m != 0 {
		t.Errorf("host loopback services reached: %d connections, %d datagrams", n, m)
	}
	for c, n := range want {
		if got := after[c] - before[c]; got < n {
			t.Errorf("%s moved by %d, want at least %d", c, got, n)
		}
	}
	if !gp.Alive() {
		t.Fatal("daemon died")
	}
	if strings.Contains(gp.Log(), "goroutine ") {
		t.Errorf("stack trace in the log:\n%s", tail(gp.Log(), 4000))
	}
}
