package udp

import (
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/internal/sockutil"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link/wire"
)

// NewListenerBinding binds the listening socket for host port p, forwarded
// to the guest's port to (at toAddr, or the guest's own address).
func (pr *Protocol) NewListenerBinding(spec conf.PortSpec, toAddr netip.Addr, p, to uint16, v6 bool) (*Binding, error) {
	env := pr.env
	bind := spec.Bind.Unmap()
	wildcard := !bind.IsValid() || bind.IsUnspecified()
	if !bind.IsValid() {
		bind = netip.IPv4Unspecified()
		if v6 {
			bind = netip.IPv6Unspecified()
		}
	}
	sock, err := sockutil.NewDgramSock(v6, unix.IPPROTO_UDP, func(fd int) error {
		if err := sockutil.SetRecvErr(fd, v6); err != nil {
			return err
		}
		sockutil.SetBufs(fd)
		if wildcard {
			// Learn which address each client sent to, to answer from it.
			if v6 {
				_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
			} else {
				_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
			}
		}
		if spec.Ifname != "" {
			if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, spec.Ifname); err != nil {
				return err
			}
		}
		if env.Opts.Freebind {
			if err := sockutil.SetFreebind(fd, v6); err != nil {
				return fmt.Errorf("--freebind: %w", err)
			}
		}
		return sockutil.BindAddrPort(fd, netip.AddrPortFrom(bind, p))
	})
	if err != nil {
		return nil, err
	}
	b := newBinding(pr, v6, sock)
	b.inbound, b.wildcard = true, wildcard
	b.fwdAddr, b.fwdPort = toAddr, to
	b.log = env.Log.WithField("udp_listener", netip.AddrPortFrom(bind, p).String())
	return b, nil
}

// newInboundFlow finds or starts the flow for the client at src, whose
// datagram came with control data ctrl, and reports whether it started
// one, which the caller must then register with the dispatcher once it has
// released mu (the lock rule, see the package comment); mu held.
func (b *Binding) newInboundFlow(src netip.AddrPort, ctrl []byte, now int64) (fl *udpFlow, isNew bool) {
	if b.env.Opts.SpliceOnly {
		// No tap to take it to (loopback clients were relayed before).
		b.p.stats.SpliceOnlyRefused.Add(1)
		return nil, false
	}
	far, ok := b.env.NAT.Inbound(src)
	if !ok {
		b.p.stats.Unmappable.Add(1)
		return nil, false
	}
	ga := b.fwdAddr
	if !ga.IsValid() {
		ga = guestAddr(b.env, b.v6)
	}
	if !ga.IsValid() || ga.Is6() != far.Addr().Is6() {
		b.p.stats.Unmappable.Add(1)
		return nil, false
	}
	k := actors.Key{Proto: wire.ProtoUDP, Guest: netip.AddrPortFrom(ga, b.fwdPort), Far: far}
	if old := b.tab.flows[k]; old != nil {
		// Another host address the guest sees as the same far end: the
		// latest one gets the replies.
		delete(b.tab.byHost, old.host)
		old.host = src
		old.salen = sockutil.PutSockaddr(&old.sa, src)
		b.tab.byHost[src] = old
		old.last = now
		return old, false
	}
	if limit := b.env.Opts.FlowLimit; b.env.TableFlows.Load() >= limit {
		// Held to --flow-limit as the guest's own flows are.
		b.env.Stats.Refused.Add(1)
		b.p.socketLog.Warnf(b.log, "udp: flow limit %d reached, dropping datagrams of new inbound flows", limit)
		return nil, false
	}
	fl = b.addFlow(k, src, now)
	if b.wildcard {
		fl.clen = pktinfoReply(fl.ctrl[:], ctrl, b.v6)
	}
	fl.h = actors.InitHandle(&actors.Handle{Key: k, Q: b.in, Direct: b.tx.direct, Gate: &b.tx.gate, Inbound: true})
	b.env.Stats.UDPOpened.Add(1)
	b.env.Stats.UDPFlows.Add(1)
	return fl, true
}

// pktinfoReply finds the destination address in received control data and
// writes into out the IP_PKTINFO / IPV6_PKTINFO message that makes a reply
// leave from that address. It returns the length written (0: none found,
// or an address a reply cannot come from).
func pktinfoReply(out, ctrl []byte, v6 bool) int {
	hdr := unix.CmsgLen(0)
	for len(ctrl) >= hdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctrl[0]))
		l := int(h.Len)
		if l < hdr || l > len(ctrl) {
			return 0
		}
		data := ctrl[hdr:l]
		switch {
		case !v6 && h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			a := netip.AddrFrom4(pi.Addr)
			if a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
				return 0
			}
			return putCmsg(out, unix.IPPROTO_IP, unix.IP_PKTINFO, unsafe.Pointer(&unix.Inet4Pktinfo{Spec_dst: pi.Addr}), unix.SizeofInet4Pktinfo)
		case v6 && h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			if netip.AddrFrom16(pi.Addr).IsMulticast() {
				return 0
			}
			return putCmsg(out, unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, unsafe.Pointer(&unix.Inet6Pktinfo{Addr: pi.Addr}), unix.SizeofInet6Pktinfo)
		}
		sp := unix.CmsgSpace(l - hdr)
		if sp > len(ctrl) {
			return 0
		}
		ctrl = ctrl[sp:]
	}
	return 0
}

// putCmsg writes one control message with n bytes of data at p into out.
func putCmsg(out []byte, level, typ int32, p unsafe.Pointer, n int) int {
	sp := unix.CmsgSpace(n)
	if sp > len(out) {
		return 0
	}
	clear(out[:sp])
	h := (*unix.Cmsghdr)(unsafe.Pointer(&out[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(n))
	copy(out[unix.CmsgLen(0):], unsafe.Slice((*byte)(p), n))
	return sp
}

// guestAddr is the guest's address of a family: the one it was seen using,
// else the configured one (a guest that only listens has sent nothing yet),
// else for IPv6 its link-local address.
func guestAddr(env *actors.Env, v6 bool) netip.Addr {
	if !v6 {
		if a := env.Peer.Addr4(); a.IsValid() {
			return a
		}
		if env.Opts.Addr4.IsValid() {
			return env.Opts.Addr4.Addr()
		}
		return netip.Addr{}
	}
	if a := env.Peer.Addr6(); a.IsValid() {
		return a
	}
	if env.Opts.Addr6.IsValid() {
		return env.Opts.Addr6
	}
	return env.Peer.LinkLocal6()
}
