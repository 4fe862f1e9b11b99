package tcp

import (
	"encoding/binary"
	"net/netip"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// tcpTemplate is the pre-built Ethernet, IP and TCP header of every segment
// a flow sends to the guest. Building a segment is one copy of 54 or 74
// bytes plus the fields that change (lengths, sequence numbers, flags,
// window) and the checksums; the addresses' share of the TCP checksum is
// summed once per flow.
type tcpTemplate struct {
	hdr    [wire.EthernetLen + wire.IPv6Len + wire.TCPMinLen]byte
	hlen   int // Ethernet + IP + TCP without options
	l4     int // offset of the TCP header
	v6     bool
	pseudo uint32 // partial sum of source, destination and protocol
	ipSum  uint32 // partial sum of the IPv4 header with zero length
}

// TCP option lengths gopasta sends: MSS (4) and window scale (3, padded
// with a NOP to 4), only on SYN segments.
const tcpSynOptsLen = 8

func (t *tcpTemplate) init(ourMAC [6]byte, src, dst netip.AddrPort) {
	t.v6 = src.Addr().Is6()
	eth := wire.Ethernet(t.hdr[:])
	if t.v6 {
		eth.Set(link.Broadcast, ourMAC, wire.EtherTypeIPv6)
		t.l4 = wire.EthernetLen + wire.IPv6Len
		s, d := src.Addr().As16(), dst.Addr().As16()
		wire.IPv6(t.hdr[wire.EthernetLen:]).SetHeader(0, wire.ProtoTCP, 255, s, d)
		t.pseudo = wire.PseudoHeaderSum(s[:], d[:], wire.ProtoTCP, 0)
	} else {
		eth.Set(link.Broadcast, ourMAC, wire.EtherTypeIPv4)
		t.l4 = wire.EthernetLen + wire.IPv4MinLen
		s, d := src.Addr().As4(), dst.Addr().As4()
		ip := wire.IPv4(t.hdr[wire.EthernetLen:])
		ip.SetHeader(0, 0, 255, wire.ProtoTCP, s, d)
		ip[10], ip[11] = 0, 0
		t.ipSum = wire.Checksum(ip[:wire.IPv4MinLen], 0)
		t.pseudo = wire.PseudoHeaderSum(s[:], d[:], wire.ProtoTCP, 0)
	}
	t.hlen = t.l4 + wire.TCPMinLen
	wire.TCP(t.hdr[t.l4:]).SetPorts(src.Port(), dst.Port())
}

// fill writes the headers of a segment into f, whose TCP options (optLen
// bytes) and payload (payLen bytes) are already in place after the fixed
// headers, reslices f.Data to the segment and computes both checksums.
func (t *tcpTemplate) fill(f *link.Frame, mac [6]byte, seq, ack uint32, flags uint8, win uint16, optLen, payLen int) {
	th := t.headers(f, mac, seq, ack, flags, win, optLen, payLen, t.hlen+optLen+payLen)
	th[16], th[17] = 0, 0
	th.SetChecksum(wire.Fold(wire.Checksum(th, t.pseudo+uint32(wire.TCPMinLen+optLen+payLen))))
}

// headers writes the Ethernet, IP and TCP headers of a segment of
// optLen option and payLen payload bytes into f, whose Data becomes n
// bytes long, and returns the TCP header; the TCP checksum is the
// caller's.
func (t *tcpTemplate) headers(f *link.Frame, mac [6]byte, seq, ack uint32, flags uint8, win uint16, optLen, payLen, n int) wire.TCP {
	b := f.Data[:n]
	f.Data = b
	copy(b, t.hdr[:t.hlen])
	copy(b[0:6], mac[:])
	l4len := wire.TCPMinLen + optLen + payLen
	if t.v6 {
		binary.BigEndian.PutUint16(b[wire.EthernetLen+4:], uint16(l4len))
	} else {
		tot := wire.IPv4MinLen + l4len
		binary.BigEndian.PutUint16(b[wire.EthernetLen+2:], uint16(tot))
		binary.BigEndian.PutUint16(b[wire.EthernetLen+10:], wire.Fold(t.ipSum+uint32(tot)))
	}
	th := wire.TCP(b[t.l4:])
	th.SetSeqAck(seq, ack)
	th.SetFlagsWindow(wire.TCPMinLen+optLen, flags, win)
	return th
}

// fillLent writes the headers of a segment whose payload (payLen bytes)
// is in the guest's buffers (f.Loan) into f.Data, which they fill. The
// TCP checksum is left to the link as offloaded: the field holds the
// pseudo-header sum and the loan says where it goes.
func (t *tcpTemplate) fillLent(f *link.Frame, mac [6]byte, seq, ack uint32, flags uint8, win uint16, payLen int) {
	th := t.headers(f, mac, seq, ack, flags, win, 0, payLen, t.hlen)
	th.SetChecksum(^wire.Fold(t.pseudo + uint32(wire.TCPMinLen+payLen)))
	f.Loan.Commit(payLen, t.l4, 16)
}

// putSynOpts writes MSS and, when ws >= 0, window scale into b (at least
// tcpSynOptsLen bytes) and returns the options' length.
func putSynOpts(b []byte, mss uint16, ws int) int {
	b[0], b[1] = 2, 4
	binary.BigEndian.PutUint16(b[2:4], mss)
	if ws < 0 {
		return 4
	}
	b[4], b[5], b[6], b[7] = 1, 3, 3, uint8(ws)
	return 8
}

// tcpRSTFor answers a segment that belongs to no connection with a reset,
// as RFC 9293 3.10.7.1 says: if it carried an ACK the reset takes its
// sequence number from it, otherwise it acknowledges the segment.
func tcpRSTFor(env *actors.Env, k actors.Key, th wire.TCP, payLen int) *link.Frame {
	flags := th.Flags()
	var seq, ack uint32
	rflags := uint8(wire.TCPRst)
	if flags&wire.TCPAck != 0 {
		seq = th.Ack()
	} else {
		ack = th.Seq() + uint32(payLen)
		if flags&wire.TCPSyn != 0 {
			ack++
		}
		if flags&wire.TCPFin != 0 {
			ack++
		}
		rflags |= wire.TCPAck
	}
	var t tcpTemplate
	t.init(env.Peer.OurMAC, k.Far, k.Guest)
	f := link.GetFrame(t.hlen)
	t.fill(f, env.Peer.MAC(), seq, ack, rflags, 0, 0, 0)
	return f
}
