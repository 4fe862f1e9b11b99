package actors

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link/wire"
)

// StartUDPForwarders is StartTCPForwarders for the -u specifications.
//
// Every forwarded port gets a listening socket per IP family (one family
// when the spec names a bind address), each a udpBinding in inbound mode:
// its actor receives the clients' datagrams, registers a flow per client
// with the dispatcher, and sends the guest's replies from the listening
// socket. "auto" and "all" are not implemented yet and only logged.
func StartUDPForwarders(env *Env) (stop func(), err error) {
	if env.Conf == nil || env.Conf.NoUDP {
		return func() {}, nil
	}
	ctx, cancel := context.WithCancel(env.Ctx)
	var bs []*udpBinding
	fail := func(err error) (func(), error) {
		cancel()
		for _, b := range bs {
			b.sock.close()
		}
		return nil, err
	}
	for _, spec := range env.Conf.UDPPorts {
		if spec.None {
			continue
		}
		if spec.Auto || spec.All {
			env.Log.Warnf("udp: %s %s: automatic forwarding is not implemented yet, ignored", spec.Option, spec.Raw)
			continue
		}
		for _, r := range spec.Ranges {
			for p := int(r.First); p <= int(r.Last); p++ {
				if excluded(spec.Excluded, uint16(p)) {
					continue
				}
				to := r.To + uint16(p-int(r.First))
				for _, v6 := range listenFamilies(env.Conf, spec, r) {
					b, err := newListenerBinding(env, spec, r.ToAddr, uint16(p), to, v6)
					if err != nil {
						if !spec.Bind.IsValid() && v6 && (err == unix.EAFNOSUPPORT || err == unix.EADDRNOTAVAIL) {
							env.Log.Warnf("udp: %s %s: no IPv6 on the host, forwarding IPv4 only", spec.Option, spec.Raw)
							continue
						}
						return fail(fmt.Errorf("udp: %s %s: port %d: %w", spec.Option, spec.Raw, p, err))
					}
					b.done = ctx.Done()
					bs = append(bs, b)
				}
			}
		}
	}
	var wg sync.WaitGroup
	for _, b := range bs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.run()
		}()
	}
	return func() { cancel(); wg.Wait() }, nil
}

func excluded(ex []conf.PortRange, p uint16) bool {
	for _, r := range ex {
		if p >= r.First && p <= r.Last {
			return true
		}
	}
	return false
}

// listenFamilies lists the families to listen on for one range: the bind
// address's, the target address's, or both unless -4/-6 says otherwise.
func listenFamilies(c *conf.Config, spec conf.PortSpec, r conf.PortRange) []bool {
	switch {
	case spec.Bind.IsValid():
		return []bool{spec.Bind.Is6() && !spec.Bind.Is4In6()}
	case r.ToAddr.IsValid():
		return []bool{r.ToAddr.Is6()}
	case c.IPv4Only:
		return []bool{false}
	case c.IPv6Only:
		return []bool{true}
	}
	return []bool{false, true}
}

// newListenerBinding binds the listening socket for host port p, forwarded
// to the guest's port to (at toAddr, or the guest's own address).
func newListenerBinding(env *Env, spec conf.PortSpec, toAddr netip.Addr, p, to uint16, v6 bool) (*udpBinding, error) {
	bind := spec.Bind.Unmap()
	wildcard := !bind.IsValid() || bind.IsUnspecified()
	if !bind.IsValid() {
		bind = netip.IPv4Unspecified()
		if v6 {
			bind = netip.IPv6Unspecified()
		}
	}
	sock, err := newDgramSock(v6, unix.IPPROTO_UDP, func(fd int) error {
		if err := setRecvErr(fd, v6); err != nil {
			return err
		}
		setBufs(fd)
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
		if env.Conf != nil && env.Conf.Freebind {
			if err := setFreebind(fd, v6); err != nil {
				return fmt.Errorf("--freebind: %w", err)
			}
		}
		return bindAddrPort(fd, netip.AddrPortFrom(bind, p))
	})
	if err != nil {
		return nil, err
	}
	b := newBinding(env, v6, sock)
	b.inbound, b.wildcard = true, wildcard
	b.fwdAddr, b.fwdPort = toAddr, to
	b.log = env.Log.WithField("udp_listener", netip.AddrPortFrom(bind, p).String())
	return b, nil
}

// newInboundFlow finds or starts the flow for the client at src, whose
// datagram came with control data ctrl, and reports whether it started
// one, which the caller must then register with the dispatcher once it has
// released mu (the lock rule, see the package comment); mu held.
func (b *udpBinding) newInboundFlow(src netip.AddrPort, ctrl []byte, now int64) (fl *udpFlow, isNew bool) {
	if b.env.Conf != nil && b.env.Conf.SpliceOnly {
		// No tap to take it to (loopback clients were relayed before).
		SpliceStats.OnlyRefused.Add(1)
		return nil, false
	}
	far, ok := b.env.NAT.Inbound(src)
	if !ok {
		UDPStats.Unmappable.Add(1)
		return nil, false
	}
	ga := b.fwdAddr
	if !ga.IsValid() {
		ga = guestAddr(b.env, b.v6)
	}
	if !ga.IsValid() || ga.Is6() != far.Addr().Is6() {
		UDPStats.Unmappable.Add(1)
		return nil, false
	}
	k := Key{Proto: wire.ProtoUDP, Guest: netip.AddrPortFrom(ga, b.fwdPort), Far: far}
	if old := b.flows[k]; old != nil {
		// Another host address the guest sees as the same far end: the
		// latest one gets the replies.
		delete(b.byHost, old.host)
		old.host = src
		old.salen = putSockaddr(&old.sa, src)
		b.byHost[src] = old
		old.last = now
		return old, false
	}
	if limit := flowLimit(b.env); b.env.TableFlows.Load() >= limit {
		// Held to --flow-limit as the guest's own flows are.
		b.env.Stats.Refused.Add(1)
		udpSocketLog.Warnf(b.log, "udp: flow limit %d reached, dropping datagrams of new inbound flows", limit)
		return nil, false
	}
	fl = b.addFlow(k, src, now)
	if b.wildcard {
		fl.clen = pktinfoReply(fl.ctrl[:], ctrl, b.v6)
	}
	fl.h = initHandle(&Handle{Key: k, Q: b.in, Direct: b.direct, Inbound: true})
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
func guestAddr(env *Env, v6 bool) netip.Addr {
	if !v6 {
		if a := env.Peer.Addr4(); a.IsValid() {
			return a
		}
		if env.Conf != nil && env.Conf.Addr4.IsValid() {
			return env.Conf.Addr4.Addr()
		}
		return netip.Addr{}
	}
	if a := env.Peer.Addr6(); a.IsValid() {
		return a
	}
	if env.Conf != nil && env.Conf.Addr6.IsValid() {
		return env.Conf.Addr6
	}
	return env.Peer.LinkLocal6()
}
