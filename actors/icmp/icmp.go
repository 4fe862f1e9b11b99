package icmp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/internal/icmperr"
	"github.com/gopasta/gopasta/actors/internal/sockutil"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// ICMP echo, theory of operation.
//
// gopasta has no raw sockets: echo requests go out through the kernel's
// unprivileged "ping" sockets (SOCK_DGRAM with IPPROTO_ICMP/IPPROTO_ICMPV6),
// which are allowed to processes whose group is in net.ipv4.ping_group_range
// (one sysctl for both families). A ping socket has an echo identifier as
// its "port": the kernel writes it into every request and delivers only
// replies carrying it. Each (guest address, identifier, far address) gets
// its own actor and socket, bound to the guest's identifier when that is
// free, so the identifier on the host is usually the guest's own; when it
// is not, replies are rewritten back to the guest's identifier. Sequence
// numbers and payload pass through untouched. Errors (host unreachable,
// TTL exceeded) come back on the socket's error queue and are relayed as
// ICMP errors quoting the guest's request, as for UDP.

// icmpActor is one echo flow.
type icmpActor struct {
	p       *Protocol // the daemon's ICMP: counters
	env     *actors.Env
	log     *logrus.Entry
	h       *actors.Handle
	sock    *sockutil.DgramSock
	v6      bool
	id      uint16 // the socket's identifier on the host
	sa      unix.RawSockaddrInet6
	salen   uint32
	timeout time.Duration
	last    int64
	spare   *link.Frame
	errBuf  []byte
	oob     []byte

	// wake receives a value when the protocol's poller saw the socket
	// become readable or report an error (capacity 1: events coalesce);
	// slot is the socket's registration there.
	wake chan struct{}
	slot int32
}

// Start is called by the dispatcher for an ICMP or ICMPv6 echo request
// from the guest that matches no flow; see actors.Protocol for the
// contract.
func (p *Protocol) Start(k actors.Key, f *link.Frame) *actors.Handle {
	env := p.env
	if env.Opts.NoICMP {
		f.Release()
		return nil
	}
	v6 := k.Proto == wire.ProtoICMPv6
	if !k.Guest.IsValid() || !k.Far.IsValid() || k.Guest.Addr().Is6() != v6 || k.Far.Addr().Is6() != v6 {
		p.stats.EchoDropped.Add(1)
		f.Release()
		return nil
	}
	if !env.Limits.TakeFDs(actors.FDGuestDgram, actors.FDsICMP) {
		p.stats.EchoDropped.Add(1)
		p.socketLog.Warnf(env.FlowLog(k), "icmp: descriptor budget spent (%d), dropping echo requests of new flows", env.Limits.FDMax.Load())
		f.Release()
		return nil
	}
	proto := unix.IPPROTO_ICMP
	if v6 {
		proto = unix.IPPROTO_ICMPV6
	}
	sock, err := sockutil.NewDgramSock(v6, proto, func(fd int) error {
		_ = sockutil.SetRecvErr(fd, v6)
		// -o and --outbound-if4/6, as for TCP and UDP (and pasta's
		// echo): the source address and the interface echo leaves by.
		bind, ifname := env.Opts.Outbound(v6)
		if ifname != "" && !bind.IsLoopback() {
			if err := unix.BindToDevice(fd, ifname); err != nil {
				return fmt.Errorf("bind to %s: %w", ifname, err)
			}
		}
		if sockutil.BindAddrPort(fd, netip.AddrPortFrom(bind, k.Guest.Port())) != nil {
			return sockutil.BindAddrPort(fd, netip.AddrPortFrom(bind, 0))
		}
		return nil
	})
	if err != nil {
		env.Limits.GiveFDs(actors.FDGuestDgram, actors.FDsICMP)
		p.stats.EchoDropped.Add(1)
		if err == unix.EACCES || err == unix.EPERM {
			p.pingWarn.Do(func() {
				env.Log.Warn(`icmp: ping sockets are not allowed for this group, echo requests are dropped; ` +
					`allow them with: sysctl -w net.ipv4.ping_group_range="0 2147483647"`)
			})
		} else {
			p.socketLog.Warnf(env.FlowLog(k).WithError(err), "icmp: cannot open ping socket: %v", err)
		}
		f.Release()
		return nil
	}
	timeout := env.Opts.ICMPTimeout
	a := &icmpActor{
		p: p, env: env, log: env.FlowLog(k), h: actors.NewHandle(k), sock: sock, v6: v6,
		id: sockutil.LocalPort(sock.FD), timeout: timeout, last: sockutil.MonoNow(),
		errBuf: make([]byte, icmperr.MaxLen6), oob: make([]byte, 256),
	}
	a.salen = sockutil.PutSockaddr(&a.sa, netip.AddrPortFrom(env.NAT.Outbound(k.Far).Addr(), 0))
	a.wake, a.slot = make(chan struct{}, 1), -1
	a.h.In <- f // a fresh inbox has room
	env.Stats.ICMPOpened.Add(1)
	env.Stats.ICMPFlows.Add(1)
	go a.run()
	return a.h
}

func (a *icmpActor) run() {
	defer func() {
		if r := recover(); r != nil {
			a.env.Stats.Panics.Add(1)
			a.log.WithField("panic", r).Error("icmp: actor panicked")
		}
		if a.slot >= 0 {
			a.p.poll.Remove(a.sock.FD, &a.slot)
		}
		a.sock.Close()
		a.env.Limits.GiveFDs(actors.FDGuestDgram, actors.FDsICMP)
		a.env.Stats.ICMPFlows.Add(-1)
		a.env.EndFlow(a.h)
	}()
	poller, err := a.p.poller()
	if err == nil {
		a.slot, err = poller.Add(a.sock.FD, a, unix.EPOLLIN|unix.EPOLLET)
	}
	if err != nil {
		// The deferred cleanup closes the socket and ends the flow.
		a.p.stats.EchoDropped.Add(1)
		a.p.socketLog.Warnf(a.log.WithError(err), "icmp: cannot watch ping socket: %v", err)
		return
	}
	sweep := max(a.timeout/4, 5*time.Millisecond)
	t := time.NewTimer(sweep)
	defer t.Stop()
	for {
		select {
		case f := <-a.h.In:
			a.send(f)
		case <-a.wake:
			a.receive()
		case <-t.C:
			if sockutil.MonoNow()-a.last >= int64(a.timeout) {
				return
			}
			t.Reset(sweep)
		case <-a.env.Ctx.Done():
			return
		}
	}
}

// echoBytes returns the ICMP message of a guest frame if it is an echo
// request of this actor's family.
func (a *icmpActor) echoBytes(f *link.Frame) []byte {
	d := f.Data
	if f.L3 < wire.EthernetLen || f.L4 <= f.L3 || f.L4+wire.ICMPLen > len(d) {
		return nil
	}
	var end int
	if a.v6 {
		if f.L3+wire.IPv6Len > f.L4 || d[f.L3]>>4 != 6 {
			return nil
		}
		end = f.L3 + wire.IPv6Len + wire.IPv6(d[f.L3:]).PayloadLen()
	} else {
		if f.L3+wire.IPv4MinLen > f.L4 || d[f.L3]>>4 != 4 {
			return nil
		}
		end = f.L3 + wire.IPv4(d[f.L3:]).TotalLen()
	}
	if end > len(d) || end < f.L4+wire.ICMPLen {
		return nil
	}
	m := wire.ICMP(d[f.L4:end])
	want := uint8(wire.ICMPv4EchoRequest)
	if a.v6 {
		want = wire.ICMPv6EchoRequest
	}
	if m.Type() != want || m.Code() != 0 {
		return nil
	}
	return m
}

func (a *icmpActor) send(f *link.Frame) {
	defer f.Release()
	m := a.echoBytes(f)
	if m == nil {
		a.p.stats.EchoDropped.Add(1)
		return
	}
	a.last = sockutil.MonoNow()
	for try := 0; try < 2; try++ {
		e := sockutil.Sendto(a.sock.FD, m, &a.sa, a.salen)
		if e == 0 {
			a.p.stats.EchoSent.Add(1)
			a.h.Stats.GuestSegs.Add(1)
			a.h.Stats.GuestBytes.Add(uint64(len(m)))
			return
		}
		a.drainErrors()
		if !sockutil.IsTransient(e) || e == unix.ENOBUFS {
			break
		}
	}
	a.p.stats.EchoDropped.Add(1)
}

func (a *icmpActor) receive() {
	ipLen, etype := wire.IPv4MinLen, uint16(wire.EtherTypeIPv4)
	reply := uint8(wire.ICMPv4EchoReply)
	if a.v6 {
		ipLen, etype, reply = wire.IPv6Len, wire.EtherTypeIPv6, wire.ICMPv6EchoReply
	}
	hl := wire.EthernetLen + ipLen
	maxLen := min(a.env.Opts.MTU, 65535) - ipLen
	// The receive buffer is kept for the next reply of this wakeup only:
	// an echo flow lives a minute after its last request, and a guest
	// can open one per identifier. While it exists it is charged to the
	// budget (budget.go), even over it: a flow must be able to receive.
	defer func() {
		if a.spare != nil {
			a.env.Uncharge(int64(cap(a.spare.Data)))
			a.spare.Release()
			a.spare = nil
		}
	}()
	for i := range 64 {
		if a.spare == nil {
			a.spare = link.GetFrame(hl + maxLen)
			a.env.Stats.BufferBytes.Add(int64(cap(a.spare.Data)))
		}
		f := a.spare
		var from unix.RawSockaddrInet6
		n, e := sockutil.Recvfrom(a.sock.FD, f.Data[hl:hl+maxLen], &from)
		if e != 0 {
			if e == unix.EAGAIN {
				if i == 0 {
					a.drainErrors() // woken, but not for a reply
				}
				return
			}
			a.drainErrors()
			if sockutil.IsTransient(e) {
				continue
			}
			return
		}
		if n > maxLen || n < wire.ICMPLen {
			a.p.stats.EchoDropped.Add(1)
			continue
		}
		m := wire.ICMP(f.Data[hl : hl+n])
		if m.Type() != reply {
			continue
		}
		a.last = sockutil.MonoNow()
		k := a.h.Key
		binary.BigEndian.PutUint16(m[4:6], k.Guest.Port())
		m.SetChecksum(0)
		f.Data = f.Data[:hl+n]
		wire.Ethernet(f.Data).Set(a.env.Peer.MAC(), a.env.Peer.OurMAC, etype)
		if a.v6 {
			s, d := k.Far.Addr().As16(), k.Guest.Addr().As16()
			wire.IPv6(f.Data[wire.EthernetLen:]).SetHeader(n, wire.ProtoICMPv6, actors.DefaultTTL, s, d)
			m.SetChecksum(wire.Fold(wire.Checksum(m, wire.PseudoHeaderSum(s[:], d[:], wire.ProtoICMPv6, n))))
		} else {
			s, d := k.Far.Addr().As4(), k.Guest.Addr().As4()
			wire.IPv4(f.Data[wire.EthernetLen:]).SetHeader(ipLen+n, m.Seq(), actors.DefaultTTL, wire.ProtoICMP, s, d)
			m.SetChecksum(wire.Fold(wire.Checksum(m, 0)))
		}
		a.env.Uncharge(int64(cap(f.Data)))
		a.spare = nil
		a.p.stats.EchoReplies.Add(1)
		a.h.Stats.FarSegs.Add(1)
		a.h.Stats.FarBytes.Add(uint64(n))
		if !a.env.Out.SendNow(a.env.Ctx, f) {
			return
		}
	}
	// The poller is edge-triggered: what this wakeup leaves queued raises
	// no new event, so a wakeup that used its whole budget wakes the
	// actor again, after its inbox has had a turn.
	a.Woken()
}

// drainErrors relays the ping socket's queued errors to the guest, quoting
// its echo request with its own identifier.
func (a *icmpActor) drainErrors() {
	for range 64 {
		q, ok := icmperr.Recv(a.sock.FD, a.errBuf, a.oob)
		if !ok {
			return
		}
		if f := echoErrorFrame(a.env, &q, a.v6, a.h.Key, a.errBuf); f != nil {
			a.p.stats.Errors.Add(1)
			if !a.env.Out.SendCtx(a.env.Ctx, f) {
				return
			}
		}
	}
}

// echoErrorFrame builds the ICMP error that tells the guest about q, an
// error the kernel queued for the echo request of flow k, whose quoted
// request (q.n bytes) is in buf; it puts the guest's own identifier back
// into the quote. It returns nil for errors the guest need not hear about
// and quotes too short to be an echo request.
func echoErrorFrame(env *actors.Env, q *icmperr.Queued, v6 bool, k actors.Key, buf []byte) *link.Frame {
	typ, code, info, ok := q.GuestError(v6)
	if !ok || q.N < wire.ICMPLen || q.N > len(buf) {
		return nil
	}
	l4 := buf[:q.N]
	proto := uint8(wire.ProtoICMP)
	binary.BigEndian.PutUint16(l4[4:6], k.Guest.Port())
	l4[2], l4[3] = 0, 0
	if v6 {
		proto = wire.ProtoICMPv6
		g, fa := k.Guest.Addr().As16(), k.Far.Addr().As16()
		wire.ICMP(l4).SetChecksum(wire.Fold(wire.Checksum(l4, wire.PseudoHeaderSum(g[:], fa[:], proto, q.N))))
	} else {
		wire.ICMP(l4).SetChecksum(wire.Fold(wire.Checksum(l4, 0)))
	}
	e := icmperr.Error{
		Type: typ, Code: code, Info: info,
		From:  icmperr.Source(env, q, k.Far.Addr()),
		Guest: k.Guest.Addr(), Far: k.Far.Addr(),
		Proto: proto, L4Len: q.N, L4: l4,
	}
	return icmperr.Frame(env, &e)
}

// Counters count what the ICMP echo actors of one daemon
// (Protocol.Stats) did and dropped.
type counters struct {
	// EchoSent and EchoReplies count ICMP echo requests and replies;
	// EchoDropped counts echo frames dropped (malformed, refused socket).
	EchoSent, EchoReplies, EchoDropped atomic.Uint64
	// Errors counts ICMP errors about echo requests relayed to the guest.
	Errors atomic.Uint64
}

// AddStats adds the ICMP counters to m, by the names the statistics log
// uses.
func (p *Protocol) AddStats(m map[string]uint64) {
	s := &p.stats
	// Relayed errors are reported with UDP's, under one name.
	m["udp_icmp_errors"] += s.Errors.Load()
	m["icmp_echo_sent"] = s.EchoSent.Load()
	m["icmp_echo_replies"] = s.EchoReplies.Load()
	m["icmp_echo_dropped"] = s.EchoDropped.Load()
}

// Notify is the poller's (internal/poll): an echo socket's owner hears of
// every readable or error event.
func (a *icmpActor) Notify(events uint32) bool {
	return events&(unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP) != 0
}

// Woken tells the actor, without waiting: a value already pending says
// the same.
func (a *icmpActor) Woken() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}
