package integration

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// InNetns runs fn on a thread moved into the namespace ns and waits for
// it. The thread is never moved back: it exits with its goroutine, so no
// other goroutine runs in ns by accident. Sockets fn opens stay in ns and
// can be used from anywhere afterwards.
func InNetns(t testing.TB, ns Netns, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	enter := func() {
		runtime.LockOSThread()
		h, err := netns.GetFromPath(ns.Path())
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		fn()
		errc <- nil
	}
	go func() {
		// The main thread must never change namespace: when its locked
		// goroutine exits it is wedged, not ended, and "ip netns pids"
		// would then find (and the harness kill) the test process. Hold
		// it locked here so that enter gets another thread.
		runtime.LockOSThread()
		if unix.Gettid() != unix.Getpid() {
			enter()
			return
		}
		done := make(chan struct{})
		go func() { enter(); close(done) }()
		<-done
		runtime.UnlockOSThread()
	}()
	if err := <-errc; err != nil {
		t.Fatalf("enter netns %s: %v", ns.Name, err)
	}
}

// ListenUDPIn opens a UDP socket on addr inside ns.
func ListenUDPIn(t testing.TB, ns Netns, network, addr string) *net.UDPConn {
	t.Helper()
	var c net.PacketConn
	var err error
	InNetns(t, ns, func() { c, err = net.ListenPacket(network, addr) })
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	uc := c.(*net.UDPConn)
	_ = uc.SetReadBuffer(4 << 20)
	return uc
}

// DialUDPIn opens a connected UDP socket to addr inside ns.
func DialUDPIn(t testing.TB, ns Netns, network, addr string) *net.UDPConn {
	t.Helper()
	var c net.Conn
	var err error
	InNetns(t, ns, func() { c, err = net.Dial(network, addr) })
	if err != nil {
		t.Fatalf("dial %s in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	uc := c.(*net.UDPConn)
	_ = uc.SetReadBuffer(4 << 20)
	return uc
}

// ServeUDPEcho echoes every datagram on c until it is closed.
func ServeUDPEcho(c *net.UDPConn) { ServeUDPMarked(c, "") }

// ServeUDPMarked answers every datagram on c with mark and the datagram,
// until c is closed: an echo that tells which server answered.
func ServeUDPMarked(c *net.UDPConn, mark string) {
	go func() {
		buf := make([]byte, 65536)
		copy(buf, mark)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf[len(mark):])
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort(buf[:len(mark)+n], from)
		}
	}()
}

// netnsResolvConf gives processes that ip netns exec starts in h the
// resolv.conf s (it bind-mounts /etc/netns/NAME/resolv.conf over
// /etc/resolv.conf), and returns that file's path.
func netnsResolvConf(t *testing.T, h Netns, s string) string {
	t.Helper()
	etc := "/etc/netns/" + h.Name
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	path := etc + "/resolv.conf"
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// udpExchange sends count numbered datagrams of varying size on the
// connected socket c, paced in bursts, and checks that every one comes
// back byte for byte.
func udpExchange(t *testing.T, c *net.UDPConn, count int) {
	t.Helper()
	payload := func(i int) []byte {
		b := make([]byte, 8+(i*131)%1200)
		binary.BigEndian.PutUint64(b, uint64(i))
		for j := 8; j < len(b); j++ {
			b[j] = byte(i + j)
		}
		return b
	}
	got := make([]bool, count)
	received := 0
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 2048)
		for received < count {
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, err := c.Read(buf)
			if err != nil {
				done <- fmt.Errorf("after %d of %d echoes: %w", received, count, err)
				return
			}
			if n < 8 {
				done <- fmt.Errorf("short echo of %d bytes", n)
				return
			}
			i := int(binary.BigEndian.Uint64(buf))
			if i >= count || !bytes.Equal(buf[:n], payload(i)) {
				done <- fmt.Errorf("echo %d corrupted (%d bytes)", i, n)
				return
			}
			if got[i] {
				done <- fmt.Errorf("echo %d duplicated", i)
				return
			}
			got[i] = true
			received++
		}
		done <- nil
	}()
	start := time.Now()
	const burst = 10
	for i := 0; i < count; i++ {
		if _, err := c.Write(payload(i)); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		if i%burst == burst-1 {
			time.Sleep(time.Millisecond) // paced: ~10k datagrams/s at most
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d datagrams echoed intact, zero loss, in %v", count, time.Since(start).Round(time.Millisecond))
}

// dumpOnFailure logs, if the test fails, where datagrams went: the
// daemon's statistics (SIGUSR1 writes them to its log, which the harness
// prints) and the kernel's UDP and interface counters in both namespaces.
func dumpOnFailure(t *testing.T, gp *Gopasta) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		if pid := gp.PID(); pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGUSR1)
			time.Sleep(200 * time.Millisecond)
		}
		for _, ns := range []Netns{gp.Host, gp.Guest} {
			out, _ := ns.Try("sh", "-c", "nstat -az | grep -i -E 'udp|Ip6?InDiscards|OutDiscards' | grep -v ' 0 '; ip -s link")
			t.Logf("%s:\n%s", ns.Name, out)
		}
	})
}

func randPort() int { return 20000 + int(binary.BigEndian.Uint16([]byte(uniq())[:2]))%20000 }

// TestUDPOutboundEcho: 10,000 datagrams from the guest to an echo server
// on the host's loopback, through the gateway mapping, both families.
func TestUDPOutboundEcho(t *testing.T) {
	gp := StartGopasta(t)
	// The gateways are permanent neighbours: the first datagrams must not
	// wait for (and overflow) neighbour resolution.
	for _, gw := range []string{HostGW4, HostGW6} {
		if out := gp.Guest.Exec(t, "ip", "neigh", "show", gw); !strings.Contains(out, "PERMANENT") {
			t.Errorf("neighbour entry of %s: %q, want PERMANENT", gw, out)
		}
	}
	for _, tc := range []struct{ network, listen, gw string }{
		{"udp4", "127.0.0.1:0", HostGW4},
		{"udp6", "[::1]:0", HostGW6},
	} {
		t.Run(tc.network, func(t *testing.T) {
			srv := ListenUDPIn(t, gp.Host, tc.network, tc.listen)
			ServeUDPEcho(srv)
			port := srv.LocalAddr().(*net.UDPAddr).Port
			c := DialUDPIn(t, gp.Guest, tc.network, net.JoinHostPort(tc.gw, fmt.Sprint(port)))
			dumpOnFailure(t, gp)
			udpExchange(t, c, 10000)
		})
	}
}

// TestUDPInboundEcho: the same through a -u forward, from a host client to
// an echo server in the guest, with a remapped port.
func TestUDPInboundEcho(t *testing.T) {
	hostPort := randPort()
	guestPort := hostPort + 1
	gp := StartGopasta(t, "-u", fmt.Sprintf("%d:%d", hostPort, guestPort))
	for _, tc := range []struct{ network, listen, dst string }{
		{"udp4", "0.0.0.0", "127.0.0.1"},
		{"udp6", "[::]", "::1"},
	} {
		t.Run(tc.network, func(t *testing.T) {
			srv := ListenUDPIn(t, gp.Guest, tc.network, fmt.Sprintf("%s:%d", tc.listen, guestPort))
			ServeUDPEcho(srv)
			c := DialUDPIn(t, gp.Host, tc.network, net.JoinHostPort(tc.dst, fmt.Sprint(hostPort)))
			dumpOnFailure(t, gp)
			udpExchange(t, c, 10000)
		})
	}
}

// TestUDPPortUnreachable: a datagram from the guest to a closed host port
// fails the guest's connected socket with ECONNREFUSED at once, because
// the host's ICMP error is relayed. Also with nc -u.
func TestUDPPortUnreachable(t *testing.T) {
	gp := StartGopasta(t)
	for _, tc := range []struct{ network, gw string }{
		{"udp4", HostGW4},
		{"udp6", HostGW6},
	} {
		t.Run(tc.network, func(t *testing.T) {
			closed := randPort()
			c := DialUDPIn(t, gp.Guest, tc.network, net.JoinHostPort(tc.gw, fmt.Sprint(closed)))
			start := time.Now()
			var err error
			buf := make([]byte, 16)
			for i := 0; i < 3 && err == nil; i++ {
				_, err = c.Write([]byte("anyone?"))
				if err == nil {
					_ = c.SetReadDeadline(time.Now().Add(time.Second))
					_, err = c.Read(buf)
				}
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("got %v, want ECONNREFUSED", err)
			}
			if el := time.Since(start); el > 500*time.Millisecond {
				t.Fatalf("refusal took %v", el)
			}
			t.Logf("ECONNREFUSED after %v", time.Since(start).Round(time.Microsecond))
		})
	}
	needTool(t, "nc")
	start := time.Now()
	out, err := gp.Guest.Try("sh", "-c", fmt.Sprintf("echo x | nc -u -w 3 %s %d; echo x | nc -u -w 3 %s %d", HostGW4, randPort(), HostGW4, randPort()))
	el := time.Since(start)
	t.Logf("nc -u twice: %v %q after %v", err, out, el.Round(time.Millisecond))
	if el > 2*time.Second {
		t.Fatalf("nc -u waited %v for its -w 3 timeouts instead of failing at once", el)
	}
}

// TestDNSForward: dig in the guest asks --dns-forward 169.254.1.1, which
// reaches dnsmasq on the host's 127.0.0.1:53 (--dns-host), over UDP and
// TCP.
func TestDNSForward(t *testing.T) {
	needTool(t, "dig", "dnsmasq")
	gp := StartGopasta(t, "--dns-forward", "169.254.1.1", "--dns-host", "127.0.0.1")
	gp.Host.Start(t, "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--listen-address=127.0.0.1",
		"--port=53", "--bind-interfaces", "--pid-file=", "--user=root", "--address=/test.example/192.0.2.77")
	if !Eventually(5*time.Second, func() bool {
		out, _ := gp.Host.Try("dig", "+short", "+time=1", "+tries=1", "@127.0.0.1", "test.example")
		return strings.TrimSpace(out) == "192.0.2.77"
	}) {
		t.Fatal("dnsmasq did not come up")
	}
	for _, mode := range []string{"+notcp", "+tcp"} {
		out, err := gp.Guest.Try("dig", "+short", "+time=2", "+tries=1", mode, "@169.254.1.1", "test.example")
		if err != nil || strings.TrimSpace(out) != "192.0.2.77" {
			t.Fatalf("dig %s: %v\n%s", mode, err, out)
		}
		// The answer must come from the forward address, or dig would
		// complain ("reply from unexpected source").
		out, err = gp.Guest.Try("dig", "+time=2", "+tries=1", mode, "@169.254.1.1", "test.example")
		if err != nil || !strings.Contains(out, "SERVER: 169.254.1.1#53") {
			t.Fatalf("dig %s: %v\n%s", mode, err, out)
		}
	}
}

// TestDNSForwardFollowsResolvConf: without --dns-host, --dns-forward
// leads to the first nameserver of the host's resolv.conf, and when the
// file is rewritten (here in place, through the bind mount that ip netns
// exec makes of /etc/netns/NAME/resolv.conf) to the new one, over UDP and
// TCP, with the answers still from the forward address.
func TestDNSForwardFollowsResolvConf(t *testing.T) {
	h := HostNetns(t)
	conf := netnsResolvConf(t, h, "nameserver 127.0.0.1\n")
	// Two "resolvers", each marking its answers.
	ServeUDPMarked(ListenUDPIn(t, h, "udp4", "127.0.0.1:53"), "one:")
	ServeUDPMarked(ListenUDPIn(t, h, "udp4", "127.0.0.2:53"), "two:")
	ServeInfo(ListenTCPIn(t, h, "tcp4", "127.0.0.2:53"))
	gp := LaunchGopastaIn(t, h, "--config-net", "--dns-forward", "169.254.1.1")

	ask := func() string {
		c := DialUDPIn(t, gp.Guest, "udp4", "169.254.1.1:53")
		defer c.Close()
		if _, err := c.Write([]byte("query")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 1500)
		n, err := c.Read(b) // connected: only an answer from 169.254.1.1:53
		if err != nil {
			return err.Error()
		}
		return string(b[:n])
	}
	if got := ask(); got != "one:query" {
		t.Fatalf("before the change: %q, want one:query", got)
	}
	if err := os.WriteFile(conf, []byte("# new network\nnameserver 127.0.0.2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var got string
	if !Eventually(3*time.Second, func() bool { got = ask(); return got == "two:query" }) {
		t.Fatalf("after the change: %q, want two:query", got)
	}
	// TCP goes there too; the server sees the connection come to it.
	local, _, err := askInfo(t, gp.Guest, "tcp4", "169.254.1.1:53")
	if err != nil || local != "127.0.0.2:53" {
		t.Fatalf("TCP to 169.254.1.1:53 reached %q (%v), want 127.0.0.2:53", local, err)
	}
	if log := gp.Log(); !strings.Contains(log, "DNS forwarding now leads to 127.0.0.2 (was 127.0.0.1)") {
		t.Errorf("no log line for the change:\n%s", tail(log, 2000))
	}
}

// BenchmarkUDPRR: one datagram from the guest to an echo server on the
// host and back per op, the UDP_RR pattern; reports the daemon's CPU per
// round trip too (cpu-us/op), which is what a loaded machine makes scarce.
// Compare versions with GOPASTA_TEST_BIN=/path/to/gopasta.
func BenchmarkUDPRR(b *testing.B) {
	gp := StartGopasta(b)
	srv := ListenUDPIn(b, gp.Host, "udp4", "127.0.0.1:0")
	ServeUDPEcho(srv)
	port := srv.LocalAddr().(*net.UDPAddr).Port
	c := DialUDPIn(b, gp.Guest, "udp4", net.JoinHostPort(HostGW4, fmt.Sprint(port)))
	buf := make([]byte, 64)
	rr := func() {
		if _, err := c.Write(buf[:1]); err != nil {
			b.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
	for range 100 {
		rr()
	}
	cpu0 := procCPU(gp.PID())
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rr()
	}
	b.StopTimer()
	b.ReportMetric(float64(procCPU(gp.PID())-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-us/op")
}

// procCPU is the user and system time pid has used.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	var u, st int64
	fmt.Sscan(f[11], &u)
	fmt.Sscan(f[12], &st)
	return time.Duration(u+st) * 10 * time.Millisecond // USER_HZ 100
}
