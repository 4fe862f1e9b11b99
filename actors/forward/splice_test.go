package forward

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/actors/internal/poll"
	"github.com/gopasta/gopasta/actors/internal/sockutil"
	"github.com/gopasta/gopasta/actors/splice"
	"github.com/gopasta/gopasta/conf"
)

// splicedConn builds, in this namespace, client -> [front listener] ->
// splice pair -> [server], and returns the client's and the server's ends.
func splicedConn(t testing.TB, network, addr string) (client, server *net.TCPConn) {
	t.Helper()
	return splicedConnIn(t, testSplicer(t, fwdTestEnv(t, &conf.Config{})), network, addr)
}

// testSplicer returns a splice for env, its pairs watched for hang-ups on
// a poller of its own that the test's end closes; with env nil, a splice
// without a budget whose pairs are not watched, as when the flows' epoll
// is unavailable.
func testSplicer(t testing.TB, env *actors.Env) *splice.Splicer {
	t.Helper()
	if env == nil {
		return splice.New(nil, nil)
	}
	p, err := poll.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return splice.New(env, p)
}

// splicedConnIn is splicedConn with the pair's splice given.
func splicedConnIn(t testing.TB, sp *splice.Splicer, network, addr string) (client, server *net.TCPConn) {
	t.Helper()
	front, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	back, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	c, err := net.Dial(network, front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	accFD := acceptedFD(t, front)
	v6 := network == "tcp6"
	nfd, err := unix.Socket(family(v6), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	spliceConnect(sp, actors.FDInbound, accFD, nfd, netip.MustParseAddrPort(back.Addr().String()), nil)
	s, err := back.(*net.TCPListener).AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s
}

// acceptedFD accepts one connection on l and returns a non-blocking
// descriptor of it that the caller owns, as the forwarders own theirs.
func acceptedFD(t testing.TB, l net.Listener) int {
	t.Helper()
	acc, err := l.(*net.TCPListener).AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	af, err := acc.File()
	acc.Close()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Dup(int(af.Fd()))
	af.Close()
	if err != nil {
		t.Fatal(err)
	}
	_ = unix.SetNonblock(fd, true)
	return fd
}

// pushPull sends n random bytes from w to r and compares digests; w is
// half-closed after, r must then read EOF.
func pushPull(t *testing.T, w, r *net.TCPConn, n int) {
	t.Helper()
	data := actorstest.RandBytes(1 << 20)
	sent := sha256.New()
	errc := make(chan error, 1)
	go func() {
		for left := n; left > 0; {
			k := min(left, len(data))
			if _, err := w.Write(data[:k]); err != nil {
				errc <- err
				return
			}
			sent.Write(data[:k])
			left -= k
		}
		errc <- w.CloseWrite()
	}()
	got := sha256.New()
	m, err := io.Copy(got, r)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if int(m) != n || !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		t.Fatalf("received %d bytes, digest mismatch (sent %d)", m, n)
	}
}

func spliceSettled(t *testing.T, sp *splice.Splicer, active int64) {
	t.Helper()
	for i := 0; i < 200 && sp.Stats.TCPActive.Load() != active; i++ {
		time.Sleep(5 * time.Millisecond)
	}
	if a := sp.Stats.TCPActive.Load(); a != active {
		t.Fatalf("%d spliced pairs active, want %d", a, active)
	}
}

// TestSpliceBulkHalfClose: 64 MiB each way, one direction after the other
// was half-closed, checked by digest; then the pair ends and its
// descriptors are gone.
func TestSpliceBulkHalfClose(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
		t.Run(tc.network, func(t *testing.T) {
			env := fwdTestEnv(t, &conf.Config{})
			sp := testSplicer(t, env) // its epoll lives as long as the test
			before := actorstest.FDCount(t)
			c, s := splicedConnIn(t, sp, tc.network, tc.addr)
			pushPull(t, c, s, 64<<20) // client -> server, then client's FIN
			pushPull(t, s, c, 64<<20) // server still sends after it
			spliceSettled(t, sp, 0)
			c.Close()
			s.Close()
			if n := actorstest.FDCount(t); n > before {
				t.Fatalf("%d descriptors leaked", n-before)
			}
		})
	}
}

// TestSpliceConcurrentBothWays moves data both ways at once.
func TestSpliceConcurrentBothWays(t *testing.T) {
	c, s := splicedConn(t, "tcp4", "127.0.0.1:0")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pushPull(t, c, s, 16<<20)
	}()
	pushPull(t, s, c, 16<<20)
	wg.Wait()
}

// TestSpliceResetPropagates: a peer that aborts makes the other peer see
// a reset, not an orderly end of stream.
func TestSpliceResetPropagates(t *testing.T) {
	sp := testSplicer(t, fwdTestEnv(t, &conf.Config{}))
	c, s := splicedConnIn(t, sp, "tcp4", "127.0.0.1:0")
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(s, buf); err != nil {
		t.Fatal(err)
	}
	_ = s.SetLinger(0)
	s.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(buf)
	if !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("client read: %v, want connection reset", err)
	}
	if sp.Stats.TCPResets.Load() == 0 {
		t.Fatal("reset not counted")
	}
}

// TestSpliceRefused: a target that refuses the connection resets the
// client at once.
func TestSpliceRefused(t *testing.T) {
	front, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	dead, _ := net.Listen("tcp4", "127.0.0.1:0")
	deadAddr := netip.MustParseAddrPort(dead.Addr().String())
	dead.Close()
	c, err := net.Dial("tcp4", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	accFD := acceptedFD(t, front)
	nfd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	env := fwdTestEnv(t, &conf.Config{})
	spliceConnect(testSplicer(t, env), actors.FDInbound, accFD, nfd, deadAddr, nil)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("client read: %v, want connection reset", err)
	}
}

// TestUDPSpliceRelay: through a -U style listener, a client's datagrams
// reach the server, the replies come back from the address the client
// sent to, and an idle client's flow times out.
func TestUDPSpliceRelay(t *testing.T) {
	echo := actorstest.UDPEcho(t, "127.0.0.1:0")
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := sockutil.BindAddrPort(lfd, netip.MustParseAddrPort("127.0.0.1:0")); err != nil {
		t.Fatal(err)
	}
	laddr := netip.AddrPortFrom(actorstest.Lo4, sockutil.LocalPort(lfd))
	dup, err := unix.FcntlInt(uintptr(lfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	sp := testSplicer(t, nil)
	relay := sp.NewUDP(dup, func(netip.AddrPort) (netip.AddrPort, bool) { return echo, true },
		func(v6 bool) (int, error) {
			return unix.Socket(family(v6), unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		}, 200*time.Millisecond)
	l := &splice.UDPListener{File: os.NewFile(uintptr(lfd), "test"), Relay: relay}
	l.WG.Add(1)
	go l.Serve()
	defer l.Close()

	cl, err := net.Dial("udp4", laddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := 0; i < 3; i++ {
		msg := []byte{'m', byte('0' + i)}
		if _, err := cl.Write(msg); err != nil {
			t.Fatal(err)
		}
		_ = cl.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 100)
		n, err := cl.Read(buf) // connected: only from the listener's address
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("reply %q, %v", buf[:n], err)
		}
	}
	if got := sp.Stats.UDPFlows.Load(); got != 1 {
		t.Fatalf("%d relay flows for one client", got)
	}
	for i := 0; i < 100 && sp.Stats.UDPFlows.Load() != 0; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	if sp.Stats.UDPFlows.Load() != 0 {
		t.Fatal("idle relay flow did not time out")
	}
}

// TestSpliceDataThenFIN: a message and the FIN right behind it, the
// way a client that sends a request and half-closes does. Both usually
// sit in the socket before the pump wakes up, and one read takes the
// data but stops at the FIN without a readiness event of its own: a pump
// that waited after such a read without hearing of the FIN would never
// pass the end of stream on. Watched sockets hear of it from the flows'
// epoll; unwatched ones read once more.
func TestSpliceDataThenFIN(t *testing.T) {
	for _, watched := range []bool{true, false} {
		var env *actors.Env
		if watched {
			env = fwdTestEnv(t, &conf.Config{})
		}
		sp := testSplicer(t, env)
		for i := 0; i < 50; i++ {
			c, s := splicedConnIn(t, sp, "tcp4", "127.0.0.1:0")
			msg := []byte{'r', 'e', 'q', byte(i)}
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			_ = s.SetReadDeadline(time.Now().Add(2 * time.Second))
			got, err := io.ReadAll(s)
			if err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("watched %v, round %d: server read %q, %v; want %q then EOF", watched, i, got, err, msg)
			}
			// The answer still goes the other way after the client's FIN.
			if _, err := s.Write(msg); err != nil {
				t.Fatal(err)
			}
			s.Close()
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if got, err = io.ReadAll(c); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("watched %v, round %d: client read %q, %v", watched, i, got, err)
			}
			c.Close()
		}
	}
}

// TestSpliceRREmptyReads: request/response through a pair whose sockets
// are watched for hang-ups costs no read that finds nothing, where an
// unwatched pair makes one after every message.
func TestSpliceRREmptyReads(t *testing.T) {
	const rounds = 200
	for _, watched := range []bool{true, false} {
		var env *actors.Env
		if watched {
			env = fwdTestEnv(t, &conf.Config{})
		}
		sp := testSplicer(t, env)
		c, s := splicedConnIn(t, sp, "tcp4", "127.0.0.1:0")
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 1)
		before := sp.Stats.TCPEmptyReads.Load()
		for i := 0; i < rounds; i++ {
			if _, err := c.Write([]byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(s, buf); err != nil || buf[0] != byte(i) {
				t.Fatalf("round %d: server read %v, %v", i, buf, err)
			}
			if _, err := s.Write([]byte{^byte(i)}); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil || buf[0] != ^byte(i) {
				t.Fatalf("round %d: client read %v, %v", i, buf, err)
			}
		}
		empty := sp.Stats.TCPEmptyReads.Load() - before
		t.Logf("watched %v: %d empty reads in %d exchanges", watched, empty, rounds)
		if watched && empty > rounds/10 {
			t.Errorf("watched pair: %d empty reads in %d exchanges, want almost none", empty, rounds)
		}
		// An unwatched pump reads again after every message; that read
		// finds nothing unless the next message has already arrived,
		// which the scheduler decides, so the control only asks for
		// more than one per exchange (the watched pair stays near none).
		if !watched && empty < rounds {
			t.Errorf("unwatched pair: %d empty reads in %d exchanges, want about one per message", empty, rounds)
		}
		c.Close()
		s.Close()
	}
}

// TestSpliceOtherFamily: a target refused in one IP family is tried in the
// other (splice.Alt), and the client's bytes reach the service there.
func TestSpliceOtherFamily(t *testing.T) {
	front, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback:", err)
	}
	defer front.Close()
	back, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	port := uint16(back.Addr().(*net.TCPAddr).Port)
	c, err := net.Dial("tcp6", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	env := fwdTestEnv(t, &conf.Config{})
	sp := testSplicer(t, env)
	accFD := acceptedFD(t, front)
	nfd, _ := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	alt := &splice.Alt{Dst: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), Sock: func() (int, error) {
		return unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	}}
	// Nothing listens on [::1]:port: refused, then 127.0.0.1:port.
	spliceConnect(sp, actors.FDInbound, accFD, nfd, netip.AddrPortFrom(netip.IPv6Loopback(), port), alt)
	back.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	s, err := back.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pushPull(t, c.(*net.TCPConn), s.(*net.TCPConn), 1<<20)
	if n := sp.Stats.TCPFamilyRetries.Load(); n != 1 {
		t.Errorf("family retries %d, want 1", n)
	}
	m := map[string]uint64{}
	sp.AddStats(m)
	if n := m["splice_tcp_family_retries"]; n != 1 {
		t.Errorf("statistics say splice_tcp_family_retries %d, want 1", n)
	}
	// The pair ends before the next test counts active pairs.
	c.Close()
	s.Close()
	spliceSettled(t, sp, 0)
}
