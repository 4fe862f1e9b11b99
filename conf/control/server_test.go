package control

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// fakeBackend records what the server applies.
type fakeBackend struct {
	mu       sync.Mutex
	tables   []Table
	applied  [][]Table
	problems []string
}

func (b *fakeBackend) Tables() []Table {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Table(nil), b.tables...)
}

func (b *fakeBackend) Apply(ts []Table) ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.applied = append(b.applied, ts)
	for _, u := range ts {
		for i := range b.tables {
			if b.tables[i].PIF == u.PIF {
				b.tables[i] = u
			}
		}
	}
	return b.problems, nil
}

func (b *fakeBackend) appliedCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.applied)
}

// startServer serves a fake backend on a socket in a fresh directory.
func startServer(t *testing.T) (*Server, *fakeBackend, *logrustest) {
	t.Helper()
	b := &fakeBackend{tables: []Table{
		{PIF: PIFHost, Name: NameHost, Caps: capAll, Rules: []Rule{{Addr: dualAny, Target: dualAny, First: 80, Last: 80, To: 8080, Proto: ProtoTCP, Flags: FlagDualStack}}},
		{PIF: PIFSplice, Name: NameSplice, Caps: capAll},
	}}
	lg := newLogrusTest()
	s, err := Listen(filepath.Join(t.TempDir(), "ctl.sock"), b, lg.l)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if _, err := os.Stat(s.Path()); !os.IsNotExist(err) {
			t.Errorf("socket file left behind: %v", err)
		}
	})
	return s, b, lg
}

type logrustest struct {
	mu  sync.Mutex
	buf bytes.Buffer
	l   *logrus.Logger
}

func newLogrusTest() *logrustest {
	lt := &logrustest{l: logrus.New()}
	lt.l.Out = lt
	lt.l.Level = logrus.DebugLevel
	return lt
}

func (lt *logrustest) Write(p []byte) (int, error) {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	return lt.buf.Write(p)
}

func (lt *logrustest) String() string {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	return lt.buf.String()
}

func TestServerListReplace(t *testing.T) {
	s, b, _ := startServer(t)
	fi, err := os.Stat(s.Path())
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, %v", fi.Mode(), err)
	}
	c, err := Dial(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	ts := c.Tables()
	if len(ts) != 2 || ts[0].Rules[0].String() != "TCP [*]:80  =>  8080 " {
		t.Fatalf("tables %+v", ts)
	}
	host := ts[0]
	if err := host.Edit("-u", "53", false, testEph); err != nil {
		t.Fatal(err)
	}
	b.problems = []string{"Listen failed for HOST UDP port */53: Address already in use"}
	warns, err := c.Replace([]Table{host})
	if err != nil || len(warns) != 1 || !strings.Contains(warns[0], "Listen failed") {
		t.Fatalf("replace: %v %v", warns, err)
	}
	got := b.Tables()
	if len(got[0].Rules) != 2 || got[0].Rules[1].String() != "UDP [*]:53  =>  53 " || len(got[1].Rules) != 0 {
		t.Fatalf("applied %+v", got)
	}
	// A lister that hangs up changes nothing.
	c2, err := Dial(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	time.Sleep(50 * time.Millisecond)
	if n := b.appliedCount(); n != 1 {
		t.Fatalf("%d updates applied", n)
	}
}

// rawSession connects, reads hello and tables, sends msg, and returns
// what the server says before closing.
func rawSession(t *testing.T, path string, msg []byte) string {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := ReadHello(c); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadTables(c); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = c.Write(msg) }() // may block on a big message the server refuses
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	out, err := io.ReadAll(c)
	// A server closing on unread input resets the connection: what it
	// wrote before is still read first.
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("server did not close the connection: %v (%q)", err, out)
	}
	return string(out)
}

func TestServerRefusesMalformed(t *testing.T) {
	s, b, lg := startServer(t)
	big := make([]byte, 1<<20)
	big[0] = PIFHost
	binary.BigEndian.PutUint32(big[1:], 100) // 100 rules of zeros: invalid
	for name, msg := range map[string][]byte{
		"unknown table": {7, 0, 0, 0, 0, 0},
		"too many":      {PIFHost, 0xff, 0xff, 0xff, 0xff},
		"garbage rule":  append([]byte{PIFHost, 0, 0, 0, 1}, bytes.Repeat([]byte{0xAA}, RuleSize)...),
		"oversize":      big,
		"tap table":     {PIFTap, 0, 0, 0, 0, 0},
	} {
		out := rawSession(t, s.Path(), msg)
		if !strings.HasPrefix(out, "error: ") {
			t.Errorf("%s: server said %q", name, out)
		}
	}
	if n := b.appliedCount(); n != 0 {
		t.Fatalf("%d malformed updates applied", n)
	}
	if !strings.Contains(lg.String(), "bad update") {
		t.Errorf("not logged:\n%s", lg.String())
	}
	// Still serving.
	if _, err := Dial(s.Path()); err != nil {
		t.Fatal(err)
	}
}

// A client that connects and sends half a message is dropped after the
// session timeout, and does not keep the next one out for longer.
func TestServerStalledClient(t *testing.T) {
	old := sessionTimeout
	sessionTimeout = 200 * time.Millisecond
	t.Cleanup(func() { sessionTimeout = old })
	s, _, _ := startServer(t)
	c, err := net.Dial("unix", s.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte{PIFHost, 0})
	start := time.Now()
	c2, err := Dial(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("second client waited %v", d)
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("stalled client not dropped: %v", err)
	}
}

func TestServerNative(t *testing.T) {
	old := nativeHandler
	t.Cleanup(func() { nativeHandler = old })
	nativeHandler = nil
	s, _, _ := startServer(t)
	// Without a handler the client hears why.
	c, err := Dial(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := c.Native()
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(conn)
	conn.Close()
	if !strings.Contains(string(out), "native protocol not available") {
		t.Fatalf("no handler: %q", out)
	}
}

func TestServerNativeHandler(t *testing.T) {
	// The hook is set before the server starts and cleared after it has
	// stopped (cleanups run last first), as the native file sets it in
	// init().
	old := nativeHandler
	t.Cleanup(func() { nativeHandler = old })
	nativeHandler = func(ctx context.Context, c net.Conn) error {
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		_, err := c.Write(append([]byte("got "), buf...))
		return err
	}
	s, _, _ := startServer(t)
	// The handler gets the connection right after the 0xFF byte.
	c, err := Dial(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := c.Native()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = conn.Write([]byte("ping"))
	buf := make([]byte, 8)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "got ping" {
		t.Fatalf("native: %q %v", buf, err)
	}
}

func TestServerTooManyClients(t *testing.T) {
	old := nativeHandler
	t.Cleanup(func() { nativeHandler = old })
	nativeHandler = func(ctx context.Context, c net.Conn) error {
		_, _ = io.Copy(io.Discard, c) // until the client or Close hangs up
		return nil
	}
	s, _, lg := startServer(t)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range maxConns {
		c, err := Dial(s.Path())
		if err != nil {
			t.Fatal(err)
		}
		conn, _ := c.Native()
		conns = append(conns, conn)
	}
	time.Sleep(100 * time.Millisecond)
	extra, err := net.Dial("unix", s.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if out, err := io.ReadAll(extra); err != nil || len(out) != 0 {
		t.Fatalf("extra client: %q %v", out, err)
	}
	if !strings.Contains(lg.String(), "more than") {
		t.Errorf("not logged:\n%s", lg.String())
	}
}

func TestListenRefusesLiveSocket(t *testing.T) {
	s, _, _ := startServer(t)
	if _, err := Listen(s.Path(), &fakeBackend{}, logrus.New()); err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("second listener: %v", err)
	}
	f := filepath.Join(t.TempDir(), "file")
	_ = os.WriteFile(f, nil, 0o600)
	if _, err := Listen(f, &fakeBackend{}, logrus.New()); err == nil {
		t.Fatal("listened over a regular file")
	}
}

// A client of another uid is refused: by the socket's mode, and, should
// the file be opened up, by SO_PEERCRED. The client runs as nobody in a
// subprocess (setpriv), so this needs root.
func TestServerRefusesOtherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv not installed")
	}
	s, b, lg := startServer(t)
	dir := filepath.Dir(s.Path())
	// The directory must be reachable by nobody for the test to mean
	// anything; the socket's own mode is what stops it.
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		_ = os.Chmod(d, 0o755)
	}
	asNobody := func() (string, error) {
		cmd := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", os.Args[0], "-test.run=^TestHelperClient$")
		cmd.Env = append(os.Environ(), "GOPASTA_CTL_HELPER="+s.Path())
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, _ := asNobody()
	if !strings.Contains(out, "permission denied") {
		t.Fatalf("mode 0600 did not keep nobody out: %s", out)
	}
	if err := os.Chmod(s.Path(), 0o666); err != nil {
		t.Fatal(err)
	}
	out, _ = asNobody()
	if !strings.Contains(out, "greeting") || strings.Contains(out, "tables read") {
		t.Fatalf("nobody was served: %s", out)
	}
	if !strings.Contains(lg.String(), "refusing client of uid 65534") {
		t.Errorf("refusal not logged:\n%s", lg.String())
	}
	if n := b.appliedCount(); n != 0 {
		t.Fatalf("%d updates from nobody applied", n)
	}
}

// TestHelperClient is the subprocess of TestServerRefusesOtherUID.
func TestHelperClient(t *testing.T) {
	path := os.Getenv("GOPASTA_CTL_HELPER")
	if path == "" {
		t.Skip("helper")
	}
	c, err := Dial(path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Logf("tables read: %v", c.Tables())
	_, _ = c.Replace(nil)
}
