package tcp

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/linktest"
	"github.com/gopasta/gopasta/link/wire"
)

// lendDev is a link.Lender over an in-memory link, standing in for the
// vhost-user device: its loans are payload areas split into segments of
// awkward sizes, some loans shorter than asked and some refused, and its
// WriteBatch assembles a lent frame and completes the checksum the frame
// left offloaded, as the guest would, before the frame goes on.
type lendDev struct {
	*linktest.MemoryDevice
	calls       atomic.Int64
	out, lentOK atomic.Int64 // loans outstanding, lent frames written
	mu          sync.Mutex
	buf         []byte // WriteBatch's assembly buffer; mu
}

type fakeLoan struct {
	d    *lendDev
	mem  []byte
	pay  [][]byte
	n    int
	cs   [2]int
	done bool
}

func (l *fakeLoan) Payload() [][]byte { return l.pay }
func (l *fakeLoan) Commit(n, start, off int) {
	l.n, l.cs = n, [2]int{start, off}
}
func (l *fakeLoan) Len() int { return l.n }
func (l *fakeLoan) Release() {
	if l.done {
		panic("loan released twice")
	}
	l.done = true
	l.d.out.Add(-1)
}

func (d *lendDev) Lend(hlen, payLen int) *link.Frame {
	k := d.calls.Add(1)
	if k%7 == 0 {
		return nil // no buffers now: the copy path
	}
	if k%5 == 0 {
		payLen = min(payLen, 3000) // fewer buffers than asked
	}
	l := &fakeLoan{d: d, mem: make([]byte, payLen)}
	// Segments of 1000, 1, 4000, then the rest.
	rest := l.mem
	for _, n := range []int{1000, 1, 4000, len(rest)} {
		n = min(n, len(rest))
		if n == 0 {
			break
		}
		l.pay, rest = append(l.pay, rest[:n]), rest[n:]
	}
	d.out.Add(1)
	f := link.GetFrame(hlen)
	f.Loan = l
	return f
}

func (d *lendDev) WriteBatch(frames []*link.Frame) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, f := range frames {
		l, ok := f.Loan.(*fakeLoan)
		if !ok {
			if err := d.MemoryDevice.WriteBatch([]*link.Frame{f}); err != nil {
				return err
			}
			continue
		}
		p := append(d.buf[:0], f.Data...)
		left := l.n
		for _, s := range l.pay {
			k := min(left, len(s))
			p = append(p, s[:k]...)
			left -= k
		}
		d.buf = p
		start, off := l.cs[0], l.cs[1]
		binary.BigEndian.PutUint16(p[start+off:], wire.Fold(wire.Checksum(p[start:], 0)))
		d.lentOK.Add(1)
		if err := d.MemoryDevice.WriteBatch([]*link.Frame{{Data: p}}); err != nil {
			return err
		}
	}
	return nil
}

func newLendEnv(t *testing.T) (*testEnv, *lendDev) {
	var ld *lendDev
	te := newTestEnvDev(t, func(a *linktest.MemoryDevice) link.Device {
		ld = &lendDev{MemoryDevice: a}
		return ld
	})
	return te, ld
}

// Host data read straight into lent buffers reaches the guest whole and in
// order, with valid checksums once the offloaded one is completed, mixed
// with copied frames when the link refuses to lend; every loan comes back.
func TestTCPLentBulk(t *testing.T) {
	for _, v := range []struct {
		net, addr string
		far       netip.Addr
	}{{"tcp4", "127.0.0.1:0", testGW4}, {"tcp6", "[::1]:0", testGW6}} {
		t.Run(v.net, func(t *testing.T) {
			te, ld := newLendEnv(t)
			srv := actorstest.NewServer(t, v.net, v.addr)
			g := newGuest(te, netip.AddrPortFrom(v.far, srv.Port()), 1000)
			g.connect()
			sc := srv.Accept(t)
			download(t, g, sc, 8<<20)
			g.send(wire.TCPFin, nil)
			te.waitEnded(g.h)
			if ld.lentOK.Load() == 0 {
				t.Error("no lent frame written")
			}
			waitFor(t, "every loan back", func() bool { return ld.out.Load() == 0 })
		})
	}
}

// A flow reset by the guest in the middle of a download releases every
// loan it held, written or not.
func TestTCPLentReset(t *testing.T) {
	te, ld := newLendEnv(t)
	srv := actorstest.NewServer(t, "tcp4", "127.0.0.1:0")
	g := newGuest(te, netip.AddrPortFrom(testGW4, srv.Port()), 1000)
	g.connect()
	sc := srv.Accept(t)
	go func() {
		b := actorstest.RandBytes(1 << 20)
		for {
			if _, err := sc.Write(b); err != nil {
				return
			}
		}
	}()
	g.readUntil(1<<20, false)
	g.send(wire.TCPRst, nil)
	te.waitEnded(g.h)
	sc.Close()
	waitFor(t, "every loan back", func() bool { return ld.out.Load() == 0 })
	if ld.lentOK.Load() == 0 {
		t.Error("no lent frame written")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// tryLendDev is lendDev as a link.TryWriter, as the vhost-user device is:
// a write in place consumes lent frames always (their buffers are the
// guest's already) and, every other time, refuses the first plain frame,
// as a guest out of receive buffers would.
type tryLendDev struct {
	*lendDev
	tries, lentTried atomic.Int64
}

func (d *tryLendDev) TryWriteBatch(frames []*link.Frame) (int, error) {
	k := d.tries.Add(1)
	n := 0
	for _, f := range frames {
		if f.Loan == nil && k%2 == 0 {
			break
		}
		if f.Loan != nil {
			d.lentTried.Add(1)
		}
		n++
	}
	return n, d.lendDev.WriteBatch(frames[:n])
}

// A download run inline (every guest ACK offered to Direct, as the
// dispatcher does on vhost-user): the lent bursts go to the link in
// place, in one write each, and what the link refuses waits in the
// Writer's queue; the bytes arrive whole and in order, every loan comes
// back.
func TestTCPLentBulkInline(t *testing.T) {
	var td *tryLendDev
	te := newTestEnvDev(t, func(a *linktest.MemoryDevice) link.Device {
		td = &tryLendDev{lendDev: &lendDev{MemoryDevice: a}}
		return td
	})
	srv := actorstest.NewServer(t, "tcp4", "127.0.0.1:0")
	g := newGuest(te, netip.AddrPortFrom(testGW4, srv.Port()), 1000)
	g.connect()
	sc := srv.Accept(t)
	waitIdle(t, g)
	g.inline = true
	download(t, g, sc, 8<<20)
	if g.direct == 0 || td.lentTried.Load() == 0 {
		t.Fatalf("no lent frame written in place by an inline run (%d ACKs taken by Direct, %d writes in place)",
			g.direct, td.tries.Load())
	}
	g.send(wire.TCPFin, nil)
	te.waitEnded(g.h)
	waitFor(t, "every loan back", func() bool { return td.out.Load() == 0 })
}
