package forward

import (
	"fmt"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/internal/sockutil"
	"github.com/gopasta/gopasta/actors/tcp"
	"github.com/gopasta/gopasta/link/wire"
)

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
	freebind bool // --freebind
}

// tcpListener is a listening socket and what its connections forward to.
type tcpListener struct {
	fw   tcpForward
	fd   int
	file *os.File
	// splice, if set, may take over a connection from a loopback client
	// (the loopback splice path, listen.go); false: the tap path.
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
		if err := sockutil.SetFreebind(fd, fw.v6); err != nil {
			return fail(fmt.Errorf("--freebind: %w", err))
		}
	}
	var sa unix.Sockaddr
	switch {
	case fw.bind.IsValid():
		sa = sockutil.SockaddrOf(netip.AddrPortFrom(fw.bind, fw.port))
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
func (l *tcpListener) run(f *forwarder) {
	acceptLoop(f.env, l.file, fmt.Sprintf("port %d", l.fw.port), func(nfd int, sa unix.Sockaddr) {
		l.accepted(f, nfd, sa)
	})
}

// acceptLog rate-limits the warnings of every acceptLoop.
var acceptLog actors.RateLog

// acceptLoop accepts connections on the listening socket f, handing each to
// handle, until f is closed or the daemon stops. Accept errors that mean
// "out of descriptors or memory" are logged and waited out for 100 ms
// rather than spun on; what stands for the listener in that line is what.
func acceptLoop(env *actors.Env, f *os.File, what string, handle func(nfd int, sa unix.Sockaddr)) {
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
func (l *tcpListener) accepted(f *forwarder, fd int, sa unix.Sockaddr) {
	env := f.env
	client, ok := sockutil.AddrPortOf(sa)
	if ok && l.splice != nil && client.Addr().IsLoopback() && l.splice(fd, client) {
		return
	}
	if env.Opts.SpliceOnly {
		// No tap to take it to: refuse at once rather than let the
		// client wait for a handshake nobody answers.
		env.Log.Debugf("inbound TCP from %s to port %d: --splice-only takes loopback clients only", client, l.fw.port)
		f.splicer.Stats.OnlyRefused.Add(1)
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
		if !guest.IsValid() && env.Opts.Addr4.IsValid() {
			guest = env.Opts.Addr4.Addr()
		}
	default:
		guest = env.Peer.Addr6()
		if !guest.IsValid() {
			guest = env.Opts.Addr6
		}
	}
	if !ok || !shown || !guest.IsValid() || guest.Is4() != far.Addr().Is4() {
		env.Log.Debugf("inbound TCP from %s to port %d: no way to show it to the guest", client, l.fw.port)
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		unix.Close(fd)
		return
	}
	k := actors.Key{Proto: wire.ProtoTCP, Guest: netip.AddrPortFrom(guest, l.fw.to), Far: far}
	if !takeInbound(env, k) {
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		unix.Close(fd)
		return
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	f.tcp.StartInbound(k, fd)
}

// takeInbound reports whether a new inbound flow fits: the flow table under
// --flow-limit, as the guest's own flows, and the descriptor budget (it
// then holds actors.FDsTCP of it). A refusal is counted and logged, rate-limited.
func takeInbound(env *actors.Env, k actors.Key) bool {
	if limit := env.Opts.FlowLimit; env.TableFlows.Load() >= limit {
		env.Stats.Refused.Add(1)
		tcp.RefusedLog.Warnf(env.FlowLog(k), "tcp: flow limit %d reached, resetting inbound connections", limit)
		return false
	}
	if !env.Limits.TakeFDs(actors.FDInbound, actors.FDsTCP) {
		tcp.RefusedLog.Warnf(env.FlowLog(k), "tcp: descriptor budget spent (%d), resetting inbound connections", env.Limits.FDMax.Load())
		return false
	}
	return true
}
