package icmp

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/actors/internal/icmperr"
	"github.com/gopasta/gopasta/actors/internal/sockutil"
	"github.com/gopasta/gopasta/link/wire"
)

// errChoices reads a fuzz input as decisions; past its end they are all
// zero.
type errChoices struct{ b []byte }

func (c *errChoices) u8() byte {
	if len(c.b) == 0 {
		return 0
	}
	v := c.b[0]
	c.b = c.b[1:]
	return v
}

func (c *errChoices) u16() uint16 { return uint16(c.u8())<<8 | uint16(c.u8()) }

// cmsgBytes returns one control message as the kernel lays it out, its
// length field claiming claim bytes of data (normally len(data)).
func cmsgBytes(level, typ int32, data []byte, claim int) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(claim))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

// errAddrs are the addresses an error may name: the far end, the host's
// loopback in every spelling, unspecified, a router.
var errAddrs = []netip.Addr{
	actorstest.GW4, actorstest.Lo4, netip.MustParseAddr("127.9.9.9"), netip.IPv4Unspecified(), netip.MustParseAddr("198.51.100.1"),
	actorstest.GW6, netip.IPv6Loopback(), netip.MustParseAddr("::ffff:127.0.0.1"), netip.MustParseAddr("::ffff:0.0.0.0"),
	netip.IPv6Unspecified(), netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("fe80::1"),
}

// genErrQueue builds what one read of a socket's error queue returns: the
// control messages (an extended error of any origin, type, code, errno
// and info, an offender of either family or none, cut short now and then,
// foreign messages around it) and the offending payload's length, plus
// the flow the error is about.
func genErrQueue(c *errChoices) (oob []byte, n int, v6 bool, guest, far netip.AddrPort) {
	v6 = c.u8()&1 != 0
	guest = netip.AddrPortFrom(actorstest.Guest4, c.u16())
	far = netip.AddrPortFrom(actorstest.GW4, c.u16())
	if c.u8()%4 == 0 {
		far = netip.AddrPortFrom(netip.MustParseAddr("93.184.216.34"), far.Port())
	}
	level, typ := int32(unix.IPPROTO_IP), int32(unix.IP_RECVERR)
	if v6 {
		guest = netip.AddrPortFrom(actorstest.Guest6, guest.Port())
		far = netip.AddrPortFrom(actorstest.GW6, far.Port())
		level, typ = unix.IPPROTO_IPV6, unix.IPV6_RECVERR
	}
	origins := []uint8{unix.SO_EE_ORIGIN_ICMP, unix.SO_EE_ORIGIN_ICMP6, unix.SO_EE_ORIGIN_LOCAL, unix.SO_EE_ORIGIN_NONE, unix.SO_EE_ORIGIN_TXSTATUS}
	for msgs := int(c.u8()%3) + 1; msgs > 0; msgs-- {
		ee := unix.SockExtendedErr{
			Errno: uint32(c.u8()), Origin: origins[c.u8()%5], Type: c.u8(), Code: c.u8(),
			Info: uint32(c.u16()),
		}
		if c.u8()&1 != 0 {
			ee.Errno = uint32(unix.EMSGSIZE)
		}
		data := (*[unsafe.Sizeof(ee)]byte)(unsafe.Pointer(&ee))[:]
		data = append([]byte(nil), data...)
		switch c.u8() % 4 { // offender
		case 1, 2:
			var sa unix.RawSockaddrInet6
			sockutil.PutSockaddr(&sa, netip.AddrPortFrom(errAddrs[int(c.u8())%len(errAddrs)], 0))
			data = append(data, (*[unix.SizeofSockaddrInet6]byte)(unsafe.Pointer(&sa))[:]...)
		case 3: // a family the kernel does not write
			off := make([]byte, unix.SizeofSockaddrInet6)
			binary.LittleEndian.PutUint16(off, uint16(c.u8()))
			data = append(data, off...)
		}
		claim := len(data)
		if c.u8()%8 == 0 {
			data = data[:int(c.u8())%len(data)] // cut short
			claim = len(data)
		}
		l, t := level, typ
		if c.u8()%8 == 0 {
			l, t = int32(c.u8()), int32(c.u8())
		}
		oob = append(oob, cmsgBytes(l, t, data, claim)...)
	}
	if c.u8()%16 == 0 && len(oob) > 0 {
		oob = oob[:int(c.u8())%len(oob)] // a control buffer that ran out
	}
	n = int(c.u16()) % (icmperr.MaxLen6 - wire.UDPLen + 1)
	return
}

// FuzzUDPErrQueue builds, from generated error-queue reads (genErrQueue),
// the ICMP errors a UDP binding sends the guest, and an ICMP echo flow's,
// and checks each: it must not panic, and the frame, if any, must pass a
// strict parse, come from an address the guest may see (never the host's
// loopback, which the parser refuses), go to the guest, and keep to the
// quoting limit.
func FuzzUDPErrQueue(f *testing.F) {
	// v6, guest port, far port, far kind, messages-1, then per message:
	// errno, origin, type, code, info, EMSGSIZE flag, offender kind and
	// index, cut, foreign level; then truncation, payload length.
	f.Add([]byte{0, 0x9c, 0x40, 0, 53, 1, 0, 111, 0, 3, 3, 0, 0, 0, 1, 0, 1, 1, 1, 0, 100})     // port unreachable
	f.Add([]byte{1, 0x9c, 0x40, 0, 53, 1, 0, 90, 1, 2, 0, 5, 0xdc, 0, 1, 10, 1, 1, 1, 5, 0xdc}) // packet too big from a router
	f.Add([]byte{0, 1, 1, 1, 1, 1, 0, 0, 2, 0, 0, 5, 0xdc, 1, 0, 1, 1, 1, 0, 0x20})             // local EMSGSIZE
	f.Add([]byte{0, 0x9c, 0x40, 0, 53, 2, 0, 0, 0, 11, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 40})       // time exceeded, host loopback offender
	te := actorstest.New(f, actors.Options{})
	buf := make([]byte, icmperr.MaxLen6)
	var p wire.Parsed
	var frames atomic.Int64
	defer func() {
		if testing.Verbose() {
			f.Logf("%d UDP error frames built", frames.Load())
		}
	}()
	f.Fuzz(func(t *testing.T, in []byte) {
		oob, n, v6, guest, far := genErrQueue(&errChoices{b: in})
		var q icmperr.Queued
		q.N = n
		q.Dst = far
		q.ParseControl(oob)
		typ, code, info, _ := q.GuestError(v6)
		for i := range buf {
			buf[i] = byte(i)
		}
		check := func(what string, b []byte) {
			if err := wire.ParseFrame(b, &p); err != nil {
				t.Fatalf("%s error frame does not parse (%v): %x", what, err, b)
			}
			if p.Dst != guest.Addr() {
				t.Fatalf("%s error to %s", what, p.Dst)
			}
			if lim := icmperr.MaxLen4; p.End-wire.EthernetLen > lim && !v6 || p.End-wire.EthernetLen > icmperr.MaxLen6 {
				t.Fatalf("%s error of %d bytes", what, p.End-wire.EthernetLen)
			}
		}
		if fr := icmperr.UDPFrame(te.Env, &q, typ, code, info, guest, far, buf); fr != nil {
			check("UDP", fr.Data)
			fr.Release()
			frames.Add(1)
		}
		proto := uint8(wire.ProtoICMP)
		if v6 {
			proto = wire.ProtoICMPv6
		}
		k := actors.Key{Proto: proto, Guest: netip.AddrPortFrom(guest.Addr(), guest.Port()), Far: netip.AddrPortFrom(far.Addr(), 0)}
		if fr := echoErrorFrame(te.Env, &q, v6, k, buf); fr != nil {
			check("echo", fr.Data)
			fr.Release()
		}
	})
}
