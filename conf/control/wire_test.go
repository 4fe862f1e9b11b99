package control

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/gopasta/gopasta/conf"
)

var testEph = [2]uint16{32768, 60999}

// listing formats tables as pesto prints them.
func listing(ts []Table) string {
	var b strings.Builder
	for _, t := range ts {
		b.WriteString("  " + t.Name + "\n")
		for _, r := range t.Rules {
			b.WriteString("    " + r.String() + "\n")
		}
	}
	return b.String()
}

// The expected texts are what pesto printed for pasta 2026_07_16 started
// with the same options (and after the same pesto commands).
func TestConfigTablesListLikePasta(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-t", "8080,9000-9002:19000-19002", "-u", "5353", "-T", "3000", "-U", "none"}, `  HOST
    TCP [*]:8080  =>  8080 
    TCP [*]:9000-9002  =>  19000-19002 
    UDP [*]:5353  =>  5353 
  SPLICE
    TCP [*]%lo:3000  =>  3000 
`},
		{nil, `  HOST
    TCP [*]:1-32767  =>  1-32767  (best effort) (auto-scan)
    TCP [*]:61000-65535  =>  61000-65535  (best effort) (auto-scan)
    UDP [*]:1-32767  =>  1-32767  (best effort) (auto-scan)
    UDP [*]:61000-65535  =>  61000-65535  (best effort) (auto-scan)
  SPLICE
    TCP [*]%lo:1-32767  =>  1-32767  (best effort) (auto-scan)
    TCP [*]%lo:61000-65535  =>  61000-65535  (best effort) (auto-scan)
    UDP [*]%lo:1-32767  =>  1-32767  (best effort) (auto-scan)
    UDP [*]%lo:61000-65535  =>  61000-65535  (best effort) (auto-scan)
`},
		// -u before -t: one table, in the order given; the default
		// "auto" for -T comes after.
		{[]string{"-u", "53", "-t", "22", "-U", "none"}, `  HOST
    UDP [*]:53  =>  53 
    TCP [*]:22  =>  22 
  SPLICE
    TCP [*]%lo:1-32767  =>  1-32767  (best effort) (auto-scan)
    TCP [*]%lo:61000-65535  =>  61000-65535  (best effort) (auto-scan)
`},
	} {
		c, err := conf.Parse("pasta", tc.args)
		if err != nil {
			t.Fatal(err)
		}
		ts, err := ConfigTables(c, testEph)
		if err != nil {
			t.Fatal(err)
		}
		if got := listing(ts); got != tc.want {
			t.Errorf("%v:\n%s\nwant:\n%s", tc.args, got, tc.want)
		}
	}
}

// pesto -t 127.0.0.1/8080 -t ::1/8081:9000 ... against pasta's default
// tables: the replaced tables pesto listed afterwards.
func TestEditListsLikePesto(t *testing.T) {
	host := Table{PIF: PIFHost, Name: NameHost, Caps: capAll}
	splice := Table{PIF: PIFSplice, Name: NameSplice, Caps: capAll}
	for _, e := range []struct{ opt, spec string }{
		{"-t", "127.0.0.1/8080"}, {"-t", "::1/8081:9000"}, {"-t", "0.0.0.0/5000:192.0.2.5/6000"},
		{"-t", "%lo/7000"}, {"-t", "10-20,~15"}, {"-t", "[::1]/30000-30001"},
		{"-u", "[::]/53:[2001:db8::5]"}, {"-u", "0.0.0.0/54:192.0.2.9"},
		{"-U", "4000-4001:5000-5001"}, {"-T", "22,auto"}, {"-t", "127.0.0.1%lo/7001"},
	} {
		tb := &host
		if e.opt == "-T" || e.opt == "-U" {
			tb = &splice
		}
		if err := tb.Edit(e.opt, e.spec, false, testEph); err != nil {
			t.Fatalf("%s %s: %v", e.opt, e.spec, err)
		}
	}
	want := `  HOST
    TCP [127.0.0.1]:8080  =>  8080 
    TCP [::1]:8081  =>  9000 
    TCP [0.0.0.0]:5000  =>  192.0.2.5:6000 
    TCP [*]%lo:7000  =>  7000 
    TCP [*]:10-14  =>  10-14 
    TCP [*]:16-20  =>  16-20 
    TCP [::1]:30000-30001  =>  30000-30001 
    UDP [::]:53  =>  2001:db8::5:53 
    UDP [0.0.0.0]:54  =>  192.0.2.9:54 
    TCP [127.0.0.1]%lo:7001  =>  7001 
  SPLICE
    UDP [*]%lo:4000-4001  =>  5000-5001 
    TCP [*]%lo:22  =>  22  (auto-scan)
`
	if got := listing([]Table{host, splice}); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	// -D -t 10-20,~15 removes exactly the two rules it made.
	if err := host.Edit("-t", "10-20,~15", true, testEph); err != nil {
		t.Fatal(err)
	}
	if got := listing([]Table{host}); strings.Contains(got, "10-14") || strings.Contains(got, "16-20") || len(host.Rules) != 8 {
		t.Errorf("after delete:\n%s", got)
	}
	// pesto's errors.
	for _, e := range []struct{ opt, spec, err string }{
		{"-t", "8080", "conflict"},           // [*] matches 127.0.0.1
		{"-t", "9999", "couldn't find"},      // with del
		{"-t", "7000-7010", "doesn't match"}, // with del
		{"-u", "53:[2001:db8::5]", "Dual stack forward to IPv6"},
		{"-T", "127.0.0.1/22", "listening address not allowed"},
		{"-t", "80-70", "invalid port range"},
	} {
		del := e.err == "couldn't find" || e.err == "doesn't match"
		err := host.Edit(e.opt, e.spec, del, testEph)
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(e.err)) {
			t.Errorf("%s %s (del %v): %v, want %q", e.opt, e.spec, del, err, e.err)
		}
	}
}

// The wire form is struct fwd_rule's layout: pesto finds a rule to delete
// by comparing these bytes with the ones it builds.
func TestRuleBytes(t *testing.T) {
	r := Rule{Addr: netip.MustParseAddr("127.0.0.1"), Target: netip.MustParseAddr("2001:db8::5"), Ifname: "lo",
		First: 0x1f90, Last: 0x1f91, To: 0x2328, Proto: ProtoTCP, Flags: FlagWeak}
	b := r.Bytes()
	want := []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1,
		0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5,
		'l', 'o', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		0x1f, 0x90, 0x1f, 0x91, 0x23, 0x28, 6, 2}
	if !bytes.Equal(b[:], want) {
		t.Fatalf("bytes\n%x\nwant\n%x", b, want)
	}
	back, err := parseRule(b[:])
	if err != nil || back != r {
		t.Fatalf("parse: %+v %v", back, err)
	}
	// A dual-stack rule's address is all zeros; a missing target too.
	d := Rule{Addr: dualAny, First: 1, Last: 1, To: 1, Proto: ProtoUDP, Flags: FlagDualStack}
	db := d.Bytes()
	if !bytes.Equal(db[:32], make([]byte, 32)) {
		t.Fatalf("dual stack bytes %x", db)
	}
	bad := b
	bad[47] = 'x' // no NUL
	if _, err := parseRule(bad[:]); !errors.Is(err, ErrProtocol) {
		t.Fatalf("unterminated name: %v", err)
	}
}

func TestTablesRoundTrip(t *testing.T) {
	c, err := conf.Parse("pasta", []string{"-t", "127.0.0.1/80:8080,443", "-u", "53", "-T", "auto", "-U", "none"})
	if err != nil {
		t.Fatal(err)
	}
	ts, err := ConfigTables(c, testEph)
	if err != nil {
		t.Fatal(err)
	}
	msg := AppendTables(AppendHello(nil), ts)
	r := bytes.NewReader(msg)
	if _, err := ReadHello(r); err != nil {
		t.Fatal(err)
	}
	back, err := ReadTables(r)
	if err != nil || !reflect.DeepEqual(back, ts) || r.Len() != 0 {
		t.Fatalf("tables: %v\n%+v\n%+v", err, back, ts)
	}
	up := AppendUpdate(nil, ts)
	got, err := readUpdate(bytes.NewReader(up[1:]), up[0], ts)
	if err != nil || !reflect.DeepEqual(got, ts) {
		t.Fatalf("update: %v\n%+v", err, got)
	}
}

// A malformed update is an error, never a panic or a partial table.
func TestReadUpdateRejects(t *testing.T) {
	known := []Table{{PIF: PIFHost, Name: NameHost, Caps: capAll}, {PIF: PIFSplice, Name: NameSplice, Caps: capAll &^ CapUDP}}
	good := Rule{Addr: dualAny, First: 80, Last: 80, To: 80, Proto: ProtoTCP, Flags: FlagDualStack}
	upd := func(pif uint8, rules ...Rule) []byte {
		return AppendUpdate(nil, []Table{{PIF: pif, Rules: rules}})
	}
	for name, msg := range map[string][]byte{
		"unknown table":   upd(PIFTap, good),
		"twice":           append(upd(PIFHost, good)[:len(upd(PIFHost, good))-1], upd(PIFHost, good)...),
		"too many":        {PIFHost, 0, 0, 1, 0},
		"truncated":       upd(PIFHost, good)[:20],
		"no end":          upd(PIFHost, good)[:5+RuleSize],
		"port 0":          upd(PIFHost, Rule{Addr: dualAny, First: 0, Last: 0, To: 1, Proto: ProtoTCP, Flags: FlagDualStack}),
		"backwards":       upd(PIFHost, Rule{Addr: dualAny, First: 9, Last: 8, To: 9, Proto: ProtoTCP, Flags: FlagDualStack}),
		"to overflow":     upd(PIFHost, Rule{Addr: dualAny, First: 1, Last: 10, To: 65530, Proto: ProtoTCP, Flags: FlagDualStack}),
		"bad flags":       upd(PIFHost, Rule{Addr: dualAny, First: 1, Last: 1, To: 1, Proto: ProtoTCP, Flags: 0x80}),
		"icmp":            upd(PIFHost, Rule{Addr: dualAny, First: 1, Last: 1, To: 1, Proto: 1, Flags: FlagDualStack}),
		"udp disabled":    upd(PIFSplice, Rule{Addr: dualAny, First: 1, Last: 1, To: 1, Proto: ProtoUDP, Flags: FlagDualStack}),
		"conflict":        upd(PIFHost, good, Rule{Addr: netip.MustParseAddr("127.0.0.1"), First: 80, Last: 90, To: 80, Proto: ProtoTCP}),
		"dual with addr":  upd(PIFHost, Rule{Addr: netip.MustParseAddr("::1"), First: 1, Last: 1, To: 1, Proto: ProtoTCP, Flags: FlagDualStack}),
		"multicast tgt":   upd(PIFHost, Rule{Addr: netip.MustParseAddr("0.0.0.0"), Target: netip.MustParseAddr("224.0.0.1"), First: 1, Last: 1, To: 1, Proto: ProtoTCP}),
		"family mismatch": upd(PIFHost, Rule{Addr: netip.MustParseAddr("::1"), Target: netip.MustParseAddr("192.0.2.1"), First: 1, Last: 1, To: 1, Proto: ProtoTCP}),
	} {
		if _, err := readUpdate(bytes.NewReader(msg[1:]), msg[0], known); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzReadUpdate(f *testing.F) {
	known := []Table{{PIF: PIFHost, Name: NameHost, Caps: capAll}, {PIF: PIFSplice, Name: NameSplice, Caps: capAll}}
	c, _ := conf.Parse("pasta", []string{"-t", "127.0.0.1/80:8080,443", "-u", "53", "-T", "auto"})
	ts, _ := ConfigTables(c, testEph)
	f.Add(AppendUpdate(nil, ts))
	f.Add([]byte{PIFHost, 0, 0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		got, err := readUpdate(bytes.NewReader(data[1:]), data[0], known)
		if err != nil {
			return
		}
		// Whatever is accepted is valid and survives a round trip.
		msg := AppendUpdate(nil, got)
		again, err := readUpdate(bytes.NewReader(msg[1:]), msg[0], known)
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("round trip: %v", err)
		}
		for _, tb := range got {
			check := Table{Caps: tb.Caps}
			for _, r := range tb.Rules {
				if err := check.Add(r); err != nil {
					t.Fatalf("accepted invalid rule %s: %v", r, err)
				}
				_ = r.String()
			}
		}
	})
}

func FuzzReadTables(f *testing.F) {
	c, _ := conf.Parse("pasta", []string{"-t", "127.0.0.1/80:8080,443", "-u", "53"})
	ts, _ := ConfigTables(c, testEph)
	f.Add(AppendTables(AppendHello(nil), ts))
	f.Add(AppendHello(nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		if _, err := ReadHello(r); err != nil {
			return
		}
		got, err := ReadTables(r)
		if err != nil {
			return
		}
		for _, tb := range got {
			for _, rule := range tb.Rules {
				_ = rule.String()
			}
		}
	})
}

// Editing never panics, and the table stays valid.
func FuzzEdit(f *testing.F) {
	for _, s := range []string{"8080", "127.0.0.1/80:8080", "~22", "all", "auto", "[::1]/1-100:201-300", "%lo/22", "none", "0.0.0.0/5000:192.0.2.5/6000"} {
		f.Add("-t", s, false)
		f.Add("-U", s, true)
	}
	f.Fuzz(func(t *testing.T, opt, spec string, del bool) {
		switch opt {
		case "-t", "-u", "-T", "-U":
		default:
			return
		}
		tb := Table{PIF: PIFHost, Name: NameHost, Caps: capAll}
		_ = tb.Edit("-t", "1000-2000", false, testEph)
		_ = tb.Edit(opt, spec, del, testEph)
		check := Table{Caps: tb.Caps}
		for _, r := range tb.Rules {
			if err := check.Add(r); err != nil {
				t.Fatalf("%s %s left invalid rule %s: %v", opt, spec, r, err)
			}
		}
	})
}
