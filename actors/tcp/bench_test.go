package tcp

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/linktest"
	"github.com/gopasta/gopasta/link/wire"
)

// discardDevice is a link that swallows frames, so that benchmarks measure
// the actor's path and not a copy in a test link.
type discardDevice struct{ closed chan struct{} }

func (d *discardDevice) ReadBatch([]*link.Frame) (int, error) { <-d.closed; return 0, link.ErrClosed }
func (d *discardDevice) WriteBatch([]*link.Frame) error       { return nil }
func (d *discardDevice) MTU() int                             { return 65520 }
func (d *discardDevice) Close() error                         { return nil }

// benchConn returns an established flow over a real loopback connection,
// driven directly (no actor goroutine), and the host-side peer.
func benchConn(b *testing.B) (*tcpConn, *net.TCPConn) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	cl, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	fd := takeFD(b, cl)

	dev := &discardDevice{closed: make(chan struct{})}
	b.Cleanup(func() { close(dev.closed) })
	env := actorstest.NewDev(b, actors.Options{MTU: 65520}, func(*linktest.MemoryDevice) link.Device { return dev }).Env
	k := actors.Key{Proto: wire.ProtoTCP, Guest: netip.MustParseAddrPort("10.0.2.100:40000"), Far: netip.MustParseAddrPort("10.0.2.2:80")}
	tp := testProtocol(b, env)
	c := newConn(tp, actors.NewHandle(k), k, false)
	s, err := newSock(tp, fd, false)
	if err != nil {
		b.Fatal(err)
	}
	c.sock = s
	c.rcv.ws = 7
	c.snd.ws = 7
	c.snd.mss = c.ourMSS()
	c.rcv.max = 8 << 20
	c.rcv.irs = 1000
	c.rcv.nxt = 1001
	c.rcv.edge = c.rcv.nxt + 8<<20
	c.establish("test")
	c.snd.wnd = 4 << 20
	b.Cleanup(func() {
		s.Close(true)
		peer.Close()
	})
	return c, peer.(*net.TCPConn)
}

// BenchmarkTCPHostToGuest measures peeking 512 KiB from the socket into
// frames, building their headers and checksums and handing them to the
// writer, then discarding them as acknowledged.
func BenchmarkTCPHostToGuest(b *testing.B) {
	c, peer := benchConn(b)
	const chunk = 512 << 10
	data := make([]byte, chunk)
	go func() {
		for {
			if _, err := peer.Write(data); err != nil {
				return
			}
		}
	}()
	b.SetBytes(chunk)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		got := 0
		for got < chunk {
			c.snd.sockData = true
			before := c.snd.nxt
			c.sendBatch()
			got += int(c.snd.nxt - before)
			if c.state&tcpClosed != 0 {
				b.Fatal("flow closed")
			}
			// The guest acknowledges everything: the socket's
			// receive queue holds only unacknowledged data.
			if err := c.sock.discard(int(c.snd.nxt - c.snd.una)); err != nil {
				b.Fatal(err)
			}
			c.snd.una = c.snd.nxt
		}
	}
}

// BenchmarkTCPGuestToHost measures taking a full-size segment from the
// inbox, writing it to the socket and acknowledging it.
func BenchmarkTCPGuestToHost(b *testing.B) {
	c, peer := benchConn(b)
	go io.Copy(io.Discard, peer)
	payload := make([]byte, c.ourMSS())
	tmpl := buildFrame(c.key, wire.TCPAck, 0, 0, 0xffff, nil, payload)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f := link.GetFrame(len(tmpl.Data))
		copy(f.Data, tmpl.Data)
		f.L3, f.L4, f.Payload = tmpl.L3, tmpl.L4, tmpl.Payload
		wire.TCP(f.Data[f.L4:]).SetSeqAck(c.rcv.nxt, c.snd.nxt)
		c.tm.now = time.Now()
		c.onFrame(f)
		c.flush()
		for len(c.rcv.pend) > 0 {
			// The reader drains the socket; wait for room.
			time.Sleep(10 * time.Microsecond)
			c.flush()
		}
		c.output()
	}
}
