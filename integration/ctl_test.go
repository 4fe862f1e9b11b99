package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// gopasta ctl against a running daemon: flows, stats, trace, log-level and
// pcap, through the control socket of -c.

// ctl runs `gopasta ctl SOCK ARGS...` and returns its output.
func ctl(t *testing.T, sock string, args ...string) string {
	t.Helper()
	out, err := exec.Command(gopastaBin, append([]string{"ctl", sock}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("gopasta ctl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// ctlFlow is the part of a `flows --json` entry the tests read.
type ctlFlow struct {
	ID         uint64 `json:"id"`
	Proto      string `json:"proto"`
	Guest      string `json:"guest"`
	Far        string `json:"far"`
	State      string `json:"state"`
	GuestBytes uint64 `json:"guest_bytes"`
	FarBytes   uint64 `json:"far_bytes"`
	GuestSegs  uint64 `json:"guest_segs"`
	FarSegs    uint64 `json:"far_segs"`
}

func ctlFlows(t *testing.T, sock string, filter ...string) []ctlFlow {
	t.Helper()
	var fl []ctlFlow
	out := ctl(t, sock, append([]string{"flows", "--json"}, filter...)...)
	if err := json.Unmarshal([]byte(out), &fl); err != nil {
		t.Fatalf("flows --json: %v\n%s", err, out)
	}
	return fl
}

// exchange sends n bytes on c and reads m back.
func exchange(t *testing.T, c net.Conn, n, m int) {
	t.Helper()
	if _, err := c.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, m)); err != nil {
		t.Fatal(err)
	}
}

// replyDouble answers every read with twice as many bytes.
func replyDouble(c net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		if _, err := c.Write(make([]byte, 2*n)); err != nil {
			return
		}
	}
}

func TestCtlObserve(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	// With the sandbox: "pcap FILE" at run time is created by ctl and
	// handed over the socket, the daemon opens no path.
	gp := StartGopasta(t, "-c", sock)
	if status := readFile(t, fmt.Sprintf("/proc/%d/status", gp.PID())); !strings.Contains(status, "\nSeccomp:\t2\n") {
		t.Fatal("the daemon runs without its sandbox")
	}
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("control socket: %v %v", st.Mode(), err)
	}

	// A flow that moved 1000 bytes out and 2000 back, and stays open.
	l1 := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	ServeEach(l1, replyDouble)
	c1 := mustDial(t, gp.Guest, "tcp4", hostPort(HostGW4, lport(l1)))
	exchange(t, c1, 1000, 2000)
	far1 := hostPort(HostGW4, lport(l1))
	var f1 ctlFlow
	if !Eventually(5*time.Second, func() bool {
		fl := ctlFlows(t, sock, "tcp", "port", fmt.Sprint(lport(l1)))
		if len(fl) == 1 {
			f1 = fl[0]
		}
		return len(fl) == 1 && fl[0].GuestBytes == 1000 && fl[0].FarBytes == 2000
	}) {
		t.Fatalf("flow %+v: want 1000 bytes from the guest, 2000 to it", f1)
	}
	if f1.Far != far1 || f1.State != "ESTABLISHED" || f1.Guest != hostPort(c1.LocalAddr().(*net.TCPAddr).IP.String(), c1.LocalAddr().(*net.TCPAddr).Port) {
		t.Fatalf("flow %+v", f1)
	}
	table := ctl(t, sock, "flows")
	t.Logf("flows:\n%s", table)
	if !strings.Contains(table, far1) || !strings.Contains(table, "1000/") || !strings.Contains(table, "2000/") {
		t.Fatalf("flows table:\n%s", table)
	}

	var st map[string]uint64
	if err := json.Unmarshal([]byte(ctl(t, sock, "stats", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if st["frames_in"] == 0 || st["tcp_opened"] == 0 || st["tcp_flows"] != 1 {
		t.Fatalf("stats %v", st)
	}

	// A trace of port P2 shows that flow's whole story and nothing of
	// the flow on P1, which moves data meanwhile.
	l2 := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	ServeEach(l2, replyDouble)
	p2 := fmt.Sprint(lport(l2))
	tr := exec.Command(gopastaBin, "ctl", sock, "trace", "tcp", "port", p2)
	stdout, err := tr.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, _ := tr.StderrPipe()
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Process.Kill(); tr.Wait() })
	// "tracing ..." on stderr: the subscription is in place.
	if l, err := bufio.NewReader(stderr).ReadString('\n'); err != nil || !strings.Contains(l, "tracing tcp port "+p2) {
		t.Fatalf("trace start %q %v", l, err)
	}
	c2 := mustDial(t, gp.Guest, "tcp4", hostPort(HostGW4, lport(l2)))
	exchange(t, c1, 10, 20)
	exchange(t, c2, 300, 600)
	exchange(t, c1, 10, 20)
	c2.Close()
	lines := make(chan string, 1000)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			lines <- s.Text()
		}
		close(lines)
	}()
	var got []string
	deadline := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("trace ended early:\n%s", strings.Join(got, "\n"))
			}
			got = append(got, l)
			done = strings.Contains(l, ": end (")
		case <-deadline:
			t.Fatalf("no end line:\n%s", strings.Join(got, "\n"))
		}
	}
	all := strings.Join(got, "\n")
	for _, l := range got {
		if !strings.Contains(l, " > "+hostPort(HostGW4, lport(l2))+": ") {
			t.Errorf("line of another flow: %q", l)
		}
	}
	for _, want := range []string{"in  Flags [S], seq ", "out Flags [S.], seq ", "state SYN_RCVD -> ESTABLISHED",
		"in  Flags [P.], seq 1:301, ack 1, win ", "length 300", "out Flags [P.], seq 1:601, ack 301", "state +GUEST_FIN (FIN from the guest)",
		"from guest 300 bytes in", "to guest 600 bytes in"} {
		if !strings.Contains(all, want) {
			t.Errorf("no %q in the trace:\n%s", want, all)
		}
	}

	// log-level at run time.
	if out := ctl(t, sock, "log-level"); out != "log level: info\n" {
		t.Fatalf("log-level %q", out)
	}
	if out := ctl(t, sock, "log-level", "debug"); out != "log level: debug\n" {
		t.Fatalf("log-level debug %q", out)
	}
	if !Eventually(2*time.Second, func() bool { return strings.Contains(gp.Log(), "log level debug (gopasta ctl), was info") }) {
		t.Fatalf("log:\n%s", tail(gp.Log(), 2000))
	}

	// pcap at run time, of one flow only.
	pc := filepath.Join(t.TempDir(), "one.pcap")
	if out := ctl(t, sock, "pcap", pc, "tcp", "port", fmt.Sprint(lport(l1))); !strings.Contains(out, "capturing tcp port") {
		t.Fatalf("pcap start %q", out)
	}
	exchange(t, c1, 100, 200)
	c3 := mustDial(t, gp.Guest, "tcp4", hostPort(HostGW4, lport(l2)))
	exchange(t, c3, 50, 100)
	out := ctl(t, sock, "pcap", "stop")
	if !strings.Contains(out, "stopped") {
		t.Fatalf("pcap stop %q", out)
	}
	frames := readPcap(t, pc)
	payload := 0
	for _, f := range frames {
		if f.proto != 6 || (int(f.sport) != lport(l1) && int(f.dport) != lport(l1)) {
			t.Fatalf("captured a frame of another flow: %+v", f)
		}
		payload += f.payload
	}
	if payload != 300 || !strings.Contains(out, fmt.Sprintf(": %d frames", len(frames))) {
		t.Fatalf("%d payload bytes in %d frames (%q), want 300", payload, len(frames), out)
	}
}

// nativeConn connects to the control socket and switches to the native
// protocol: the pesto hello, the rule tables skipped, then 0xFF.
func nativeConn(t *testing.T, sock string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	hello := make([]byte, 20)
	if _, err := io.ReadFull(c, hello); err != nil || string(hello[:7]) != "basil:s" {
		t.Fatalf("hello %q %v", hello, err)
	}
	for {
		pif := make([]byte, 1)
		if _, err := io.ReadFull(c, pif); err != nil {
			t.Fatal(err)
		}
		if pif[0] == 0 {
			break
		}
		info := make([]byte, 136)
		if _, err := io.ReadFull(c, info); err != nil {
			t.Fatal(err)
		}
		n := int(info[132])<<24 | int(info[133])<<16 | int(info[134])<<8 | int(info[135])
		if _, err := io.CopyN(io.Discard, c, int64(n)*56); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Write([]byte{0xff}); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Time{})
	return c
}

// TestCtlTraceClientStuck: a trace client that stops reading is dropped,
// and the traced flow's exchanges go on at the pace they had without it.
func TestCtlTraceClientStuck(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	gp := StartGopasta(t, "-c", sock)
	l := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	ServeEach(l, replyDouble)
	gc := mustDial(t, gp.Guest, "tcp4", hostPort(HostGW4, lport(l)))
	// Request/response exchanges: each makes four trace lines or so.
	const n = 5000
	exchanges := func() time.Duration {
		start := time.Now()
		for range n {
			exchange(t, gc, 10, 20)
		}
		return time.Since(start)
	}
	before := exchanges()

	c := nativeConn(t, sock)
	if _, err := io.WriteString(c, `{"cmd":"trace","filter":"tcp"}`+"\n"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	if l, err := r.ReadString('\n'); err != nil || !strings.Contains(l, `"ok":true`) {
		t.Fatalf("trace start %q %v", l, err)
	}
	// From now on nobody reads c.
	with := exchanges()
	t.Logf("%d exchanges: %v without a trace, %v with a trace client that does not read", n, before, with)
	if with > 3*before+time.Second {
		t.Fatalf("exchanges slowed down by a stuck trace client: %v, %v before", with, before)
	}
	// The daemon dropped the client: what it wrote before ends, with the
	// reason if it fitted, then EOF.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("client not dropped: %v", err)
	}
	if !bytes.Contains(rest, []byte(`"line"`)) {
		t.Fatalf("no trace lines before the drop (%d bytes)", len(rest))
	}
	// And the flow is unharmed.
	exchange(t, gc, 10, 20)
}
