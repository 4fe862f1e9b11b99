package link

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/link/netns"
)

var (
	tapTestMAC  = [6]byte{0x02, 0, 0, 0, 0, 0x02}
	tapTestIP   = [4]byte{10, 9, 0, 2}
	tapKernelIP = [4]byte{10, 9, 0, 1}
)

// newTestTap creates a tap in a fresh network namespace, with the kernel's
// side at 10.9.0.1/24 and IPv6 off (so no router solicitations interfere).
func newTestTap(t *testing.T, mtu int) (*Tap, int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	nsFD, err := netns.NewUnshared()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(nsFD) })
	tap, err := OpenTap("gptest0", nsFD, mtu)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() })
	err = netns.Do(nsFD, func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/gptest0/disable_ipv6", []byte("1"), 0)
	})
	if err != nil {
		t.Fatal(err)
	}
	h, err := nsNetlink(nsFD)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName("gptest0")
	if err != nil {
		t.Fatal(err)
	}
	if q := l.Attrs().TxQLen; q != TapTxQueueLen {
		t.Errorf("txqueuelen %d, want %d", q, TapTxQueueLen)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(tapKernelIP[:]), Mask: net.CIDRMask(24, 32)}}
	if err := h.AddrAdd(l, addr); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return tap, nsFD
}

func arpRequest() []byte {
	b := make([]byte, 42)
	copy(b[0:6], Broadcast[:])
	copy(b[6:12], tapTestMAC[:])
	binary.BigEndian.PutUint16(b[12:], 0x0806)
	a := b[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	copy(a[8:14], tapTestMAC[:])
	copy(a[14:18], tapTestIP[:])
	copy(a[24:28], tapKernelIP[:])
	return b
}

func csum(b []byte) uint16 {
	var s uint32
	for len(b) >= 2 {
		s += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func echoRequest(dstMAC [6]byte, seq uint16, payload int) []byte {
	b := make([]byte, 14+20+8+payload)
	copy(b[0:6], dstMAC[:])
	copy(b[6:12], tapTestMAC[:])
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+payload))
	ip[8], ip[9] = 64, 1
	copy(ip[12:16], tapTestIP[:])
	copy(ip[16:20], tapKernelIP[:])
	binary.BigEndian.PutUint16(ip[10:], csum(ip))
	ic := b[34:]
	ic[0] = 8
	binary.BigEndian.PutUint16(ic[4:], 0x4242)
	binary.BigEndian.PutUint16(ic[6:], seq)
	for i := range payload {
		ic[8+i] = byte(i)
	}
	binary.BigEndian.PutUint16(ic[2:], csum(ic))
	return b
}

func frames(n, size int) []*Frame {
	fs := make([]*Frame, n)
	for i := range fs {
		fs[i] = GetFrame(size)
	}
	return fs
}

// readUntil reads batches until match accepts a frame or the deadline.
func readUntil(t *testing.T, tap *Tap, match func([]byte) bool) []byte {
	t.Helper()
	got := make(chan []byte, 1)
	go func() {
		fs := frames(BatchSize, MaxFrameSize)
		defer ReleaseAll(fs)
		for {
			n, err := tap.ReadBatch(fs)
			if err != nil {
				got <- nil
				return
			}
			for _, f := range fs[:n] {
				if match(f.Data) {
					got <- append([]byte(nil), f.Data...)
					return
				}
			}
		}
	}()
	select {
	case b := <-got:
		return b
	case <-time.After(3 * time.Second):
		t.Fatal("no matching frame from the kernel")
		return nil
	}
}

func TestTapARPAndEcho(t *testing.T) {
	tap, _ := newTestTap(t, 1500)
	if err := tap.WriteBatch([]*Frame{{Data: arpRequest()}}); err != nil {
		t.Fatal(err)
	}
	reply := readUntil(t, tap, func(b []byte) bool {
		return len(b) >= 42 && binary.BigEndian.Uint16(b[12:]) == 0x0806 && binary.BigEndian.Uint16(b[20:]) == 2
	})
	if !bytes.Equal(reply[0:6], tapTestMAC[:]) || !bytes.Equal(reply[28:32], tapKernelIP[:]) ||
		!bytes.Equal(reply[32:38], tapTestMAC[:]) || !bytes.Equal(reply[38:42], tapTestIP[:]) {
		t.Fatalf("bad ARP reply % x", reply)
	}
	kernelMAC := [6]byte(reply[22:28])

	// A batch of echo requests in one WriteBatch; every reply must come back
	// intact, however the kernel's replies are split into read batches.
	const count = 32
	batch := make([]*Frame, count)
	for i := range batch {
		batch[i] = &Frame{Data: echoRequest(kernelMAC, uint16(i), 1000)}
	}
	if err := tap.WriteBatch(batch); err != nil {
		t.Fatal(err)
	}
	seen := map[uint16]bool{}
	fs := frames(BatchSize, MaxFrameSize)
	defer ReleaseAll(fs)
	deadline := time.AfterFunc(3*time.Second, func() { tap.Close() })
	defer deadline.Stop()
	for len(seen) < count {
		n, err := tap.ReadBatch(fs)
		if err != nil {
			t.Fatalf("after %d replies: %v", len(seen), err)
		}
		for _, f := range fs[:n] {
			b := f.Data
			if len(b) < 42 || binary.BigEndian.Uint16(b[12:]) != 0x0800 || b[23] != 1 || b[34] != 0 {
				continue
			}
			if csum(b[14:34]) != 0 || csum(b[34:]) != 0 {
				t.Fatalf("bad checksum in echo reply % x", b[:42])
			}
			if len(b) != 14+20+8+1000 || b[42+999] != byte(999%256) {
				t.Fatalf("echo reply length %d or payload wrong", len(b))
			}
			seen[binary.BigEndian.Uint16(b[40:])] = true
		}
	}
}

func TestTapSkipsBadFrames(t *testing.T) {
	tap, _ := newTestTap(t, 1500)
	small := &Frame{Data: make([]byte, 10)}
	big := &Frame{Data: make([]byte, 1500+14+1)}
	if err := tap.WriteBatch([]*Frame{small, big, {Data: arpRequest()}}); err != nil {
		t.Fatal(err)
	}
	if got := tap.Skipped.Load(); got != 2 {
		t.Fatalf("Skipped = %d, want 2", got)
	}
	// The good frame after the bad ones still went out.
	readUntil(t, tap, func(b []byte) bool {
		return len(b) >= 42 && binary.BigEndian.Uint16(b[12:]) == 0x0806
	})
}

func TestTapCloseUnblocksRead(t *testing.T) {
	tap, _ := newTestTap(t, 1500)
	errc := make(chan error, 1)
	go func() {
		fs := frames(4, MaxFrameSize)
		defer ReleaseAll(fs)
		for {
			if _, err := tap.ReadBatch(fs); err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	tap.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("ReadBatch after Close: %v, want ErrClosed", err)
		}
	case <-time.After(time.Second):
		t.Fatal("ReadBatch still blocked after Close")
	}
	if err := tap.WriteBatch([]*Frame{{Data: arpRequest()}}); !errors.Is(err, ErrClosed) {
		t.Fatalf("WriteBatch after Close: %v, want ErrClosed", err)
	}
}

func TestTapInNamespaceOnly(t *testing.T) {
	tap, _ := newTestTap(t, 1500)
	if _, err := net.InterfaceByName(tap.Name()); err == nil {
		t.Fatalf("tap %s visible in the test's own namespace", tap.Name())
	}
}

func TestTapDownInterfaceIsNotAnError(t *testing.T) {
	tap, nsFD := newTestTap(t, 1500)
	h, err := nsNetlink(nsFD)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, _ := h.LinkByName(tap.Name())
	if err := h.LinkSetDown(l); err != nil {
		t.Fatal(err)
	}
	before := tap.Skipped.Load()
	if err := tap.WriteBatch([]*Frame{{Data: arpRequest()}}); err != nil {
		t.Fatalf("write to a down tap: %v", err)
	}
	t.Logf("skipped on a down interface: %d", tap.Skipped.Load()-before)
}

// nsNetlink returns a netlink handle whose sockets live in nsFD.
func nsNetlink(nsFD int) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := netns.Do(nsFD, func() (err error) {
		h, err = netlink.NewHandle()
		return err
	})
	return h, err
}

// TestTapReadLoop checks the dispatcher's way of reading: every reply to
// several waves of echo requests reaches handle exactly once, including
// waves sent while ReadLoop sits in the poller after an EAGAIN (the case
// where a lost readiness edge would hang it), and the read deadline ends a
// wait with os.ErrDeadlineExceeded.
func TestTapReadLoop(t *testing.T) {
	tap, _ := newTestTap(t, 1500)
	if err := tap.WriteBatch([]*Frame{{Data: arpRequest()}}); err != nil {
		t.Fatal(err)
	}
	reply := readUntil(t, tap, func(b []byte) bool {
		return len(b) >= 42 && binary.BigEndian.Uint16(b[12:]) == 0x0806 && binary.BigEndian.Uint16(b[20:]) == 2
	})
	kernelMAC := [6]byte(reply[22:28])

	const waves, perWave = 20, 10
	send := func(w int) {
		batch := make([]*Frame, perWave)
		for i := range batch {
			batch[i] = &Frame{Data: echoRequest(kernelMAC, uint16(w*perWave+i), 100)}
		}
		if err := tap.WriteBatch(batch); err != nil {
			t.Error(err)
		}
	}
	seen := make([]int, waves*perWave)
	total := 0
	fs := frames(8, MaxFrameSize) // small batches: full ones must loop too
	defer ReleaseAll(fs)
	go func() {
		for w := range waves {
			send(w)
			time.Sleep(2 * time.Millisecond) // let ReadLoop drain and wait
		}
	}()
	if err := tap.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	err := tap.ReadLoop(fs, func(n int) bool {
		for _, f := range fs[:n] {
			b := f.Data
			if len(b) >= 42 && binary.BigEndian.Uint16(b[12:]) == 0x0800 && b[23] == 1 && b[34] == 0 {
				if seq := int(binary.BigEndian.Uint16(b[40:])); seq < len(seen) {
					seen[seq]++
					total++
				}
			}
			f.Data = f.Data[:cap(f.Data)]
		}
		return total < len(seen)
	})
	if err != nil {
		t.Fatalf("ReadLoop after %d of %d replies: %v", total, len(seen), err)
	}
	for seq, c := range seen {
		if c != 1 {
			t.Fatalf("reply %d seen %d times", seq, c)
		}
	}

	// Nothing more arrives: the deadline must end the wait.
	if err := tap.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = tap.ReadLoop(fs, func(int) bool { return true })
	if !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("ReadLoop with a deadline: %v after %v", err, time.Since(start))
	}
}

// The tap's batch calls allocate nothing: the poller callbacks are bound
// once, not built per call.
func TestTapNoAllocs(t *testing.T) {
	tap, _ := newTestTap(t, 1500)
	req := []*Frame{{Data: arpRequest()}}
	fs := frames(4, MaxFrameSize)
	defer ReleaseAll(fs)
	allocs := testing.AllocsPerRun(50, func() {
		if err := tap.WriteBatch(req); err != nil {
			t.Fatal(err)
		}
		for i := range fs {
			fs[i].Data = fs[i].Data[:cap(fs[i].Data)]
		}
		if _, err := tap.ReadBatch(fs); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per write+read, want 0", allocs)
	}
}
