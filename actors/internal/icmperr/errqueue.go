package icmperr

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/internal/sockutil"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// ICMP errors, theory of operation.
//
// gopasta's host sockets see no ICMP themselves: with IP_RECVERR (and
// IPV6_RECVERR) the kernel matches an ICMP error to the socket that sent the
// offending datagram and queues it on that socket's error queue, together
// with the original destination (msg_name), the ICMP type and code, the
// reporting node (SO_EE_OFFENDER) and the offending payload. The socket
// polls readable-with-error, the actor drains the queue with MSG_ERRQUEUE,
// and rebuilds for the guest the packet the guest had sent — guest address
// and port to the far end as the guest addressed it — to quote it in an
// ICMP or ICMPv6 error of the same type. The guest's stack then fails the
// right socket at once (ECONNREFUSED for "port unreachable") instead of
// waiting for a timeout, and path MTU discovery keeps working.
//
// Locally generated errors (origin LOCAL, e.g. EMSGSIZE against a route's
// MTU) become "fragmentation needed" / "packet too big".

// Queued is one entry read from a socket's error queue.
type Queued struct {
	N        int            // bytes of the offending payload read into the buffer
	Dst      netip.AddrPort // the offending datagram's destination
	ee       unix.SockExtendedErr
	offender netip.Addr // who reported it, if known
}

// Recv reads one entry of fd's error queue into buf (payload) and oob
// (control scratch). It reports false when the queue is empty.
func Recv(fd int, buf, oob []byte) (Queued, bool) {
	var q Queued
	n, oobn, _, from, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
	if err != nil {
		return q, false
	}
	q.N = n
	switch a := from.(type) {
	case *unix.SockaddrInet4:
		q.Dst = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		q.Dst = netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	q.ParseControl(oob[:oobn])
	return q, true
}

// parseControl fills q's extended error and offender from the control
// messages of an error-queue read. The kernel wrote them, but their
// lengths are checked all the same: nothing read here may panic.
func (q *Queued) ParseControl(oob []byte) {
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for _, c := range cmsgs {
		if !(c.Header.Level == unix.IPPROTO_IP && c.Header.Type == unix.IP_RECVERR) &&
			!(c.Header.Level == unix.IPPROTO_IPV6 && c.Header.Type == unix.IPV6_RECVERR) {
			continue
		}
		const eeLen = int(unsafe.Sizeof(unix.SockExtendedErr{}))
		if len(c.Data) < eeLen {
			continue
		}
		q.ee = *(*unix.SockExtendedErr)(unsafe.Pointer(&c.Data[0]))
		if off := c.Data[eeLen:]; len(off) >= unix.SizeofSockaddrInet4 {
			var sa unix.RawSockaddrInet6
			copy((*[unix.SizeofSockaddrInet6]byte)(unsafe.Pointer(&sa))[:], off)
			q.offender = sockutil.GetSockaddr(&sa).Addr()
		}
	}
}

// guestError returns the ICMP (v6 false) or ICMPv6 type, code and info to
// show the guest for q, and false for errors the guest need not hear about.
func (q *Queued) GuestError(v6 bool) (typ, code uint8, info uint32, ok bool) {
	ee := &q.ee
	switch ee.Origin {
	case unix.SO_EE_ORIGIN_ICMP:
		if v6 {
			return 0, 0, 0, false
		}
		switch ee.Type {
		case wire.ICMPv4DestUnreach, wire.ICMPv4TimeExceeded, 12: // 12: parameter problem
			return ee.Type, ee.Code, ee.Info, true
		}
	case unix.SO_EE_ORIGIN_ICMP6:
		if !v6 {
			return 0, 0, 0, false
		}
		switch ee.Type {
		case wire.ICMPv6DestUnreach, wire.ICMPv6PacketTooBig, wire.ICMPv6TimeExceeded, 4: // 4: parameter problem
			return ee.Type, ee.Code, ee.Info, true
		}
	case unix.SO_EE_ORIGIN_LOCAL:
		if ee.Errno != uint32(unix.EMSGSIZE) || ee.Info == 0 {
			return 0, 0, 0, false
		}
		if v6 {
			return wire.ICMPv6PacketTooBig, 0, ee.Info, true
		}
		return wire.ICMPv4DestUnreach, 4, ee.Info, true
	}
	return 0, 0, 0, false
}

// Source picks the address the guest sees the error coming from: the
// far end itself when it (or the host standing in for it) reported the
// error, else the reporting router as the guest would see it.
func Source(env *actors.Env, q *Queued, far netip.Addr) netip.Addr {
	off := q.offender
	if !off.IsValid() || off.IsUnspecified() || off == q.Dst.Addr() || off.Is4() != far.Is4() {
		return far
	}
	if g, ok := env.NAT.Inbound(netip.AddrPortFrom(off, 0)); ok && g.Addr().IsValid() {
		return g.Addr()
	}
	return far
}

// UDPFrame builds the ICMP error (typ, code, info: from guestError) that
// tells the guest about q, an error the kernel queued for a datagram the
// guest sent from guest to far. buf is the actor's error buffer: the
// offending payload (q.n bytes) at buf[UDPLen:], room for the UDP header
// before it, which UDPFrame fills in. It returns nil when the frame
// cannot be built (families that disagree).
func UDPFrame(env *actors.Env, q *Queued, typ, code uint8, info uint32, guest, far netip.AddrPort, buf []byte) *link.Frame {
	l4len := wire.UDPLen + q.N
	l4 := buf[:min(l4len, len(buf))]
	u := wire.UDP(l4)
	u.Set(guest.Port(), far.Port(), l4len)
	if len(l4) == l4len {
		gs, fs := guest.Addr().AsSlice(), far.Addr().AsSlice()
		u.SetChecksum(wire.FoldUDP(wire.Checksum(l4, wire.PseudoHeaderSum(gs, fs, wire.ProtoUDP, l4len))))
	}
	e := Error{
		Type: typ, Code: code, Info: info,
		From:  Source(env, q, far.Addr()),
		Guest: guest.Addr(), Far: far.Addr(),
		Proto: wire.ProtoUDP, L4Len: l4len, L4: l4,
	}
	return Frame(env, &e)
}
