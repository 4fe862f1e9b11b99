package conf

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Value parsers shared by the command line and the TOML file. They return
// messages about the value only ("70000 is out of range (0..65520)"); the
// caller adds where the value came from (option or file:line: key).

// maxMTU is the largest MTU pasta accepts: the 65535-byte IP maximum minus
// the Ethernet header, rounded down to 4 bytes.
const maxMTU = 65520

// ifNameSize is Linux's IFNAMSIZ: names are at most 15 bytes.
const ifNameSize = 16

// maxDName is the longest host or domain name accepted (RFC 1035 limit).
const maxDName = 253

// pathMax is Linux's PATH_MAX.
const pathMax = 4096

func parseUint(s string, max uint64) (uint64, error) {
	// strtoul(s, 0) semantics: decimal, 0x hex, leading-0 octal.
	if s == "" || strings.ContainsAny(s, "_+- \t") {
		return 0, fmt.Errorf("'%s' is not a number", s)
	}
	v, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		return 0, fmt.Errorf("'%s' is not a number", s)
	}
	if v > max {
		return 0, fmt.Errorf("%s is out of range (0..%d)", s, max)
	}
	return v, nil
}

func parseMTU(s string) (int, error) {
	v, err := parseUint(s, maxMTU)
	if err != nil {
		return 0, err
	}
	return int(v), nil
}

// parseMAC accepts exactly xx:xx:xx:xx:xx:xx, hexadecimal, like pasta.
func parseMAC(s string) ([6]byte, error) {
	var mac [6]byte
	if len(s) != 17 {
		return mac, fmt.Errorf("invalid MAC address '%s' (expected xx:xx:xx:xx:xx:xx)", s)
	}
	for i := 0; i < 6; i++ {
		if i < 5 && s[3*i+2] != ':' {
			return mac, fmt.Errorf("invalid MAC address '%s' (expected xx:xx:xx:xx:xx:xx)", s)
		}
		b, err := strconv.ParseUint(s[3*i:3*i+2], 16, 8)
		if err != nil {
			return mac, fmt.Errorf("invalid MAC address '%s' (expected xx:xx:xx:xx:xx:xx)", s)
		}
		mac[i] = byte(b)
	}
	return mac, nil
}

// parseIP parses an IPv4 or IPv6 address; IPv4-mapped IPv6 addresses are
// treated as IPv4, as pasta's "inany" addresses are. Zones are rejected.
func parseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("invalid address '%s'", s)
	}
	return a.Unmap(), nil
}

var broadcast4 = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// addrRules says which kinds of address an option refuses.
type addrRules struct {
	noLoopback, noMulticast, noBroadcast bool
}

func parseHostAddr(s string, r addrRules) (netip.Addr, error) {
	a, err := parseIP(s)
	if err != nil {
		return a, err
	}
	switch {
	case a.IsUnspecified():
		return netip.Addr{}, fmt.Errorf("invalid address '%s': unspecified", s)
	case r.noLoopback && a.IsLoopback():
		return netip.Addr{}, fmt.Errorf("invalid address '%s': loopback", s)
	case r.noMulticast && a.IsMulticast():
		return netip.Addr{}, fmt.Errorf("invalid address '%s': multicast", s)
	case r.noBroadcast && a == broadcast4:
		return netip.Addr{}, fmt.Errorf("invalid address '%s': broadcast", s)
	}
	return a, nil
}

// classfulBits is the prefix length pasta assumes for an IPv4 -a without
// /PLEN or -n: the old class A/B/C boundaries.
func classfulBits(a netip.Addr) int {
	if !a.Is4() {
		return 64
	}
	b := a.As4()[0]
	switch {
	case b < 128:
		return 8
	case b < 192:
		return 16
	case b < 224:
		return 24
	}
	return 32
}

// parseNetmask accepts dotted-quad (contiguous) or a prefix length 0..32.
func parseNetmask(s string) (int, error) {
	if strings.Contains(s, ".") {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return 0, fmt.Errorf("invalid netmask '%s'", s)
		}
		m := a.As4()
		v := uint32(m[0])<<24 | uint32(m[1])<<16 | uint32(m[2])<<8 | uint32(m[3])
		bits := 0
		for bits < 32 && v&(1<<(31-bits)) != 0 {
			bits++
		}
		if bits < 32 && v<<bits != 0 {
			return 0, fmt.Errorf("invalid netmask '%s': not contiguous", s)
		}
		return bits, nil
	}
	v, err := strconv.ParseUint(s, 10, 8)
	if err != nil || v > 32 {
		return 0, fmt.Errorf("invalid netmask '%s' (dotted quad or 0..32)", s)
	}
	return int(v), nil
}

// validIfname follows the kernel's dev_valid_name().
func validIfname(s string) error {
	if s == "" || len(s) >= ifNameSize || s == "." || s == ".." ||
		strings.ContainsAny(s, "/: \t\n\r\v\f") {
		return fmt.Errorf("invalid interface name '%s'", s)
	}
	return nil
}

func validPath(s, what string) error {
	if s == "" || len(s) >= pathMax || strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("invalid %s '%s'", what, s)
	}
	return nil
}

func validDName(s, what string) error {
	if s == "" || len(s) > maxDName || strings.ContainsAny(s, " \t\n\x00") {
		return fmt.Errorf("invalid %s '%s'", what, s)
	}
	return nil
}

// parseDuration accepts Go durations ("90s", "3m") or plain seconds.
func parseDuration(s string) (time.Duration, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("invalid duration '%s' (e.g. 180s, 3m, or seconds)", s)
	}
	return d, nil
}
