package tcp

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/link/wire"
)

// TestTCPConnectCap: SYNs beyond the cap on pending connects are answered
// with a reset at once and counted; the pending ones are reset at their
// connect deadline; and then nothing is held (pending count, descriptors).
func TestTCPConnectCap(t *testing.T) {
	te := newTestEnv(t)
	old := actors.TCPConnectTimeoutFor
	actors.TCPConnectTimeoutFor = func() time.Duration { return 400 * time.Millisecond }
	defer func() { actors.TCPConnectTimeoutFor = old }()
	te.env.Limits.SetConnectLimit(3)
	far := netip.AddrPortFrom(testGW4, blackholeListener(t))
	base := actorstest.FDCount(t)

	var pending []*actors.Handle
	start := time.Now()
	for i := range 5 {
		g := newGuest(te, far, uint32(1000+i))
		h := te.TCP.Start(g.k, buildFrame(g.k, wire.TCPSyn, g.iss, 0, 0xffff, synOpts(1460, 7), nil))
		if i < 3 {
			if h == nil {
				t.Fatalf("SYN %d within the cap refused", i)
			}
			pending = append(pending, h)
			continue
		}
		if h != nil {
			t.Fatalf("SYN %d over the cap of 3 started a flow", i)
		}
		s := te.next(time.Second)
		if !s.has(wire.TCPRst|wire.TCPAck) || s.ack != g.iss+1 || s.dst != g.k.Guest {
			t.Fatalf("SYN %d over the cap: want RST,ACK acking %d to %v, got %#x ack %d to %v", i, g.iss+1, g.k.Guest, s.flags, s.ack, s.dst)
		}
	}
	if n := te.env.Limits.ConnectRefused.Load(); n != 2 {
		t.Errorf("connects refused: %d, want 2", n)
	}
	if n := te.env.Limits.Connecting(); n != 3 {
		t.Errorf("connects pending: %d, want 3", n)
	}
	// Each actor opens its socket on its own goroutine: give them until
	// well before the connect deadline.
	got := actorstest.FDCount(t)
	for wait := time.Now().Add(300 * time.Millisecond); got < base+3 && time.Now().Before(wait); got = actorstest.FDCount(t) {
		time.Sleep(5 * time.Millisecond)
	}
	if got < base+3 {
		t.Errorf("descriptors %d, base %d: the pending connects hold none?", got, base)
	}
	for range pending {
		s := te.next(2 * time.Second)
		if !s.has(wire.TCPRst) {
			t.Fatalf("pending connect ended with %#x, want a reset", s.flags)
		}
	}
	if el := time.Since(start); el < 400*time.Millisecond || el > 1500*time.Millisecond {
		t.Errorf("pending connects reset after %v, want about 400ms", el)
	}
	ended := map[*actors.Handle]bool{}
	for len(ended) < len(pending) {
		select {
		case h := <-te.ended:
			ended[h] = true
		case <-time.After(2 * time.Second):
			t.Fatalf("%d of %d pending flows ended", len(ended), len(pending))
		}
	}
	if n := te.env.Limits.ConnectTimeout.Load(); n != 3 {
		t.Errorf("connect timeouts: %d, want 3", n)
	}
	if n := te.env.Limits.Connecting(); n != 0 {
		t.Errorf("connects pending after the deadline: %d", n)
	}
	if _, used := te.env.Limits.FDBudget(); used != 0 {
		t.Errorf("descriptors still counted: %d", used)
	}
	if !actorstest.Eventually(time.Second, func() bool { return actorstest.FDCount(t) <= base }) {
		t.Errorf("descriptors %d, base %d", actorstest.FDCount(t), base)
	}
}

// blackholeListener returns a loopback port whose listener never accepts
// and whose accept queue is full: a SYN to it is dropped, and a connect()
// stays in progress, as towards a host that never answers.
func blackholeListener(t *testing.T) uint16 {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	port := sa.(*unix.SockaddrInet4).Port
	// Fill the accept queue; later SYNs are dropped.
	for range 3 {
		if c, err := net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond); err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	return uint16(port)
}

// TestTCPFDBudget: a SYN that finds the descriptor budget spent is reset
// and counted; the budget comes back when a flow ends.
func TestTCPFDBudget(t *testing.T) {
	te := newTestEnv(t)
	srv := actorstest.NewServer(t, "tcp4", "127.0.0.1:0")
	te.env.Limits.SetFDBudget(1)
	far := netip.AddrPortFrom(testGW4, srv.Port())
	g1 := newGuest(te, far, 5000)
	g1.connect()
	g2 := newGuest(te, far, 6000)
	if h := te.TCP.Start(g2.k, buildFrame(g2.k, wire.TCPSyn, g2.iss, 0, 0xffff, synOpts(1460, 7), nil)); h != nil {
		t.Fatal("a flow started beyond the descriptor budget")
	}
	if s := te.next(time.Second); !s.has(wire.TCPRst) || s.dst != g2.k.Guest {
		t.Fatalf("over the budget: got %#x to %v, want a reset", s.flags, s.dst)
	}
	if n := te.env.Limits.FDRefused.Load(); n != 1 {
		t.Errorf("refusals: %d", n)
	}
	g1.send(wire.TCPRst, nil)
	te.waitEnded(g1.h)
	g3 := newGuest(te, far, 7000)
	g3.connect() // room again
}
