package flowtrace

import (
	"net/netip"
	"strconv"
	"time"

	"github.com/gopasta/gopasta/link/wire"
)

// Segment is what a trace line says about a TCP segment.
type Segment struct {
	Flags    uint8
	Seq, Ack uint32 // as they should be printed (relative once known)
	Win      uint16 // the window field, unscaled, as tcpdump shows it
	Len      int    // payload bytes
	MSS      int    // MSS option, 0 if absent
	WScale   int    // window scale option, -1 if absent
}

// AppendTCP appends the segment in tcpdump's notation: "Flags [P.], seq
// 1:101, ack 1, win 502, length 100".
func AppendTCP(b []byte, s Segment) []byte {
	b = append(b, "Flags ["...)
	n := len(b)
	for _, f := range [...]struct {
		bit uint8
		c   byte
	}{{wire.TCPSyn, 'S'}, {wire.TCPFin, 'F'}, {wire.TCPRst, 'R'}, {wire.TCPPsh, 'P'}, {wire.TCPUrg, 'U'}, {wire.TCPEce, 'E'}, {wire.TCPCwr, 'W'}} {
		if s.Flags&f.bit != 0 {
			b = append(b, f.c)
		}
	}
	if s.Flags&wire.TCPAck != 0 {
		b = append(b, '.')
	}
	if len(b) == n {
		b = append(b, "none"...)
	}
	b = append(b, "], seq "...)
	b = strconv.AppendUint(b, uint64(s.Seq), 10)
	if s.Len > 0 {
		b = append(b, ':')
		b = strconv.AppendUint(b, uint64(s.Seq+uint32(s.Len)), 10)
	}
	if s.Flags&wire.TCPAck != 0 {
		b = append(b, ", ack "...)
		b = strconv.AppendUint(b, uint64(s.Ack), 10)
	}
	b = append(b, ", win "...)
	b = strconv.AppendUint(b, uint64(s.Win), 10)
	if s.MSS > 0 || s.WScale >= 0 {
		b = append(b, ", options ["...)
		sep := false
		if s.MSS > 0 {
			b = append(b, "mss "...)
			b = strconv.AppendInt(b, int64(s.MSS), 10)
			sep = true
		}
		if s.WScale >= 0 {
			if sep {
				b = append(b, ',')
			}
			b = append(b, "wscale "...)
			b = strconv.AppendInt(b, int64(s.WScale), 10)
		}
		b = append(b, ']')
	}
	b = append(b, ", length "...)
	b = strconv.AppendInt(b, int64(s.Len), 10)
	return b
}

// Stamp is the time of day as tcpdump prints it, to the microsecond.
func Stamp(t time.Time) string { return t.Format("15:04:05.000000") }

// Desc is how the lines of flow id start: "17 tcp 10.0.2.100:40000 >
// 93.184.216.34:80", the guest first.
func Desc(id uint64, proto uint8, guest, far netip.AddrPort) string {
	p := "proto" + strconv.Itoa(int(proto))
	switch proto {
	case protoTCP:
		p = "tcp"
	case protoUDP:
		p = "udp"
	case protoICMP:
		p = "icmp"
	case protoICMPv6:
		p = "icmpv6"
	}
	return strconv.FormatUint(id, 10) + " " + p + " " + guest.String() + " > " + far.String()
}
