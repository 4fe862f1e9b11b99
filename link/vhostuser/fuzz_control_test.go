package vhostuser

import (
	"io"
	"net"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/link"
)

// FuzzRequests drives the request handlers with fuzzer-chosen sequences
// of front-end messages (sizes, indexes, addresses, memory tables over a
// real memfd, kick and call eventfds), running the data path both ways
// after each one over guest memory the fuzzer also wrote. Whatever the
// order, the device must neither panic nor touch memory it has not
// mapped; errors just end the session.
func FuzzRequests(f *testing.F) {
	seed := []byte{}
	add := func(req byte, p ...byte) { seed = append(append(seed, req, byte(len(p))), p...) }
	st := func(i, n uint32) []byte { return state(i, n) }
	add(reqSetFeatures, u64(Features)...)
	add(reqSetMemTable, 0)
	add(reqSetVringNum, st(1, 256)...)
	add(reqSetVringAddr, 1)
	add(reqSetVringKick, 1)
	add(reqSetVringNum, st(1, 1024)...)
	add(reqGetVringBase, st(1, 0)...)
	f.Add(seed, make([]byte, 512))
	f.Fuzz(func(t *testing.T, script, guest []byte) {
		g := newFakeGuest(t)
		copy(g.mem[:0x20000], guest) // the rings' area
		a, b, err := socketPair()
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		defer b.Close()
		go io.Copy(io.Discard, b) // the front end ignores replies
		d := newDevice(Config{Log: quietLog()})
		d.active = a
		k := newConn(a)
		rd, wr := newFrames(4), []*link.Frame{{Data: testFrame(1, 3000)}}
		for len(script) >= 2 {
			req, n := uint32(script[0]), int(script[1])
			script = script[2:]
			n = min(n, len(script))
			m := &msg{req: req % 45, flags: flagVersion, size: uint32(n)}
			copy(m.payload[:], script[:n])
			script = script[n:]
			switch m.req {
			case reqSetMemTable:
				// A table over the memfd, sized by the fuzzer.
				size := uint64(fakeMemSize)
				if n > 0 {
					size = uint64(m.payload[0]) << 14
				}
				p, _ := memTablePayload(0, regionDesc{GPA: fakeGPA, Size: size, QVA: fakeQVA})
				m.size = uint32(copy(m.payload[:], p))
				fd, _ := unix.Dup(g.fd)
				m.fds = []int{fd}
			case reqSetVringAddr:
				i := uint32(0)
				if n > 0 {
					i = uint32(m.payload[0]) & 1
				}
				q := newFakeQueue(g, int(i))
				m.size = uint32(copy(m.payload[:], (&fakeFront{}).vringAddr(q)))
			case reqSetVringKick, reqSetVringCall, reqSetVringErr:
				fd, _ := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
				m.fds = []int{fd}
				if n == 0 {
					m.size = 8
					clear(m.payload[:8])
				}
			}
			err := d.handle(k, m)
			m.closeFDs()
			if err != nil {
				break
			}
			d.mu.RLock()
			if d.running(txQ) {
				if _, err := d.fromGuest(rd); err != nil {
					d.broken.Store(true)
				}
			}
			if d.running(rxQ) {
				if _, err := d.toGuest(wr); err != nil {
					d.broken.Store(true)
				}
			}
			d.mu.RUnlock()
		}
		d.mu.Lock()
		d.resetLocked()
		d.mu.Unlock()
	})
}

func socketPair() (*net.UnixConn, *net.UnixConn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	var cs [2]*net.UnixConn
	for i, fd := range fds {
		f := fdFile(fd)
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
		cs[i] = c.(*net.UnixConn)
	}
	return cs[0], cs[1], nil
}
