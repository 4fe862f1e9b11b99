package actors

import (
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link/wire"
)

// StartTCPForwarders binds the listening sockets for the -t port
// specifications (host -> guest) and starts their accept loops, which hand
// new inbound actors to the dispatcher on Env.Register. It must be called
// before the daemon reports readiness, so that a bind failure is an exit
// with a clear message. stop closes the listeners and ends their goroutines.
//
// Each listening socket has one goroutine, parked in the runtime poller
// until a client connects; it accepts every pending connection and starts
// an actor for each, which registers itself with the dispatcher before it
// sends its SYN to the guest, so that the guest's answer finds the flow.
func StartTCPForwarders(env *Env) (stop func(), err error) {
	if env.Conf == nil || env.Conf.NoTCP {
		return func() {}, nil
	}
	var ls []*tcpListener
	closeAll := func() {
		for _, l := range ls {
			l.file.Close()
		}
	}
	for _, spec := range env.Conf.TCPPorts {
		fwds, err := tcpExpand(env, spec)
		if err != nil {
			closeAll()
			return nil, err
		}
		for _, fw := range fwds {
			l, err := listenTCP(fw)
			if err != nil {
				if fw.optional {
					env.Log.Debugf("%s %s: no IPv6 listener on port %d: %v", spec.Option, spec.Raw, fw.port, err)
					continue
				}
				closeAll()
				return nil, fmt.Errorf("option '%s %s': cannot listen on %s port %d: %w", spec.Option, spec.Raw, fw.bindText(), fw.port, err)
			}
			ls = append(ls, l)
		}
	}
	var wg sync.WaitGroup
	for _, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.run(env)
		}()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			closeAll()
			wg.Wait()
		})
	}, nil
}

// tcpForward is one listening socket to open: bind address (invalid: any
// of family v6), port, interface, and the guest port (and address) it
// forwards to.
type tcpForward struct {
	bind     netip.Addr
	v6       bool
	ifname   string
	port     uint16
	to       uint16
	toAddr   netip.Addr
	optional bool // an any-address IPv6 listener: skip if IPv6 is missing
	freebind bool // --freebind
}

func (f tcpForward) bindText() string {
	if f.bind.IsValid() {
		return f.bind.String()
	}
	if f.v6 {
		return "[::]"
	}
	return "0.0.0.0"
}

// tcpExpand turns a port specification into the listeners it asks for.
// "auto" and "all" belong to the port-forwarding work and are logged as
// not done yet.
func tcpExpand(env *Env, spec conf.PortSpec) ([]tcpForward, error) {
	if spec.None {
		return nil, nil
	}
	if spec.Auto || spec.All && len(spec.Ranges) == 0 {
		env.Log.Warnf("option '%s %s': automatic and 'all' port forwarding are not implemented yet, ignored", spec.Option, spec.Raw)
		return nil, nil
	}
	excluded := func(p uint16) bool {
		for _, r := range spec.Excluded {
			if p >= r.First && p <= r.Last {
				return true
			}
		}
		return false
	}
	var out []tcpForward
	for _, r := range spec.Ranges {
		if r.Last < r.First {
			return nil, fmt.Errorf("option '%s %s': bad range %d-%d", spec.Option, spec.Raw, r.First, r.Last)
		}
		for p := int(r.First); p <= int(r.Last); p++ {
			if excluded(uint16(p)) {
				continue
			}
			to := r.To
			if to == 0 {
				to = r.First
			}
			fw := tcpForward{port: uint16(p), to: to + uint16(p-int(r.First)), toAddr: r.ToAddr, ifname: spec.Ifname, freebind: env.Conf.Freebind}
			switch {
			case spec.Bind.IsValid():
				fw.bind = spec.Bind.Unmap()
				fw.v6 = fw.bind.Is6()
				out = append(out, fw)
			default:
				if !env.Conf.IPv6Only {
					out = append(out, fw)
				}
				if !env.Conf.IPv4Only {
					fw.v6 = true
					fw.optional = !env.Conf.IPv6Only
					out = append(out, fw)
				}
			}
		}
	}
	return out, nil
}

// tcpListener is a listening socket and what its connections forward to.
type tcpListener struct {
	fw   tcpForward
	fd   int
	file *os.File
	// splice, if set, may take over a connection from a loopback client
	// (the loopback splice path, fwd_listen.go); false: the tap path.
	splice func(fd int, client netip.AddrPort) bool
}

func listenTCP(fw tcpForward) (*tcpListener, error) {
	fam := unix.AF_INET
	if fw.v6 {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*tcpListener, error) {
		unix.Close(fd)
		return nil, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if fw.v6 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	if fw.ifname != "" {
		if err := unix.BindToDevice(fd, fw.ifname); err != nil {
			return fail(fmt.Errorf("bind to device %s: %w", fw.ifname, err))
		}
	}
	if fw.freebind {
		if err := setFreebind(fd, fw.v6); err != nil {
			return fail(fmt.Errorf("--freebind: %w", err))
		}
	}
	var sa unix.Sockaddr
	switch {
	case fw.bind.IsValid():
		sa = sockaddrOf(netip.AddrPortFrom(fw.bind, fw.port))
	case fw.v6:
		sa = &unix.SockaddrInet6{Port: int(fw.port)}
	default:
		sa = &unix.SockaddrInet4{Port: int(fw.port)}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail(err)
	}
	if err := unix.Listen(fd, 4096); err != nil {
		return fail(err)
	}
	return &tcpListener{fw: fw, fd: fd, file: os.NewFile(uintptr(fd), "tcp-listener")}, nil
}

// run accepts connections until the listener is closed.
func (l *tcpListener) run(env *Env) {
	acceptLoop(env, l.file, fmt.Sprintf("port %d", l.fw.port), func(nfd int, sa unix.Sockaddr) {
		l.accepted(env, nfd, sa)
	})
}

// acceptLog rate-limits the warnings of every acceptLoop.
var acceptLog RateLog

// acceptLoop accepts connections on the listening socket f, handing each to
// handle, until f is closed or the daemon stops. Accept errors that mean
// "out of descriptors or memory" are logged and waited out for 100 ms
// rather than spun on; what stands for the listener in that line is what.
func acceptLoop(env *Env, f *os.File, what string, handle func(nfd int, sa unix.Sockaddr)) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	for {
		var aerr error
		err := rc.Read(func(fd uintptr) bool {
			for {
				nfd, sa, err := unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
				switch {
				case err == unix.EAGAIN:
					return false
				case err == unix.EINTR || err == unix.ECONNABORTED:
					continue
				case err != nil:
					aerr = err
					return true
				}
				handle(nfd, sa)
			}
		})
		if err != nil || env.Ctx.Err() != nil {
			return
		}
		if aerr != nil {
			acceptLog.Warnf(env.Log.WithField("listener", what), "accept on %s: %v", what, aerr)
			select {
			case <-time.After(100 * time.Millisecond):
			case <-env.Ctx.Done():
				return
			}
		}
	}
}

// accepted starts the actor for a new inbound connection.
func (l *tcpListener) accepted(env *Env, fd int, sa unix.Sockaddr) {
	client, ok := addrPortOf(sa)
	if ok && l.splice != nil && client.Addr().IsLoopback() && l.splice(fd, client) {
		return
	}
	if env.Conf.SpliceOnly {
		// No tap to take it to: refuse at once rather than let the
		// client wait for a handshake nobody answers.
		env.Log.Debugf("inbound TCP from %s to port %d: --splice-only takes loopback clients only", client, l.fw.port)
		SpliceStats.OnlyRefused.Add(1)
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		unix.Close(fd)
		return
	}
	far, shown := env.NAT.Inbound(client)
	var guest netip.Addr
	switch {
	case l.fw.toAddr.IsValid():
		guest = l.fw.toAddr.Unmap()
	case far.Addr().Is4():
		guest = env.Peer.Addr4()
		if !guest.IsValid() && env.Conf.Addr4.IsValid() {
			guest = env.Conf.Addr4.Addr()
		}
	default:
		guest = env.Peer.Addr6()
		if !guest.IsValid() {
			guest = env.Conf.Addr6
		}
	}
	if !ok || !shown || !guest.IsValid() || guest.Is4() != far.Addr().Is4() {
		env.Log.Debugf("inbound TCP from %s to port %d: no way to show it to the guest", client, l.fw.port)
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		unix.Close(fd)
		return
	}
	k := Key{Proto: wire.ProtoTCP, Guest: netip.AddrPortFrom(guest, l.fw.to), Far: far}
	if !takeInbound(env, k) {
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		unix.Close(fd)
		return
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	s, err := newTCPSock(env, fd, false)
	if err != nil {
		env.Limits.giveFDs(fdInbound, fdsTCP)
		unix.Close(fd)
		return
	}
	h := NewHandle(k)
	h.StateName = tcpStateString
	h.Inbound = true
	c := newTCPConn(env, h, k, true)
	c.fds, c.fdKind = fdsTCP, fdInbound
	c.sock = s
	s.owner.Store(c)
	env.Stats.TCPFlows.Add(1)
	env.Stats.TCPOpened.Add(1)
	go c.runInbound()
}

// takeInbound reports whether a new inbound flow fits: the flow table under
// --flow-limit, as the guest's own flows, and the descriptor budget (it
// then holds fdsTCP of it). A refusal is counted and logged, rate-limited.
func takeInbound(env *Env, k Key) bool {
	if limit := flowLimit(env); env.TableFlows.Load() >= limit {
		env.Stats.Refused.Add(1)
		tcpRefusedLog.Warnf(env.FlowLog(k), "tcp: flow limit %d reached, resetting inbound connections", limit)
		return false
	}
	if !env.Limits.takeFDs(fdInbound, fdsTCP) {
		tcpRefusedLog.Warnf(env.FlowLog(k), "tcp: descriptor budget spent (%d), resetting inbound connections", env.Limits.fdMax.Load())
		return false
	}
	return true
}
