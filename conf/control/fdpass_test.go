package control

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// serveUnix is serve over a UNIX socket pair, which carries descriptors.
func serveUnix(t *testing.T, b Backend) *net.UnixConn {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	s, c := conn(fds[0]), conn(fds[1])
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	go func() {
		_ = ServeNative(ctx, s, b)
		s.Close()
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
	return c
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// sendRaw writes line with the descriptors of files attached.
func sendRaw(t *testing.T, c *net.UnixConn, line string, files ...*os.File) {
	t.Helper()
	var fds []int
	for _, f := range files {
		fds = append(fds, int(f.Fd()))
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix([]byte(line+"\n"), oob, nil); err != nil {
		t.Fatal(err)
	}
}

func readResp(t *testing.T, cl *NativeClient) Response {
	t.Helper()
	var r Response
	if err := cl.read(&r); err != nil {
		t.Fatal(err)
	}
	return r
}

// The capture file travels with the request: the daemon writes where the
// client opened, under the client's name for it.
func TestNativePcapSendsFile(t *testing.T) {
	m := newMem()
	c := serveUnix(t, m)
	cl := NewNativeClient(c)
	path := filepath.Join(t.TempDir(), "x.pcap")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	p, err := cl.StartPcap(f, "tcp port 80")
	f.Close()
	if err != nil || !p.Active || p.File != path || p.Filter != "tcp port 80" {
		t.Fatalf("pcap start %+v, %v", p, err)
	}
	if _, err := m.out.WriteString("frames"); err != nil {
		t.Fatalf("writing the sent file: %v", err)
	}
	if p, err = cl.Pcap(true); err != nil || p.Frames != 42 {
		t.Fatalf("pcap stop %+v, %v", p, err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "frames" {
		t.Fatalf("file holds %q, %v", b, err)
	}
}

// What the daemon refuses: no descriptor, one of the wrong type or not
// open for writing, and a request that takes none gets its descriptors
// closed; extra descriptors are closed; none of them leaks, and each
// refusal keeps the connection.
func TestNativePcapFDRefusedAndClosed(t *testing.T) {
	m := newMem()
	c := serveUnix(t, m)
	cl := NewNativeClient(c)
	dir := t.TempDir()
	mk := func(name string, flag int) *os.File {
		f, err := os.OpenFile(filepath.Join(dir, name), flag|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	w1, w2, w3 := mk("w1", os.O_WRONLY), mk("w2", os.O_WRONLY), mk("w3", os.O_WRONLY)
	ro := mk("ro", os.O_RDONLY)
	sock, other, err := os.Pipe() // a pipe is fine (a FIFO); a socket is not
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	defer other.Close()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	s0, s1 := os.NewFile(uintptr(sp[0]), "s0"), os.NewFile(uintptr(sp[1]), "s1")
	defer s0.Close()
	defer s1.Close()
	// A first answer, so that the server's own descriptors are counted.
	if _, err := cl.Stats(); err != nil {
		t.Fatal(err)
	}
	before := openFDs(t)

	for _, tc := range []struct {
		name  string
		files []*os.File
		want  string
	}{
		{"no fd", nil, "no file descriptor"},
		{"socket", []*os.File{s0}, "not a regular file or a FIFO"},
		{"read-only", []*os.File{ro}, "not open for writing"},
	} {
		sendRaw(t, c, `{"cmd":"pcap","file":"/x.pcap"}`, tc.files...)
		if r := readResp(t, cl); r.OK || !strings.Contains(r.Error, tc.want) {
			t.Errorf("%s: %+v, want an error with %q", tc.name, r, tc.want)
		}
	}
	// Descriptors with a request that takes none.
	sendRaw(t, c, `{"cmd":"stats"}`, w1, w2)
	if r := readResp(t, cl); !r.OK || r.Stats == nil {
		t.Fatalf("stats with descriptors: %+v", r)
	}
	// Three with a capture: the first is taken, the others closed.
	sendRaw(t, c, `{"cmd":"pcap","file":"/x.pcap"}`, w1, w2, w3)
	if r := readResp(t, cl); !r.OK || r.Pcap == nil || !r.Pcap.Active {
		t.Fatalf("pcap with three descriptors: %+v", r)
	}
	st, err := m.out.Stat()
	st1, err1 := w1.Stat()
	if err != nil || err1 != nil || !os.SameFile(st, st1) {
		t.Errorf("the capture's file is not w1, the first descriptor sent (%v, %v)", err, err1)
	}
	if got := openFDs(t); got != before+1 {
		t.Errorf("%d descriptors open during the capture, want %d (the capture's only)", got, before+1)
	}
	if _, err := cl.Pcap(true); err != nil {
		t.Fatal(err)
	}
	if got := openFDs(t); got != before {
		t.Errorf("%d descriptors open after, %d before: the server leaks", got, before)
	}
}

// A descriptor goes with its own request, also when the client sends
// several before reading: one without a descriptor, then the pcap with
// one, in one go.
func TestNativePcapFDPipelined(t *testing.T) {
	m := newMem()
	c := serveUnix(t, m)
	cl := NewNativeClient(c)
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "p"), os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sendRaw(t, c, `{"cmd":"log-level"}`)
	sendRaw(t, c, `{"cmd":"pcap","file":"/p.pcap"}`, f)
	if r := readResp(t, cl); !r.OK || r.Level != "info" {
		t.Fatalf("log-level: %+v", r)
	}
	if r := readResp(t, cl); !r.OK || r.Pcap == nil || !r.Pcap.Active || r.Pcap.File != "/p.pcap" {
		t.Fatalf("pcap: %+v", r)
	}
	if _, err := cl.Pcap(true); err != nil {
		t.Fatal(err)
	}
}
