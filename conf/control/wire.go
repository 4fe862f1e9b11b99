package control

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// The pesto protocol, version 2, as bytes. Every integer is big-endian
// except where a C struct is sent whole (struct fwd_rule keeps its port
// numbers big-endian too, but its layout is the C one: no padding, 56
// bytes).

const (
	// Magic opens the server's hello: "basil:s" and a NUL.
	Magic = "basil:s\x00"
	// Version is the protocol version spoken. pesto refuses a server
	// with a higher one, and version 1 servers (no target address).
	Version = 2
	// PIFNameSize is the size of a table's name field, NUL included.
	PIFNameSize = 128
	// IfNameSize is IFNAMSIZ: an interface name and its NUL.
	IfNameSize = 16
	// MaxRules is the most rules one table may hold (upstream's
	// MAX_FWD_RULES: rule indices are 8 bits).
	MaxRules = 255
	// MaxListeners bounds the ports all rules of a table may cover
	// together, as upstream's socket table does (every port of two
	// addresses for two protocols, and some).
	MaxListeners = 65536 * 5

	helloSize = 8 + 4 + 4 + 4
	infoSize  = PIFNameSize + 4 + 4
	// RuleSize is the size of one serialised rule.
	RuleSize = 16 + 16 + IfNameSize + 2 + 2 + 2 + 1 + 1
)

// Interface ("pif") identifiers. A table is named by its id on the wire and
// by its name in pesto's command line (-C HOST).
const (
	PIFNone   = 0 // ends a list of tables
	PIFHost   = 1 // "HOST": host sockets, -t and -u
	PIFTap    = 2 // "TAP": the guest link (never a table)
	PIFSplice = 3 // "SPLICE": namespace sockets, -T and -U
	// NativeByte (native.go), never a table id, asks for gopasta's
	// native protocol instead of an update.
)

// Capability bits of a table (what the server can forward from it).
const (
	CapIPv4   = 1 << 0
	CapIPv6   = 1 << 1
	CapTCP    = 1 << 2
	CapUDP    = 1 << 3
	CapScan   = 1 << 4 // "auto"
	CapIfname = 1 << 5 // SO_BINDTODEVICE
	capAll    = CapIPv4 | CapIPv6 | CapTCP | CapUDP | CapScan | CapIfname
)

// Rule flags.
const (
	// FlagDualStack: any address of either IP version (Addr is ::).
	FlagDualStack = 1 << 0
	// FlagWeak: ports that cannot be bound are skipped ("all", "auto",
	// exclusion-only specs).
	FlagWeak = 1 << 1
	// FlagScan: a port is forwarded only while its target is bound on the
	// other side ("auto").
	FlagScan = 1 << 2
	flagsAll = FlagDualStack | FlagWeak | FlagScan
)

// IP protocol numbers of a rule.
const (
	ProtoTCP = 6
	ProtoUDP = 17
)

// Rule is one forwarding rule as pasta keeps it (struct fwd_rule): ports
// First..Last listened for on Addr (and Ifname) go to To.. on the other
// side, at Target if that is specified. Decoded addresses are always valid
// (an IPv4-mapped address is unmapped); an invalid one encodes as ::.
type Rule struct {
	Addr   netip.Addr
	Target netip.Addr
	Ifname string
	First  uint16
	Last   uint16
	To     uint16
	Proto  uint8
	Flags  uint8
}

// Hello is the server's introduction.
type Hello struct {
	Version     uint32
	PIFNameSize uint32
	IfNameSize  uint32
}

// Table is the forwarding table of one interface.
type Table struct {
	PIF   uint8
	Name  string
	Caps  uint32
	Rules []Rule
}

// ErrProtocol wraps every malformed-message error.
var ErrProtocol = errors.New("control protocol")

func protoErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, a...))
}

func putAddr(b []byte, a netip.Addr) {
	if a.IsValid() {
		x := a.As16()
		copy(b, x[:])
	}
}

// appendRule appends r's 56 bytes to b.
func appendRule(b []byte, r Rule) []byte {
	var x [RuleSize]byte
	putAddr(x[0:16], r.Addr)
	putAddr(x[16:32], r.Target)
	copy(x[32:32+IfNameSize-1], r.Ifname)
	binary.BigEndian.PutUint16(x[48:], r.First)
	binary.BigEndian.PutUint16(x[50:], r.Last)
	binary.BigEndian.PutUint16(x[52:], r.To)
	x[54] = r.Proto
	x[55] = r.Flags
	return append(b, x[:]...)
}

// Bytes is the rule's wire form. Two rules are the same rule when their
// wire forms are equal (that is how pesto finds a rule to delete).
func (r Rule) Bytes() [RuleSize]byte {
	var x [RuleSize]byte
	copy(x[:], appendRule(nil, r))
	return x
}

// parseRule decodes one serialised rule. The interface name must be NUL
// terminated and NUL padded.
func parseRule(b []byte) (Rule, error) {
	if len(b) != RuleSize {
		return Rule{}, protoErr("rule of %d bytes", len(b))
	}
	var r Rule
	r.Addr = netip.AddrFrom16([16]byte(b[0:16])).Unmap()
	r.Target = netip.AddrFrom16([16]byte(b[16:32])).Unmap()
	name := b[32:48]
	n := 0
	for n < len(name) && name[n] != 0 {
		n++
	}
	if n == len(name) {
		return Rule{}, protoErr("interface name was not NUL terminated")
	}
	for _, c := range name[n:] {
		if c != 0 {
			return Rule{}, protoErr("garbage after the interface name")
		}
	}
	r.Ifname = string(name[:n])
	r.First = binary.BigEndian.Uint16(b[48:])
	r.Last = binary.BigEndian.Uint16(b[50:])
	r.To = binary.BigEndian.Uint16(b[52:])
	r.Proto = b[54]
	r.Flags = b[55]
	return r, nil
}

// AppendHello appends the server's hello for this protocol version.
func AppendHello(b []byte) []byte {
	b = append(b, Magic...)
	b = binary.BigEndian.AppendUint32(b, Version)
	b = binary.BigEndian.AppendUint32(b, PIFNameSize)
	return binary.BigEndian.AppendUint32(b, IfNameSize)
}

// ReadHello reads and checks a server's hello as pesto does.
func ReadHello(r io.Reader) (Hello, error) {
	var b [helloSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return Hello{}, fmt.Errorf("couldn't read server greeting: %w", err)
	}
	if string(b[:8]) != Magic {
		return Hello{}, protoErr("bad magic number from server")
	}
	h := Hello{
		Version:     binary.BigEndian.Uint32(b[8:]),
		PIFNameSize: binary.BigEndian.Uint32(b[12:]),
		IfNameSize:  binary.BigEndian.Uint32(b[16:]),
	}
	switch {
	case h.Version > Version:
		return h, protoErr("unknown server protocol version %d > %d", h.Version, Version)
	case h.Version == 0:
		return h, protoErr("unsupported experimental server protocol")
	case h.Version < Version:
		return h, protoErr("server protocol version %d is too old (need %d)", h.Version, Version)
	case h.PIFNameSize != PIFNameSize:
		return h, protoErr("server has unexpected pif name size (%d not %d)", h.PIFNameSize, PIFNameSize)
	case h.IfNameSize != IfNameSize:
		return h, protoErr("server has unexpected IFNAMSIZ (%d not %d)", h.IfNameSize, IfNameSize)
	}
	return h, nil
}

// AppendTables appends the server's description of its tables (pif id,
// name, capabilities, rules; then PIFNone), as sent after the hello.
func AppendTables(b []byte, ts []Table) []byte {
	for _, t := range ts {
		b = append(b, t.PIF)
		var name [PIFNameSize]byte
		copy(name[:PIFNameSize-1], t.Name)
		b = append(b, name[:]...)
		b = binary.BigEndian.AppendUint32(b, t.Caps)
		b = binary.BigEndian.AppendUint32(b, uint32(len(t.Rules)))
		for _, r := range t.Rules {
			b = appendRule(b, r)
		}
	}
	return append(b, PIFNone)
}

// maxTables is how many tables a server may describe (pesto: 3).
const maxTables = 3

// ReadTables reads the tables a server describes after its hello. Rules
// are read as sent, without validation, as pesto does: a client must be
// able to show whatever the server holds.
func ReadTables(r io.Reader) ([]Table, error) {
	var ts []Table
	for {
		var pif [1]byte
		if _, err := io.ReadFull(r, pif[:]); err != nil {
			return nil, fmt.Errorf("reading tables: %w", err)
		}
		if pif[0] == PIFNone {
			return ts, nil
		}
		if len(ts) >= maxTables {
			return nil, protoErr("more than %d tables", maxTables)
		}
		var info [infoSize]byte
		if _, err := io.ReadFull(r, info[:]); err != nil {
			return nil, fmt.Errorf("reading tables: %w", err)
		}
		name := info[:PIFNameSize]
		if name[PIFNameSize-1] != 0 {
			return nil, protoErr("table name was not NUL terminated")
		}
		n := 0
		for name[n] != 0 {
			n++
		}
		t := Table{PIF: pif[0], Name: string(name[:n]), Caps: binary.BigEndian.Uint32(info[PIFNameSize:])}
		count := binary.BigEndian.Uint32(info[PIFNameSize+4:])
		if count > MaxRules {
			return nil, protoErr("too many forwarding rules (%d)", count)
		}
		for _, o := range ts {
			if o.PIF == t.PIF || o.Name == t.Name {
				return nil, protoErr("duplicate table %d (%s)", t.PIF, t.Name)
			}
		}
		rules, err := readRules(r, count)
		if err != nil {
			return nil, err
		}
		t.Rules = rules
		ts = append(ts, t)
	}
}

func readRules(r io.Reader, count uint32) ([]Rule, error) {
	buf := make([]byte, int(count)*RuleSize)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("reading rules: %w", err)
	}
	rules := make([]Rule, 0, count)
	for i := 0; i < int(count); i++ {
		rule, err := parseRule(buf[i*RuleSize : (i+1)*RuleSize])
		if err != nil {
			return nil, err
		}
		rules = append(rules, rule)
	}
	return rules, nil
}

// AppendUpdate appends a client's update: each table's id, rule count and
// rules, then PIFNone. A table left out keeps its rules.
func AppendUpdate(b []byte, ts []Table) []byte {
	for _, t := range ts {
		b = append(b, t.PIF)
		b = binary.BigEndian.AppendUint32(b, uint32(len(t.Rules)))
		for _, r := range t.Rules {
			b = appendRule(b, r)
		}
	}
	return append(b, PIFNone)
}

// readUpdate reads a client's update after its first byte (a pif id,
// already read, given as first). known are the server's tables: each
// update is validated against its table's capabilities exactly as pasta
// validates it (Table.Add), and a table may come only once.
func readUpdate(r io.Reader, first byte, known []Table) ([]Table, error) {
	var out []Table
	pif := first
	for pif != PIFNone {
		var t *Table
		for i := range known {
			if known[i].PIF == pif {
				t = &known[i]
			}
		}
		if t == nil {
			return nil, protoErr("received rules for non-existent table %d", pif)
		}
		for _, o := range out {
			if o.PIF == pif {
				return nil, protoErr("table %s sent twice", t.Name)
			}
		}
		var cnt [4]byte
		if _, err := io.ReadFull(r, cnt[:]); err != nil {
			return nil, fmt.Errorf("reading update: %w", err)
		}
		count := binary.BigEndian.Uint32(cnt[:])
		if count > MaxRules {
			return nil, protoErr("received %d rules (maximum %d)", count, MaxRules)
		}
		rules, err := readRules(r, count)
		if err != nil {
			return nil, err
		}
		nt := Table{PIF: t.PIF, Name: t.Name, Caps: t.Caps}
		for _, rule := range rules {
			if err := nt.Add(rule); err != nil {
				return nil, fmt.Errorf("%w: table %s: %v", ErrProtocol, t.Name, err)
			}
		}
		out = append(out, nt)
		var b [1]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, fmt.Errorf("reading update: %w", err)
		}
		pif = b[0]
	}
	return out, nil
}
