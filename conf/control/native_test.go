package control

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors/flowtrace"
)

// memBackend is a Backend in memory.
type memBackend struct {
	mu     sync.Mutex
	flows  []FlowInfo
	stats  map[string]uint64
	level  string
	pcap   PcapStatus
	out    *os.File // the capture's file, which StopPcap closes
	hub    flowtrace.Hub
	depth  int
	traced chan struct{} // receives when a subscriber is added
}

func (m *memBackend) Flows(ctx context.Context) ([]FlowInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]FlowInfo(nil), m.flows...), nil
}
func (m *memBackend) Stats() map[string]uint64 { return m.stats }
func (m *memBackend) Trace(f flowtrace.Filter) (TraceSub, error) {
	s := m.hub.Subscribe(f, m.depth)
	if m.traced != nil {
		m.traced <- struct{}{}
	}
	return s, nil
}
func (m *memBackend) LogLevel() string { m.mu.Lock(); defer m.mu.Unlock(); return m.level }
func (m *memBackend) SetLogLevel(l string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch l {
	case "trace", "debug", "info", "warning", "error":
		m.level = l
		return nil
	}
	return errors.New("no such level: " + l)
}
func (m *memBackend) StartPcap(out *os.File, f flowtrace.Filter) error {
	if m.pcap.Active {
		out.Close()
		return errors.New("a capture is running")
	}
	m.pcap = PcapStatus{Active: true, File: out.Name(), Filter: f.String()}
	m.out = out
	return nil
}
func (m *memBackend) StopPcap() (PcapStatus, error) {
	if !m.pcap.Active {
		return PcapStatus{}, errors.New("no capture running")
	}
	st := m.pcap
	st.Active = false
	st.Frames = 42
	m.pcap = PcapStatus{}
	err := m.out.Close()
	m.out = nil
	return st, err
}
func (m *memBackend) Pcap() PcapStatus { return m.pcap }

func newMem() *memBackend {
	ap := netip.MustParseAddrPort
	return &memBackend{
		level: "info",
		stats: map[string]uint64{"frames_in": 7, "tcp_opened": 2},
		flows: []FlowInfo{
			{ID: 2, Proto: "udp", IPProto: 17, Guest: ap("10.0.2.100:5353"), Far: ap("10.0.2.3:53"), State: "ACTIVE", GuestSegs: 1},
			{ID: 1, Proto: "tcp", IPProto: 6, Guest: ap("10.0.2.100:40000"), Far: ap("93.184.216.34:80"), State: "ESTABLISHED", GuestBytes: 100, FarBytes: 5000},
			{ID: 3, Proto: "tcp", IPProto: 6, Guest: ap("[fd00::2]:40001"), Far: ap("[2001:db8::1]:443"), State: "SYN_RCVD"},
		},
	}
}

// serve runs ServeNative on one end of a pipe and returns the client's end
// and the server's result.
func serve(t *testing.T, b Backend) (net.Conn, <-chan error) {
	t.Helper()
	s, c := net.Pipe()
	done := make(chan error, 1)
	finished := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		err := ServeNative(ctx, s, b)
		s.Close()
		done <- err
		close(finished)
	}()
	t.Cleanup(func() {
		cancel()
		c.Close()
		select {
		case <-finished:
		case <-time.After(5 * time.Second):
			t.Error("server did not return")
		}
	})
	return c, done
}

func TestNativeFlowsFilterAndOrder(t *testing.T) {
	c, _ := serve(t, newMem())
	cl := NewNativeClient(c)
	all, err := cl.Flows("")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 || all[0].ID != 1 || all[1].ID != 2 || all[2].ID != 3 {
		t.Fatalf("flows %+v, want ids 1 2 3 in order", all)
	}
	if all[0].FarBytes != 5000 || all[0].State != "ESTABLISHED" || all[0].Far != netip.MustParseAddrPort("93.184.216.34:80") {
		t.Fatalf("flow 1 %+v", all[0])
	}
	for filter, want := range map[string][]uint64{
		"tcp":               {1, 3},
		"udp port 53":       {2},
		"host 2001:db8::1":  {3},
		"id 2":              {2},
		"10.0.2.100:40000":  {1},
		"tcp and port 5353": nil,
	} {
		got, err := cl.Flows(filter)
		if err != nil {
			t.Fatalf("%q: %v", filter, err)
		}
		var ids []uint64
		for _, f := range got {
			ids = append(ids, f.ID)
		}
		if len(ids) != len(want) || (len(want) > 0 && strings.Trim(strings.Join(strings.Fields(strings.Trim(fmtIDs(ids), "[]")), ","), ",") != strings.Trim(strings.Join(strings.Fields(strings.Trim(fmtIDs(want), "[]")), ","), ",")) {
			t.Errorf("filter %q: ids %v, want %v", filter, ids, want)
		}
	}
}

func fmtIDs(ids []uint64) string {
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(" ")
		b.WriteString(string(rune('0' + id)))
	}
	return b.String()
}

func TestNativeStatsLogLevelPcap(t *testing.T) {
	m := newMem()
	c, _ := serve(t, m)
	cl := NewNativeClient(c)
	st, err := cl.Stats()
	if err != nil || st["frames_in"] != 7 || st["tcp_opened"] != 2 {
		t.Fatalf("stats %v, %v", st, err)
	}
	if l, err := cl.LogLevel(""); err != nil || l != "info" {
		t.Fatalf("level %q, %v", l, err)
	}
	if l, err := cl.LogLevel("debug"); err != nil || l != "debug" || m.LogLevel() != "debug" {
		t.Fatalf("level %q, %v (backend %q)", l, err, m.LogLevel())
	}
	// A command that fails keeps the connection.
	if _, err := cl.LogLevel("loud"); err == nil || !strings.Contains(err.Error(), "no such level") {
		t.Fatalf("bad level: %v", err)
	}
	if _, err := cl.Pcap(true); err == nil {
		t.Fatal("stop without a capture succeeded")
	}
	// Over a pipe no file can be sent, and the daemon opens none itself.
	if _, err := c.Write([]byte(`{"cmd":"pcap","file":"/tmp/x.pcap"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	var resp Response
	if err := cl.read(&resp); err != nil || resp.OK || !strings.Contains(resp.Error, "no file descriptor") {
		t.Fatalf("pcap without a descriptor: %+v, %v", resp, err)
	}
	if p, err := cl.Pcap(false); err != nil || p.Active {
		t.Fatalf("pcap status %+v, %v", p, err)
	}
}

// A bad request is answered with an error and the connection is closed.
func TestNativeMalformedCloses(t *testing.T) {
	for name, req := range map[string]string{
		"not json":      "hello\n",
		"unknown field": `{"cmd":"stats","x":1}` + "\n",
		"unknown cmd":   `{"cmd":"reboot"}` + "\n",
		"bad filter":    `{"cmd":"flows","filter":"port 99999"}` + "\n",
		"two objects":   `{"cmd":"stats"}{"cmd":"stats"}` + "\n",
		"stats arg":     `{"cmd":"stats","level":"x"}` + "\n",
		"too long":      `{"cmd":"flows","filter":"` + strings.Repeat("a", MaxRequest) + `"}` + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			c, done := serve(t, newMem())
			go func() { _, _ = io.WriteString(c, req) }()
			r := bufio.NewReader(c)
			line, err := r.ReadString('\n')
			if err != nil || !strings.Contains(line, `"error"`) || strings.Contains(line, `"ok":true`) {
				t.Fatalf("answer %q, %v", line, err)
			}
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("server returned nil for a bad request")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("connection not closed after a bad request")
			}
			if _, err := r.ReadString('\n'); err == nil {
				t.Fatal("more after the error")
			}
		})
	}
}

func TestNativeTraceStreamsMatchingFlow(t *testing.T) {
	m := newMem()
	m.traced = make(chan struct{}, 1)
	c, done := serve(t, m)
	cl := NewNativeClient(c)
	var started string
	lines := make(chan string, 10)
	res := make(chan error, 1)
	go func() {
		_, err := cl.Trace("tcp port 80", func(f string) { started = f }, func(l string) error {
			lines <- l
			if strings.Contains(l, "last") {
				return io.EOF
			}
			return nil
		})
		res <- err
	}()
	<-m.traced
	ap := netip.MustParseAddrPort
	var web, dns flowtrace.Tap
	emit := func(tap *flowtrace.Tap, guest, far string, proto uint8, id uint64, text string) {
		if tap.On(&m.hub, proto, ap(guest), ap(far), id, func() string { return flowtrace.Desc(id, proto, ap(guest), ap(far)) }) {
			tap.Emit("00:00:00.000000", text)
		}
	}
	emit(&dns, "10.0.2.100:5353", "10.0.2.3:53", 17, 2, "dns line")
	emit(&web, "10.0.2.100:40000", "93.184.216.34:80", 6, 1, "first")
	emit(&dns, "10.0.2.100:5353", "10.0.2.3:53", 17, 2, "dns line")
	emit(&web, "10.0.2.100:40000", "93.184.216.34:80", 6, 1, "last")
	if err := <-res; err != io.EOF {
		t.Fatalf("trace: %v", err)
	}
	if started != "tcp port 80" {
		t.Errorf("started with %q", started)
	}
	close(lines)
	var got []string
	for l := range lines {
		got = append(got, l)
	}
	want := []string{"00:00:00.000000 1 tcp 10.0.2.100:40000 > 93.184.216.34:80: first", "00:00:00.000000 1 tcp 10.0.2.100:40000 > 93.184.216.34:80: last"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("lines\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Detaching: the client closes, the server returns and unsubscribes.
	c.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("server still serving a closed trace")
	}
	if m.hub.Active() {
		t.Fatal("subscriber left behind")
	}
	if web.On(&m.hub, 6, ap("10.0.2.100:40000"), ap("93.184.216.34:80"), 1, nil) {
		t.Fatal("flow still traced after the client left")
	}
}

// A client that stops reading is dropped; the emitter never waits.
func TestNativeTraceSlowClientDropped(t *testing.T) {
	m := newMem()
	m.depth = 64
	m.traced = make(chan struct{}, 1)
	c, done := serve(t, m)
	if _, err := io.WriteString(c, `{"cmd":"trace"}`+"\n"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	if l, err := r.ReadString('\n'); err != nil || !strings.Contains(l, `"ok":true`) {
		t.Fatalf("start %q %v", l, err)
	}
	<-m.traced
	// Not reading any more: the pipe has no buffer, so the server blocks
	// in its first write and the subscriber's buffer fills.
	ap := netip.MustParseAddrPort
	var tap flowtrace.Tap
	start := time.Now()
	for i := 0; i < 100000; i++ {
		if tap.On(&m.hub, 6, ap("10.0.2.100:1"), ap("10.0.2.2:2"), 9, func() string { return "9 tcp" }) {
			tap.Emit("t", strings.Repeat("x", 100))
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("emitting to a stuck client took %v", d)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "keep up") && !strings.Contains(err.Error(), "not reading") {
			t.Fatalf("server ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stuck client not dropped")
	}
	if m.hub.Active() {
		t.Fatal("dropped subscriber still subscribed")
	}
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{`{"cmd":"flows","filter":"tcp port 80"}`, `{"cmd":"stats"}`, `{"cmd":"log-level","level":"debug"}`,
		`{"cmd":"pcap","file":"/x","filter":"udp"}`, `{"cmd":"pcap","stop":true}`, `{"cmd":"trace","filter":"id 3 host ::1"}`, `{}`, `[`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ParseRequest(b)
		if err != nil {
			return
		}
		switch req.Cmd {
		case "flows", "stats", "trace", "log-level", "pcap":
		default:
			t.Fatalf("accepted command %q", req.Cmd)
		}
		if _, err := flowtrace.ParseFilter(req.Filter); err != nil {
			t.Fatalf("accepted filter %q: %v", req.Filter, err)
		}
	})
}

// FuzzServeNative feeds arbitrary bytes to the server: it must answer or
// close, never hang or panic.
func FuzzServeNative(f *testing.F) {
	f.Add([]byte(`{"cmd":"stats"}` + "\n" + `{"cmd":"flows"}` + "\n"))
	f.Add([]byte("\n\n"))
	f.Add([]byte(`{"cmd":"log-level","level":"nope"}` + "\nxx\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, c := net.Pipe()
		done := make(chan struct{})
		go func() { _ = ServeNative(context.Background(), s, newMem()); s.Close(); close(done) }()
		go func() { _, _ = io.Copy(io.Discard, c) }()
		go func() { _, _ = c.Write(b); c.Close() }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("server hung")
		}
	})
}
