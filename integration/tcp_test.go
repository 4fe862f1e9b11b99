package integration

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TCP end to end: servers run in the stand-in host namespace (on loopback,
// reached from the guest through the gateway address, which gopasta maps
// to the host's loopback), clients in the guest namespace, both as sockets
// of this test process opened inside the namespaces.

// ListenTCPIn listens on addr inside ns.
func ListenTCPIn(t testing.TB, ns Netns, network, addr string) *net.TCPListener {
	t.Helper()
	var l net.Listener
	var err error
	InNetns(t, ns, func() { l, err = net.Listen(network, addr) })
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { l.Close() })
	return l.(*net.TCPListener)
}

// ServeEach accepts connections on l until it is closed and runs handle on
// each, in a goroutine of its own, closing the connection after.
func ServeEach(l net.Listener, handle func(c net.Conn)) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// DialTCPIn connects to addr from inside ns (from local, if set). Only a
// failure to enter the namespace fails t, so it may run on any goroutine.
func DialTCPIn(t testing.TB, ns Netns, network, local, addr string) (*net.TCPConn, error) {
	var c net.Conn
	var err error
	d := net.Dialer{Timeout: 10 * time.Second}
	if local != "" {
		d.LocalAddr, _ = net.ResolveTCPAddr(network, net.JoinHostPort(local, "0"))
	}
	InNetns(t, ns, func() { c, err = d.Dial(network, addr) })
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func mustDial(t testing.TB, ns Netns, network, addr string) *net.TCPConn {
	t.Helper()
	c, err := DialTCPIn(t, ns, network, "", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func acceptOne(t testing.TB, l *net.TCPListener) *net.TCPConn {
	t.Helper()
	l.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := l.AcceptTCP()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// stream writes n pseudo-random bytes (seeded) to w and returns their hash.
func stream(w io.Writer, n int64, seed uint64) ([32]byte, error) {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)})
	h := sha256.New()
	buf := make([]byte, 256<<10)
	for n > 0 {
		b := buf[:min(int64(len(buf)), n)]
		r.Read(b)
		h.Write(b)
		if _, err := w.Write(b); err != nil {
			return [32]byte{}, err
		}
		n -= int64(len(b))
	}
	return [32]byte(h.Sum(nil)), nil
}

// drain reads r to the end and returns the hash and count.
func drain(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, 256<<10))
	return [32]byte(h.Sum(nil)), n, err
}

func hostPort(a string, p int) string { return net.JoinHostPort(a, fmt.Sprint(p)) }

func lport(l *net.TCPListener) int { return l.Addr().(*net.TCPAddr).Port }

func TestTCPCurl(t *testing.T) {
	needTool(t, "curl")
	gp := StartGopasta(t)
	l := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	body := strings.Repeat("gopasta says hello\n", 5000)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, body)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	out := gp.Guest.Exec(t, "curl", "-sS", "--max-time", "10", "http://"+hostPort(HostGW4, lport(l))+"/")
	if out != body {
		t.Fatalf("curl got %d bytes, want %d", len(out), len(body))
	}
}

// bulkBothWays moves n bytes guest->host, then host->guest, on one
// connection, comparing hashes.
func bulkBothWays(t *testing.T, gp *Gopasta, network, listen, dialHost string, n int64) {
	l := ListenTCPIn(t, gp.Host, network, listen)
	c := mustDial(t, gp.Guest, network, hostPort(dialHost, lport(l)))
	s := acceptOne(t, l)

	start := time.Now()
	type res struct {
		sum [32]byte
		n   int64
		err error
	}
	got := make(chan res, 1)
	go func() {
		sum, m, err := drain(s)
		got <- res{sum, m, err}
	}()
	want, err := stream(c, n, 1)
	if err != nil {
		t.Fatalf("guest write: %v", err)
	}
	c.CloseWrite()
	r := <-got
	if r.err != nil || r.n != n || r.sum != want {
		t.Fatalf("guest->host: %d of %d bytes, err %v, hash match %v", r.n, n, r.err, r.sum == want)
	}
	up := time.Since(start)

	start = time.Now()
	go func() {
		sum, m, err := drain(c)
		got <- res{sum, m, err}
	}()
	want, err = stream(s, n, 2)
	if err != nil {
		t.Fatalf("host write: %v", err)
	}
	s.Close()
	r = <-got
	if r.err != nil || r.n != n || r.sum != want {
		t.Fatalf("host->guest: %d of %d bytes, err %v, hash match %v", r.n, n, r.err, r.sum == want)
	}
	down := time.Since(start)
	mbit := func(d time.Duration) float64 { return float64(n) * 8 / d.Seconds() / 1e6 }
	t.Logf("%d MiB: guest->host %.0f Mbit/s, host->guest %.0f Mbit/s", n>>20, mbit(up), mbit(down))
}

func TestTCPBulk1GiB(t *testing.T) {
	gp := StartGopasta(t)
	bulkBothWays(t, gp, "tcp4", "127.0.0.1:0", HostGW4, 1<<30)
}

func TestTCPBulkIPv6(t *testing.T) {
	gp := StartGopasta(t)
	bulkBothWays(t, gp, "tcp6", "[::1]:0", HostGW6, 256<<20)
}

// A server on the host's own (non-loopback) address, reached directly.
func TestTCPToHostAddress(t *testing.T) {
	gp := StartGopasta(t)
	gp.Host.Exec(t, "ip", "addr", "add", "198.51.100.7/24", "dev", HostIf)
	bulkBothWays(t, gp, "tcp4", "198.51.100.7:0", "198.51.100.7", 16<<20)
}

func TestTCPConcurrent1000(t *testing.T) {
	gp := StartGopasta(t)
	l := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	const conns, size = 1000, 1 << 20
	ServeEach(l, func(c net.Conn) {
		if sum, _, err := drain(c); err == nil {
			c.Write(sum[:])
		}
	})
	addr := hostPort(HostGW4, lport(l))
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	sem := make(chan struct{}, conns)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := DialTCPIn(t, gp.Guest, "tcp4", "", addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(120 * time.Second))
			want, err := stream(c, size, uint64(i))
			if err != nil {
				errs <- err
				return
			}
			c.CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, want[:]) {
				errs <- fmt.Errorf("conn %d: reply %x, err %v", i, got, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n < 5 {
			t.Error(err)
		}
		n++
	}
	if n > 0 {
		t.Fatalf("%d of %d connections failed", n, conns)
	}
}

// The guest shuts down writing first and still gets the reply and FIN.
func TestTCPHalfCloseGuestFirst(t *testing.T) {
	gp := StartGopasta(t)
	l := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	c := mustDial(t, gp.Guest, "tcp4", hostPort(HostGW4, lport(l)))
	s := acceptOne(t, l)
	c.Write([]byte("question"))
	c.CloseWrite()
	q, err := io.ReadAll(s)
	if err != nil || string(q) != "question" {
		t.Fatalf("server read %q %v", q, err)
	}
	s.Write([]byte("answer"))
	s.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	a, err := io.ReadAll(c)
	if err != nil || string(a) != "answer" {
		t.Fatalf("guest read %q %v", a, err)
	}
}

// The host shuts down writing first; the guest still sends its reply.
func TestTCPHalfCloseHostFirst(t *testing.T) {
	gp := StartGopasta(t)
	l := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	c := mustDial(t, gp.Guest, "tcp4", hostPort(HostGW4, lport(l)))
	s := acceptOne(t, l)
	s.Write([]byte("banner"))
	s.CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "banner" {
		t.Fatalf("guest read %q %v", b, err)
	}
	c.Write([]byte("late reply"))
	c.Close()
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	r, err := io.ReadAll(s)
	if err != nil || string(r) != "late reply" {
		t.Fatalf("server read %q %v", r, err)
	}
}

func TestTCPServerReset(t *testing.T) {
	gp := StartGopasta(t)
	l := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	c := mustDial(t, gp.Guest, "tcp4", hostPort(HostGW4, lport(l)))
	s := acceptOne(t, l)
	go stream(s, 1<<20, 3)
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	s.SetLinger(0)
	s.Close()
	var err error
	for err == nil {
		_, err = c.Read(buf)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("guest read: %v, want ECONNRESET", err)
	}
}

func refusedFast(t *testing.T, gp *Gopasta, network, listen, dialHost string) {
	l := ListenTCPIn(t, gp.Host, network, listen)
	port := lport(l)
	l.Close()
	// Warm the path (neighbour discovery) so that only the refusal is timed.
	DialTCPIn(t, gp.Guest, network, "", hostPort(dialHost, port))
	start := time.Now()
	_, err := DialTCPIn(t, gp.Guest, network, "", hostPort(dialHost, port))
	el := time.Since(start)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial closed port: %v, want ECONNREFUSED", err)
	}
	if el > 100*time.Millisecond {
		t.Fatalf("refusal took %v", el)
	}
	t.Logf("refused in %v", el)
}

func TestTCPRefused(t *testing.T) {
	gp := StartGopasta(t)
	refusedFast(t, gp, "tcp4", "127.0.0.1:0", HostGW4)
	refusedFast(t, gp, "tcp6", "[::1]:0", HostGW6)
}

// Inbound -t: a host client reaches a guest server, which sees the
// client's real address; a remapped port works too.
func TestTCPInbound(t *testing.T) {
	gp := StartGopasta(t, "-t", "18080", "-t", "18081:8081")
	gp.Host.Exec(t, "ip", "addr", "add", "198.51.100.9/24", "dev", HostIf)
	for _, tc := range []struct{ hostPort, guestPort int }{{18080, 18080}, {18081, 8081}} {
		l := ListenTCPIn(t, gp.Guest, "tcp4", fmt.Sprintf("0.0.0.0:%d", tc.guestPort))
		var c *net.TCPConn
		var err error
		ok := Eventually(5*time.Second, func() bool {
			c, err = DialTCPIn(t, gp.Host, "tcp4", "198.51.100.9", hostPort(HostAddr4, tc.hostPort))
			return err == nil
		})
		if !ok {
			t.Fatalf("dial forwarded port %d: %v", tc.hostPort, err)
		}
		defer c.Close()
		s := acceptOne(t, l)
		if ra := s.RemoteAddr().(*net.TCPAddr); ra.IP.String() != "198.51.100.9" || ra.Port != c.LocalAddr().(*net.TCPAddr).Port {
			t.Fatalf("guest sees client %v, want 198.51.100.9:%d", ra, c.LocalAddr().(*net.TCPAddr).Port)
		}
		c.Write([]byte("in"))
		c.CloseWrite()
		b, err := io.ReadAll(s)
		if err != nil || string(b) != "in" {
			t.Fatalf("guest server read %q %v", b, err)
		}
		s.Write([]byte("out"))
		s.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err = io.ReadAll(c)
		if err != nil || string(b) != "out" {
			t.Fatalf("client read %q %v", b, err)
		}
	}
}

// guestTap returns the name of the guest's tap interface.
func guestTap(t *testing.T, g Netns) string {
	for name := range guestLinks(t, g) {
		if name != "lo" {
			return name
		}
	}
	t.Fatal("no tap in the guest")
	return ""
}

// 1% loss on the guest's tap: with netem where the kernel has it (frames
// from the guest), otherwise with iptables' statistic match on both
// directions, which also makes gopasta retransmit.
func TestTCPLoss(t *testing.T) {
	gp := StartGopasta(t)
	tap := guestTap(t, gp.Guest)
	if _, err := gp.Guest.Try("tc", "qdisc", "add", "dev", tap, "root", "netem", "loss", "1%"); err != nil {
		needTool(t, "iptables")
		for _, rule := range [][]string{{"OUTPUT", "-o"}, {"INPUT", "-i"}} {
			if out, err := gp.Guest.Try("iptables", "-A", rule[0], rule[1], tap, "-m", "statistic",
				"--mode", "random", "--probability", "0.01", "-j", "DROP"); err != nil {
				t.Skipf("neither netem nor iptables statistic: %v %s", err, out)
			}
		}
		t.Log("netem not available, dropping 1% each way with iptables")
	}
	bulkBothWays(t, gp, "tcp4", "127.0.0.1:0", HostGW4, 200<<20)
}

// daemonStats asks the daemon for its statistics and returns the numbers
// of goroutines and TCP flows.
func daemonStats(t *testing.T, gp *Gopasta) (goroutines, tcpFlows int) {
	st := statsOf(t, gp)
	if st["goroutines"] == 0 {
		t.Fatalf("no statistics line with goroutines in the log: %v", st)
	}
	return st["goroutines"], st["tcp_flows"]
}

// statsOf asks the daemon for its statistics (SIGUSR1) and returns the
// name=number fields of the line it logs.
func statsOf(t *testing.T, gp *Gopasta) map[string]int {
	before := len(gp.Log())
	syscall.Kill(gp.PID(), syscall.SIGUSR1)
	var line string
	Eventually(3*time.Second, func() bool {
		log := gp.Log()
		if i := strings.LastIndex(log, "statistics"); i >= before {
			line = log[strings.LastIndex(log[:i], "\n")+1:]
			if j := strings.IndexByte(line, '\n'); j >= 0 {
				line = line[:j]
			}
			return true
		}
		return false
	})
	st := map[string]int{}
	for _, f := range strings.Fields(line) {
		if k, v, ok := strings.Cut(f, "="); ok {
			if n, err := strconv.Atoi(v); err == nil {
				st[k] = n
			}
		}
	}
	return st
}

func countFDs(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

// No descriptor or goroutine outlives its flow: 10,000 connections later,
// the daemon has what it had before.
func TestTCPNoLeaks(t *testing.T) {
	gp := StartGopasta(t)
	l := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	ServeEach(l, func(c net.Conn) { io.Copy(c, c) })
	addr := hostPort(HostGW4, lport(l))
	// One connection first, so that lazily created things exist.
	if c, err := DialTCPIn(t, gp.Guest, "tcp4", "", addr); err == nil {
		c.Close()
	}
	time.Sleep(500 * time.Millisecond)
	fds0 := countFDs(gp.PID())
	g0, _ := daemonStats(t, gp)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	var failed sync.Map
	for i := range 10000 {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := DialTCPIn(t, gp.Guest, "tcp4", "", addr)
			if err != nil {
				failed.Store(i, err)
				return
			}
			c.Write([]byte("x"))
			c.CloseWrite()
			io.ReadAll(c)
			c.Close()
		}()
	}
	wg.Wait()
	n := 0
	failed.Range(func(k, v any) bool {
		if n < 3 {
			t.Errorf("conn %v: %v", k, v)
		}
		n++
		return true
	})
	var fds1, g1, flows int
	Eventually(15*time.Second, func() bool {
		fds1 = countFDs(gp.PID())
		g1, flows = daemonStats(t, gp)
		return fds1 <= fds0 && g1 <= g0 && flows == 0
	})
	t.Logf("before: %d fds, %d goroutines; after 10000 connections: %d fds, %d goroutines, %d TCP flows", fds0, g0, fds1, g1, flows)
	if fds1 > fds0 || g1 > g0 || flows != 0 || n > 0 {
		t.Fatalf("leak or failures: fds %d -> %d, goroutines %d -> %d, flows %d, %d failed", fds0, fds1, g0, g1, flows, n)
	}
}
