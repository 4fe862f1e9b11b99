package tcp

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/link"
)

// extMem counts what fakeExts did.
type extMem struct {
	out, copied, total atomic.Int64
}

// fakeExt stands in for vhost-user guest memory (link.Ext): the payload
// lives in mem, split into awkward segments; the frame's own bytes from
// ExtOff on are garbage. Release scribbles over mem, as a guest reusing
// its buffer would: anything reading it afterwards sends garbage.
type fakeExt struct {
	m    *extMem
	mem  []byte
	segs [][]byte
	done bool
}

func (e *fakeExt) Segs() [][]byte { return e.segs }
func (e *fakeExt) CopyTo(frame []byte, off int) bool {
	n := copy(frame[off:], e.mem)
	e.m.copied.Add(int64(n))
	return true
}
func (e *fakeExt) Release() {
	if e.done {
		panic("ext released twice")
	}
	e.done = true
	for i := range e.mem {
		e.mem[i] = 0xa5
	}
	e.m.out.Add(-1)
}

// extHook turns every frame with payload into one whose payload, past
// its first 7 bytes, is in "guest memory", as the vhost-user device
// leaves it.
func extHook(t *testing.T, m *extMem) {
	hook := func(k actors.Key, f *link.Frame) {
		off := f.Payload + 7
		if off >= len(f.Data) {
			return
		}
		e := &fakeExt{m: m, mem: append([]byte(nil), f.Data[off:]...)}
		for i := off; i < len(f.Data); i++ {
			f.Data[i] = 0xee
		}
		rest := e.mem
		for _, n := range []int{1000, 1, len(rest)} {
			n = min(n, len(rest))
			if n > 0 {
				e.segs, rest = append(e.segs, rest[:n]), rest[n:]
			}
		}
		m.out.Add(1)
		m.total.Add(int64(len(e.mem)))
		f.Ext, f.ExtOff = e, off
	}
	tcpTestHook.Store(&hook)
	t.Cleanup(func() { tcpTestHook.Store(nil) })
}

// The guest's payload goes to the socket from guest memory, whole and in
// order, whether the socket keeps up (most bytes never copied) or stays
// full (what the flow holds is copied, so no guest memory is held while
// the socket is full); guest memory is never read after its release.
func TestTCPExtUpload(t *testing.T) {
	for _, v := range []struct {
		name, net, addr string
		far             netip.Addr
		slow            bool
	}{
		{"v4", "tcp4", "127.0.0.1:0", testGW4, false},
		{"v6", "tcp6", "[::1]:0", testGW6, false},
		{"v4-full-socket", "tcp4", "127.0.0.1:0", testGW4, true},
	} {
		t.Run(v.name, func(t *testing.T) {
			var m extMem
			extHook(t, &m)
			te := newTestEnv(t)
			srv := actorstest.NewServer(t, v.net, v.addr)
			g := newGuest(te, netip.AddrPortFrom(v.far, srv.Port()), 5000)
			g.connect()
			sc := srv.Accept(t)
			up := actorstest.RandBytes(8 << 20)
			heldWhileFull := make(chan int64, 1)
			var before func()
			if v.slow {
				before = func() {
					// Let the socket fill and the guest stall on
					// the window before reading anything.
					time.Sleep(500 * time.Millisecond)
					heldWhileFull <- m.out.Load()
				}
			}
			upload(t, g, sc, up, before)
			waitFor(t, "every ext released", func() bool { return m.out.Load() == 0 })
			total, copied := m.total.Load(), m.copied.Load()
			t.Logf("%d payload bytes in guest memory, %d copied", total, copied)
			if total < int64(len(up))*9/10 {
				t.Fatalf("only %d of %d bytes went through the hook", total, len(up))
			}
			if v.slow {
				if n := <-heldWhileFull; n != 0 {
					t.Errorf("%d frames of guest memory held while the socket was full", n)
				}
				if copied == 0 {
					// The window follows the socket's room, so a
					// partial write is up to the scheduler.
					t.Log("no partial write happened this time")
				}
			} else if copied > total/2 {
				t.Errorf("%d of %d bytes copied: the payload did not go from guest memory", copied, total)
			}
		})
	}
}
