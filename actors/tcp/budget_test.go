package tcp

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/linktest"
	"github.com/gopasta/gopasta/link/wire"
)

// budgetEnv is an Env whose flows are driven directly by the test (no
// actor goroutines), with frames to the guest swallowed.
func budgetEnv(t *testing.T, flowBuf, totalBuf int64) *actors.Env {
	dev := &discardDevice{closed: make(chan struct{})}
	t.Cleanup(func() { close(dev.closed) })
	ae := actorstest.NewDev(t, actors.Options{MTU: 65520, FlowBuffer: flowBuf, TotalBuffer: totalBuf},
		func(*linktest.MemoryDevice) link.Device { return dev })
	return ae.Env
}

// budgetFlow returns an established flow of env over a loopback
// connection, driven directly, and the host peer, which reads nothing
// until the test does. sndbuf sets the flow socket's send buffer.
func budgetFlow(t *testing.T, env *actors.Env, port uint16, sndbuf int) (*tcpConn, *net.TCPConn) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 16<<10) })
		return errors.Join(err, serr)
	}}
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cl, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	fd := takeFD(t, cl)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf)
	k := actors.Key{Proto: wire.ProtoTCP, Guest: netip.AddrPortFrom(testGuest4, port), Far: netip.MustParseAddrPort("10.0.2.2:80")}
	tp := testProtocol(t, env)
	c := newConn(tp, actors.NewHandle(k), k, false)
	s, err := newSock(tp, fd, false)
	if err != nil {
		t.Fatal(err)
	}
	c.sock = s
	c.rcv.ws, c.snd.ws = 7, 7
	c.snd.mss = c.ourMSS()
	c.rcv.max = 8 << 20
	c.rcv.irs = 1000
	c.rcv.nxt = 1001
	c.rcv.edge = c.rcv.nxt
	c.establish("test")
	c.snd.wnd = 4 << 20
	c.ack.force = true
	c.sendAck() // the first window, as the SYN,ACK would
	t.Cleanup(func() {
		if c.sock != nil {
			c.sock.Close(true)
		}
		peer.Close()
	})
	return c, peer.(*net.TCPConn)
}

// checkHeld verifies that what c holds is accounted by the bytes its
// buffers keep alive, within its budget, and that the window it
// advertised cannot make it hold more than its budget.
func checkHeld(t *testing.T, c *tcpConn, when string) {
	t.Helper()
	kept, payload, oooBytes, head := 0, 0, 0, 0
	for i, s := range c.rcv.pend {
		kept += cap(s.f.Data)
		payload += len(s.b)
		if i == 0 {
			// Partly written, maybe: its cost was bounded before.
			head = cap(s.f.Data) - 2*len(s.b)
		}
	}
	for _, s := range c.rcv.ooo {
		kept += cap(s.f.Data)
		payload += len(s.b)
		oooBytes += len(s.b)
	}
	budget := c.env.Opts.FlowBuffer
	switch {
	case kept != c.rcv.held:
		t.Fatalf("%s: buffers keep %d bytes alive, flow counts %d", when, kept, c.rcv.held)
	case int64(kept) > c.rcv.charge || c.rcv.charge > budget:
		t.Fatalf("%s: %d bytes kept, %d reserved, budget %d", when, kept, c.rcv.charge, budget)
	case kept-max(head, 0) > 2*payload+actors.TCPBudgetSlack:
		t.Fatalf("%s: %d bytes kept alive for %d bytes of payload", when, kept, payload)
	}
	if ahead := int64(c.rcv.edge-c.rcv.nxt) - int64(oooBytes); seqGT(c.rcv.edge, c.rcv.nxt) && int64(kept)+2*ahead > budget {
		t.Fatalf("%s: holding %d, the advertised window lets the guest send %d more: over the budget %d", when, kept, ahead, budget)
	}
}

// segFrame is an in-sequence-or-not data segment of the flow's guest.
func segFrame(c *tcpConn, seq uint32, data []byte) *link.Frame {
	return buildFrame(c.key, wire.TCPAck|wire.TCPPsh, seq, c.snd.nxt, 0xffff, nil, data)
}

// drain runs a batch of guest frames as the actor's inbox drain would.
func drain(c *tcpConn, fs []*link.Frame) {
	c.tm.now = time.Now()
	for _, f := range fs {
		c.onFrame(f)
	}
	c.flush()
	c.output()
}

// TestTCPBudgetWindowNoLoss: a guest that sends only inside the windows
// it is given, in segments of every size, some out of order, to a host
// that reads nothing for a while, loses no byte, while the flow never
// holds more than its budget: the window shrinks as the budget fills.
func TestTCPBudgetWindowNoLoss(t *testing.T) {
	const budget = 160 << 10
	env := budgetEnv(t, budget, 0)
	c, peer := budgetFlow(t, env, 41000, 256<<10)
	rng := rand.New(rand.NewSource(1))
	data := make([]byte, 2<<20)
	rng.Read(data)
	want := sha256.Sum256(data)

	got := sha256.New()
	read := 0
	buf := make([]byte, 64<<10)
	readSome := func(max int) {
		for n := 0; n < max; {
			_ = peer.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			m, err := peer.Read(buf[:min(len(buf), max-n)])
			got.Write(buf[:m])
			read += m
			n += m
			if err != nil {
				return
			}
		}
	}
	sent, minWin, maxWin := 0, int(^uint(0)>>1), 0
	base := c.rcv.nxt
	for rounds := 0; read < len(data); rounds++ {
		if rounds > 20000 {
			t.Fatalf("stalled: sent %d, host read %d", sent, read)
		}
		edge := int(c.rcv.edge - base)
		win := edge - int(c.rcv.nxt-base) + c.rcv.pendBytes
		minWin, maxWin = min(minWin, win), max(maxWin, win)
		var batch []*link.Frame
		for sent < edge && sent < len(data) && len(batch) < 64 {
			n := min(1+rng.Intn(3000), edge-sent, len(data)-sent)
			if rng.Intn(8) == 0 {
				n = min(20000+rng.Intn(20000), edge-sent, len(data)-sent) // a mid-sized segment in a large buffer
			}
			batch = append(batch, segFrame(c, base+uint32(sent), data[sent:sent+n]))
			sent += n
		}
		for i := 0; i+1 < len(batch); i += 2 {
			if rng.Intn(3) == 0 {
				batch[i], batch[i+1] = batch[i+1], batch[i] // out of order, inside the window
			}
		}
		drain(c, batch)
		if c.state&tcpClosed != 0 {
			t.Fatal("flow closed")
		}
		checkHeld(t, c, "after a drain")
		if sent > 1<<20 || len(batch) == 0 {
			readSome(32 << 10)
			c.onWritable()
			checkHeld(t, c, "after the host read")
		}
	}
	if c.rcv.nxt-base != uint32(len(data)) || len(c.rcv.pend) != 0 || len(c.rcv.ooo) != 0 {
		t.Fatalf("flow at %d of %d, %d pending, %d out of order", c.rcv.nxt-base, len(data), len(c.rcv.pend), len(c.rcv.ooo))
	}
	if [32]byte(got.Sum(nil)) != want {
		t.Fatal("the host received other bytes than the guest sent")
	}
	if n := env.Stats.TCPBeyondWindow.Load(); n != 0 {
		t.Fatalf("%d segments dropped beyond the window from a guest that kept inside it", n)
	}
	// The window was what the budget leaves, not what the socket has.
	if maxWin > budget || minWin > budget/8 {
		t.Fatalf("windows from %d to %d with a budget of %d", minWin, maxWin, budget)
	}
	t.Logf("windows %d..%d, budget %d", minWin, maxWin, budget)
}

// TestTCPBudgetHostileHoles: a guest sending segments behind a hole it
// never fills, across and far beyond the window, makes the flow hold no
// more than its budget, in buffers sized to the payload; what lies beyond
// the window is dropped and counted, and the flow still moves data.
func TestTCPBudgetHostileHoles(t *testing.T) {
	const budget = 256 << 10
	env := budgetEnv(t, budget, 0)
	c, peer := budgetFlow(t, env, 41001, 4<<20)
	payload := make([]byte, 2100) // in a 64 KiB buffer: the frame is > 2 KiB
	var batch []*link.Frame
	for k := 0; k < 5000; k++ {
		batch = append(batch, segFrame(c, c.rcv.nxt+1+uint32(k)*3000, payload))
		if len(batch) == 64 {
			drain(c, batch)
			batch = batch[:0]
			checkHeld(t, c, "holes")
		}
	}
	drain(c, batch)
	checkHeld(t, c, "holes")
	if len(c.rcv.ooo) == 0 {
		t.Fatal("nothing held: the test tests nothing")
	}
	if env.Stats.TCPBeyondWindow.Load() == 0 {
		t.Fatal("segments beyond the window not counted")
	}
	if c.rcv.held > len(c.rcv.ooo)*link.BufferClass(len(payload)) {
		t.Fatalf("%d segments of %d bytes keep %d bytes alive", len(c.rcv.ooo), len(payload), c.rcv.held)
	}
	if got := env.Stats.BufferBytes.Load(); got != c.rcv.charge || got > budget {
		t.Fatalf("daemon-wide count %d, flow's reservation %d, budget %d", got, c.rcv.charge, budget)
	}
	// In-order data still goes through: fill the first hole.
	drain(c, []*link.Frame{segFrame(c, c.rcv.nxt, []byte{'x'})})
	b := make([]byte, 2101)
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(peer, b); err != nil {
		t.Fatalf("host read: %v", err)
	}
	checkHeld(t, c, "after the hole")
	c.finish()
	if got := env.Stats.BufferBytes.Load(); got != 0 {
		t.Fatalf("%d bytes still counted after the flow ended", got)
	}
}

// TestTCPBudgetDaemonWide: flows share the daemon-wide budget; what they
// reserve together never exceeds it, and comes back when they end.
func TestTCPBudgetDaemonWide(t *testing.T) {
	const total = 1 << 20
	env := budgetEnv(t, 0, total)
	var cs []*tcpConn
	for i := range 8 {
		c, _ := budgetFlow(t, env, uint16(42000+i), 4<<20)
		cs = append(cs, c)
	}
	sum := int64(0)
	for i, c := range cs {
		sum += c.rcv.charge
		win := int64(c.rcv.edge - c.rcv.nxt)
		if actors.TCPBudgetSlack+2*win > c.rcv.charge {
			t.Errorf("flow %d: window %d, reservation %d", i, win, c.rcv.charge)
		}
		if win == 0 {
			t.Errorf("flow %d: no window at all", i)
		}
	}
	if got := env.Stats.BufferBytes.Load(); got != sum || got > total {
		t.Fatalf("reserved %d (flows: %d), budget %d", got, sum, total)
	}
	for _, c := range cs {
		c.finish()
	}
	if got := env.Stats.BufferBytes.Load(); got != 0 {
		t.Fatalf("%d bytes still counted after every flow ended", got)
	}
}

// TestTCPBudgetStarvedFlowReopens: a flow whose window the daemon-wide
// budget left too small looks again by itself, and offers the guest a
// larger window once other flows have given budget back.
func TestTCPBudgetStarvedFlowReopens(t *testing.T) {
	const total = 1 << 20
	env := budgetEnv(t, 0, total)
	var cs []*tcpConn
	for i := range 16 {
		c, _ := budgetFlow(t, env, uint16(43000+i), 4<<20)
		cs = append(cs, c)
	}
	if got := env.Stats.BufferBytes.Load(); got > total {
		t.Fatalf("reserved %d, budget %d", got, total)
	}
	last := cs[len(cs)-1]
	if last.tm.budgetAt.IsZero() {
		t.Fatalf("the last flow (window %d) is not waiting for budget", last.rcv.edge-last.rcv.nxt)
	}
	before := last.rcv.edge - last.rcv.nxt
	for _, c := range cs[:8] {
		c.finish()
	}
	last.tm.now = last.tm.budgetAt
	last.onTimer()
	after := last.rcv.edge - last.rcv.nxt
	if after <= before || int(after) < actors.TCPInitWindow/2 {
		t.Fatalf("window %d before, %d after budget came free", before, after)
	}
	sharing, sum := int64(0), int64(0)
	for _, c := range cs[8:] {
		if c.rcv.charge > 0 {
			sharing++
		}
		sum += c.rcv.charge
	}
	if n := env.BudgetFlows.Load(); n != sharing || env.Stats.BufferBytes.Load() != sum {
		t.Fatalf("%d flows counted as sharing the budget (%d do), %d bytes (flows: %d)", n, sharing, env.Stats.BufferBytes.Load(), sum)
	}
}
