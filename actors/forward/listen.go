package forward

import (
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/internal/sockutil"
	"github.com/gopasta/gopasta/actors/splice"
	"github.com/gopasta/gopasta/actors/tcp"
	"github.com/gopasta/gopasta/actors/udp"
	"github.com/gopasta/gopasta/conf"
)

// The listeners of each direction. -t and -u reuse the tap-path listeners
// of the TCP and UDP actors (tcpListener, udp.Binding) and give them a
// splice hook for loopback clients; -T and -U have listeners of their own
// in the namespace, which only splice.

// tcpInListener is a -t listening socket and its accept goroutine.
type tcpInListener struct {
	l    *tcpListener
	done chan struct{}
}

func (t *tcpInListener) Close() {
	t.l.file.Close()
	<-t.done
}

func (f *forwarder) openTCPIn(r conf.Rule, p, to uint16, v6 bool) (fwdListener, error) {
	fw := tcpForward{v6: v6, ifname: r.Ifname, port: p, to: to, toAddr: r.ToAddr, freebind: f.env.Opts.Freebind}
	if r.Bind.IsValid() {
		fw.bind = r.Bind.Unmap()
	}
	l, err := listenTCP(fw)
	if err != nil {
		return nil, err
	}
	if f.splice {
		l.splice = f.tcpSpliceIn(fw)
	}
	t := &tcpInListener{l: l, done: make(chan struct{})}
	go func() {
		defer close(t.done)
		l.run(f)
	}()
	return t, nil
}

// tcpSpliceIn returns the splice hook of a -t listener: a connection from
// a host loopback client is joined to a new connection inside the
// namespace.
func (f *forwarder) tcpSpliceIn(fw tcpForward) func(fd int, client netip.AddrPort) bool {
	return func(fd int, client netip.AddrPort) bool {
		v6 := !client.Addr().Unmap().Is4()
		dst, ok := f.nsTarget(v6, fw.toAddr, fw.to)
		if !ok {
			return false
		}
		nfd, err := f.ns.socket(family(v6), unix.SOCK_STREAM, 0)
		if err != nil {
			f.env.Log.Debugf("splice: socket in namespace: %v", err)
			return false
		}
		var alt *splice.Alt
		if !fw.toAddr.IsValid() && !f.env.Opts.IPv4Only && !f.env.Opts.IPv6Only {
			// The default target: the other family's may serve.
			if d, ok := f.nsTarget(!v6, fw.toAddr, fw.to); ok {
				alt = &splice.Alt{Dst: d, Sock: func() (int, error) { return f.ns.socket(family(!v6), unix.SOCK_STREAM, 0) }}
			}
		}
		spliceConnect(f.splicer, actors.FDInbound, fd, nfd, dst, alt)
		return true
	}
}

// spliceConnect starts a non-blocking connect of nfd to dst and hands both
// sockets to a splice pair of sp; a connect refused (at once, or later) goes on
// to alt if there is one, and otherwise resets the client.
//
// The pair takes actors.FDsSplice descriptors of kind from sp's env's budget (its sockets and
// the pipes its pumps will open) until it ends; without room, the client
// is reset at once.
func spliceConnect(sp *splice.Splicer, kind, fd, nfd int, dst netip.AddrPort, alt *splice.Alt) {
	env := sp.Env()
	if env != nil && !env.Limits.TakeFDs(kind, actors.FDsSplice) {
		tcp.RefusedLog.Warnf(env.Log.WithField("splice", dst.String()), "splice: descriptor budget spent (%d), resetting new connections", env.Limits.FDMax.Load())
		sp.Stats.TCPResets.Add(1)
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		unix.Close(fd)
		unix.Close(nfd)
		return
	}
	err := unix.Connect(nfd, sockutil.SockaddrOf(dst))
	if err == unix.ECONNREFUSED && alt != nil {
		if afd, aerr := alt.Dial(); aerr == nil {
			unix.Close(nfd)
			sp.Stats.TCPFamilyRetries.Add(1)
			sp.Start(kind, fd, afd, nil)
			return
		}
	}
	if err != nil && err != unix.EINPROGRESS && err != unix.EINTR {
		sp.Stats.TCPResets.Add(1)
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		unix.Close(fd)
		unix.Close(nfd)
		if env != nil {
			env.Limits.GiveFDs(kind, actors.FDsSplice)
		}
		return
	}
	sp.Start(kind, fd, nfd, alt)
}

// udpInListener is a -u listening socket: the tap path's binding, with a
// relay for loopback clients.
type udpInListener struct {
	b     *udp.Binding
	stopc chan struct{}
	done  chan struct{}
	relay *splice.UDPSplice
}

func (u *udpInListener) Close() {
	close(u.stopc)
	<-u.done
	if u.relay != nil {
		u.relay.Stop()
	}
}

func (f *forwarder) openUDPIn(r conf.Rule, p, to uint16, v6 bool) (fwdListener, error) {
	spec := conf.PortSpec{Bind: r.Bind, Ifname: r.Ifname, Option: r.Option, Raw: r.Raw}
	b, err := f.udp.NewListenerBinding(spec, r.ToAddr, p, to, v6)
	if err != nil {
		return nil, err
	}
	u := &udpInListener{b: b, stopc: make(chan struct{}), done: make(chan struct{})}
	b.Done = u.stopc
	if f.splice {
		if dup, err := unix.FcntlInt(uintptr(b.Sock.FD), unix.F_DUPFD_CLOEXEC, 0); err == nil {
			toAddr := r.ToAddr
			u.relay = f.splicer.NewUDP(dup, func(client netip.AddrPort) (netip.AddrPort, bool) {
				return f.nsTarget(!client.Addr().Unmap().Is4(), toAddr, to)
			}, func(v6 bool) (int, error) {
				return f.ns.socket(family(v6), unix.SOCK_DGRAM, unix.IPPROTO_UDP)
			}, f.env.Opts.UDPTimeout)
			b.Splice = u.relay
		}
	}
	go func() {
		defer close(u.done)
		b.Run()
	}()
	return u, nil
}

// nsListen makes a socket in the namespace bound to its loopback address
// of one family at port p.
func (f *forwarder) nsListen(typ int, p uint16, v6 bool) (int, error) {
	proto := 0
	if typ == unix.SOCK_DGRAM {
		proto = unix.IPPROTO_UDP
	}
	fd, err := f.ns.socket(family(v6), typ, proto)
	if err != nil {
		return -1, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if v6 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	if err := sockutil.BindAddrPort(fd, netip.AddrPortFrom(loopback(v6), p)); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if typ == unix.SOCK_DGRAM {
		sockutil.SetBufs(fd)
	}
	if typ == unix.SOCK_STREAM {
		if err := unix.Listen(fd, 4096); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

// tcpOutListener is a -T listening socket in the namespace.
type tcpOutListener struct {
	file *os.File
	to   netip.AddrPort
	env  *actors.Env
	sp   *splice.Splicer
	done chan struct{}
}

func (f *forwarder) openTCPOut(p, to uint16, v6 bool) (fwdListener, error) {
	fd, err := f.nsListen(unix.SOCK_STREAM, p, v6)
	if err != nil {
		return nil, err
	}
	t := &tcpOutListener{file: os.NewFile(uintptr(fd), "tcp-ns-listener"), to: netip.AddrPortFrom(loopback(v6), to),
		env: f.env, sp: f.splicer, done: make(chan struct{})}
	go t.run()
	return t, nil
}

func (t *tcpOutListener) Close() {
	t.file.Close()
	<-t.done
}

// run accepts namespace clients and splices each to the host's loopback.
func (t *tcpOutListener) run() {
	defer close(t.done)
	v6 := t.to.Addr().Is6()
	acceptLoop(t.env, t.file, "namespace port", func(nfd int, _ unix.Sockaddr) {
		hfd, err := unix.Socket(family(v6), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			_ = unix.SetsockoptLinger(nfd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
			unix.Close(nfd)
			return
		}
		var alt *splice.Alt
		if !t.env.Opts.IPv4Only && !t.env.Opts.IPv6Only {
			alt = &splice.Alt{Dst: netip.AddrPortFrom(loopback(!v6), t.to.Port()), Sock: func() (int, error) {
				return unix.Socket(family(!v6), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			}}
		}
		spliceConnect(t.sp, actors.FDNSSplice, nfd, hfd, t.to, alt)
	})
}

func (f *forwarder) openUDPOut(p, to uint16, v6 bool) (fwdListener, error) {
	fd, err := f.nsListen(unix.SOCK_DGRAM, p, v6)
	if err != nil {
		return nil, err
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	target := netip.AddrPortFrom(loopback(v6), to)
	relay := f.splicer.NewUDP(dup, func(netip.AddrPort) (netip.AddrPort, bool) { return target, true },
		func(v6 bool) (int, error) {
			return unix.Socket(family(v6), unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
		}, f.env.Opts.UDPTimeout)
	l := &splice.UDPListener{File: os.NewFile(uintptr(fd), "udp-ns-listener"), Relay: relay}
	l.WG.Add(1)
	go l.Serve()
	return l, nil
}
