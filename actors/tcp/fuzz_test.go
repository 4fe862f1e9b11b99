package tcp

import (
	"encoding/binary"
	"io"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/link/wire"
)

// FuzzTCPGuestSegments plays a hostile guest against a live flow: after a
// real handshake with an echo server on the host, the input is a script
// of segments with any flags, sequence and acknowledgement numbers near
// (or far from) the expected ones, any window, options and payload
// lengths, each handed to the flow as the dispatcher would (run inline or
// queued). Whatever the script does, the flow must not panic, every frame
// it sends the guest must pass a strict parse (lengths, checksums), and
// it must end when the daemon shuts down, leaving no actor behind and
// nothing counted against the buffer budget.
//
// A script record is 9 bytes: flags, seq offset (int16, from the guest's
// next sequence), ack offset (int16, from what the guest has received),
// window, payload length, and in its last byte the number of 4-byte
// option words that follow the record (0-3).
func FuzzTCPGuestSegments(f *testing.F) {
	rec := func(flags uint8, seq, ack int16, win uint16, plen uint8, opts ...byte) []byte {
		b := make([]byte, 9, 9+len(opts))
		b[0] = flags
		binary.BigEndian.PutUint16(b[1:], uint16(seq))
		binary.BigEndian.PutUint16(b[3:], uint16(ack))
		binary.BigEndian.PutUint16(b[5:], win)
		b[7], b[8] = plen, byte(len(opts)/4)
		return append(b, opts...)
	}
	cat := func(rs ...[]byte) []byte {
		var b []byte
		for _, r := range rs {
			b = append(b, r...)
		}
		return b
	}
	psh, ack := uint8(wire.TCPPsh|wire.TCPAck), uint8(wire.TCPAck)
	f.Add(cat(rec(psh, 0, 0, 0xffff, 100), rec(ack, 100, 0, 0xffff, 0)), false)
	f.Add(cat(rec(psh, 50, 0, 0xffff, 100), rec(psh, 0, 0, 0, 60), rec(ack, 0, 5, 0, 0)), true)
	f.Add(cat(rec(wire.TCPSyn, -1, 0, 0xffff, 0, 2, 4, 0xff, 0xff, 3, 3, 14, 1)), true)
	f.Add(cat(rec(psh|wire.TCPFin, 0, 0, 10, 200), rec(wire.TCPRst, 1000, 0, 0, 0)), false)
	f.Add(cat(rec(ack, 0, 300, 0xffff, 0), rec(ack, 0, -300, 0xffff, 0), rec(ack, 0, 0, 0xffff, 0)), true)

	srv := actorstest.NewServer(f, "tcp4", "127.0.0.1:0")
	// The acceptor's goroutine ends with the fuzz test; each echo ends
	// when its flow closes the connection.
	stop := make(chan struct{})
	f.Cleanup(func() { close(stop) })
	go func() {
		for {
			select {
			case c := <-srv.Conns:
				go func() { _, _ = io.Copy(c, c); c.Close() }()
			case <-stop:
				return
			}
		}
	}()
	var iter atomic.Uint32
	f.Fuzz(func(t *testing.T, script []byte, inline bool) {
		if len(script) > 9*48 {
			return
		}
		te := newTestEnv(t)
		te.env.Log.SetOutput(io.Discard)
		g := newGuest(te, netip.AddrPortFrom(testGW4, srv.Port()), 1000+iter.Add(1)*7919)
		g.inline = inline
		g.connect()
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			g.play(script)
		}()
		// Read what the flow sends while the script runs, and after
		// shutdown until the flow is gone.
		deadline := time.After(10 * time.Second)
		for done, shut := false, false; ; {
			select {
			case p := <-te.dev.Frames():
				parseSeg(t, p)
				continue
			case <-sent:
				sent = nil
				done = true
			case <-time.After(20 * time.Millisecond):
			case <-deadline:
				t.Fatalf("%d flows still running 10 s after the script", te.env.Stats.TCPFlows.Load())
			}
			if done && !shut {
				te.cancel() // the daemon shuts down: every actor ends
				shut = true
			}
			if shut && te.env.Stats.TCPFlows.Load() == 0 {
				break
			}
		}
		if n := te.env.Stats.Panics.Load(); n != 0 {
			t.Fatalf("%d panics", n)
		}
		// Whatever the flow held or reserved, it gave back.
		if n := te.env.Stats.BufferBytes.Load(); n != 0 {
			t.Fatalf("%d bytes of the buffer budget still counted after the flow ended", n)
		}
	})
}

// play sends the fuzz script's segments (see FuzzTCPGuestSegments).
func (g *guest) play(script []byte) {
	payload := make([]byte, 255)
	for i := range payload {
		payload[i] = byte(i)
	}
	for len(script) >= 9 {
		r := script[:9]
		script = script[9:]
		nopt := int(r[8]&3) * 4
		if nopt > len(script) {
			nopt = len(script) &^ 3
		}
		opts := script[:nopt]
		script = script[nopt:]
		flags := r[0] & (wire.TCPFin | wire.TCPSyn | wire.TCPRst | wire.TCPPsh | wire.TCPAck | 0x20)
		seq := g.sndNxt + uint32(int32(int16(binary.BigEndian.Uint16(r[1:]))))
		ack := g.rcvNxt + uint32(int32(int16(binary.BigEndian.Uint16(r[3:]))))
		win := binary.BigEndian.Uint16(r[5:])
		data := payload[:r[7]]
		f := buildFrame(g.k, flags, seq, ack, win, opts, data)
		if g.inline && g.h.Direct != nil && g.h.Direct(f) {
			g.direct++
		} else if g.h.Offer(f) {
			// queued, as the dispatcher would
		} else {
			f.Release() // inbox full: the dispatcher drops and counts
		}
		if seq == g.sndNxt {
			g.sndNxt += uint32(len(data))
			if flags&wire.TCPFin != 0 {
				g.sndNxt++
			}
		}
	}
}
