package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// tcpSeqs reads a connected socket's next sequence number to send and to
// receive, through TCP_REPAIR (root), leaving it as it was.
func tcpSeqs(t *testing.T, c *net.TCPConn) (snd, rcv uint32) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		s := int(fd)
		get := func(q int) uint32 {
			if e := unix.SetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, q); e != nil {
				serr = e
			}
			v, e := unix.GetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ)
			if e != nil {
				serr = e
			}
			return uint32(v)
		}
		if serr = unix.SetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_ON); serr != nil {
			return
		}
		snd = get(2) // TCP_SEND_QUEUE
		rcv = get(1) // TCP_RECV_QUEUE
		if e := unix.SetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF_NO_WP); e != nil && serr == nil {
			serr = e
		}
	})
	if err != nil || serr != nil {
		t.Fatalf("TCP_REPAIR: %v %v", err, serr)
	}
	return snd, rcv
}

// vmRSS returns the resident set of pid in bytes.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// TestHostileHolesMemoryBounded: a hostile guest opens many connections
// and sends each of them out-of-order segments behind a hole it never
// fills, each 2000 bytes (a frame just too large for a 2 KiB buffer)
// padded (Ethernet padding) to nearly the largest frame the link carries,
// so that every page of the 64 KiB buffer it is read into is resident.
// The daemon's resident memory stays within the buffer budget it was
// given, and a normal transfer running at the same time delivers every
// byte intact.
//
// GOPASTA_BUDGET_BASELINE=1 runs the same attack without the budget option
// and without the bound, to measure a binary that predates it
// (GOPASTA_TEST_BIN).
func TestHostileHolesMemoryBounded(t *testing.T) {
	needRoot(t)
	const (
		flows   = 64
		perFlow = 64    // out-of-order segments per flow (the flow's limit)
		payload = 2000  // bytes per segment: a frame too large for a 2 KiB buffer
		frame   = 65000 // padding fills the large buffer: every page of it resident
		budget  = 16 << 20
	)
	baseline := os.Getenv("GOPASTA_BUDGET_BASELINE") != ""
	var opts []string
	if !baseline {
		opts = append(opts, "--total-buffer", fmt.Sprint(budget))
	}
	gp := StartGopasta(t, opts...)
	pid := gp.PID()

	l := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	// The host side keeps every connection open, reading what comes: the
	// holes are never filled, so nothing does.
	ServeEach(l, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	addr := hostPort(HostGW4, lport(l))

	// The concurrent normal transfer: guest -> host, checked by hash.
	bl := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	bulkC := mustDial(t, gp.Guest, "tcp4", hostPort(HostGW4, lport(bl)))
	bulkS := acceptOne(t, bl)

	type flow struct {
		c        *net.TCPConn
		snd, rcv uint32
	}
	var fs []flow
	for range flows {
		c := mustDial(t, gp.Guest, "tcp4", addr)
		snd, rcv := tcpSeqs(t, c)
		fs = append(fs, flow{c, snd, rcv})
	}
	t0 := time.Now()
	time.Sleep(300 * time.Millisecond)
	before := vmRSS(t, pid)

	const bulkN = 256 << 20
	type res struct {
		sum [32]byte
		n   int64
		err error
	}
	sent, got := make(chan res, 1), make(chan res, 1)
	go func() {
		s, err := stream(bulkC, bulkN, 16)
		bulkC.CloseWrite()
		sent <- res{sum: s, err: err}
	}()
	go func() {
		s, n, err := drain(bulkS)
		got <- res{s, n, err}
	}()

	send, mac := guestRaw(t, gp.Guest)
	body := make([]byte, payload)
	for i := range body {
		body[i] = 'h'
	}
	for _, f := range fs {
		la := f.c.LocalAddr().(*net.TCPAddr).AddrPort()
		ra := f.c.RemoteAddr().(*net.TCPAddr).AddrPort()
		src, dst := la.Addr().Unmap(), ra.Addr().Unmap()
		for k := range perFlow {
			seq := f.snd + 1 + uint32(k*(payload+1)) // a hole of one byte before each
			l4 := wiretest.TCP(la.Port(), ra.Port(), seq, f.rcv, wire.TCPAck|wire.TCPPsh, body)
			b := wiretest.IPFrom(mac, conf.DefaultMAC, src, dst, wire.ProtoTCP, l4)
			b = append(b, make([]byte, frame-len(b))...) // padding: a large buffer
			send(b)
		}
	}
	t.Logf("attack sent after %v", time.Since(t0))
	time.Sleep(time.Second)
	after := vmRSS(t, pid)

	s, r := <-sent, <-got
	t.Logf("normal transfer done after %v", time.Since(t0))
	if s.err != nil || r.err != nil || r.n != bulkN || s.sum != r.sum {
		t.Fatalf("normal transfer: sent %v, received %d bytes (%v), hashes equal %v", s.err, r.n, r.err, s.sum == r.sum)
	}
	sentBytes := int64(flows * perFlow * payload)
	growth := after - before
	t.Logf("RSS %d -> %d kB: %+d kB for %d bytes sent behind holes (%.2f bytes of RSS per byte)",
		before>>10, after>>10, growth>>10, sentBytes, float64(growth)/float64(sentBytes))
	if !gp.Alive() {
		t.Fatal("gopasta died")
	}
	// The budget, plus what the normal transfer and the Go runtime move
	// about (pools, heap growth): far below the 64 KiB per segment the
	// guest could pin before.
	if limit := int64(budget + 24<<20); !baseline && growth > limit {
		t.Fatalf("RSS grew by %d kB, budget %d kB", growth>>10, budget>>10)
	}
	for _, f := range fs {
		f.c.Close()
	}
}
