// Package flowtrace selects flows and streams their story to observers:
// the filter language of `gopasta ctl trace`, `flows` and `pcap`, the hub
// that fans a flow's trace lines out to the subscribed clients, and the
// tcpdump-style text of a TCP segment.
//
// # Theory of operation
//
// Tracing must cost nothing when nobody looks, and little for the flows
// nobody looks at when somebody does. The hub's subscribers are an
// immutable list behind one atomic pointer, replaced on every subscribe
// and unsubscribe; its identity is the generation. Each flow keeps a Tap,
// owned by whoever runs the flow, that caches which subscribers match it
// for the list it last saw. So with no subscriber a flow pays one atomic
// load per event (Hub.Active); with subscribers, a pointer compare, and
// the filters run once per flow per change of the list.
//
// A subscriber's lines go into a bounded channel with a non-blocking send:
// a client that does not keep up overflows it, and the hub then marks it
// dropped (Sub.Dropped is closed) and stops sending to it. The data path
// never waits for an observer.
package flowtrace

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// IP protocol numbers the filter knows.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// MaxFilterLen bounds a filter's text: it comes from a client.
const MaxFilterLen = 512

// Filter selects flows. The zero Filter matches every flow; each field
// that is set narrows the selection, and a flow must pass all of them.
type Filter struct {
	// Proto is an IP protocol number, 0 for any. ICMP (1) also matches
	// ICMPv6 (58): "icmp" means pings of either family.
	Proto uint8
	// Addr, if valid, must be the guest's or the far end's address.
	Addr netip.Addr
	// Port, if nonzero, must be the guest's or the far end's port (the
	// echo identifier for ICMP flows is not a port and never matches).
	Port uint16
	// ID, if nonzero, is the flow's identifier (see actors.Handle.ID).
	ID uint64
}

// ParseFilter reads a filter: words separated by blanks, in any order,
// optionally joined by "and":
//
//	tcp | udp | icmp | icmpv6    the protocol
//	host ADDR | ADDR             an address of either end
//	port N                       a port of either end
//	ADDR:PORT | [ADDR6]:PORT     both at once
//	id N                         one flow, by the id `flows` shows
//
// An empty text is the filter that matches every flow.
func ParseFilter(s string) (Filter, error) {
	var f Filter
	if len(s) > MaxFilterLen {
		return f, fmt.Errorf("filter longer than %d bytes", MaxFilterLen)
	}
	w := strings.Fields(s)
	for i := 0; i < len(w); i++ {
		arg := func() (string, error) {
			if i+1 >= len(w) {
				return "", fmt.Errorf("%q needs a value", w[i])
			}
			i++
			return w[i], nil
		}
		switch word := strings.ToLower(w[i]); word {
		case "and":
		case "tcp", "udp", "icmp", "icmpv6":
			p := map[string]uint8{"tcp": protoTCP, "udp": protoUDP, "icmp": protoICMP, "icmpv6": protoICMPv6}[word]
			if f.Proto != 0 && f.Proto != p {
				return f, fmt.Errorf("two protocols: %s", s)
			}
			f.Proto = p
		case "host":
			v, err := arg()
			if err != nil {
				return f, err
			}
			if err := f.setAddr(v); err != nil {
				return f, err
			}
		case "port":
			v, err := arg()
			if err != nil {
				return f, err
			}
			if err := f.setPort(v); err != nil {
				return f, err
			}
		case "id":
			v, err := arg()
			if err != nil {
				return f, err
			}
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil || n == 0 {
				return f, fmt.Errorf("bad flow id %q", v)
			}
			f.ID = n
		default:
			if ap, err := netip.ParseAddrPort(w[i]); err == nil {
				if err := f.setAddr(ap.Addr().String()); err != nil {
					return f, err
				}
				if err := f.setPort(strconv.Itoa(int(ap.Port()))); err != nil {
					return f, err
				}
				continue
			}
			if _, err := netip.ParseAddr(w[i]); err == nil {
				if err := f.setAddr(w[i]); err != nil {
					return f, err
				}
				continue
			}
			return f, fmt.Errorf("unknown filter word %q (tcp, udp, icmp, icmpv6, host ADDR, port N, ADDR:PORT, id N)", w[i])
		}
	}
	return f, nil
}

func (f *Filter) setAddr(v string) error {
	a, err := netip.ParseAddr(v)
	if err != nil {
		return fmt.Errorf("bad address %q", v)
	}
	a = a.Unmap().WithZone("")
	if f.Addr.IsValid() && f.Addr != a {
		return fmt.Errorf("two addresses: %s and %s", f.Addr, a)
	}
	f.Addr = a
	return nil
}

func (f *Filter) setPort(v string) error {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("bad port %q", v)
	}
	if f.Port != 0 && f.Port != uint16(n) {
		return fmt.Errorf("two ports: %d and %d", f.Port, n)
	}
	f.Port = uint16(n)
	return nil
}

// String gives the filter back in the form ParseFilter reads.
func (f Filter) String() string {
	var w []string
	switch f.Proto {
	case 0:
	case protoTCP:
		w = append(w, "tcp")
	case protoUDP:
		w = append(w, "udp")
	case protoICMP:
		w = append(w, "icmp")
	case protoICMPv6:
		w = append(w, "icmpv6")
	default:
		w = append(w, "proto"+strconv.Itoa(int(f.Proto)))
	}
	if f.Addr.IsValid() {
		w = append(w, "host", f.Addr.String())
	}
	if f.Port != 0 {
		w = append(w, "port", strconv.Itoa(int(f.Port)))
	}
	if f.ID != 0 {
		w = append(w, "id", strconv.FormatUint(f.ID, 10))
	}
	return strings.Join(w, " ")
}

// IsZero reports whether f matches every flow.
func (f Filter) IsZero() bool { return f == Filter{} }

// Match reports whether the flow of protocol proto between guest and far,
// with identifier id, passes f. An id of 0 (unknown, as for a captured
// frame) fails a filter on ids.
func (f Filter) Match(proto uint8, guest, far netip.AddrPort, id uint64) bool {
	switch {
	case f.Proto == 0 || f.Proto == proto:
	case f.Proto == protoICMP && proto == protoICMPv6:
	default:
		return false
	}
	if f.ID != 0 && f.ID != id {
		return false
	}
	if f.Addr.IsValid() && guest.Addr().Unmap() != f.Addr && far.Addr().Unmap() != f.Addr {
		return false
	}
	if f.Port != 0 {
		if proto != protoTCP && proto != protoUDP {
			return false
		}
		if guest.Port() != f.Port && far.Port() != f.Port {
			return false
		}
	}
	return true
}
