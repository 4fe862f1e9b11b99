package flowtrace

import (
	"net/netip"
	"testing"
	"time"

	"github.com/gopasta/gopasta/link/wire"
)

func TestParseFilter(t *testing.T) {
	ap := netip.MustParseAddrPort
	web := func(f Filter) bool { return f.Match(6, ap("10.0.2.100:40000"), ap("93.184.216.34:80"), 7) }
	ping6 := func(f Filter) bool { return f.Match(58, ap("[fd00::2]:17"), ap("[2001:db8::1]:0"), 8) }
	for _, c := range []struct {
		in         string
		str        string
		web, ping6 bool
	}{
		{"", "", true, true},
		{"tcp", "tcp", true, false},
		{"icmp", "icmp", false, true},
		{"icmpv6 host 2001:db8::1", "icmpv6 host 2001:db8::1", false, true},
		{"port 80", "port 80", true, false},
		{"tcp and port 40000", "tcp port 40000", true, false},
		{"93.184.216.34:80", "host 93.184.216.34 port 80", true, false},
		{"host ::ffff:10.0.2.100", "host 10.0.2.100", true, false},
		{"id 7", "id 7", true, false},
		{"id 8 icmp", "icmp id 8", false, true},
		{"udp", "udp", false, false},
		{"port 17", "port 17", false, false}, // an echo id is no port
	} {
		f, err := ParseFilter(c.in)
		if err != nil {
			t.Fatalf("%q: %v", c.in, err)
		}
		if f.String() != c.str || web(f) != c.web || ping6(f) != c.ping6 {
			t.Errorf("%q: %q web %v ping6 %v, want %q %v %v", c.in, f.String(), web(f), ping6(f), c.str, c.web, c.ping6)
		}
	}
	for _, bad := range []string{"tcp udp", "port", "port 0", "port 70000", "host x", "id 0", "id -1", "1.2.3.4 5.6.7.8", "frobnicate", "port 1 port 2"} {
		if _, err := ParseFilter(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{"tcp port 80", "host ::1 id 3", "[::1]:80 and udp", "icmp"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseFilter(s)
		if err != nil {
			return
		}
		// What String gives back parses to the same filter.
		q, err := ParseFilter(p.String())
		if err != nil || q != p {
			t.Fatalf("%q -> %q -> %+v, %v (want %+v)", s, p.String(), q, err, p)
		}
	})
}

func TestAppendTCP(t *testing.T) {
	for _, c := range []struct {
		s    Segment
		want string
	}{
		{Segment{Flags: wire.TCPSyn, Seq: 1000, Win: 64240, MSS: 1460, WScale: 7}, "Flags [S], seq 1000, win 64240, options [mss 1460,wscale 7], length 0"},
		{Segment{Flags: wire.TCPSyn | wire.TCPAck, Seq: 5, Ack: 1001, Win: 65535, MSS: 65480, WScale: -1}, "Flags [S.], seq 5, ack 1001, win 65535, options [mss 65480], length 0"},
		{Segment{Flags: wire.TCPPsh | wire.TCPAck, Seq: 1, Ack: 1, Win: 502, Len: 100, WScale: -1}, "Flags [P.], seq 1:101, ack 1, win 502, length 100"},
		{Segment{Flags: wire.TCPRst | wire.TCPAck, Seq: 7, Ack: 9, WScale: -1}, "Flags [R.], seq 7, ack 9, win 0, length 0"},
		{Segment{Flags: wire.TCPFin | wire.TCPAck, Seq: 3, Ack: 4, Win: 1, WScale: -1}, "Flags [F.], seq 3, ack 4, win 1, length 0"},
		{Segment{WScale: -1}, "Flags [none], seq 0, win 0, length 0"},
	} {
		if got := string(AppendTCP(nil, c.s)); got != c.want {
			t.Errorf("got  %s\nwant %s", got, c.want)
		}
	}
}

// A flow pays nothing per event when nobody subscribes, and follows
// subscribers coming and going.
func TestHubTap(t *testing.T) {
	var h Hub
	ap := netip.MustParseAddrPort
	g, far := ap("10.0.2.100:1"), ap("10.0.2.2:80")
	var tap Tap
	descs := 0
	desc := func() string { descs++; return Desc(5, 6, g, far) }
	if tap.On(&h, 6, g, far, 5, desc) || h.Active() {
		t.Fatal("on without subscribers")
	}
	if allocs := testing.AllocsPerRun(100, func() { tap.On(&h, 6, g, far, 5, desc) }); allocs != 0 {
		t.Fatalf("%v allocations per check without subscribers", allocs)
	}
	other := h.Subscribe(Filter{Port: 443}, 4)
	if tap.On(&h, 6, g, far, 5, desc) {
		t.Fatal("on for a filter that does not match")
	}
	if allocs := testing.AllocsPerRun(100, func() { tap.On(&h, 6, g, far, 5, desc) }); allocs != 0 {
		t.Fatalf("%v allocations per check with another flow's subscriber", allocs)
	}
	mine := h.Subscribe(Filter{Port: 80}, 2)
	if !tap.On(&h, 6, g, far, 5, desc) {
		t.Fatal("off for a matching subscriber")
	}
	tap.Emit("T", "one")
	if l := <-mine.Lines(); l != "T 5 tcp 10.0.2.100:1 > 10.0.2.2:80: one" {
		t.Fatalf("line %q", l)
	}
	if len(other.Lines()) != 0 {
		t.Fatal("line went to the other subscriber")
	}
	// Overflow: the third line without a reader drops the subscriber,
	// at once.
	start := time.Now()
	for range 1000 {
		tap.Emit("T", "x")
	}
	if time.Since(start) > time.Second {
		t.Fatal("emit waited")
	}
	select {
	case <-mine.Dropped():
	default:
		t.Fatal("not dropped on overflow")
	}
	if mine.Lost.Load() != 1 {
		t.Fatalf("lost %d", mine.Lost.Load())
	}
	mine.Close()
	other.Close()
	if h.Active() || tap.On(&h, 6, g, far, 5, desc) {
		t.Fatal("still on after every subscriber left")
	}
	if descs != 1 {
		t.Fatalf("description built %d times", descs)
	}
}
