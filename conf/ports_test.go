package conf

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// rulesText renders rules compactly: "[bind%if/]first-last>[toaddr/]to[ scan][ weak]".
func rulesText(rules []Rule) string {
	var parts []string
	for _, r := range rules {
		s := ""
		if r.Bind.IsValid() || r.Ifname != "" {
			if r.Bind.IsValid() {
				s += r.Bind.String()
			}
			if r.Ifname != "" {
				s += "%" + r.Ifname
			}
			s += "/"
		}
		s += fmt.Sprintf("%d-%d>", r.First, r.Last)
		if r.ToAddr.IsValid() {
			s += r.ToAddr.String() + "/"
		}
		s += fmt.Sprint(r.To)
		if r.Scan {
			s += " scan"
		}
		if r.Weak {
			s += " weak"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

func TestPortSpecExamples(t *testing.T) {
	for _, tc := range []struct {
		spec  string
		rules string
		check func(s PortSpec) bool
	}{
		// pasta(1) man page examples.
		{"22-80:32-90", "22-80>32", nil},
		{"192.0.2.1%eth0/22", "192.0.2.1%eth0/22-22>22", func(s PortSpec) bool { return s.Ifname == "eth0" && s.Bind == addr("192.0.2.1") }},
		{"%eth0/22", "%eth0/22-22>22", func(s PortSpec) bool { return !s.Bind.IsValid() && s.Ifname == "eth0" }},
		{"2000-5000,~3000-3010", "2000-2999>2000, 3011-5000>3011", nil},
		{"::1/auto", "::1/1-65535>1 scan weak", func(s PortSpec) bool { return s.Auto && s.Bind == addr("::1") }},
		{"8000-8010,auto", "8000-8010>8000 scan", func(s PortSpec) bool { return s.Auto }},
		{"0.0.0.0/5000:192.0.2.5/6000", "0.0.0.0/5000-5000>192.0.2.5/6000", nil},
		{"127.0.0.6/all:192.0.2.6", "127.0.0.6/1-65535>192.0.2.6/1 weak", func(s PortSpec) bool { return s.All && s.AllToAddr == addr("192.0.2.6") }},
		{"~22", "1-21>1 weak, 23-65535>23 weak", nil},
		{"22", "22-22>22", nil},
		{"22:23", "22-22>23", nil},
		{"22,25", "22-22>22, 25-25>25", nil},
		{"5-25,~10-20", "5-9>5, 21-25>21", nil},
		{"all", "1-65535>1 weak", func(s PortSpec) bool { return s.All }},
		{"auto", "1-65535>1 scan weak", func(s PortSpec) bool { return s.Auto && !s.All }},
		{"192.0.2.2/auto", "192.0.2.2/1-65535>1 scan weak", nil},
		{"127.0.0.1/all", "127.0.0.1/1-65535>1 weak", nil},
		{"none", "", func(s PortSpec) bool { return s.None }},
		// podman's -p translations.
		{"8080-8080:80-80", "8080-8080>80", nil},
		{"127.0.0.1/8080-8080:80-80", "127.0.0.1/8080-8080>80", nil},
		{"::1/8088-8088:80-80", "::1/8088-8088>80", func(s PortSpec) bool { return s.Bind == addr("::1") }},
		{"5000-5002:6000-6002", "5000-5002>6000", nil},
		{"53-53:53-53", "53-53>53", nil},
		// pesto client and bats forms.
		{"[::]/8080", "::/8080-8080>8080", func(s PortSpec) bool { return s.Bind == addr("::") }},
		{"0.0.0.0/8080", "0.0.0.0/8080-8080>8080", nil},
		{"[127.0.0.1]/80", "127.0.0.1/80-80>80", nil}, // brackets accepted for IPv4 too
		{"127.0.0.1%lo/5201:5202", "127.0.0.1%lo/5201-5201>5202", nil},
		{"*%eth0/22", "%eth0/22-22>22", nil},
		{"/22", "22-22>22", nil},
		{"fe80::1%eth0/22", "fe80::1%eth0/22-22>22", nil},
		// target address variants.
		{"80:192.0.2.5", "80-80>192.0.2.5/80", nil},
		{"[::1]/80:[::2]/8080", "::1/80-80>::2/8080", nil},
		{"::1/80:::2/8080", "::1/80-80>::2/8080", nil},
		{"::/80-81:2001:db8::5/90-91", "::/80-81>2001:db8::5/90", nil},
		{"1-65535", "1-65535>1", nil},
		{"~1-65535", "", nil},
		{"~22,all", "1-21>1 weak, 23-65535>23 weak", nil},
		{"~22,~23,~22", "1-21>1 weak, 24-65535>24 weak", nil},
	} {
		s, err := ParsePortSpec("-t", tc.spec)
		if err != nil {
			t.Errorf("%q: %v", tc.spec, err)
			continue
		}
		if got := rulesText(s.Rules()); got != tc.rules {
			t.Errorf("%q: rules %q, want %q", tc.spec, got, tc.rules)
		}
		if tc.check != nil && !tc.check(s) {
			t.Errorf("%q: fields %+v", tc.spec, s)
		}
		if s.Raw != tc.spec || s.Option != "-t" {
			t.Errorf("%q: Raw %q Option %q", tc.spec, s.Raw, s.Option)
		}
		// The canonical form parses back to the same spec.
		back, err := ParsePortSpec("-t", s.String())
		if err != nil {
			t.Errorf("%q: String() %q doesn't parse: %v", tc.spec, s.String(), err)
			continue
		}
		back.Raw, s.Raw = "", ""
		if !reflect.DeepEqual(back, s) {
			t.Errorf("%q: round trip via %q: %+v != %+v", tc.spec, s.String(), back, s)
		}
	}
}

func TestPortSpecErrors(t *testing.T) {
	for _, tc := range []struct{ spec, want string }{
		{"80-22", "invalid port range '80-22' in option '-t 80-22'"},
		{"0", "invalid port '0' (1..65535) in '0' in option '-t 0'"},
		{"65536", "invalid port '65536' (1..65535) in '65536' in option '-t 65536'"},
		{"100000", "invalid port range '100000' in option '-t 100000'"},
		{"22-80:32-91", "port range '22-80' and target range '32-91' differ in size in option '-t 22-80:32-91'"},
		{"22-", "invalid port range '22-' in option '-t 22-'"},
		{"-22", "invalid port range '-22' in option '-t -22'"},
		{"22,", "empty entry in port list '22,' in option '-t 22,'"},
		{"", "missing port list in option '-t '"},
		{"127.0.0.1/", "missing port list in option '-t 127.0.0.1/'"},
		{"ssh", "invalid port range 'ssh' in option '-t ssh'"},
		{"1.2.3/80", "invalid port range '1.2.3/80' in option '-t 1.2.3/80'"},
		{"%/80", "invalid interface name '' in option '-t %/80'"},
		{"%0123456789abcdef/80", "invalid interface name '0123456789abcdef' in option '-t %0123456789abcdef/80'"},
		{"%eth0", "missing '/' after listening address or interface in option '-t %eth0'"},
		{"80:", "missing target after ':' in '80:' in option '-t 80:'"},
		{"80:1.2.3.4/", "invalid port range '' in option '-t 80:1.2.3.4/'"},
		{"80:224.0.0.1", "invalid target address '224.0.0.1': not unicast in option '-t 80:224.0.0.1'"},
		{"80:nonsense/90", "invalid target address 'nonsense' in option '-t 80:nonsense/90'"},
		{"::1/80:192.0.2.1/80", "target address 192.0.2.1 and listening address ::1 are of different IP versions in option '-t ::1/80:192.0.2.1/80'"},
		{"127.0.0.1/all:::1", "target address ::1 and listening address 127.0.0.1 are of different IP versions in option '-t 127.0.0.1/all:::1'"},
		{"~", "invalid port range '' in option '-t ~'"},
		{"~80-22", "invalid port range '80-22' in option '-t ~80-22'"},
		{"none,22", "invalid port range 'none' in option '-t none,22'"},
		{"autox", "invalid port range 'autox' in option '-t autox'"},
		{"22 ", "invalid port range '22 ' in option '-t 22 '"},
		{"+22", "invalid port range '+22' in option '-t +22'"},
		{"22-80,25", "port 25 forwarded twice in option '-t 22-80,25'"},
	} {
		_, err := ParsePortSpec("-t", tc.spec)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q:\n got %v\nwant %s", tc.spec, err, tc.want)
		}
	}
}

func TestPortMap(t *testing.T) {
	var specs []PortSpec
	for _, raw := range []string{"~8080", "8080:80", "22-80:32-90", "8000-8010,auto"} {
		s, err := ParsePortSpec("-t", raw)
		if err != nil {
			t.Fatal(err)
		}
		specs = append(specs, s)
	}
	m := NewPortMap(specs)
	if !m.Auto() {
		t.Error("Auto() false")
	}
	for _, tc := range []struct {
		port uint16
		to   uint16
		ok   bool
		weak bool
	}{
		{8080, 80, true, false}, // explicit wins over the weak "~8080"
		{22, 32, true, false},   // explicit range
		{80, 90, true, false},   // end of range
		{8005, 8005, true, false},
		{81, 81, true, true}, // from the weak exclusion-only spec
		{65535, 65535, true, true},
	} {
		to, ok := m.To(tc.port)
		r, _ := m.Lookup(tc.port)
		if to != tc.to || ok != tc.ok || r.Weak != tc.weak {
			t.Errorf("port %d: -> %d %v weak %v, want %d %v %v", tc.port, to, ok, r.Weak, tc.to, tc.ok, tc.weak)
		}
	}
	r, _ := m.Lookup(8005)
	if !r.Scan || r.Option != "-t" || r.Raw != "8000-8010,auto" {
		t.Errorf("8005 rule %+v", r)
	}
	// Without the exclusion-only spec 8081 is not forwarded at all.
	m = NewPortMap(specs[1:])
	if _, ok := m.To(8081); ok {
		t.Error("8081 forwarded")
	}
	if _, ok := NewPortMap(nil).To(1); ok {
		t.Error("empty map forwards")
	}
	s, _ := ParsePortSpec("-t", "2000-5000,~3000-3010")
	if got := s.Forwards(); !reflect.DeepEqual(got, []PortRange{{First: 2000, Last: 2999, To: 2000}, {First: 3011, Last: 5000, To: 3011}}) {
		t.Errorf("Forwards %v", got)
	}
	if _, ok := NewPortMap([]PortSpec{s}).To(3005); ok {
		t.Error("excluded port forwarded")
	}
}

func FuzzPortSpec(f *testing.F) {
	for _, s := range []string{"22-80:32-90", "192.0.2.1%eth0/22", "%eth0/22", "2000-5000,~3000-3010", "::1/auto",
		"8000-8010,auto", "0.0.0.0/5000:192.0.2.5/6000", "127.0.0.6/all:192.0.2.6", "~22", "none", "[::1]/8080",
		"::1/8088-8088:80-80", "80:192.0.2.5", "all", "*%lo/1-2", "80:[::1]/90"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		s, err := ParsePortSpec("-u", raw)
		if err != nil {
			if !strings.Contains(err.Error(), "in option '-u ") {
				t.Fatalf("%q: error doesn't name the option: %v", raw, err)
			}
			return
		}
		rules := s.Rules()
		for _, r := range rules {
			if r.First == 0 || r.Last < r.First || int(r.To)+int(r.Last-r.First) > 65535 {
				t.Fatalf("%q: bad rule %+v", raw, r)
			}
			for _, x := range s.Excluded {
				if r.First <= x.Last && x.First <= r.Last {
					t.Fatalf("%q: rule %+v overlaps exclusion %+v", raw, r, x)
				}
			}
		}
		canon := s.String()
		back, err := ParsePortSpec("-u", canon)
		if err != nil {
			t.Fatalf("%q: canonical %q doesn't parse: %v", raw, canon, err)
		}
		if got, want := rulesText(back.Rules()), rulesText(rules); got != want {
			t.Fatalf("%q: canonical %q changes rules: %s != %s", raw, canon, got, want)
		}
		m := NewPortMap([]PortSpec{s})
		for _, r := range rules {
			if to, ok := m.To(r.Last); !ok || to != r.To+(r.Last-r.First) {
				t.Fatalf("%q: map of %d: %d %v", raw, r.Last, to, ok)
			}
		}
	})
}

// Specs with thousands of entries must not make conflict checks quadratic.
func TestPortSpecManyEntries(t *testing.T) {
	var odd, even []string
	for i := 1; i < 30000; i++ {
		if i%2 == 1 {
			odd = append(odd, fmt.Sprint(i))
		} else {
			even = append(even, fmt.Sprint(i))
		}
	}
	c := mustParse(t, "pasta", "-t", strings.Join(odd, ","), "-t", strings.Join(even, ","))
	if to, ok := NewPortMap(c.TCPPorts).To(29998); !ok || to != 29998 {
		t.Errorf("29998 -> %d %v", to, ok)
	}
	_, err := Parse("pasta", []string{"-t", strings.Join(odd, ","), "-t", "29999"})
	if err == nil || !strings.HasPrefix(err.Error(), "forwarding conflict: port 29999 in '-t 29999'") {
		t.Errorf("conflict: %v", err)
	}
	_, err = ParsePortSpec("-t", strings.Join(odd, ",")+",3")
	if err == nil || !strings.HasPrefix(err.Error(), "port 3 forwarded twice") {
		t.Errorf("dup: %v", err)
	}
}
