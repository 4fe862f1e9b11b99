package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors/flowtrace"
	"github.com/gopasta/gopasta/conf/control"
)

// fakeBackend is a control.Backend in memory.
type fakeBackend struct {
	mu     sync.Mutex
	level  string
	frames atomic.Uint64
	pcap   control.PcapStatus
	out    *os.File // the capture's file, as the daemon received it
	hub    flowtrace.Hub
}

func (f *fakeBackend) Flows(ctx context.Context) ([]control.FlowInfo, error) {
	ap := netip.MustParseAddrPort
	return []control.FlowInfo{
		{ID: 4, Proto: "tcp", IPProto: 6, Guest: ap("10.0.2.100:40000"), Far: ap("93.184.216.34:443"), State: "ESTABLISHED", Age: 2.5,
			GuestBytes: 517, GuestSegs: 4, FarBytes: 70000, FarSegs: 12, Retrans: 1, GuestWindow: 65535, OurWindow: 1048576, Unacked: 2920, Held: 100, Backlog: 3},
		{ID: 9, Proto: "udp", IPProto: 17, Inbound: true, Guest: ap("10.0.2.100:53"), Far: ap("192.0.2.7:5353"), State: "ACTIVE", Age: 0.25, GuestSegs: 1, GuestBytes: 40},
	}, nil
}
func (f *fakeBackend) Stats() map[string]uint64 {
	n := f.frames.Add(100)
	return map[string]uint64{"frames_in": n, "tcp_flows": 1, "drop_short": 0}
}
func (f *fakeBackend) Trace(fl flowtrace.Filter) (control.TraceSub, error) {
	return f.hub.Subscribe(fl, 0), nil
}
func (f *fakeBackend) LogLevel() string { f.mu.Lock(); defer f.mu.Unlock(); return f.level }
func (f *fakeBackend) SetLogLevel(l string) error {
	if _, ok := logLevels[l]; !ok {
		return errors.New("unknown log level " + l)
	}
	f.mu.Lock()
	f.level = l
	f.mu.Unlock()
	return nil
}
func (f *fakeBackend) StartPcap(out *os.File, fl flowtrace.Filter) error {
	f.pcap = control.PcapStatus{Active: true, File: out.Name(), Filter: fl.String(), Frames: 3}
	f.out = out
	return nil
}
func (f *fakeBackend) StopPcap() (control.PcapStatus, error) {
	st := f.pcap
	st.Active = false
	f.pcap = control.PcapStatus{}
	if f.out != nil {
		f.out.Close()
		f.out = nil
	}
	return st, nil
}
func (f *fakeBackend) Pcap() control.PcapStatus { return f.pcap }

// runCtlCmd runs command name against b and returns what it printed.
func runCtlCmd(t *testing.T, b control.Backend, name string, args ...string) (string, error) {
	t.Helper()
	// A UNIX socket pair, as the control socket: it carries descriptors.
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	s, c := conn(fds[0]), conn(fds[1])
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = control.ServeNative(ctx, s, b); s.Close(); close(done) }()
	defer func() { cancel(); c.Close(); <-done }()
	var out bytes.Buffer
	err = ctlCmds[name].run(ctx, c, args, &out)
	return out.String(), err
}

func TestCtlFlowsTable(t *testing.T) {
	out, err := runCtlCmd(t, &fakeBackend{}, "flows")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("table:\n%s", out)
	}
	for _, want := range []string{"ID", "PROTO", "GUEST>FAR", "FAR>GUEST", "RETX", "WND GUEST/OURS", "UNACKED", "HELD", "INBOX"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("header has no %s: %q", want, lines[0])
		}
	}
	if f := strings.Fields(lines[1]); strings.Join(f, " ") != "4 tcp out 10.0.2.100:40000 93.184.216.34:443 ESTABLISHED 2.5s 517/4 70000/12 1 65535/1048576 2920 100 3" {
		t.Errorf("tcp row %q", lines[1])
	}
	if f := strings.Fields(lines[2]); strings.Join(f, " ") != "9 udp in 10.0.2.100:53 192.0.2.7:5353 ACTIVE 250ms 40/1 0/0 - - - - 0" {
		t.Errorf("udp row %q", lines[2])
	}
	out, err = runCtlCmd(t, &fakeBackend{}, "flows", "udp", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var got []control.FlowInfo
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 1 || got[0].ID != 9 || !got[0].Inbound {
		t.Fatalf("json %s: %+v %v", out, got, err)
	}
	if _, err := runCtlCmd(t, &fakeBackend{}, "flows", "port", "x"); err == nil || !strings.Contains(err.Error(), "bad port") {
		t.Fatalf("bad filter: %v", err)
	}
}

func TestCtlStats(t *testing.T) {
	out, err := runCtlCmd(t, &fakeBackend{}, "stats")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(strings.Fields(out), " ") != "drop_short 0 frames_in 100 tcp_flows 1" {
		t.Fatalf("stats %q", out)
	}
	out, err = runCtlCmd(t, &fakeBackend{}, "stats", "--json")
	var m map[string]uint64
	if err != nil || json.Unmarshal([]byte(out), &m) != nil || m["frames_in"] != 100 {
		t.Fatalf("stats --json %q %v", out, err)
	}
	// --watch: frames_in moves by 100 per sample, the others stand still.
	out, err = runCtlCmd(t, &fakeBackend{}, "stats", "--watch", "0.2", "--count", "2")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(out, "over ") != 2 || !strings.Contains(out, "frames_in") || strings.Contains(out, "tcp_flows") {
		t.Fatalf("watch:\n%s", out)
	}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "frames_in" {
			r, _ := parseRate(f[2])
			if r < 250 || r > 1000 {
				t.Errorf("rate %s for 100 per 0.2s", f[2])
			}
		}
	}
	out, err = runCtlCmd(t, &fakeBackend{}, "stats", "--watch=0.1", "--count=1", "--json")
	var w struct {
		Stats map[string]uint64  `json:"stats"`
		Rates map[string]float64 `json:"rates_per_s"`
	}
	if err != nil || json.Unmarshal([]byte(out), &w) != nil || w.Stats["frames_in"] != 200 || w.Rates["frames_in"] <= 0 || len(w.Rates) != 1 {
		t.Fatalf("watch --json %q %v", out, err)
	}
}

func parseRate(s string) (float64, error) {
	var f float64
	_, err := fmt.Sscanf(strings.TrimSuffix(strings.TrimPrefix(s, "+"), "/s"), "%g", &f)
	return f, err
}

func TestCtlLogLevelAndPcap(t *testing.T) {
	b := &fakeBackend{level: "info"}
	if out, err := runCtlCmd(t, b, "log-level"); err != nil || out != "log level: info\n" {
		t.Fatalf("%q %v", out, err)
	}
	if out, err := runCtlCmd(t, b, "log-level", "debug"); err != nil || out != "log level: debug\n" || b.LogLevel() != "debug" {
		t.Fatalf("%q %v", out, err)
	}
	if _, err := runCtlCmd(t, b, "log-level", "chatty"); err == nil {
		t.Fatal("bad level accepted")
	}
	if out, err := runCtlCmd(t, b, "pcap"); err != nil || out != "no capture running\n" {
		t.Fatalf("%q %v", out, err)
	}
	// ctl creates the file, relative to its own directory, and sends it.
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.WriteFile("rel.pcap", []byte("old contents"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runCtlCmd(t, b, "pcap", "rel.pcap", "tcp", "port", "80")
	if err != nil || b.pcap.File != filepath.Join(dir, "rel.pcap") || b.pcap.Filter != "tcp port 80" ||
		!strings.Contains(out, "capturing tcp port 80 to /") {
		t.Fatalf("pcap start: %q %v %+v", out, err, b.pcap)
	}
	if _, err := b.out.WriteString("frames"); err != nil {
		t.Fatalf("the daemon's copy of the file: %v", err)
	}
	if got, err := os.ReadFile("rel.pcap"); err != nil || string(got) != "frames" {
		t.Fatalf("rel.pcap holds %q, %v: not truncated, or not the file sent", got, err)
	}
	if out, err := runCtlCmd(t, b, "pcap", "stop"); err != nil || !strings.Contains(out, "rel.pcap stopped: 3 frames") {
		t.Fatalf("pcap stop %q %v", out, err)
	}
	// As every output file: a new one is 0600, a symbolic link is not
	// followed, and a bad filter creates nothing.
	if _, err := runCtlCmd(t, b, "pcap", "new.pcap"); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat("new.pcap"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("new.pcap: %v %v, want mode 0600", fi, err)
	}
	if _, err := runCtlCmd(t, b, "pcap", "stop"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "target"), "link.pcap"); err != nil {
		t.Fatal(err)
	}
	if _, err := runCtlCmd(t, b, "pcap", "link.pcap"); err == nil || !strings.Contains(err.Error(), "symbolic link") || b.pcap.Active {
		t.Fatalf("a symbolic link: %v, %+v", err, b.pcap)
	}
	if _, err := os.Lstat("target"); err == nil {
		t.Fatal("the link's target was created")
	}
	if _, err := runCtlCmd(t, b, "pcap", "bad.pcap", "port", "99999"); err == nil || b.pcap.Active {
		t.Fatalf("a bad filter: %v", err)
	}
	if _, err := os.Lstat("bad.pcap"); err == nil {
		t.Fatal("a bad filter created the file")
	}
}

func TestCtlTrace(t *testing.T) {
	b := &fakeBackend{}
	ap := netip.MustParseAddrPort
	go func() {
		// Emit until the subscriber is there, then a last line the
		// client does not wait for: the test ends the trace by
		// cancelling.
		var tap flowtrace.Tap
		for i := 0; ; i++ {
			if tap.On(&b.hub, 6, ap("10.0.2.100:1"), ap("10.0.2.2:80"), 3, func() string { return "3 tcp" }) {
				tap.Emit("T", "line")
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	// A UNIX socket pair, as the control socket: it carries descriptors.
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	s, c := conn(fds[0]), conn(fds[1])
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = control.ServeNative(ctx, s, b); s.Close(); close(done) }()
	var out syncBuffer
	res := make(chan error, 1)
	go func() { res <- ctlCmds["trace"].run(ctx, c, []string{"port", "80"}, &out) }()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "T 3 tcp: line\n") {
		if time.Now().After(deadline) {
			t.Fatalf("no line: %q", out.String())
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	c.Close()
	<-res
	<-done
	if b.hub.Active() {
		t.Fatal("subscriber left after the client went")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
