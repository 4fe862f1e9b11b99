package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/actors/internal/sockutil"
	"github.com/gopasta/gopasta/actors/nat"
	"github.com/gopasta/gopasta/actors/tcp"
	"github.com/gopasta/gopasta/actors/udp"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/netns"
)

const procTCPSample = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   3: garbage
   4: 0100007F:ZZZZ 00000000:0000 0A
   5: 0100007F:0000 00000000:0000 0A
`

const procTCP6Sample = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
`

const procUDPSample = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 5 2 0000000000000000 0
  101: 0100007F:A000 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 6 2 0000000000000000 0
`

func TestParseProcNet(t *testing.T) {
	for _, tc := range []struct {
		name, data, state string
		skip              map[uint64]struct{}
		want              []uint16
	}{
		{"tcp listeners only", procTCPSample, "0A", nil, []uint16{8080, 22}},
		{"tcp6", procTCP6Sample, "0A", nil, []uint16{8081}},
		{"udp unconnected only", procUDPSample, "07", nil, []uint16{5353}},
		{"our own socket skipped", procTCPSample, "0A", map[uint64]struct{}{1: {}}, []uint16{22}},
		{"skip set, other inodes", procUDPSample, "07", map[uint64]struct{}{6: {}}, []uint16{5353}},
		{"empty", "", "0A", nil, nil},
		{"header only", "  sl  local_address rem_address   st\n", "0A", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got portSet
			parseProcNet([]byte(tc.data), tc.state, tc.skip, &got)
			var want portSet
			for _, p := range tc.want {
				want.add(p)
			}
			if !got.equal(&want) {
				t.Fatalf("got %d ports %v, want %v", got.count(), ports(&got), tc.want)
			}
		})
	}
}

func ports(s *portSet) []uint16 {
	// Word by word: a loop over all 65536 ports, with the fuzzer's
	// instrumentation on every comparison, held FuzzParseProcNet to a few
	// dozen inputs a second.
	var out []uint16
	for i, w := range s {
		for w != 0 {
			b := bits.TrailingZeros64(w)
			out = append(out, uint16(i*64+b))
			w &^= 1 << b
		}
	}
	return out
}

func TestPortSet(t *testing.T) {
	var a, b portSet
	a.add(0)
	a.add(65535)
	a.add(64)
	b.add(64)
	if a.count() != 3 || !a.has(65535) || a.has(1) {
		t.Fatalf("set: %v", ports(&a))
	}
	a.andNot(&b)
	if a.has(64) || a.count() != 2 {
		t.Fatalf("andNot: %v", ports(&a))
	}
	a.or(&b)
	a.del(0)
	if got := ports(&a); len(got) != 2 || got[0] != 64 || got[1] != 65535 {
		t.Fatalf("or/del: %v", got)
	}
}

func TestStrerror(t *testing.T) {
	for err, want := range map[error]string{
		unix.EADDRINUSE:                         "Address already in use",
		fmt.Errorf("bind: %w", unix.EACCES):     "Permission denied",
		os.NewSyscallError("bind", unix.ENODEV): "No such device",
	} {
		if got := strerror(err); got != want {
			t.Errorf("strerror(%v) = %q, want %q", err, got, want)
		}
	}
}

// fwdTestEnv is an Env for forwarders with no guest behind it: flows that
// take the tap path register and find nobody, which these tests never do.
func fwdTestEnv(t testing.TB, c *conf.Config) *actors.Env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := logrus.New()
	log.SetOutput(io.Discard)
	if testing.Verbose() {
		log.SetOutput(os.Stderr)
		log.SetLevel(logrus.DebugLevel)
	}
	reg := make(chan *actors.Handle, 64)
	return &actors.Env{Ctx: ctx, Opts: actors.OptionsFrom(c), Peer: &link.Peer{}, Log: log, NAT: &nat.NAT{}, Reg: &actors.Registrar{Register: reg, Ended: reg}}
}

// testFlows returns the protocols a forwarder of env hands its flows to,
// closed when the test ends.
func testFlows(t testing.TB, env *actors.Env) Flows {
	t.Helper()
	tp, err := tcp.New(env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tp.Close)
	return Flows{TCP: tp, UDP: udp.New(env)}
}

func mustSpec(t testing.TB, opt, raw string) conf.PortSpec {
	t.Helper()
	s, err := conf.ParsePortSpec(opt, raw)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// hostListening scans this namespace's TCP table.
func hostListening(t testing.TB) *portSet {
	t.Helper()
	f, err := openProcNet("tcp", openHere)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var s portSet
	if err := f.scan(&s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func TestForwardBindFailureMessage(t *testing.T) {
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	p := busy.Addr().(*net.TCPAddr).Port
	raw := fmt.Sprintf("%d-%d:80-80", p, p)
	cfg := &conf.Config{TCPPorts: []conf.PortSpec{mustSpec(t, "-t", raw)}, IPv4Only: true}
	env := fwdTestEnv(t, cfg)
	stop, err := startForwarding(env, OptionsFrom(cfg), -1, testFlows(t, env))
	if err == nil {
		stop()
		t.Fatal("second bind of a busy port succeeded")
	}
	want := fmt.Sprintf("Failed to bind port %d (Address already in use) for option '-t %s', exiting", p, raw)
	if err.Error() != want {
		t.Fatalf("error %q\n want %q", err, want)
	}
}

// TestForwardWeakSkipsBusy: an exclusion-only spec forwards every other
// port it can bind, skips a busy one quietly, and fails only when it can
// bind none.
func TestForwardWeakSkipsBusy(t *testing.T) {
	busy, err := net.Listen("tcp4", "127.0.0.1:65001")
	if err != nil {
		t.Skip("port 65001 busy:", err)
	}
	defer busy.Close()
	cfg := &conf.Config{TCPPorts: []conf.PortSpec{mustSpec(t, "-t", "127.0.0.1/~1-64999,~65010-65535")}}
	env := fwdTestEnv(t, cfg)
	flows := testFlows(t, env) // its poller stays until the test ends
	before := actorstest.FDCount(t)
	stop, err := startForwarding(env, OptionsFrom(cfg), -1, flows)
	if err != nil {
		t.Fatal(err)
	}
	l := hostListening(t)
	for p := uint16(65000); p < 65010; p++ {
		if !l.has(p) {
			t.Errorf("port %d not listening", p)
		}
	}
	stop()
	if l := hostListening(t); l.has(65000) || l.has(65009) {
		t.Error("listeners left after stop")
	}
	if n := actorstest.FDCount(t); n > before {
		t.Errorf("%d descriptors leaked", n-before)
	}

	cfg = &conf.Config{TCPPorts: []conf.PortSpec{mustSpec(t, "-t", "127.0.0.1/~1-65000,~65002-65535")}}
	env = fwdTestEnv(t, cfg)
	if stop, err := startForwarding(env, OptionsFrom(cfg), -1, testFlows(t, env)); err == nil {
		stop()
		t.Fatal("a weak spec that bound nothing succeeded")
	} else if want := "Failed to bind any port for option '-t 127.0.0.1/~1-65000,~65002-65535', exiting"; err.Error() != want {
		t.Fatalf("error %q, want %q", err, want)
	}
}

// TestForwardScanUpdate drives a Scan rule by hand: a port "bound on the
// other side" gets a listener (remapped as the rule says), loses it when
// it goes, and a port we hold ourselves on the other side is never taken.
func TestForwardScanUpdate(t *testing.T) {
	env := fwdTestEnv(t, &conf.Config{IPv4Only: true})
	f := &forwarder{env: env, stopc: make(chan struct{})}
	rules := mustSpec(t, "-t", "127.0.0.1/64100-64110:64200-64210,auto").Rules()
	d := &fwdDir{f: f, opt: "-t", rules: rules, ls: make(map[fwdKey]fwdListener), dyn: make([]portSet, len(rules)), rev: &fwdDir{}}
	f.dirs = []*fwdDir{d}
	defer f.stop()

	d.bound.add(64203) // target of 64103
	d.bound.add(64300) // outside the rule
	d.update()
	if l := hostListening(t); !l.has(64103) || l.has(64100) || l.has(64203) {
		t.Fatalf("after first scan: listening %v", ports(l))
	}
	if len(d.ls) != 1 || !d.ours.has(64103) {
		t.Fatalf("table: %d listeners, ours %v", len(d.ls), ports(&d.ours))
	}
	d.bound.clear()
	d.update()
	if l := hostListening(t); l.has(64103) {
		t.Fatal("listener kept after the port went away")
	}
	if len(d.ls) != 0 || d.ours.count() != 0 {
		t.Fatalf("table not empty: %d, %v", len(d.ls), ports(&d.ours))
	}
	// scanOnce subtracts the opposite direction's listeners.
	d.rev.ours.add(64205)
	d.bound.add(64205)
	d.bound.andNot(&d.rev.ours)
	d.update()
	if len(d.ls) != 0 {
		t.Fatal("forwarded a port that only we hold on the other side")
	}
}

// TestProcNetInNamespace: tables opened from the namespace's thread show
// that namespace's sockets, whichever thread reads them later.
func TestProcNetInNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	nsFD, err := netns.NewUnshared()
	if err != nil {
		t.Skip(err)
	}
	defer unix.Close(nsFD)
	w, err := newNSWorker(nsFD)
	if err != nil {
		t.Fatal(err)
	}
	defer w.stop()
	_ = w.do(func() {
		// lo up, so that the loopback address exists.
		fd, _ := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		ifr, _ := unix.NewIfreq("lo")
		ifr.SetUint16(unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING)
		_ = unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
		unix.Close(fd)
	})
	tables, err := openProcNet("tcp", w.open)
	if err != nil {
		t.Fatal(err)
	}
	defer tables.Close()
	udp, err := openProcNet("udp", w.open)
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()

	// The same port on the host: must not show in the namespace's table.
	host, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	hostPort := uint16(host.Addr().(*net.TCPAddr).Port)

	fd, err := w.socket(unix.AF_INET6, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := sockutil.BindAddrPort(fd, netip.MustParseAddrPort("[::]:4711")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		t.Fatal(err)
	}
	ufd, err := w.socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ufd)
	if err := sockutil.BindAddrPort(ufd, netip.MustParseAddrPort("127.0.0.1:4712")); err != nil {
		t.Fatal(err)
	}
	var s, u portSet
	if err := tables.scan(&s); err != nil {
		t.Fatal(err)
	}
	if err := udp.scan(&u); err != nil {
		t.Fatal(err)
	}
	if !s.has(4711) || s.has(hostPort) || s.count() != 1 {
		t.Fatalf("namespace TCP table: %v (host port %d)", ports(&s), hostPort)
	}
	if !u.has(4712) || u.count() != 1 {
		t.Fatalf("namespace UDP table: %v", ports(&u))
	}
	unix.Close(fd)
	s.clear()
	if err := tables.scan(&s); err != nil {
		t.Fatal(err)
	}
	if s.has(4711) {
		t.Fatal("closed listener still listed: the file was not re-read")
	}
}

// TestNSWorkerStopped: a stopped worker refuses work instead of hanging.
func TestNSWorkerStopped(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	nsFD, err := netns.NewUnshared()
	if err != nil {
		t.Skip(err)
	}
	defer unix.Close(nsFD)
	w, err := newNSWorker(nsFD)
	if err != nil {
		t.Fatal(err)
	}
	w.stop()
	done := make(chan error, 1)
	go func() { _, err := w.socket(unix.AF_INET, unix.SOCK_STREAM, 0); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, errNoNamespace) {
			t.Fatalf("got %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("hung")
	}
	var nilW *nsWorker
	if _, err := nilW.socket(unix.AF_INET, unix.SOCK_STREAM, 0); !strings.Contains(fmt.Sprint(err), "not running") {
		t.Fatalf("nil worker: %v", err)
	}
}

// FuzzParseProcNet: any table text parses without panicking, and every
// port found appears in the text as the local address's hex port.
func FuzzParseProcNet(f *testing.F) {
	f.Add([]byte(procTCPSample), true)
	f.Add([]byte(procTCP6Sample), true)
	f.Add([]byte(procUDPSample), false)
	f.Add([]byte("0: 1:1 0:0 0A\n"), true)
	f.Fuzz(func(t *testing.T, data []byte, tcp bool) {
		state := "07"
		if tcp {
			state = "0A"
		}
		var s portSet
		parseProcNet(data, state, nil, &s)
		up := strings.ToUpper(string(data)) // once: per port it made the check quadratic
		for _, p := range ports(&s) {
			if p == 0 {
				t.Fatal("port 0 reported")
			}
			if !strings.Contains(up, fmt.Sprintf(":%04X", p)) {
				t.Fatalf("port %d not in the input", p)
			}
		}
	})
}

// TestOwnDgramInodes: the set "-U auto" leaves out holds exactly the
// datagram sockets sockutil.NewDgramSock made and close has not closed, by the
// inode the kernel shows in /proc/net/udp (and in /proc/self/fd).
func TestOwnDgramInodes(t *testing.T) {
	s, err := sockutil.NewDgramSock(false, unix.IPPROTO_UDP, func(fd int) error {
		return sockutil.BindAddrPort(fd, netip.MustParseAddrPort("127.0.0.1:0"))
	})
	if err != nil {
		t.Fatal(err)
	}
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", s.FD))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("socket:[%d]", s.Ino); link != want {
		t.Fatalf("fd %d is %q, recorded inode %d", s.FD, link, s.Ino)
	}
	m := sockutil.OwnDgramInodes(nil)
	if _, ok := m[s.Ino]; !ok {
		t.Fatalf("inode %d missing from %v", s.Ino, m)
	}
	s.Close()
	if _, ok := sockutil.OwnDgramInodes(m)[s.Ino]; ok {
		t.Fatalf("inode %d still listed after close", s.Ino)
	}
}

// startForwarding is StartForwarder for a test that only stops it.
func startForwarding(env *actors.Env, opts Options, nsFD int, flows Flows) (stop func(), err error) {
	fw, err := StartForwarder(env, opts, nsFD, flows)
	if err != nil {
		return nil, err
	}
	return fw.Stop, nil
}
