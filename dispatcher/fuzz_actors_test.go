package dispatcher

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/nat"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/linktest"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// loopbackEchoes starts a UDP and a TCP echo server on 127.0.0.1 and ::1,
// all on one port number each (UDP, TCP), closed when tb ends.
func loopbackEchoes(tb testing.TB) (udpPort, tcpPort uint16) {
	tb.Helper()
	u4, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	udpPort = uint16(u4.LocalAddr().(*net.UDPAddr).Port)
	t4, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tcpPort = uint16(t4.Addr().(*net.TCPAddr).Port)
	pcs := []net.PacketConn{u4}
	ls := []net.Listener{t4}
	if u6, err := net.ListenPacket("udp6", net.JoinHostPort("::1", itoa(int(udpPort)))); err == nil {
		pcs = append(pcs, u6)
	}
	if t6, err := net.Listen("tcp6", net.JoinHostPort("::1", itoa(int(tcpPort)))); err == nil {
		ls = append(ls, t6)
	}
	for _, pc := range pcs {
		tb.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 65536)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo(buf[:n], from)
			}
		}()
	}
	for _, l := range ls {
		tb.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() { _, _ = io.Copy(c, c); c.Close() }()
			}
		}()
	}
	return udpPort, tcpPort
}

// actorDests are the destinations genFlowFrames picks from: the gateway,
// which stands for the host's loopback (where the echo servers are), and
// spellings the address policy refuses, which must never start a flow.
var actorDests = []netip.Addr{
	gw4, gw6,
	netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1"), netip.MustParseAddr("::ffff:127.0.0.1"),
	netip.MustParseAddr("::ffff:0.0.0.0"), netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("::"),
	netip.MustParseAddr("0.1.2.3"), netip.MustParseAddr("::127.0.0.1"), netip.MustParseAddr("::ffff:10.0.2.2"),
}

// genFlowFrames builds up to 48 TCP, UDP and ICMP frames from the guest:
// each record picks the protocol, the destination (actorDests), the port
// (the echo servers', or port 1, closed, whose errors come back through
// the error queue), one of four source ports, and for TCP flags, sequence
// and acknowledgement numbers near the last ones, for UDP and ICMP a
// payload of any length up to 60000 bytes.
func genFlowFrames(c *choices, udpPort, tcpPort uint16) [][]byte {
	var out [][]byte
	seq, ack := uint32(1000), uint32(0)
	for n := int(c.u8())%48 + 1; n > 0 && len(c.b) > 0; n-- {
		kind := c.u8()
		dst := actorDests[int(c.u8())%len(actorDests)]
		src := guest4
		if dst.Is6() {
			src = guest6
			if c.u8()&1 != 0 {
				src = guestLL
			}
		}
		sport := 40000 + uint16(c.u8()%4)
		plen := int(c.u8())
		if plen >= 250 {
			plen = int(c.u16()) % 60000
		}
		payload := c.fill(plen)
		var l4 []byte
		var proto uint8
		switch kind % 3 {
		case 0:
			proto = wire.ProtoTCP
			port := tcpPort
			if c.u8()%4 == 0 {
				port = 1
			}
			flags := c.u8() & (wire.TCPFin | wire.TCPSyn | wire.TCPRst | wire.TCPPsh | wire.TCPAck)
			seq += uint32(int32(int8(c.u8())))
			ack += uint32(int32(int8(c.u8())))
			if flags&wire.TCPSyn != 0 {
				payload = payload[:0]
			}
			l4 = wiretest.TCP(sport, port, seq, ack, flags, payload)
			binary.BigEndian.PutUint16(l4[14:], c.u16()) // window
			seq += uint32(len(payload))
		case 1:
			proto = wire.ProtoUDP
			port := udpPort
			if c.u8()%4 == 0 {
				port = 1
			}
			l4 = wiretest.UDP(sport, port, payload)
		default:
			proto = wire.ProtoICMP
			typ := uint8(wire.ICMPv4EchoRequest)
			if dst.Is6() {
				proto, typ = wire.ProtoICMPv6, wire.ICMPv6EchoRequest
			}
			l4 = wiretest.ICMPEcho(typ, sport, c.u16(), payload)
		}
		out = append(out, wiretest.IP(src, dst, proto, l4))
	}
	return out
}

// FuzzDispatchActors is the dispatcher wired to the real TCP, UDP and ICMP
// actors: generated frames (genFlowFrames) go through handleBatch, in
// batches as the link reads them, to flows whose host sockets talk to
// echo servers on the host's loopback through the gateway mapping (lone
// frames through the actors' Direct paths when the input's last bit says
// so, as on the tap). Then
// the daemon shuts down. For any input: no panic in the dispatcher or an
// actor, no flow to a refused address, every frame sent to the guest
// parses strictly, and every actor ends.
//
// Run it in a network namespace of its own for ICMP (ping sockets need
// net.ipv4.ping_group_range) and to keep its loopback traffic apart:
//
//	unshare -n sh -c 'ip link set lo up; sysctl -qw net.ipv4.ping_group_range="0 2147483647";
//		go test -run "^$" -fuzz FuzzDispatchActors ./dispatcher/'
func FuzzDispatchActors(f *testing.F) {
	f.Add([]byte{3, 0, 0, 0, 0, 5, 0, 0, 1, 0, 0, 0, 10, 0, 0, 2, 0, 0, 20, 0, 1})
	f.Add([]byte{6, 0, 0, 0, 0, 2, 0, wire.TCPSyn, 0, 0, 0xff, 0xff, 0, 0, 0, 100, 0, wire.TCPAck | wire.TCPPsh, 1, 1, 0xff, 0xff, 1, 1, 0, 0, 0, 1, 0, 30, 0})
	f.Add([]byte{4, 1, 2, 0, 250, 0xea, 0x60, 0, 4, 1, 1, 250, 0x80, 0, 0, 2, 3, 0, 5, 1, 0, 7, 0, 0, 0, 6, 0, 0})
	udpPort, tcpPort := loopbackEchoes(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		frames := genFlowFrames(&choices{b: in}, udpPort, tcpPort)
		cfg := testConfig()
		ours, guest := linktest.NewMemoryPair(65520, 8192)
		log := logrus.New()
		log.Out = io.Discard
		ctx, cancel := context.WithCancel(context.Background())
		w := link.NewWriter(ours, 1024)
		wdone := make(chan struct{})
		go func() { _ = w.Run(ctx); close(wdone) }()
		env := &actors.Env{Ctx: ctx, Opts: actors.OptionsFrom(cfg), Out: w, Peer: &link.Peer{OurMAC: cfg.OurMAC}, Log: log,
			NAT: &nat.NAT{HostLoopback4: gw4, HostLoopback6: gw6}, Reg: actors.NewRegistrar()}
		env.Peer.SetMAC(guestMAC)
		d := New(cfg, ours, env, log, realProtocols(t, env))
		// As on the tap (runInline), now and then: lone frames go to
		// the actors' Direct paths, run on this goroutine.
		d.direct = len(in) > 0 && in[len(in)-1]&1 != 0
		var p wire.Parsed
		readGuest := func() {
			for {
				select {
				case out := <-guest.Frames():
					if err := wire.ParseFrame(out, &p); err != nil {
						t.Fatalf("frame to the guest does not parse (%v): %x", err, out)
					}
					continue
				default:
				}
				return
			}
		}
		batch := make([]*link.Frame, 8)
		for len(frames) > 0 {
			n := min(len(frames), 1+int(len(frames)%len(batch)))
			for i := range n {
				if batch[i] == nil {
					batch[i] = link.GetFrame(link.MaxFrameSize)
				}
				batch[i].Data = batch[i].Data[:copy(batch[i].Data[:cap(batch[i].Data)], frames[i])]
			}
			frames = frames[n:]
			d.drainEnded()
			d.handleBatch(batch[:n])
			refill(batch[:n])
			readGuest()
		}
		for k := range d.flows {
			if a := k.Far.Addr(); a != gw4 && a != gw6 {
				t.Fatalf("flow to %s", k.Far)
			}
		}
		// Let the echoes come back, then shut down: every actor ends.
		time.Sleep(time.Millisecond)
		readGuest()
		cancel()
		deadline := time.Now().Add(10 * time.Second)
		for env.Stats.TCPFlows.Load()+env.Stats.UDPFlows.Load()+env.Stats.ICMPFlows.Load() > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("actors still running: tcp %d udp %d icmp %d", env.Stats.TCPFlows.Load(),
					env.Stats.UDPFlows.Load(), env.Stats.ICMPFlows.Load())
			}
			readGuest()
			runtime.Gosched()
			time.Sleep(time.Millisecond)
		}
		<-wdone
		link.ReleaseAll(batch)
		ours.Close()
		guest.Close()
		if n := d.Stats()["dispatcher_panics"]; n != 0 {
			t.Fatalf("%d dispatcher panics", n)
		}
		if n := env.Stats.Panics.Load(); n != 0 {
			t.Fatalf("%d actor panics", n)
		}
		if testing.Verbose() {
			t.Logf("%d frames to flows, %d flows started, %d written", d.Stats()["frames_to_flows"], d.Stats()["flows_started"], w.Frames.Load())
		}
	})
}
