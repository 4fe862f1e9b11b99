package integration

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ServeInfo answers every connection on l with one line, "LOCAL PEER"
// (the addresses the server sees), and closes it.
func ServeInfo(l net.Listener) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s\n", c.LocalAddr(), c.RemoteAddr())
			c.Close()
		}
	}()
}

// askInfo connects from ns to addr and returns the server's line: the
// local and peer address it saw. err is set if the connection failed.
func askInfo(t testing.TB, ns Netns, network, addr string) (local, peer string, err error) {
	t.Helper()
	c, err := DialTCPIn(t, ns, network, "", addr)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", "", fmt.Errorf("read from %s: %w", addr, err)
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		return "", "", fmt.Errorf("bad line %q", line)
	}
	return f[0], f[1], nil
}

func hostOf(hostport string) string {
	h, _, _ := net.SplitHostPort(hostport)
	return h
}

func portOf(hostport string) string {
	_, p, _ := net.SplitHostPort(hostport)
	return p
}

// refused says whether err is a refused (or reset) connection: nothing
// listens, or gopasta reset it.
func refused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, os.ErrDeadlineExceeded)
}

// TestForwardAuto: with pasta's defaults (auto in all four directions) a
// listener started in the namespace is forwarded from the host within 2 s
// and dropped after it closes; a host listener is reachable from the
// namespace's loopback the same way (-T), and UDP likewise (-u, -U).
func TestForwardAuto(t *testing.T) {
	gp := StartGopasta(t, "-d")
	h, g := gp.Host, gp.Guest
	const port = "18301"

	l := ListenTCPIn(t, g, "tcp", ":"+port)
	ServeInfo(l)
	start := time.Now()
	var peer string
	if !Eventually(2*time.Second, func() bool {
		_, p, err := askInfo(t, h, "tcp4", "127.0.0.1:"+port)
		peer = p
		return err == nil
	}) {
		t.Fatalf("-t auto: namespace listener on %s not forwarded within 2 s", port)
	}
	t.Logf("-t auto: forwarded after %v", time.Since(start).Round(time.Millisecond))
	// Spliced without --host-lo-to-ns-lo: from the namespace's own address.
	if hostOf(peer) != HostAddr4 {
		t.Errorf("spliced client seen from %s, want the namespace's address %s", peer, HostAddr4)
	}
	l.Close()
	if !Eventually(2500*time.Millisecond, func() bool {
		_, _, err := askInfo(t, h, "tcp4", "127.0.0.1:"+port)
		return err != nil && errors.Is(err, syscall.ECONNREFUSED)
	}) {
		t.Fatal("-t auto: host port still listening 2 s after the namespace listener closed")
	}

	// -T auto: a host loopback listener, reached from the namespace.
	hl := ListenTCPIn(t, h, "tcp4", "127.0.0.1:18302")
	ServeInfo(hl)
	if !Eventually(2*time.Second, func() bool {
		_, p, err := askInfo(t, g, "tcp4", "127.0.0.1:18302")
		peer = p
		return err == nil
	}) {
		t.Fatal("-T auto: host listener not reachable from the namespace within 2 s")
	}
	if hostOf(peer) != "127.0.0.1" {
		t.Errorf("-T client seen from %s on the host, want 127.0.0.1", peer)
	}

	// -u auto: a namespace UDP service, from the host's loopback.
	ServeUDPEcho(ListenUDPIn(t, g, "udp4", ":18303"))
	c := DialUDPIn(t, h, "udp4", "127.0.0.1:18303")
	if !Eventually(2*time.Second, func() bool { return udpPing(c, "auto-u") }) {
		t.Fatal("-u auto: no echo within 2 s")
	}
	// -U auto: a host UDP service, from the namespace's loopback.
	ServeUDPEcho(ListenUDPIn(t, h, "udp4", "127.0.0.1:18304"))
	c = DialUDPIn(t, g, "udp4", "127.0.0.1:18304")
	if !Eventually(2*time.Second, func() bool { return udpPing(c, "auto-U") }) {
		t.Fatal("-U auto: no echo within 2 s")
	}
}

// udpPing sends msg on the connected c and waits briefly for it back.
func udpPing(c *net.UDPConn, msg string) bool {
	if _, err := c.Write([]byte(msg)); err != nil {
		return false
	}
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	return err == nil && string(buf[:n]) == msg
}

// TestForwardRemapExclusion: a remapped range with an exclusion, checked
// with real connections in both IP versions, and nothing listening on
// the excluded or the unmapped ports.
func TestForwardRemapExclusion(t *testing.T) {
	gp := StartGopasta(t, "-t", "18400-18410:28400-28410,~18405", "-u", "none", "-T", "none", "-U", "none")
	h, g := gp.Host, gp.Guest
	for _, p := range []string{"28400", "28403", "28405", "28410"} {
		ServeInfo(ListenTCPIn(t, g, "tcp", ":"+p))
	}
	for _, tc := range []struct{ network, addr, want string }{
		{"tcp4", "127.0.0.1:18400", "28400"},
		{"tcp4", "127.0.0.1:18403", "28403"},
		{"tcp4", "127.0.0.1:18410", "28410"},
		{"tcp6", "[::1]:18403", "28403"},
	} {
		local, _, err := askInfo(t, h, tc.network, tc.addr)
		if err != nil {
			t.Errorf("%s: %v", tc.addr, err)
			continue
		}
		if portOf(local) != tc.want {
			t.Errorf("%s arrived at %s, want port %s", tc.addr, local, tc.want)
		}
	}
	for _, addr := range []string{"127.0.0.1:18405", "127.0.0.1:28400", "127.0.0.1:18411"} {
		if _, _, err := askInfo(t, h, "tcp4", addr); !refused(err) {
			t.Errorf("%s: got %v, want refused (not forwarded)", addr, err)
		}
	}
}

// TestForwardBindAddresses: bind addresses v4, v6 bare (as podman writes
// them) and bracketed, and an interface, each listening only where told.
func TestForwardBindAddresses(t *testing.T) {
	gp := StartGopasta(t, "-t", "127.0.0.1/18500:28500", "-t", "::1/18501-18501:28500-28500",
		"-t", "[::1]/18502:28500", "-t", "%lo/18503:28500", "-u", "none", "-T", "none", "-U", "none")
	h, g := gp.Host, gp.Guest
	ServeInfo(ListenTCPIn(t, g, "tcp", ":28500"))
	for _, tc := range []struct {
		network, addr string
		ok            bool
	}{
		{"tcp4", "127.0.0.1:18500", true},
		{"tcp4", HostAddr4 + ":18500", false},
		{"tcp6", "[::1]:18500", false},
		{"tcp6", "[::1]:18501", true},
		{"tcp4", "127.0.0.1:18501", false},
		{"tcp6", "[::1]:18502", true},
		{"tcp4", "127.0.0.1:18503", true},
	} {
		_, _, err := askInfo(t, h, tc.network, tc.addr)
		if tc.ok && err != nil {
			t.Errorf("%s: %v", tc.addr, err)
		}
		if !tc.ok && !refused(err) {
			t.Errorf("%s: got %v, want refused", tc.addr, err)
		}
	}
	ss := h.Exec(t, "ss", "-Hltn", "sport = :18503")
	if !strings.Contains(ss, "%lo:18503") {
		t.Errorf("listener of %%lo/18503 not bound to lo: %q", ss)
	}
}

// TestForwardTapSourceAddress: a client that is not on the host's
// loopback takes the tap path, and the namespace sees its real address;
// with --no-splice a loopback client takes the tap path too and appears
// from the --map-host-loopback address (the gateway by default).
func TestForwardTapSourceAddress(t *testing.T) {
	gp := StartGopasta(t, "-t", "18600:28600", "--no-splice", "-u", "none", "-T", "none", "-U", "none")
	h, g := gp.Host, gp.Guest
	ServeInfo(ListenTCPIn(t, g, "tcp", ":28600"))

	// A client namespace routed to the host namespace over a veth.
	c := NewNetns(t, "c")
	hv, cv := "gpc"+uniq()[:6], "gpd"+uniq()[:6]
	run(t, "ip", "link", "add", hv, "netns", h.Name, "type", "veth", "peer", "name", cv, "netns", c.Name)
	h.Exec(t, "ip", "addr", "add", "203.0.113.1/24", "dev", hv)
	h.Exec(t, "ip", "link", "set", hv, "up")
	c.Exec(t, "ip", "addr", "add", "203.0.113.2/24", "dev", cv)
	c.Exec(t, "ip", "link", "set", cv, "up")

	local, peer, err := askInfo(t, c, "tcp4", "203.0.113.1:18600")
	if err != nil {
		t.Fatalf("remote client: %v", err)
	}
	if hostOf(peer) != "203.0.113.2" || portOf(local) != "28600" {
		t.Errorf("remote client seen as %s at %s, want 203.0.113.2 at port 28600", peer, local)
	}
	_, peer, err = askInfo(t, h, "tcp4", "127.0.0.1:18600")
	if err != nil {
		t.Fatalf("loopback client with --no-splice: %v", err)
	}
	if hostOf(peer) != HostGW4 {
		t.Errorf("loopback client with --no-splice seen as %s, want the gateway %s", peer, HostGW4)
	}
}

// TestForwardBindConflict: a second gopasta forwarding the same port
// fails at once with pasta's message, as podman shows it.
func TestForwardBindConflict(t *testing.T) {
	gp := StartGopasta(t, "-t", "18700-18700:80-80", "-u", "none", "-T", "none", "-U", "none")
	g2 := NewNetns(t, "g2")
	dir := t.TempDir()
	out, err := gp.Host.Try(gopastaBin, "--config-net", "--quiet", "--netns", g2.Path(), "-P", filepath.Join(dir, "pid"),
		"-t", "18700-18700:80-80", "-u", "none", "-T", "none", "-U", "none")
	if b, rerr := os.ReadFile(filepath.Join(dir, "pid")); rerr == nil {
		var pid int
		fmt.Sscan(string(b), &pid)
		if pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		t.Error("second instance wrote a pid file")
	}
	if exitCode(err) != 1 {
		t.Errorf("exit status %d (%v), want 1", exitCode(err), err)
	}
	want := "Failed to bind port 18700 (Address already in use) for option '-t 18700-18700:80-80', exiting\n"
	if out != want {
		t.Errorf("output %q\n want %q", out, want)
	}
}

// TestForwardOneFamilyBusy: a host service holding 0.0.0.0:PORT leaves
// [::]:PORT free, and as with pasta the forward starts for IPv6 alone (with
// a warning) instead of failing: podman users hit this with a host service
// that binds IPv4 only.
func TestForwardOneFamilyBusy(t *testing.T) {
	h := HostNetns(t)
	busy := ListenTCPIn(t, h, "tcp4", "0.0.0.0:18711")
	defer busy.Close()
	gp := LaunchGopastaIn(t, h, "--config-net", "-t", "18711:80", "-u", "none", "-T", "none", "-U", "none")
	ServeInfo(ListenTCPIn(t, gp.Guest, "tcp6", "[::]:80"))
	_, _, err := askInfo(t, h, "tcp6", "[::1]:18711")
	if err != nil {
		t.Fatalf("IPv6 forward: %v", err)
	}
	if !strings.Contains(gp.Log(), "Failed to bind port 18711 (Address already in use) for option '-t 18711:80' over IPv4, forwarding it over IPv6 only") {
		t.Errorf("no warning in the log:\n%s", gp.Log())
	}
}

// TestForwardTOML: forwarding from the configuration file, both ways.
func TestForwardTOML(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gopasta.toml")
	if err := os.WriteFile(cfg, []byte(`tcp-ports = ["18800:28800", "::1/18801:28800"]
udp-ports = ["none"]
tcp-ns = ["18802"]
udp-ns = ["none"]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	gp := StartGopasta(t, "--config", cfg)
	h, g := gp.Host, gp.Guest
	ServeInfo(ListenTCPIn(t, g, "tcp", ":28800"))
	ServeInfo(ListenTCPIn(t, h, "tcp4", "127.0.0.1:18802"))
	for _, tc := range []struct {
		ns            Netns
		network, addr string
	}{{h, "tcp4", "127.0.0.1:18800"}, {h, "tcp6", "[::1]:18801"}, {g, "tcp4", "127.0.0.1:18802"}} {
		if _, _, err := askInfo(t, tc.ns, tc.network, tc.addr); err != nil {
			t.Errorf("%s: %v", tc.addr, err)
		}
	}
}

// TestForwardAutoSkipsOwnSockets: the host socket of a guest's UDP flow is
// bound to the guest's (non-ephemeral) source port and unconnected, so it
// looks like a host service; -U auto must not forward it back into the
// namespace.
func TestForwardAutoSkipsOwnSockets(t *testing.T) {
	gp := StartGopasta(t)
	h, g := gp.Host, gp.Guest
	ServeUDPEcho(ListenUDPIn(t, h, "udp4", "127.0.0.1:18306"))
	var c *net.UDPConn
	var err error
	InNetns(t, g, func() {
		c, err = net.DialUDP("udp4", &net.UDPAddr{Port: 5001}, &net.UDPAddr{IP: net.ParseIP(HostGW4), Port: 18306})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !Eventually(3*time.Second, func() bool { return udpPing(c, "own") }) {
		t.Fatal("no echo from the host through the gateway")
	}
	time.Sleep(2500 * time.Millisecond) // two scans
	if ss := g.Exec(t, "ss", "-Hlun", "sport = :5001"); strings.Contains(ss, "127.0.0.1:5001") {
		t.Fatalf("the flow's own host socket was forwarded back: %q", ss)
	}
}

// TestForwardNoSpliceNoMapping: with --no-splice and no host-loopback
// mapping a loopback client cannot be shown to the namespace as itself;
// as with pasta, it appears from gopasta's own tap address (the gateway
// for IPv4, our link-local address for IPv6), like a client on the host's
// own address (TestInboundFromHostOwnAddress), not refused.
func TestForwardNoSpliceNoMapping(t *testing.T) {
	gp := StartGopasta(t, "-t", "18610:28610", "--no-splice", "--no-map-gw", "-u", "none", "-T", "none", "-U", "none")
	ServeInfo(ListenTCPIn(t, gp.Guest, "tcp", ":28610"))
	for _, c := range []struct{ network, dst, want string }{
		{"tcp4", "127.0.0.1", HostGW4},
		{"tcp6", "::1", "fe80::9855:9aff:fe55:9a55"},
	} {
		_, peer, err := askInfo(t, gp.Host, c.network, hostPort(c.dst, 18610))
		if err != nil {
			t.Fatalf("%s: %v", c.network, err)
		}
		if got := netip.MustParseAddrPort(peer).Addr().WithZone("").Unmap().String(); got != c.want {
			t.Errorf("%s: the namespace sees the loopback client from %s, want %s", c.network, got, c.want)
		}
	}
}

// TestForwardFreebind: a -t/-u bind address the host does not have yet
// (a VPN or DHCP address that comes later) makes gopasta fail to start as
// pasta does, unless --freebind is given; then the listeners work as soon
// as the address appears, IPv4 and IPv6.
func TestForwardFreebind(t *testing.T) {
	const a4, a6 = "192.0.2.77", "2001:db8:77::77"
	h := HostNetns(t)
	g := NewNetns(t, "g")
	dir := t.TempDir()
	out, err := h.Try(gopastaBin, "--config-net", "--quiet", "--netns", g.Path(), "-P", filepath.Join(dir, "pid"),
		"-t", a4+"/18800:28800", "-u", "none", "-T", "none", "-U", "none")
	if exitCode(err) != 1 || !strings.Contains(out, "Failed to bind port 18800 (Cannot assign requested address)") {
		t.Errorf("without --freebind: exit status %d, output %q", exitCode(err), out)
	}

	gp := StartGopasta(t, "--freebind", "-t", a4+"/18800:28800", "-t", a6+"/18802:28800",
		"-u", a4+"/18801:28801", "-T", "none", "-U", "none")
	ServeInfo(ListenTCPIn(t, gp.Guest, "tcp", ":28800"))
	ServeUDPEcho(ListenUDPIn(t, gp.Guest, "udp4", ":28801"))
	gp.Host.Exec(t, "ip", "addr", "add", a4+"/32", "dev", "lo")
	gp.Host.Exec(t, "ip", "-6", "addr", "add", a6+"/128", "dev", "lo", "nodad")
	for _, addr := range []string{a4 + ":18800", "[" + a6 + "]:18802"} {
		local, peer, err := askInfo(t, gp.Host, "tcp", addr)
		if err != nil {
			t.Fatalf("%s after the address appeared: %v", addr, err)
		}
		if portOf(local) != "28800" || hostOf(peer) == "" {
			t.Errorf("%s: guest saw %s from %s", addr, local, peer)
		}
	}
	c := DialUDPIn(t, gp.Host, "udp4", a4+":18801")
	dumpOnFailure(t, gp)
	udpExchange(t, c, 200)
}
