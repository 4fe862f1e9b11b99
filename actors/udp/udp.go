package udp

import (
	"errors"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/flowtrace"
	"github.com/gopasta/gopasta/actors/internal/icmperr"
	"github.com/gopasta/gopasta/actors/internal/sockutil"
	"github.com/gopasta/gopasta/actors/splice"
	"github.com/gopasta/gopasta/internal/handoff"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// UDP, theory of operation.
//
// UDP has no connections, but the guest's sockets behave as if a port were
// one: a guest socket bound to port P talks to one or many far ends, and
// expects any far end it talked to — and, for STUN and other peer-to-peer
// protocols, any other far end that learnt the mapping — to reach it on P.
// gopasta therefore translates per guest (address, port), not per 4-tuple:
//
//   - A Binding is one host socket bound to the guest's source port where
//     that port is free (no port translation, as passt does; else an
//     ephemeral port), unconnected, with IP_RECVERR. Datagrams from any far
//     end that reach it go to the guest's address and port.
//   - The dispatcher keys flows by 4-tuple, so the first datagram to each
//     new far end is a flow-table miss and a Protocol.Start call, which finds
//     the guest port's binding in a small registry (mutex, touched only on
//     misses and expiries, never per datagram) and hands back a Handle whose
//     inbox is the binding's one inbox. So every flow of a guest port feeds
//     the same actor goroutine, which owns the socket, the flows' state and
//     the per-flow idle timers: one goroutine, one socket, no sharing of
//     mutable state but the registry.
//   - That goroutine is the actor: it waits on its inbox (guest -> host,
//     the backlog sent 64 datagrams per sendmmsg) and on a sweep timer that
//     ends flows idle for UDPTimeout, each flow's Handle going back on
//     Env.Ended. The binding itself closes with its last flow: datagrams
//     from far ends the guest has no flow with reach the guest but do not
//     keep the binding, or its host port, alive.
//
// The host port is the one pasta chooses (udp_flow.c, fwd.c: the guest's
// source port, on the -o address or any): a guest's port looks bound on
// the host for as long as it has flows, so a guest can make the host's
// free UDP ports it sends from look taken, up to its share of the
// descriptor budget (limits.go; each binding takes one descriptor, its far
// ends none). Where the host has the port (or it is privileged and we may
// not bind it) pasta
// drops the datagram; gopasta binds an ephemeral port instead, so the
// guest can never take a port from a host program.
//   - A second goroutine, the receiver, waits in the runtime poller for the
//     socket itself and moves datagrams host -> guest: recvmmsg straight
//     into pooled frames, headers written in front of the payload, each
//     batch handed to the link Writer with SendBatchNow: written to the
//     link from the receiver itself while the link is idle, queued for
//     the writer goroutine only while it is busy. Under a stream the
//     receiver thus alternates recvmmsg and tap writes on one thread, and
//     the socket buffer, not a queue of frames, holds what waits: the
//     writer goroutine and the receiver do not wake each other for every
//     batch, and after a full batch it lets the guest's reader run
//     (yieldToGuest, rx.go). Doing that in the actor would cost a
//     goroutine hop per wakeup (poller -> waker -> actor), and each hop
//     wakes a thread, often on the other CPU, which request/response
//     traffic pays in full. The two share the flow tables under mu (held
//     for lookups, never across a syscall); the receive buffers are the
//     receiver's, under rx.mu, which the actor's sweep only takes with
//     TryLock to free them when the socket is quiet.
//
// Inbound (-u) listeners are bindings too, created by actors/forward:
// the first datagram from a new client creates a flow registered with the
// dispatcher (Env.Register), and the guest's replies are sent from the
// listening socket itself, with IP_PKTINFO naming the address the client
// sent to when the listener is a wildcard, so the client sees the reply
// come from where it sent.
//
// Addresses are mapped with Env.NAT both ways; a far end's host address is
// remembered per flow, so a reply is shown to the guest as coming from the
// address the guest used (gateway, --dns-forward address, ...), even where
// two guest-side addresses mean the same host address.

// udpFlow is one 4-tuple of a binding, as the dispatcher knows it.
type udpFlow struct {
	key   actors.Key
	h     *actors.Handle // nil: a flow the dispatcher no longer maps (stale frame)
	host  netip.AddrPort // the far end's address on the host side
	sa    unix.RawSockaddrInet6
	salen uint32
	ctrl  [64]byte // inbound on a wildcard listener: IP_PKTINFO for the reply source
	clen  int
	last  int64 // sockutil.MonoNow of the last datagram either way
	// tap is the flow's view of the trace subscribers for datagrams to
	// the guest; the receiver's (rx.mu), unlike the fields above.
	tap flowtrace.Tap
}

// Binding is a host UDP socket and the actor that owns it.
type Binding struct {
	p       *Protocol // the daemon's UDP: registry, counters
	env     *actors.Env
	log     *logrus.Entry
	Sock    *sockutil.DgramSock
	v6      bool
	in      *actors.Inbox
	Done    <-chan struct{}
	timeout time.Duration

	// Outbound: the guest address and port the socket stands for.
	guest netip.AddrPort
	// Inbound: the guest's address (invalid: the address the guest uses)
	// and port datagrams go to, and whether to answer with IP_PKTINFO.
	inbound  bool
	fwdAddr  netip.Addr
	fwdPort  uint16
	wildcard bool
	Splice   *splice.UDPSplice // inbound: relays loopback clients (splice/udp.go)
	pending  []*actors.Handle  // joined by Start, not yet seen by the actor; p.reg.Mutex

	tab  udpTable     // the flow tables, under tab.mu
	last atomic.Int64 // sockutil.MonoNow of the last datagram either way
	// lastRx is the receiver's last datagram; rxAtSweep, the actor's,
	// is what lastRx was at the previous sweep.
	lastRx    atomic.Int64
	rxAtSweep int64

	rx      udpRx       // the receiver's, under rx.mu
	closing atomic.Bool // the actor is shutting down: the receiver stops
	errq    udpErrq     // the socket's error queue, under errq.mu
	tx      udpTx       // the send path, under tx.gate
}

// The parts of a Binding, each beside the lock that guards it. Lock
// order (actors' package doc): tx.gate or rx.mu (never both), then
// errq.mu, then tab.mu, then the protocol's registry, then the inbox.

// udpTable is the binding's flows: by the guest's key and by the far
// end's host address.
type udpTable struct {
	// mu guards the maps and every udpFlow's fields; it is held for
	// lookups only, never across a system call.
	mu     sync.Mutex
	flows  map[actors.Key]*udpFlow
	byHost map[netip.AddrPort]*udpFlow
	// endedQ holds the Handles of flows endFlow ended, for the actor to
	// report once it has released mu (flushEnded). The actor's: only the
	// actor ends flows.
	endedQ []*actors.Handle
}

// udpRx is the receiver's state: host datagrams into frames for the guest.
type udpRx struct {
	// mu is held by the receiver goroutine; the sweep only TryLocks it.
	mu         sync.Mutex
	ipID       uint16
	want       int // frames offered to the next recvmmsg
	stash      [udpBatch]*link.Frame
	stashBytes int64                 // what stash keeps alive, charged to the budget
	out        [udpBatch]*link.Frame // a batch's frames for the guest, handed to the Writer
	batch      *mmsgBatch
	done       chan struct{} // closed when the receiver has returned
}

// udpErrq is the scratch space for reading the socket's error queue.
type udpErrq struct {
	// mu guards buf and oob while one entry of the error queue is read
	// and turned into a frame (drainErrors runs on both goroutines);
	// never held while the frame is handed to the Writer.
	mu  sync.Mutex
	buf []byte
	oob []byte
}

// udpTx is the send path: guest datagrams to the host socket.
type udpTx struct {
	// gate is held by whoever sends guest datagrams: the actor, its
	// owner, or the dispatcher in sendDirect, its guest. It guards the
	// rest of udpTx; its backlog counts the guest datagrams queued in the
	// inbox or q and not yet sent.
	gate       handoff.Gate
	inline     bool                   // sendDirect holds gate: nothing may wait
	direct     func(*link.Frame) bool // sendDirect, bound once for every Handle
	one        [1]*link.Frame         // sendDirect's batch
	maxPayload int
	hdrLen     int
	batch      *mmsgBatch
	q          []*link.Frame // backlog taken from the inbox, sent from off on
	off        int
	spare      []*link.Frame // the Inbox's other slice (Inbox.Take)
	noGSO      bool          // the kernel refused UDP_SEGMENT: one message per datagram
	closed     bool          // shutdown has run: sendDirect must not send
}

func newBinding(p *Protocol, v6 bool, sock *sockutil.DgramSock) *Binding {
	env := p.env
	timeout := env.Opts.UDPTimeout
	b := &Binding{
		p: p, env: env, Sock: sock, v6: v6, timeout: timeout,
		in: actors.NewBudgetInbox(env, inboxLimit, env.Opts.FlowBuffer),
	}
	b.tab.flows = make(map[actors.Key]*udpFlow)
	b.tab.byHost = make(map[netip.AddrPort]*udpFlow)
	b.tx.maxPayload, b.tx.hdrLen = maxUDPPayload(env, v6), udpHdrLen(v6)
	b.tx.batch = &mmsgBatch{dgrams: make([]udpDgram, 0, udpBatch)}
	b.rx.batch, b.rx.want, b.rx.done = new(mmsgBatch), 4, make(chan struct{})
	b.errq.buf, b.errq.oob = make([]byte, icmperr.MaxLen6), make([]byte, 256)
	b.last.Store(sockutil.MonoNow())
	b.tx.direct = b.sendDirect
	return b
}

// InboxLimit bounds a binding's backlog of guest datagrams (and the
// flow budget the bytes their buffers keep alive): 400 ms at
// 10k datagrams/s, more than the host socket buffers (sockutil.SetBufs) hold, so
// that a binding's actor falling behind for a while, as it does on a
// loaded machine, loses nothing the rest of the path would have kept.
// Memory is only taken while the backlog exists (see Inbox).
const inboxLimit = 4096

// Start is called by the dispatcher for a UDP datagram from the guest
// that matches no flow; see actors.Protocol for the contract. The returned
// Handle shares its inbox with the other flows of the guest's (address,
// port).
func (p *Protocol) Start(k actors.Key, f *link.Frame) *actors.Handle {
	env, reg := p.env, &p.reg
	if env.Opts.NoUDP {
		f.Release()
		return nil
	}
	if !k.Guest.IsValid() || !k.Far.IsValid() || k.Guest.Addr().Is4() != k.Far.Addr().Is4() {
		p.stats.Malformed.Add(1)
		f.Release()
		return nil
	}
	reg.Lock()
	b := reg.m[k.Guest]
	if b == nil {
		if !env.Limits.TakeFDs(actors.FDGuestDgram, actors.FDsUDP) {
			reg.Unlock()
			p.stats.BindingsRefused.Add(1)
			p.socketLog.Warnf(env.FlowLog(k), "udp: descriptor budget spent (%d), dropping datagrams of new flows", env.Limits.FDMax.Load())
			f.Release()
			return nil
		}
		var err error
		b, err = newOutboundBinding(p, k.Guest)
		if err != nil {
			reg.Unlock()
			env.Limits.GiveFDs(actors.FDGuestDgram, actors.FDsUDP)
			p.stats.SocketErrors.Add(1)
			p.socketLog.Warnf(env.FlowLog(k).WithError(err), "udp: cannot open host socket: %v", err)
			f.Release()
			return nil
		}
		p.stats.Bindings.Add(1)
		reg.m[k.Guest] = b
		go b.Run()
	}
	h := actors.InitHandle(&actors.Handle{Key: k, Q: b.in, Direct: b.tx.direct, Gate: &b.tx.gate})
	b.pending = append(b.pending, h)
	reg.Unlock()
	if !h.Offer(f) {
		p.stats.InboxDropped.Add(1)
		f.Release()
	}
	return h
}

// newOutboundBinding opens the host socket for the guest's addr:port.
// Called with p.reg held.
func newOutboundBinding(p *Protocol, guest netip.AddrPort) (*Binding, error) {
	env := p.env
	v6 := guest.Addr().Is6()
	bindAddr, ifname := env.Opts.Outbound(v6)
	sock, err := sockutil.NewDgramSock(v6, unix.IPPROTO_UDP, func(fd int) error {
		if err := sockutil.SetRecvErr(fd, v6); err != nil {
			return err
		}
		sockutil.SetBufs(fd)
		if ifname != "" {
			if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, ifname); err != nil {
				return err
			}
		}
		err := sockutil.BindAddrPort(fd, netip.AddrPortFrom(bindAddr, guest.Port()))
		if err != nil && guest.Port() != 0 {
			// The port is taken on the host (or privileged): replies will
			// still reach the guest's port, from an ephemeral host port.
			err = sockutil.BindAddrPort(fd, netip.AddrPortFrom(bindAddr, 0))
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	b := newBinding(p, v6, sock)
	b.guest = guest
	b.Done = env.Ctx.Done()
	b.log = env.Log.WithField("udp", guest.String())
	if hp := sockutil.LocalPort(sock.FD); hp != guest.Port() {
		p.stats.PortTranslated.Add(1)
		b.log.WithField("host_port", hp).Debug("udp: guest port busy on the host, using another")
	}
	return b, nil
}

// run is the actor's loop.
func (b *Binding) Run() {
	defer func() {
		if r := recover(); r != nil {
			b.env.Stats.Panics.Add(1)
			b.log.WithField("panic", r).Error("udp: actor panicked")
		}
		b.shutdown()
	}()
	sweep := max(b.timeout/4, 5*time.Millisecond)
	t := time.NewTimer(sweep)
	defer t.Stop()
	go b.receiver()
	for {
		if len(b.tx.q) > 0 {
			// A backlog is being sent a few batches at a time; keep an
			// eye on the rest meanwhile.
			select {
			case <-b.Done:
				return
			case <-t.C:
				if b.sweep() {
					return
				}
				t.Reset(sweep)
			default:
			}
			b.tx.gate.Enter()
			b.send()
			b.tx.gate.Leave()
			continue
		}
		select {
		case <-b.in.Ready:
			b.tx.gate.Enter()
			b.takeInbox()
			b.tx.gate.Leave()
		case <-t.C:
			if b.sweep() {
				return
			}
			t.Reset(sweep)
		case <-b.Done:
			return
		}
	}
}

// receiver is the binding's second goroutine: it moves datagrams from the
// socket to the guest until the actor closes the socket. It waits in the
// runtime poller itself (RawConn.Read calls rxReady again at every
// readiness edge), so a reply costs one wakeup.
func (b *Binding) receiver() {
	defer close(b.rx.done)
	defer func() {
		if r := recover(); r != nil {
			b.env.Stats.Panics.Add(1)
			b.log.WithField("panic", r).Error("udp: receiver panicked")
		}
	}()
	rxReady := func(uintptr) bool {
		b.rx.mu.Lock()
		b.receive()
		b.rx.mu.Unlock()
		return b.closing.Load()
	}
	fails := 0
	for !b.closing.Load() {
		err := b.Sock.RawConn.Read(rxReady)
		if err == nil || b.closing.Load() || errors.Is(err, os.ErrClosed) {
			continue
		}
		// A bare EPOLLERR (an ICMP error queued while no datagram is):
		// the runtime reports it as an error until the next event, so
		// read the error queue, and pause if it keeps coming back.
		_ = b.Sock.RawConn.Read(func(uintptr) bool { b.drainErrors(false); return true })
		if fails++; fails > 1 {
			time.Sleep(time.Millisecond)
		}
	}
}

// adopt takes the flows Start added since the last look; mu held.
func (b *Binding) adopt() {
	b.p.reg.Lock()
	pending := b.pending
	b.pending = nil
	b.p.reg.Unlock()
	now := sockutil.MonoNow()
	for _, h := range pending {
		fl := b.tab.flows[h.Key]
		if fl == nil {
			fl = b.addFlow(h.Key, b.env.NAT.Outbound(h.Key.Far), now)
		}
		if fl.h == nil {
			fl.h = h
			b.env.Stats.UDPOpened.Add(1)
			b.env.Stats.UDPFlows.Add(1)
		}
	}
}

// addFlow tracks a flow to host (the far end on the host side); mu held.
func (b *Binding) addFlow(k actors.Key, host netip.AddrPort, now int64) *udpFlow {
	fl := &udpFlow{key: k, host: host, last: now}
	fl.salen = sockutil.PutSockaddr(&fl.sa, host)
	b.tab.flows[k] = fl
	b.tab.byHost[host] = fl
	return fl
}

// endFlow forgets fl and queues its Handle for flushEnded; mu held, by
// the actor. Telling the dispatcher here would break the lock rule (see
// the package comment): sendDirect waits for mu on the dispatcher's
// goroutine, so a full Env.Ended would stop both for good.
func (b *Binding) endFlow(fl *udpFlow) {
	delete(b.tab.flows, fl.key)
	if b.tab.byHost[fl.host] == fl {
		delete(b.tab.byHost, fl.host)
	}
	if fl.h == nil {
		return
	}
	b.env.Stats.UDPFlows.Add(-1)
	b.tab.endedQ = append(b.tab.endedQ, fl.h)
	fl.h = nil
}

// flushEnded tells the dispatcher about the flows endFlow ended; called by
// the actor with no lock held.
func (b *Binding) flushEnded() {
	for i, h := range b.tab.endedQ {
		b.env.EndFlow(h)
		b.tab.endedQ[i] = nil
	}
	b.tab.endedQ = b.tab.endedQ[:0]
}

// sweep ends idle flows, frees receive buffers of a quiet socket, and
// reports whether the whole binding should end.
func (b *Binding) sweep() bool {
	b.tab.mu.Lock()
	b.adopt()
	now := sockutil.MonoNow()
	for _, fl := range b.tab.flows {
		if now-fl.last >= int64(b.timeout) {
			b.endFlow(fl)
		}
	}
	nflows := len(b.tab.flows)
	b.tab.mu.Unlock()
	b.flushEnded()
	lastRx := b.lastRx.Load()
	if lastRx == b.rxAtSweep && b.rx.mu.TryLock() {
		// Quiet since the last sweep and the receiver is waiting: give
		// the receive buffers back (up to 64 frames of up to 64 KiB).
		b.releaseStash()
		b.rx.mu.Unlock()
	}
	if b.in.Len() == 0 {
		// A backlog is over: give its memory back.
		b.in.Shrink()
		if cap(b.tx.spare) > actors.InboxKeep {
			b.tx.spare = nil
		}
	}
	b.rxAtSweep = lastRx
	// The binding ends with its last flow. Datagrams from far ends the
	// guest never sent to do not keep it: anyone who learnt the port could
	// otherwise hold it, and its descriptor, for ever.
	if b.inbound || nflows > 0 {
		return false
	}
	reg := &b.p.reg
	reg.Lock()
	defer reg.Unlock()
	if len(b.pending) > 0 {
		return false
	}
	if reg.m[b.guest] == b {
		delete(reg.m, b.guest)
	}
	return true
}

// shutdown ends every flow and closes the socket.
func (b *Binding) shutdown() {
	// Stop the receiver first: closing the socket ends its wait, and it
	// may still be delivering (registering inbound flows, too).
	b.closing.Store(true)
	b.Sock.Close()
	<-b.rx.done
	if !b.inbound {
		reg := &b.p.reg
		reg.Lock()
		if reg.m[b.guest] == b {
			delete(reg.m, b.guest)
		}
		reg.Unlock()
	}
	b.tab.mu.Lock()
	if !b.inbound {
		b.adopt()
	}
	for _, fl := range b.tab.flows {
		b.endFlow(fl)
	}
	b.tab.mu.Unlock()
	b.flushEnded()
	b.releaseStash()
	b.tx.gate.Enter()
	for _, f := range b.tx.q[b.tx.off:] {
		f.Release()
	}
	b.tx.q = nil
	b.tx.closed = true
	b.tx.gate.Leave()
	b.in.Drain()
	if !b.inbound {
		b.p.stats.Bindings.Add(-1)
		b.env.Limits.GiveFDs(actors.FDGuestDgram, actors.FDsUDP)
	}
}

// releaseStash frees the receive buffers; rx.mu held (or the receiver gone).
func (b *Binding) releaseStash() {
	for i, f := range b.rx.stash {
		if f != nil {
			f.Release()
			b.rx.stash[i] = nil
		}
	}
	b.env.Uncharge(b.rx.stashBytes)
	b.rx.stashBytes = 0
	b.rx.want = 4
}

// frameFlow finds the flow a guest frame belongs to and its UDP payload;
// mu held.
func (b *Binding) frameFlow(f *link.Frame, now int64) (*udpFlow, []byte) {
	d := f.Data
	if f.L3 < wire.EthernetLen || f.L4+wire.UDPLen > len(d) || f.L3 >= f.L4 {
		return nil, nil
	}
	var src, dst netip.Addr
	switch d[f.L3] >> 4 {
	case 4:
		if f.L3+wire.IPv4MinLen > f.L4 {
			return nil, nil
		}
		ip := wire.IPv4(d[f.L3:])
		src, dst = ip.Src(), ip.Dst()
	case 6:
		if f.L3+wire.IPv6Len > f.L4 {
			return nil, nil
		}
		ip := wire.IPv6(d[f.L3:])
		src, dst = ip.Src(), ip.Dst()
	default:
		return nil, nil
	}
	u := wire.UDP(d[f.L4:])
	ulen := u.Length()
	if ulen < wire.UDPLen || f.L4+ulen > len(d) {
		return nil, nil
	}
	k := actors.Key{Proto: wire.ProtoUDP, Guest: netip.AddrPortFrom(src, u.SrcPort()), Far: netip.AddrPortFrom(dst, u.DstPort())}
	fl := b.tab.flows[k]
	if fl == nil {
		b.adopt()
		fl = b.tab.flows[k]
	}
	if fl == nil && !b.inbound && k.Guest == b.guest && dst.Is6() == b.v6 {
		// A late frame of a flow that already ended: still the guest's
		// datagram to send; track it so its host address is kept.
		fl = b.addFlow(k, b.env.NAT.Outbound(k.Far), now)
	}
	if fl == nil {
		b.p.stats.NoFlow.Add(1)
		return nil, nil
	}
	return fl, d[f.L4+wire.UDPLen : f.L4+ulen]
}

// takeInbox takes the inbox's backlog as the frames to send next. Called
// only when the previous backlog is done: Ready may then be stale (a
// spurious wakeup) but never lost, since every frame queued since is in
// what Take returns.
func (b *Binding) takeInbox() {
	q := b.in.Take(b.tx.spare)
	b.tx.off = 0
	if len(q) == 0 {
		b.tx.spare, b.tx.q = q, nil
		return
	}
	b.tx.q, b.tx.spare = q, nil
}

// sendDirect sends the guest datagram f from the dispatcher's goroutine
// if the actor has nothing queued and is not sending, and reports whether
// it took f. For request/response traffic this saves the hand-over to the
// actor, a goroutine wake-up (often a thread's, on the other CPU) per
// datagram: the dispatcher has just been woken by the tap and makes the
// one sendmmsg the actor would have made. The send never blocks (a full
// socket buffer drops, as the actor does), so the dispatcher never waits
// on the host.
//
// Order is kept: sendDirect enters the binding's gate as a guest
// (TryEnter), which it only can when every datagram queued before f has
// been sent; the actor holding the gate, or a backlog, means f belongs
// behind it. Nothing here waits: an ICMP error the send finds on the
// socket goes to the Writer only if its queue has room (drainErrors).
//
// A panic is contained as in the actor: logged and counted, the datagram
// lost, the dispatcher unharmed (the result is named so that it still
// says f was taken).
func (b *Binding) sendDirect(f *link.Frame) (took bool) {
	if !b.tx.gate.TryEnter() {
		return false
	}
	defer b.tx.gate.Leave()
	if b.tx.closed {
		return false
	}
	defer func() {
		b.tx.inline = false
		if r := recover(); r != nil {
			b.tx.one[0] = nil
			b.env.Stats.Panics.Add(1)
			b.log.WithField("panic", r).Error("udp: sending a guest datagram panicked")
		}
	}()
	took = true
	b.tx.inline = true
	b.tx.one[0] = f
	b.sendBatch(b.tx.one[:]) // releases f
	b.p.stats.Direct.Add(1)
	return took
}

// udpTxBudget is how many sendmmsg calls send makes before the actor looks
// at its socket again.
const udpTxBudget = 4

// send sends up to udpTxBudget batches of the taken backlog, udpBatch
// datagrams per sendmmsg; when the backlog is done it takes the next.
func (b *Binding) send() {
	for range udpTxBudget {
		rest := b.tx.q[b.tx.off:]
		k := min(len(rest), udpBatch)
		b.sendBatch(rest[:k]) // releases and clears them
		b.tx.gate.Done(k)
		b.tx.off += k
		if b.tx.off == len(b.tx.q) {
			b.tx.spare, b.tx.q = b.tx.q[:0], nil
			b.takeInbox()
			if b.tx.q == nil {
				return
			}
		}
	}
}

// sendBatch sends up to udpBatch frames with one sendmmsg and releases
// them.
func (b *Binding) sendBatch(frames []*link.Frame) {
	now := sockutil.MonoNow()
	b.last.Store(now)
	b.tab.mu.Lock()
	d := b.tx.batch.dgrams[:0]
	for _, f := range frames {
		fl, p := b.frameFlow(f, now)
		if fl == nil {
			b.p.stats.Malformed.Add(1)
			continue
		}
		fl.last = now
		d = append(d, udpDgram{fl: fl, p: p})
	}
	// The flows' addresses are copied into the headers under mu: the
	// receiver may point a flow at another host address meanwhile.
	n := b.buildTx(d, !b.tx.noGSO)
	b.tab.mu.Unlock()
	b.sendTx(d, n)
	for i := range frames {
		frames[i].Release()
		frames[i] = nil
	}
	clear(d)
}

// UDP segmentation offload, guest -> host.
//
// A guest sending a stream of datagrams (iperf3, QUIC, RTP, WireGuard)
// sends them one frame each, and the kernel's cost per datagram sent is
// mostly routing and output processing that does not depend on the size.
// Consecutive datagrams of one flow with the same size (the last may be
// shorter) go out as one message with a UDP_SEGMENT control message: one
// pass through the output path, cut into the same datagrams further down
// (or never, over loopback to a receiver using GRO). The far end sees
// exactly the datagrams the guest sent. A kernel that refuses it (before
// 4.18, or a segment larger than the path MTU) makes the binding go back to
// one message per datagram.
const (
	udpGSOMax      = 64    // datagrams per message (the kernel's limit on old kernels)
	udpGSOMaxBytes = 65000 // payload per message, below the IP length limit
)

// udpDgram is one datagram of a send batch.
type udpDgram struct {
	fl *udpFlow
	p  []byte
}

// buildTx fills b.tx's headers for d, one datagram per iovec, coalescing
// runs of a flow into segmented messages if gso, and returns the number
// of headers. mu held.
//
// An empty datagram never joins a run: a segment of zero bytes does not
// exist, it would vanish.
func (b *Binding) buildTx(d []udpDgram, gso bool) int {
	tx := b.tx.batch
	n := 0
	for i := 0; i < len(d); {
		fl, size := d[i].fl, len(d[i].p)
		j := i + 1
		if gso && size > 0 {
			total := size
			for j < len(d) && j-i < udpGSOMax && d[j].fl == fl && len(d[j].p) <= size && len(d[j].p) > 0 &&
				total+len(d[j].p) <= udpGSOMaxBytes {
				total += len(d[j].p)
				j++
				if len(d[j-1].p) < size {
					break // a shorter one ends the run
				}
			}
		}
		bytes := 0
		for k := i; k < j; k++ {
			iov := &tx.iovs[k]
			iov.Base = nil
			if len(d[k].p) > 0 {
				iov.Base = &d[k].p[0]
			}
			iov.SetLen(len(d[k].p))
			bytes += len(d[k].p)
		}
		if fl.h != nil {
			fl.h.Stats.GuestSegs.Add(uint64(j - i))
			fl.h.Stats.GuestBytes.Add(uint64(bytes))
		}
		tx.names[n] = fl.sa
		h := &tx.hdrs[n]
		h.Hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&tx.names[n])), Namelen: fl.salen, Iov: &tx.iovs[i]}
		h.Hdr.SetIovlen(j - i)
		cl := 0
		if fl.clen > 0 {
			cl = copy(tx.ctrl[n][:], fl.ctrl[:fl.clen])
		}
		if j-i > 1 {
			cl += putUDPSegment(tx.ctrl[n][cl:], size)
		}
		if cl > 0 {
			h.Hdr.Control = &tx.ctrl[n][0]
			h.Hdr.SetControllen(cl)
		}
		tx.first[n], tx.count[n] = i, j-i
		n++
		i = j
	}
	return n
}

// putUDPSegment writes a UDP_SEGMENT control message for segments of size
// bytes into c and returns its length.
func putUDPSegment(c []byte, size int) int {
	sp := unix.CmsgSpace(2)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&c[unix.CmsgLen(0)])) = uint16(size)
	return sp
}

// sendTx sends the n headers built for d.
func (b *Binding) sendTx(d []udpDgram, n int) {
	tx := b.tx.batch
	for i, retried := 0, false; i < n; {
		r, e := sockutil.Sendmmsg(b.Sock.FD, tx.hdrs[i:n])
		if e == 0 {
			for _, c := range tx.count[i : i+r] {
				b.p.stats.Sent.Add(uint64(c))
				if c > 1 {
					b.p.stats.Segmented.Add(uint64(c))
				}
			}
			i += r
			retried = false
			continue
		}
		if tx.count[i] > 1 && (e == unix.EINVAL || e == unix.EMSGSIZE || e == unix.EIO || e == unix.ENOPROTOOPT) {
			// Segmentation refused: send the rest one by one, from
			// now on.
			b.tx.noGSO = true
			rest := d[tx.first[i]:]
			b.tab.mu.Lock()
			m := b.buildTx(rest, false)
			b.tab.mu.Unlock()
			b.sendTx(rest, m)
			return
		}
		if e == unix.EAGAIN {
			for _, c := range tx.count[i:n] {
				b.p.stats.SendDropped.Add(uint64(c))
			}
			break
		}
		// A pending ICMP error is reported once, on whatever call comes
		// next: read the error queue, then try this message again once.
		b.drainErrors(b.tx.inline)
		if !retried && sockutil.IsTransient(e) {
			retried = true
			continue
		}
		b.p.stats.SendErrors.Add(uint64(tx.count[i]))
		i++
		retried = false
	}
}

// receive moves datagrams from the socket to the guest until the socket is
// empty (it must be: the poller only wakes the receiver again for a new
// edge) or the binding is closing. rx.mu held.
//
// A recvmmsg that returns fewer datagrams than offered has emptied the
// socket, so receive stops there without the extra call that would say
// EAGAIN: the socket signals every datagram queued after that (edge
// triggered epoll wakes on each arrival, not only on empty -> non-empty),
// and the runtime poller keeps that edge for the receiver's next wait.
// For request/response traffic that is one syscall less per datagram.
//
// The error queue is read only when a call reports an error (IP_RECVERR
// sets the socket error along with every queued entry, and the next call
// returns it) or when a wakeup found no datagram, so that the common path
// costs no extra syscall.
func (b *Binding) receive() {
	rx := b.rx.batch
	for first := true; !b.closing.Load(); first = false {
		k := b.rx.want
		for i := 0; i < k; i++ {
			if b.rx.stash[i] == nil {
				// Buffers are charged to the budget; beyond it the
				// batch is smaller (the socket buffer holds the rest),
				// but never empty: a binding must be able to receive.
				f := link.GetFrame(b.tx.hdrLen + b.tx.maxPayload)
				size := int64(cap(f.Data))
				if !b.env.Charge(size) {
					if i > 0 {
						f.Release()
						k = i
						break
					}
					b.env.Stats.BufferBytes.Add(size)
				}
				b.rx.stashBytes += size
				b.rx.stash[i] = f
			}
			d := b.rx.stash[i].Data
			rx.iovs[i].Base = &d[b.tx.hdrLen]
			rx.iovs[i].SetLen(b.tx.maxPayload)
			h := &rx.hdrs[i]
			h.Hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&rx.names[i])), Namelen: unix.SizeofSockaddrInet6, Iov: &rx.iovs[i]}
			h.Hdr.SetIovlen(1)
			if b.wildcard {
				h.Hdr.Control = &rx.ctrl[i][0]
				h.Hdr.SetControllen(len(rx.ctrl[i]))
			}
		}
		n, e := sockutil.Recvmmsg(b.Sock.FD, rx.hdrs[:k])
		if e != 0 {
			if e == unix.EAGAIN {
				if first {
					b.drainErrors(false)
				}
				if b.rx.want > 4 {
					b.rx.want /= 2
				}
				return
			}
			b.drainErrors(false)
			if sockutil.IsTransient(e) {
				continue
			}
			b.log.WithError(e).Debug("udp: recvmmsg")
			return
		}
		now := sockutil.MonoNow()
		b.last.Store(now)
		b.lastRx.Store(now)
		out := b.rx.out[:0]
		for i := 0; i < n; i++ {
			if f := b.deliver(i, now); f != nil {
				out = append(out, f)
			}
		}
		b.p.stats.Received.Add(uint64(len(out)))
		if !b.env.Out.SendBatchNow(b.env.Ctx, out) {
			return
		}
		if n < k {
			return
		}
		yieldToGuest() // a full batch: a stream; see rx.go
		b.rx.want = min(2*k, udpBatch)
	}
}

// deliver turns received message i into a frame for the guest, or nil if
// the datagram is not for the guest (counted); rx.mu held.
func (b *Binding) deliver(i int, now int64) *link.Frame {
	rx := b.rx.batch
	h := &rx.hdrs[i]
	if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
		b.p.stats.TooBig.Add(1)
		return nil
	}
	n := int(h.Len)
	src := sockutil.GetSockaddr(&rx.names[i])
	var far, dst netip.AddrPort
	var fh *actors.Handle
	var tfl *udpFlow
	b.tab.mu.Lock()
	fl := b.tab.byHost[src]
	if fl != nil {
		fl.last = now
		far, dst = fl.key.Far, fl.key.Guest
		fh, tfl = fl.h, fl
	}
	b.tab.mu.Unlock()
	switch {
	case fl != nil:
	case b.inbound:
		if b.Splice != nil && src.Addr().IsLoopback() && b.Splice.Take(src, b.rx.stash[i].Data[b.tx.hdrLen:b.tx.hdrLen+n]) {
			return nil
		}
		b.tab.mu.Lock()
		fl, isNew := b.newInboundFlow(src, rx.ctrl[i][:h.Hdr.Controllen], now)
		if fl != nil {
			far, dst = fl.key.Far, fl.key.Guest
			fh, tfl = fl.h, fl
		}
		b.tab.mu.Unlock()
		if fl == nil {
			return nil
		}
		if isNew {
			// Registered after mu is released (the lock rule, see the
			// package comment) and before the datagram is handed to
			// the Writer, so the guest's answer finds the flow.
			b.env.RegisterFlow(fh)
		}
	default:
		var ok bool
		if far, ok = b.env.NAT.Inbound(src); !ok {
			b.p.stats.Unmappable.Add(1)
			return nil
		}
		dst = b.guest
	}
	if far.Addr().Is6() != dst.Addr().Is6() || dst.Port() == 0 {
		// Port 0: the guest sent from "no port" (RFC 768), so there is
		// none to answer to; a frame to port 0 would be invalid.
		b.p.stats.Unmappable.Add(1)
		return nil
	}
	f := b.rx.stash[i]
	b.rx.stash[i] = nil
	b.rx.stashBytes -= int64(cap(f.Data))
	b.env.Uncharge(int64(cap(f.Data)))
	f.Data = f.Data[:b.tx.hdrLen+n]
	b.rx.ipID++
	writeUDPHeaders(b.env, f.Data, far, dst, n, b.rx.ipID)
	if fh != nil {
		fh.Stats.FarSegs.Add(1)
		fh.Stats.FarBytes.Add(uint64(n))
		if b.env.Trace.Active() && tfl.tap.On(b.env.Trace, tfl.key.Proto, tfl.key.Guest, tfl.key.Far, fh.ID, func() string { return actors.TraceDesc(fh.ID, tfl.key) }) {
			tfl.tap.Emit(flowtrace.Stamp(time.Now()), "out datagram, "+strconv.Itoa(n)+" bytes")
		}
	}
	return f
}

// drainErrors reads the socket's error queue and tells the guest. Either
// goroutine may call it (from within the socket's RawConn for the
// receiver, so that the descriptor cannot be closed under it). errq.mu is
// held only while an entry is read and its frame built, never while the
// frame is handed over (the lock rule, see the actors package comment):
// a drainer waiting for room in the Writer's queue would otherwise keep
// the other, the dispatcher in sendDirect among them, waiting too. inline
// (sendDirect, which must never wait) hands the frames over only if the
// queue has room, dropping them otherwise (counted by the Writer).
func (b *Binding) drainErrors(inline bool) {
	for range 64 {
		f, ok := b.nextError()
		if !ok {
			return
		}
		if f == nil {
			continue
		}
		b.p.stats.ICMPErrors.Add(1)
		if inline {
			b.env.Out.TrySend(f)
		} else if !b.env.Out.SendCtx(b.env.Ctx, f) {
			return
		}
	}
}

// nextError reads one entry of the error queue and returns the frame that
// tells the guest, nil if the entry is not for the guest; false once the
// queue is empty.
func (b *Binding) nextError() (*link.Frame, bool) {
	b.errq.mu.Lock()
	defer b.errq.mu.Unlock()
	q, ok := icmperr.Recv(b.Sock.FD, b.errq.buf[wire.UDPLen:], b.errq.oob)
	if !ok {
		return nil, false
	}
	typ, code, info, ok := q.GuestError(b.v6)
	if !ok {
		return nil, true
	}
	var guest, far netip.AddrPort
	b.tab.mu.Lock()
	fl := b.tab.byHost[q.Dst]
	if fl != nil {
		guest, far = fl.key.Guest, fl.key.Far
	}
	b.tab.mu.Unlock()
	switch {
	case fl != nil:
	case b.inbound:
		return nil, true
	default:
		guest = b.guest
		if far, ok = b.env.NAT.Inbound(q.Dst); !ok {
			return nil, true
		}
	}
	return icmperr.UDPFrame(b.env, &q, typ, code, info, guest, far, b.errq.buf), true
}

// mmsgBatch is the scratch space of one sendmmsg or recvmmsg call: message
// headers, one iovec each, and room for a peer address and a little
// control data per message. It is allocated once per socket owner.
type mmsgBatch struct {
	hdrs  [udpBatch]unix.Mmsghdr
	iovs  [udpBatch]unix.Iovec
	names [udpBatch]unix.RawSockaddrInet6
	ctrl  [udpBatch][64]byte

	// Sending only: the datagrams of the batch, and for each header the
	// first of them and how many it carries (more than one when
	// segmented).
	dgrams       []udpDgram
	first, count [udpBatch]int
}

// udpBatch is how many datagrams one sendmmsg/recvmmsg moves at most.
const udpBatch = 64
