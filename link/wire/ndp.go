package wire

import (
	"encoding/binary"
	"net/netip"
)

// Neighbour Discovery (RFC 4861) message layout and options.
const (
	// NDPHopLimit is the only hop limit an NDP message may carry, which
	// proves it was not forwarded by a router (RFC 4861 6.1, 7.1).
	NDPHopLimit = 255

	// Fixed lengths before the options.
	RouterSolicitLen   = 8
	RouterAdvertLen    = 16
	NeighborSolicitLen = 24
	NeighborAdvertLen  = 24

	// Option types.
	NDPOptSourceLinkAddr = 1
	NDPOptTargetLinkAddr = 2
	NDPOptPrefixInfo     = 3
	NDPOptMTU            = 5
	NDPOptRDNSS          = 25
	NDPOptDNSSL          = 31

	// Neighbour advertisement flags (first byte after the checksum).
	NAFlagRouter    = 0x80
	NAFlagSolicited = 0x40
	NAFlagOverride  = 0x20

	// Router advertisement flags.
	RAFlagManaged = 0x80
	RAFlagOther   = 0x40

	// Prefix information flags.
	PrefixFlagOnLink     = 0x80
	PrefixFlagAutonomous = 0x40
)

// NDPTarget returns the target address of a neighbour solicitation or
// advertisement; m must hold NeighborSolicitLen bytes.
func NDPTarget(m ICMP) netip.Addr { return netip.AddrFrom16([16]byte(m[8:24])) }

// NDPOptions checks the options area of an NDP message: every option has a
// non-zero length that fits (RFC 4861 4.6, a zero length must make the
// receiver discard the message). It returns false for malformed options.
func NDPOptions(opts []byte) bool {
	for len(opts) > 0 {
		if len(opts) < 2 || opts[1] == 0 || int(opts[1])*8 > len(opts) {
			return false
		}
		opts = opts[int(opts[1])*8:]
	}
	return true
}

// NDPOption returns the first option of type typ (the whole option, type
// and length bytes included), or nil. opts must have passed NDPOptions.
func NDPOption(opts []byte, typ uint8) []byte {
	for len(opts) >= 2 && opts[1] != 0 && int(opts[1])*8 <= len(opts) {
		l := int(opts[1]) * 8
		if opts[0] == typ {
			return opts[:l]
		}
		opts = opts[l:]
	}
	return nil
}

// PutNDPLinkAddr writes a source or target link-layer address option
// (8 bytes) into b and returns its length.
func PutNDPLinkAddr(b []byte, typ uint8, mac [6]byte) int {
	b[0], b[1] = typ, 1
	copy(b[2:8], mac[:])
	return 8
}

// PutNDPMTU writes an MTU option (8 bytes) and returns its length.
func PutNDPMTU(b []byte, mtu uint32) int {
	b[0], b[1], b[2], b[3] = NDPOptMTU, 1, 0, 0
	binary.BigEndian.PutUint32(b[4:8], mtu)
	return 8
}

// PutNDPPrefix writes a prefix information option (32 bytes) and returns
// its length.
func PutNDPPrefix(b []byte, prefix netip.Prefix, flags uint8, valid, preferred uint32) int {
	b[0], b[1] = NDPOptPrefixInfo, 4
	b[2] = uint8(prefix.Bits())
	b[3] = flags
	binary.BigEndian.PutUint32(b[4:8], valid)
	binary.BigEndian.PutUint32(b[8:12], preferred)
	clear(b[12:16])
	a := prefix.Masked().Addr().As16()
	copy(b[16:32], a[:])
	return 32
}

// PutNDPRDNSS writes a recursive DNS server option (RFC 8106) for servers
// (IPv6 addresses) and returns its length, 8+16*len(servers).
func PutNDPRDNSS(b []byte, lifetime uint32, servers []netip.Addr) int {
	n := 8 + 16*len(servers)
	b[0], b[1], b[2], b[3] = NDPOptRDNSS, uint8(n/8), 0, 0
	binary.BigEndian.PutUint32(b[4:8], lifetime)
	for i, s := range servers {
		a := s.As16()
		copy(b[8+16*i:], a[:])
	}
	return n
}

// DNSSLLen returns the length of the DNS search list option PutNDPDNSSL
// writes for domains, or 0 if no domain can be encoded.
func DNSSLLen(domains []string) int {
	n := 0
	for _, d := range domains {
		n += dnsNameLen(d)
	}
	if n == 0 {
		return 0
	}
	return (8 + n + 7) &^ 7
}

// PutNDPDNSSL writes a DNS search list option (RFC 8106) and returns its
// length, DNSSLLen(domains). Domains that cannot be encoded as DNS names are
// left out.
func PutNDPDNSSL(b []byte, lifetime uint32, domains []string) int {
	n := DNSSLLen(domains)
	if n == 0 {
		return 0
	}
	b[0], b[1], b[2], b[3] = NDPOptDNSSL, uint8(n/8), 0, 0
	binary.BigEndian.PutUint32(b[4:8], lifetime)
	off := 8
	for _, d := range domains {
		off += putDNSName(b[off:], d)
	}
	clear(b[off:n])
	return n
}

// dnsNameLen returns the wire length of d as an uncompressed DNS name, or 0
// if it is empty or has an empty or over-long label, or is over-long.
func dnsNameLen(d string) int {
	for len(d) > 0 && d[len(d)-1] == '.' {
		d = d[:len(d)-1]
	}
	if d == "" {
		return 0
	}
	n, label := 1, 0
	for i := 0; i < len(d); i++ {
		if d[i] == '.' {
			if label == 0 {
				return 0
			}
			label = 0
			continue
		}
		label++
		if label > 63 {
			return 0
		}
	}
	if label == 0 {
		return 0
	}
	n += len(d) + 1
	if n > 255 {
		return 0
	}
	return n
}

func putDNSName(b []byte, d string) int {
	n := dnsNameLen(d)
	if n == 0 {
		return 0
	}
	for len(d) > 0 && d[len(d)-1] == '.' {
		d = d[:len(d)-1]
	}
	off := 0
	for len(d) > 0 {
		i := 0
		for i < len(d) && d[i] != '.' {
			i++
		}
		b[off] = uint8(i)
		copy(b[off+1:], d[:i])
		off += 1 + i
		if i < len(d) {
			i++
		}
		d = d[i:]
	}
	b[off] = 0
	return off + 1
}

// LinkLocalFromMAC returns the modified-EUI-64 link-local address for mac
// (RFC 4291 appendix A), the address a router with that MAC uses.
func LinkLocalFromMAC(mac [6]byte) netip.Addr {
	var a [16]byte
	a[0], a[1] = 0xfe, 0x80
	a[8] = mac[0] ^ 0x02
	a[9], a[10] = mac[1], mac[2]
	a[11], a[12] = 0xff, 0xfe
	a[13], a[14], a[15] = mac[3], mac[4], mac[5]
	return netip.AddrFrom16(a)
}

// MulticastMAC returns the Ethernet address an IPv6 multicast address maps
// to (RFC 2464 7): 33:33 followed by its last four bytes.
func MulticastMAC(a netip.Addr) [6]byte {
	b := a.As16()
	return [6]byte{0x33, 0x33, b[12], b[13], b[14], b[15]}
}
