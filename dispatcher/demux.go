package dispatcher

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// defaultFlowLimit applies when the configuration leaves FlowLimit unset.
const defaultFlowLimit = 65536

var ipv4Broadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// unicast reports whether a can be the far end of a flow. ParseFrame has
// applied the address policy (wire.GuestAddrReason) already; what is left
// to refuse here is what is valid on a link but not as a flow's far end.
func unicast(a netip.Addr) bool {
	return !unspecified(a) && !a.IsMulticast() && a != ipv4Broadcast
}

// unspecified reports whether a, from a frame ParseFrame accepted, is
// 0.0.0.0 or ::. netip's IsUnspecified misses ::ffff:0.0.0.0, which the
// kernel connects to 127.0.0.1, but the parser's address policy has
// refused that already (wire.ClassifyAddr): on what is left the two
// agree, and this one costs a comparison per frame.
func unspecified(a netip.Addr) bool {
	return a.IsUnspecified()
}

// demux finds or starts the flow for the TCP, UDP or ICMP frame s[i] and
// hands the frame to it. It reports whether the frame went to a flow.
func (d *Dispatcher) demux(s []*link.Frame, i int, p *wire.Parsed) bool {
	var k actors.Key
	var start actors.Protocol
	v4 := p.EtherType == wire.EtherTypeIPv4
	switch {
	case p.Proto == wire.ProtoTCP:
		if d.cfg.NoTCP || d.protos.TCP == nil {
			return d.drop(cDropNoTCP)
		}
		if !unicast(p.Dst) {
			return d.drop(cDropBadDest)
		}
		if unspecified(p.Src) {
			return d.drop(counter(wire.ReasonBadSource))
		}
		start = d.protos.TCP
		k = actors.Key{Proto: p.Proto, Guest: netip.AddrPortFrom(p.Src, p.SrcPort), Far: netip.AddrPortFrom(p.Dst, p.DstPort)}
	case p.Proto == wire.ProtoUDP:
		if d.cfg.NoUDP || d.protos.UDP == nil {
			return d.drop(cDropNoUDP)
		}
		// Multicast beyond the link (SSDP, mDNS to routable groups)
		// goes to the actors, as pasta lets it through; link-scope
		// multicast and broadcast concern this link only, where
		// nobody but us listens.
		if unspecified(p.Dst) || p.Dst == ipv4Broadcast || p.Dst.IsLinkLocalMulticast() || p.Dst.IsInterfaceLocalMulticast() {
			return d.drop(cDropBadDest)
		}
		if unspecified(p.Src) {
			return d.drop(counter(wire.ReasonBadSource))
		}
		start = d.protos.UDP
		k = actors.Key{Proto: p.Proto, Guest: netip.AddrPortFrom(p.Src, p.SrcPort), Far: netip.AddrPortFrom(p.Dst, p.DstPort)}
	case p.Proto == wire.ProtoICMP && v4, p.Proto == wire.ProtoICMPv6 && !v4:
		if d.cfg.NoICMP || d.protos.ICMP == nil {
			return d.drop(cDropNoICMP)
		}
		// Only echo requests start or feed flows: the guest's own
		// errors and replies have no host socket to go to.
		if (v4 && p.ICMPType != wire.ICMPv4EchoRequest) || (!v4 && p.ICMPType != wire.ICMPv6EchoRequest) || p.ICMPCode != 0 {
			return d.drop(cDropICMPOther)
		}
		if !unicast(p.Dst) {
			return d.drop(cDropBadDest)
		}
		if unspecified(p.Src) {
			return d.drop(counter(wire.ReasonBadSource))
		}
		id := binary.BigEndian.Uint16(s[i].Data[p.L4+4:])
		start = d.protos.ICMP
		k = actors.Key{Proto: p.Proto, Guest: netip.AddrPortFrom(p.Src, id), Far: netip.AddrPortFrom(p.Dst, 0)}
	default:
		return d.drop(cDropUnknownProto)
	}

	if h, ok := d.flows[k]; ok {
		n := len(s[i].Data)
		// A frame with its payload in guest memory (Ext: only TCP
		// segments have one by now, see handleFrame) goes to Direct as
		// it goes to the inbox: the TCP flow writes it to its socket
		// from there, inline or not.
		f := d.take(s, i, p)
		if d.direct && h.Direct != nil && len(s) == 1 && h.Direct(f) {
			// The actor was idle and the dispatcher did its work (see
			// Handle.Direct): a lone frame is request/response traffic,
			// where the hand-over would cost a wake-up per frame.
			d.n[cDirect].Add(1)
			if d.trace || d.subs {
				d.traceIn(h, k, n, p, "sent directly", "", ", sent directly")
			}
			return true
		}
		if !h.Offer(f) {
			f.Release()
			d.n[cDropInboxFull].Add(1)
			if d.trace {
				d.log.WithField("flow", k.String()).Tracef("frame in, %d bytes: inbox full, dropped", n)
			}
			if d.subs && d.traceOn(h) {
				d.traceFlow(h, "in  frame of "+strconv.Itoa(n)+" bytes dropped: the actor's inbox is full ("+strconv.Itoa(h.Backlog())+" frames queued)")
			}
			return false
		}
		if l := uint64(h.Backlog()); l > d.inboxHigh {
			d.inboxHigh = l
			d.n[cInboxHighWater].Store(l)
		}
		if d.trace {
			d.log.WithField("flow", k.String()).Tracef("frame in, %d bytes", n)
		}
		if d.subs && k.Proto != wire.ProtoTCP && d.traceOn(h) {
			d.traceFlow(h, "in  datagram, "+strconv.Itoa(n-p.Payload)+" bytes")
		}
		return true
	}

	limit := d.cfg.FlowLimit
	if limit <= 0 {
		limit = defaultFlowLimit
	}
	if len(d.flows) >= limit {
		d.n[cDropFlowLimit].Add(1)
		d.env.Stats.Refused.Add(1)
		d.limitLog.Warnf(logrus.NewEntry(d.log), "flow limit %d reached, dropping new flows", limit)
		if d.trace {
			d.log.WithField("flow", k.String()).Trace("new flow over the flow limit, dropped")
		}
		return false
	}

	// A flow's first frame goes through code that knows nothing of
	// tails in guest memory (link.Frame.Ext): copy it in.
	if !s[i].Flatten() {
		return d.drop(cDropGuestFault)
	}
	f := d.take(s, i, p)
	n := len(f.Data)
	h := start.Start(k, f) // f belongs to the actor (or was released) now
	if h == nil {
		d.n[cFlowsNotStarted].Add(1)
		if d.trace {
			d.log.WithField("flow", k.String()).Tracef("frame in, %d bytes: no flow started", n)
		}
		return false
	}
	d.flows[h.Key] = h
	d.setActive()
	d.n[cFlowsStarted].Add(1)
	if d.trace || d.subs {
		d.traceIn(h, k, n, p, "flow started", "flow started by the guest, ", "")
	}
	return true
}

// traceIn traces a guest frame of n bytes that went to h's flow: the
// --trace line ("frame in, n bytes: what") and, for a datagram flow a
// subscriber watches, the flow's own line, between pre and post.
func (d *Dispatcher) traceIn(h *actors.Handle, k actors.Key, n int, p *wire.Parsed, what, pre, post string) {
	if d.trace {
		d.log.WithField("flow", k.String()).Tracef("frame in, %d bytes: %s", n, what)
	}
	if d.subs && k.Proto != wire.ProtoTCP && d.traceOn(h) {
		d.traceFlow(h, pre+"in  datagram, "+strconv.Itoa(n-p.Payload)+" bytes"+post)
	}
}

// releaseInbox gives back the frames left in an ended flow's own inbox:
// its actor has returned and reads it no more, and the dispatcher, its
// only sender, offers it nothing once the flow has ended. Left to the
// garbage collector they would be lost to their pools, and a frame whose
// payload is still in the guest's memory (link.Frame.Ext) would keep that
// transmit buffer from the guest for good. A UDP flow's queue is its
// binding's, which lives on.
func releaseInbox(h *actors.Handle) {
	if h.Q != nil {
		return
	}
	for {
		select {
		case f := <-h.In:
			f.Release()
		default:
			return
		}
	}
}

// take returns the frame s[i] ready for an actor, with its offsets set.
// A frame that fits the small size class is copied, leaving the large
// buffer in its slot for the reader; so is one that would use less than
// half of it, into a right-sized buffer (link.GetBuffer): what an actor
// queues or holds then keeps alive at most twice its bytes, whatever
// sizes the guest picks. A frame that fills most of its buffer changes
// hands and leaves its slot empty, and so does one whose payload is in
// guest memory (link.Frame.Ext).
func (d *Dispatcher) take(s []*link.Frame, i int, p *wire.Parsed) *link.Frame {
	f := s[i]
	switch {
	case f.Ext != nil:
		// Its payload is in guest memory, not in the buffer, and it
		// is let go of within the actor's handling of it.
		s[i] = nil
	case len(f.Data) <= link.SmallFrameSize:
		g := link.GetFrame(len(f.Data))
		copy(g.Data, f.Data)
		f = g
	case 2*len(f.Data) < cap(f.Data):
		g := link.GetBuffer(len(f.Data))
		copy(g.Data, f.Data)
		f = g
	default:
		s[i] = nil
	}
	f.L3, f.L4, f.Payload = p.L3, p.L4, p.Payload
	return f
}

func (d *Dispatcher) drop(c counter) bool {
	d.n[c].Add(1)
	if d.trace {
		d.log.WithField("frame", frameString(&d.parsed)).Tracef("frame in: dropped, %s", counterNames[c])
	}
	return false
}

// endFlow removes an ended actor from the table, unless the key already
// belongs to a newer actor.
func (d *Dispatcher) endFlow(h *actors.Handle) {
	releaseInbox(h)
	if cur, ok := d.flows[h.Key]; !ok || cur != h {
		d.n[cFlowsEndedStale].Add(1)
		return
	}
	delete(d.flows, h.Key)
	d.setActive()
	d.n[cFlowsEnded].Add(1)
	d.traceEnd(h)
	if d.log.IsLevelEnabled(logrus.TraceLevel) {
		d.log.WithField("flow", h.Key.String()).Trace("flow ended")
	}
}

// registerFlow puts an inbound actor into the table.
//
// If the key already belongs to another live actor, the table keeps the
// old one: it is the one the guest has been talking to. The new actor then
// receives no frames, gives up at its handshake or idle timeout and sends
// its Handle on Ended, which endFlow ignores because the table does not
// point at it. This only happens when a host peer reuses the exact 4-tuple
// of a live flow, or when the old actor has ended but its Ended message is
// still queued behind this Register.
func (d *Dispatcher) registerFlow(h *actors.Handle) {
	if cur, ok := d.flows[h.Key]; ok && cur != h {
		d.n[cRegisterConflict].Add(1)
		d.log.WithField("flow", h.Key.String()).Debug("inbound flow collides with a live flow, keeping the old one")
		return
	}
	d.flows[h.Key] = h
	d.setActive()
	d.n[cFlowsRegistered].Add(1)
	if d.env.Trace.Active() && h.Key.Proto != wire.ProtoTCP {
		d.subs = true
		if d.traceOn(h) {
			d.traceFlow(h, "flow opened from the host")
		}
	}
	if d.log.IsLevelEnabled(logrus.TraceLevel) {
		d.log.WithField("flow", h.Key.String()).Trace("inbound flow registered")
	}
}

// frameString describes a parsed frame for trace logs.
func frameString(p *wire.Parsed) string {
	switch p.EtherType {
	case wire.EtherTypeARP:
		return fmt.Sprintf("arp %s -> %s", p.Src, p.Dst)
	case wire.EtherTypeIPv4, wire.EtherTypeIPv6:
		if p.Proto == wire.ProtoICMP || p.Proto == wire.ProtoICMPv6 {
			return fmt.Sprintf("icmp type %d %s -> %s", p.ICMPType, p.Src, p.Dst)
		}
		if p.SrcPort != 0 || p.DstPort != 0 {
			return fmt.Sprintf("proto %d %s -> %s", p.Proto,
				netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort))
		}
		return fmt.Sprintf("proto %d %s -> %s", p.Proto, p.Src, p.Dst)
	}
	return fmt.Sprintf("ethertype 0x%04x %x -> %x", p.EtherType, p.SrcMAC, p.DstMAC)
}

// setActive publishes the table's size, for Stats and for the forwarders
// (Env.TableFlows), which hold inbound flows to the same limit.
func (d *Dispatcher) setActive() {
	n := int64(len(d.flows))
	d.active.Store(n)
	d.env.TableFlows.Store(n)
}
