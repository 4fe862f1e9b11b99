package integration

// passt mode end to end. The quick tests run gopasta as passt in the
// stand-in host namespace and speak QEMU's stream protocol themselves (a
// 4-byte big-endian length before every Ethernet frame): DHCP, clients
// refused and reconnecting, -1, -F, a TOML-described daemon. The VM tests
// run ../shared/vm's scripts: frame-probe.py (no VM) and vm-e2e.sh, which
// boots a real guest under QEMU against the binary (skipped unless QEMU and
// the guest built by build-guest.sh are there).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"
)

// ourMAC is gopasta's default MAC towards the guest.
var ourMAC = net.HardwareAddr{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}

// passtBin returns gopasta under the name passt (a symlink), which selects
// passt mode.
func passtBin(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "passt")
	if err := os.Symlink(gopastaBin, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// syncBuf is a goroutine-safe output buffer.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fgPasst is a foreground (-f) passt-mode gopasta and its exit status.
type fgPasst struct {
	cmd    *exec.Cmd
	out    *syncBuf
	exited chan struct{}
	status int
}

// startFgPasst runs BIN ARGS in ns, in its own process group (front and
// daemon), killed at cleanup.
func startFgPasst(t *testing.T, ns Netns, files []*os.File, args ...string) *fgPasst {
	t.Helper()
	p := &fgPasst{out: &syncBuf{}, exited: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.ExtraFiles = files
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", args, err)
	}
	go func() {
		p.status = exitCode(p.cmd.Wait())
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
		if t.Failed() {
			t.Logf("output of %v:\n%s", args, tail(p.out.String(), 6000))
		}
	})
	return p
}

// wait waits up to d for the process to exit and returns its status, or
// fails the test.
func (p *fgPasst) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
		return p.status
	case <-time.After(d):
		t.Fatalf("still running after %v", d)
		return -1
	}
}

func waitSocket(t *testing.T, path string, d time.Duration) {
	t.Helper()
	if !Eventually(d, func() bool {
		fi, err := os.Stat(path)
		return err == nil && fi.Mode().Type() == os.ModeSocket
	}) {
		t.Fatalf("no socket at %s after %v", path, d)
	}
}

// qemuClient speaks QEMU's stream netdev framing over a UNIX socket.
type qemuClient struct {
	t   *testing.T
	c   *net.UnixConn
	r   *bufio.Reader
	mac net.HardwareAddr
}

func dialQemu(t *testing.T, path string, mac net.HardwareAddr) *qemuClient {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatalf("connect %s: %v", path, err)
	}
	t.Cleanup(func() { c.Close() })
	return &qemuClient{t: t, c: c, r: bufio.NewReaderSize(c, 1<<17), mac: mac}
}

// fdClient is a qemuClient over one end of a socketpair.
func fdClient(t *testing.T, fd int, mac net.HardwareAddr) *qemuClient {
	t.Helper()
	f := os.NewFile(uintptr(fd), "qemu-end")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &qemuClient{t: t, c: c.(*net.UnixConn), r: bufio.NewReaderSize(c, 1<<17), mac: mac}
}

func (q *qemuClient) send(frame []byte) {
	q.t.Helper()
	b := binary.BigEndian.AppendUint32(nil, uint32(len(frame)))
	if _, err := q.c.Write(append(b, frame...)); err != nil {
		q.t.Fatalf("send: %v", err)
	}
}

// recv returns the next frame, or an error (io.EOF: the server hung up; a
// timeout error: nothing within d).
func (q *qemuClient) recv(d time.Duration) ([]byte, error) {
	q.c.SetReadDeadline(time.Now().Add(d))
	var h [4]byte
	if _, err := io.ReadFull(q.r, h[:]); err != nil {
		return nil, err
	}
	f := make([]byte, binary.BigEndian.Uint32(h[:]))
	if _, err := io.ReadFull(q.r, f); err != nil {
		return nil, err
	}
	return f, nil
}

// refused reports whether the server closed the connection without a
// frame within d.
func (q *qemuClient) refused(d time.Duration) bool {
	_, err := q.recv(d)
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

// ipv4Checksum is the Internet checksum of an IPv4 header.
func ipv4Checksum(h []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(h); i += 2 {
		s += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// udp4Frame builds an Ethernet/IPv4/UDP frame (UDP checksum 0: none).
func udp4Frame(srcMAC, dstMAC net.HardwareAddr, src, dst net.IP, sport, dport uint16, payload []byte) []byte {
	f := make([]byte, 14+20+8+len(payload))
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	copy(ip[12:16], src.To4())
	copy(ip[16:20], dst.To4())
	binary.BigEndian.PutUint16(ip[10:], ipv4Checksum(ip))
	u := f[34:42]
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	copy(f[42:], payload)
	return f
}

// dhcp sends a DHCPDISCOVER and returns the OFFER and the frame that
// carried it.
func (q *qemuClient) dhcp() (*dhcpv4.DHCPv4, []byte) {
	q.t.Helper()
	disc, err := dhcpv4.NewDiscovery(q.mac)
	if err != nil {
		q.t.Fatal(err)
	}
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	q.send(udp4Frame(q.mac, bcast, net.IPv4zero, net.IPv4bcast, 68, 67, disc.ToBytes()))
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		f, err := q.recv(time.Until(deadline))
		if err != nil {
			q.t.Fatalf("waiting for a DHCP offer: %v", err)
		}
		if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != 0x0800 || f[23] != 17 ||
			binary.BigEndian.Uint16(f[36:]) != 68 {
			continue // an RA, an ARP probe...
		}
		m, err := dhcpv4.FromBytes(f[42:])
		if err != nil {
			q.t.Fatalf("bad DHCP reply: %v", err)
		}
		if m.TransactionID != disc.TransactionID {
			continue
		}
		return m, f
	}
	q.t.Fatal("no DHCP offer")
	return nil, nil
}

// checkOffer asserts what passt mode offers: the host's address, its
// gateway, MTU 65520, an infinite lease, from our MAC to the client's.
func checkOffer(t *testing.T, m *dhcpv4.DHCPv4, f []byte, client net.HardwareAddr, yiaddr string) {
	t.Helper()
	if m.MessageType() != dhcpv4.MessageTypeOffer {
		t.Errorf("DHCP reply type %v, want OFFER", m.MessageType())
	}
	if got := m.YourIPAddr.String(); got != yiaddr {
		t.Errorf("yiaddr %s, want %s", got, yiaddr)
	}
	if r := m.Router(); len(r) != 1 || r[0].String() != HostGW4 {
		t.Errorf("router %v, want %s", r, HostGW4)
	}
	if mtu := m.Options.Get(dhcpv4.OptionInterfaceMTU); len(mtu) != 2 || binary.BigEndian.Uint16(mtu) != 65520 {
		t.Errorf("MTU option %x, want 65520", mtu)
	}
	if l := m.IPAddressLeaseTime(0); l != 0xffffffff*time.Second {
		t.Errorf("lease %v, want infinite", l)
	}
	if !bytes.Equal(f[0:6], client) || !bytes.Equal(f[6:12], ourMAC) {
		t.Errorf("offer from %s to %s, want %s to %s", net.HardwareAddr(f[6:12]), net.HardwareAddr(f[0:6]), ourMAC, client)
	}
}

var (
	macA = net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x0a}
	macB = net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x0b}
	macC = net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x0c}
)

// TestPasstOneOff: -f -1: DHCP answered, a second client refused while the
// first is connected (the first carries on), exit 0 and socket removed
// when the first leaves.
func TestPasstOneOff(t *testing.T) {
	h := HostNetns(t)
	sock := filepath.Join(t.TempDir(), "p.sock")
	p := startFgPasst(t, h, nil, passtBin(t), "-f", "-1", "-s", sock)
	waitSocket(t, sock, 5*time.Second)

	a := dialQemu(t, sock, macA)
	m, f := a.dhcp()
	checkOffer(t, m, f, macA, HostAddr4)

	b := dialQemu(t, sock, macB)
	if !b.refused(3 * time.Second) {
		t.Error("second client not refused while the first is connected")
	}
	m, f = a.dhcp() // the first is unaffected
	checkOffer(t, m, f, macA, HostAddr4)

	a.c.Close()
	if st := p.wait(t, 5*time.Second); st != 0 {
		t.Errorf("exit status %d after the client left, want 0", st)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file left behind: %v", err)
	}
	out := p.out.String()
	for _, want := range []string{"You can now start qemu", "addr.path=" + sock, "accepted connection", "discarding connection", "client closed connection, exiting"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// TestPasstReconnect: in the background (front exits 0 once the socket
// listens), clients come and go; a new client gets the services again and
// is not sent frames addressed to the previous client's MAC; -M is our
// MAC.
func TestPasstReconnect(t *testing.T) {
	h := HostNetns(t)
	dir := t.TempDir()
	sock, pidf, logf := filepath.Join(dir, "p.sock"), filepath.Join(dir, "p.pid"), filepath.Join(dir, "p.log")
	const fwd = "19181"
	r := runFrontBin(t, h, 10*time.Second, passtBin(t), "-s", sock, "-P", pidf, "-l", logf, "-t", fwd+":80", "-M", "02:00:00:00:00:99")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", tail(readFile(t, logf), 6000))
		}
		killPIDFile(pidf)
	})
	if r.code != 0 {
		t.Fatalf("front exit %d: %s", r.code, r.out)
	}
	// Readiness: the socket listens by the time the front has exited, and
	// the front showed the QEMU command line.
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("no socket when the front exited: %v", err)
	}
	if !strings.Contains(r.out, "addr.path="+sock) {
		t.Errorf("front output lacks the QEMU hint: %q", r.out)
	}
	us := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}

	a := dialQemu(t, sock, macA)
	m, f := a.dhcp()
	if !bytes.Equal(f[6:12], us) {
		t.Errorf("-M: offer from %s", net.HardwareAddr(f[6:12]))
	}
	if m.ServerIdentifier().String() != HostGW4 {
		t.Errorf("server identifier %v", m.ServerIdentifier())
	}
	a.c.Close()

	// B arrives right after A left: it is served, not refused, and its
	// first frames are not addressed to A. Before B says anything, an
	// inbound connection's SYN goes to broadcast.
	b := dialQemu(t, sock, macB)
	go func() {
		if c, err := DialTCPIn(t, h, "tcp4", "", "127.0.0.1:"+fwd); err == nil {
			time.Sleep(2 * time.Second)
			c.Close()
		}
	}()
	syn := false
	for !syn {
		f, err := b.recv(5 * time.Second)
		if err != nil {
			t.Fatalf("B: no SYN for the inbound connection: %v", err)
		}
		if bytes.Equal(f[0:6], macA) {
			t.Fatalf("B got a frame for A's MAC")
		}
		if len(f) >= 14+20+20 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[23] == 6 &&
			binary.BigEndian.Uint16(f[36:]) == 80 && f[47]&0x02 != 0 {
			syn = true
			if !bytes.Equal(f[0:6], net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) {
				t.Errorf("SYN to %s before the new guest spoke, want broadcast", net.HardwareAddr(f[0:6]))
			}
		}
	}
	m, f = b.dhcp()
	checkOffer2(t, m, f, macB, us)

	c := dialQemu(t, sock, macC)
	if !c.refused(3 * time.Second) {
		t.Error("third client not refused while B is connected")
	}
	b.c.Close()

	// After B, another client is served again (C's refusal did not stick).
	time.Sleep(200 * time.Millisecond)
	d := dialQemu(t, sock, macC)
	m, f = d.dhcp()
	checkOffer2(t, m, f, macC, us)

	log := readFile(t, logf)
	if n := strings.Count(log, "accepted connection"); n != 3 {
		t.Errorf("%d accepted connections logged, want 3", n)
	}
	if !strings.Contains(log, "discarding connection") {
		t.Error("refusal not logged")
	}
	pid := (&Gopasta{PIDFile: pidf}).PID()
	if !pidAlive(pid) {
		t.Fatal("daemon gone although not one-off")
	}
	// SIGTERM: exit, socket file removed.
	_ = syscall.Kill(pid, syscall.SIGTERM)
	if _, ok := waitGone(pid, 3*time.Second); !ok {
		t.Fatal("daemon still running 3s after SIGTERM")
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file left behind after SIGTERM: %v", err)
	}
}

func checkOffer2(t *testing.T, m *dhcpv4.DHCPv4, f []byte, client, us net.HardwareAddr) {
	t.Helper()
	if m.MessageType() != dhcpv4.MessageTypeOffer || m.YourIPAddr.String() != HostAddr4 {
		t.Errorf("reply %v yiaddr %v", m.MessageType(), m.YourIPAddr)
	}
	if !bytes.Equal(f[0:6], client) || !bytes.Equal(f[6:12], us) {
		t.Errorf("offer from %s to %s, want %s to %s", net.HardwareAddr(f[6:12]), net.HardwareAddr(f[0:6]), us, client)
	}
}

// runFrontBin is runFront for another program name (passt).
func runFrontBin(t *testing.T, h Netns, timeout time.Duration, bin string, args ...string) frontResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	cmd := h.Command(ctx, append([]string{bin}, args...)...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	r := frontResult{out: string(out), elapsed: time.Since(start), err: err, code: exitCode(err)}
	if ctx.Err() != nil {
		t.Fatalf("%s %v: no EOF on its output pipe within %v (output %q)", bin, args, timeout, out)
	}
	return r
}

// TestPasstFD: -F with a socket our caller connected, given as fd 3 (the
// number the front uses for its readiness pipe): the daemon serves it and
// exits 0 when the other end closes.
func TestPasstFD(t *testing.T) {
	h := HostNetns(t)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "passt-end")
	p := startFgPasst(t, h, []*os.File{theirs}, passtBin(t), "-f", "-F", "3")
	theirs.Close() // only gopasta holds that end now
	q := fdClient(t, fds[0], macA)
	m, f := q.dhcp()
	checkOffer(t, m, f, macA, HostAddr4)
	q.c.Close()
	if st := p.wait(t, 5*time.Second); st != 0 {
		t.Errorf("exit status %d after the peer closed, want 0", st)
	}

	// A descriptor that is not open is the front's one-line error.
	r := runFrontBin(t, h, 5*time.Second, passtBin(t), "-F", "77")
	if r.code != 1 || strings.Count(r.out, "\n") != 1 || !strings.Contains(r.out, "77") {
		t.Errorf("-F 77: exit %d output %q", r.code, r.out)
	}
}

// TestPasstTOMLDaemon: a passt daemon described by its TOML file alone,
// run as gopasta: socket, forwarded ports, address.
func TestPasstTOMLDaemon(t *testing.T) {
	h := HostNetns(t)
	dir := t.TempDir()
	sock, pidf := filepath.Join(dir, "vm.sock"), filepath.Join(dir, "vm.pid")
	file := filepath.Join(dir, "vm.toml")
	toml := fmt.Sprintf(`mode = "passt"
socket = %q
pid = %q
tcp-ports = ["19182:22", "127.0.0.1/19183:80"]
udp-ports = ["19184"]
address = ["198.51.100.77/24"]
gateway = ["198.51.100.1"]
dns = ["192.0.2.53"]
quiet = true
`, sock, pidf)
	if err := os.WriteFile(file, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killPIDFile(pidf) })
	r := runFront(t, h, 10*time.Second, "--config", file)
	if r.code != 0 || r.out != "" {
		t.Fatalf("front exit %d output %q (quiet: want none)", r.code, r.out)
	}
	q := dialQemu(t, sock, macA)
	m, f := q.dhcp()
	checkOffer(t, m, f, macA, "198.51.100.77")
	if d := m.DNS(); len(d) != 1 || d[0].String() != "192.0.2.53" {
		t.Errorf("DNS %v", d)
	}
	ss := h.Exec(t, "ss", "-Hlntu")
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`tcp .*[*\]]:19182 `), regexp.MustCompile(`tcp .*127\.0\.0\.1:19183 `),
		regexp.MustCompile(`udp .*:19184 `),
	} {
		if !want.MatchString(ss) {
			t.Errorf("no listener matching %s:\n%s", want, ss)
		}
	}
}

// vmScripts returns the directory of vm-e2e.sh and frame-probe.py
// (GOPASTA_VM_SCRIPTS, default ../../shared/vm), or skips.
func vmScripts(t *testing.T) string {
	t.Helper()
	needRoot(t)
	dir := os.Getenv("GOPASTA_VM_SCRIPTS")
	if dir == "" {
		dir = "../../shared/vm"
	}
	dir, _ = filepath.Abs(dir)
	if _, err := os.Stat(filepath.Join(dir, "vm-e2e.sh")); err != nil {
		t.Skipf("VM scripts not found in %s (set GOPASTA_VM_SCRIPTS): %v", dir, err)
	}
	return dir
}

// TestPasstFrameProbe runs frame-probe.py (DHCP and ARP over the socket).
func TestPasstFrameProbe(t *testing.T) {
	dir := vmScripts(t)
	needTool(t, "python3")
	h := HostNetns(t)
	sock := filepath.Join(t.TempDir(), "p.sock")
	startFgPasst(t, h, nil, passtBin(t), "-f", "-s", sock)
	waitSocket(t, sock, 5*time.Second)
	out, err := exec.Command("python3", filepath.Join(dir, "frame-probe.py"), sock).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "RESULT PASS") {
		t.Errorf("frame-probe.py: %v\n%s", err, out)
	}
}

// vmStep is one PASS/FAIL/WARN line of vm-e2e.sh.
var vmStep = regexp.MustCompile(`(?m)^(PASS|FAIL|WARN) +(\S+) +(.*)$`)

// runVME2E runs vm-e2e.sh against bin in a private namespace (NETNS=1) and
// returns its output and the verdict of every step.
// Extra variables (KEY=VALUE) go to its environment.
func runVME2E(t *testing.T, dir, bin string, extra ...string) (string, map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "vm-e2e.sh"), bin)
	env := append([]string{"NETNS=1"}, extra...)
	for k, v := range map[string]string{"E2E_TIMEOUT": "150", "IPERF_T": "5"} {
		if os.Getenv(k) == "" {
			env = append(env, k+"="+v)
		}
	}
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("vm-e2e.sh %s: %v in %v", bin, err, time.Since(start).Round(time.Second))
	steps := map[string]string{}
	for _, m := range vmStep.FindAllStringSubmatch(string(out), -1) {
		steps[m[2]] = m[1] + " " + m[3]
	}
	return string(out), steps
}

// TestPasstVM boots a real guest under QEMU against gopasta as passt:
// link, DHCP, ping, HTTP, 8 MiB each way, -t into the guest and 8 MiB back,
// half-close, IPv6, iperf3 both ways, power-off. Every step must pass,
// including those vm-e2e.sh only warns about. With GOPASTA_VM_COMPARE=1
// Debian's /usr/bin/passt runs too and the iperf3 figures are logged side
// by side.
func TestPasstVM(t *testing.T) {
	dir := vmGuest(t)
	out, steps := runVME2E(t, dir, passtBin(t))
	if !strings.Contains(out, "RESULT: PASS") {
		t.Errorf("vm-e2e.sh failed")
	}
	for _, s := range vmSteps() {
		if v := steps[s]; !strings.HasPrefix(v, "PASS") {
			t.Errorf("step %s: %q", s, v)
		}
	}
	if t.Failed() {
		t.Logf("vm-e2e.sh output:\n%s", tail(out, 8000))
	}
	if os.Getenv("GOPASTA_VM_COMPARE") == "1" {
		if _, err := os.Stat("/usr/bin/passt"); err == nil {
			_, ref := runVME2E(t, dir, "/usr/bin/passt")
			for _, s := range []string{"iperf3-up", "iperf3-down", "download", "portfwd-big"} {
				t.Logf("%-12s gopasta: %-40s passt: %s", s, steps[s], ref[s])
			}
		}
	}
}

// vmGuest returns the VM scripts' directory, or skips unless QEMU, the
// tools vm-e2e.sh needs and the guest built by build-guest.sh are there.
func vmGuest(t *testing.T) string {
	t.Helper()
	dir := vmScripts(t)
	qemu := os.Getenv("QEMU")
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	needTool(t, qemu, "python3", "curl", "unshare", "ss")
	guest := os.Getenv("GUEST_DIR")
	if guest == "" {
		guest = "/var/tmp/gopasta-vm/guest"
	}
	if _, err := os.Stat(filepath.Join(guest, "initramfs.gz")); err != nil {
		t.Skipf("no guest in %s (run ../shared/vm/build-guest.sh): %v", guest, err)
	}
	return dir
}

// vmSteps are the vm-e2e.sh steps that must all pass, warn-only ones
// included.
func vmSteps() []string {
	want := []string{"passt-start", "link", "dhcp", "ping", "wget", "download", "upload", "halfclose",
		"ipv6-wget", "portfwd", "portfwd-big", "poweroff"}
	if _, err := exec.LookPath("iperf3"); err == nil {
		want = append(want, "iperf3-up", "iperf3-down")
	}
	return want
}

// TestPasstVhostUserVM is TestPasstVM with --vhost-user: QEMU connects
// with -netdev vhost-user over shared memfd memory. Upstream passt
// ($PASST_2026, when set) runs the same script first as the control: if
// it fails too, the environment is at fault, not gopasta. The iperf3
// figures of both are logged side by side.
func TestPasstVhostUserVM(t *testing.T) {
	dir := vmGuest(t)
	var ref map[string]string
	if up := os.Getenv("PASST_2026"); up != "" {
		var out string
		out, ref = runVME2E(t, dir, up, "VHOST_USER=1")
		if !strings.Contains(out, "RESULT: PASS") {
			t.Fatalf("control: upstream passt fails vm-e2e.sh with vhost-user:\n%s", tail(out, 4000))
		}
	}
	// The zero-copy paths are the default: this run is theirs. The copy
	// path (GOPASTA_VHOST_USER_COPY) carries what they do not (UDP,
	// ICMP, control segments) in the same run.
	out, steps := runVME2E(t, dir, passtBin(t), "VHOST_USER=1")
	if !strings.Contains(out, "RESULT: PASS") {
		t.Errorf("vm-e2e.sh failed")
	}
	for _, s := range vmSteps() {
		if v := steps[s]; !strings.HasPrefix(v, "PASS") {
			t.Errorf("step %s: %q", s, v)
		}
	}
	if t.Failed() {
		t.Logf("vm-e2e.sh output:\n%s", tail(out, 8000))
	}
	for _, s := range []string{"iperf3-up", "iperf3-down", "download", "portfwd-big"} {
		t.Logf("%-12s gopasta: %-40s passt: %s", s, steps[s], ref[s])
	}
	// The bulk went through guest memory both ways: read into the
	// guest's buffers (lent) and written from them (ext, less what had
	// to be copied while a socket was full).
	m := vmRunDir.FindStringSubmatch(out)
	if m == nil {
		t.Fatal("no run directory in the output")
	}
	log, err := os.ReadFile(filepath.Join(m[1], "passt.log"))
	if err != nil {
		t.Fatal(err)
	}
	c := vuCounters.FindStringSubmatch(string(log))
	if c == nil {
		t.Fatalf("no vhost-user counters in passt.log:\n%s", tail(string(log), 2000))
	}
	n := func(s string) uint64 { v, _ := strconv.ParseUint(s, 10, 64); return v }
	lent, ext, copied := n(c[3]), n(c[1]), n(c[2])
	t.Logf("host->guest %d bytes read into guest buffers; guest->host %d bytes left in guest memory, %d of them copied", lent, ext, copied)
	if lent < 100<<20 {
		t.Errorf("host->guest zero copy unused: lent_bytes %d", lent)
	}
	if ext < copied || ext-copied < 100<<20 {
		t.Errorf("guest->host zero copy unused: ext_bytes %d, %d of them copied", ext, copied)
	}
}

var (
	vmRunDir   = regexp.MustCompile(`logs in (\S+) `)
	vuCounters = regexp.MustCompile(`client closed connection .*ext_bytes=(\d+) .*ext_copied_bytes=(\d+) .*lent_bytes=(\d+)`)
)

// TestPasstDNSForward: the host's resolver is on loopback (as with
// systemd-resolved), so passt mode offers the gateway as DNS server and
// forwards its port 53 there; a query from the "VM" is answered through it.
func TestPasstDNSForward(t *testing.T) {
	h := HostNetns(t)
	netnsResolvConf(t, h, "nameserver 127.0.0.53\n")
	// The "resolver": echoes each query back with a marker.
	ServeUDPMarked(ListenUDPIn(t, h, "udp4", "127.0.0.53:53"), "answer:")

	sock := filepath.Join(t.TempDir(), "p.sock")
	startFgPasst(t, h, nil, passtBin(t), "-f", "-s", sock)
	waitSocket(t, sock, 5*time.Second)
	q := dialQemu(t, sock, macA)
	m, _ := q.dhcp()
	if d := m.DNS(); len(d) != 1 || d[0].String() != HostGW4 {
		t.Fatalf("DNS offered %v, want the gateway %s", d, HostGW4)
	}
	query := []byte("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03org\x00\x00\x01\x00\x01")
	q.send(udp4Frame(macA, ourMAC, net.ParseIP(HostAddr4), net.ParseIP(HostGW4), 40053, 53, query))
	deadline := time.Now().Add(5 * time.Second)
	for {
		f, err := q.recv(time.Until(deadline))
		if err != nil {
			t.Fatalf("no DNS answer: %v", err)
		}
		if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != 0x0800 || f[23] != 17 || binary.BigEndian.Uint16(f[36:]) != 40053 {
			continue
		}
		if src := net.IP(f[26:30]).String(); src != HostGW4 || binary.BigEndian.Uint16(f[34:]) != 53 {
			t.Errorf("answer from %s:%d, want %s:53", src, binary.BigEndian.Uint16(f[34:]), HostGW4)
		}
		if got := f[42:]; !bytes.Equal(got, append([]byte("answer:"), query...)) {
			t.Errorf("answer %q", got)
		}
		break
	}
}

// TestPasstUDPForward: -u into the VM. A datagram to the host's forwarded
// port reaches the guest (from the gateway, which stands for host
// loopback), and the guest's reply reaches the host client.
func TestPasstUDPForward(t *testing.T) {
	h := HostNetns(t)
	sock := filepath.Join(t.TempDir(), "p.sock")
	startFgPasst(t, h, nil, passtBin(t), "-f", "-s", sock, "-u", "19185:5353")
	waitSocket(t, sock, 5*time.Second)
	q := dialQemu(t, sock, macA)
	q.dhcp() // the guest has spoken: its MAC is known

	var pc net.PacketConn
	var err error
	InNetns(t, h, func() { pc, err = net.ListenPacket("udp4", "127.0.0.1:0") })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	fwd, _ := net.ResolveUDPAddr("udp4", "127.0.0.1:19185")
	if _, err := pc.WriteTo([]byte("ping from host"), fwd); err != nil {
		t.Fatal(err)
	}
	clientPort := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	deadline := time.Now().Add(5 * time.Second)
	var f []byte
	for {
		f, err = q.recv(time.Until(deadline))
		if err != nil {
			t.Fatalf("no forwarded datagram: %v", err)
		}
		if len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[23] == 17 && binary.BigEndian.Uint16(f[36:]) == 5353 {
			break
		}
	}
	if !bytes.Equal(f[0:6], macA) || string(f[42:]) != "ping from host" {
		t.Errorf("datagram to %s: %q", net.HardwareAddr(f[0:6]), f[42:])
	}
	src, sport := net.IP(f[26:30]).String(), binary.BigEndian.Uint16(f[34:])
	if src != HostGW4 || sport != clientPort || net.IP(f[30:34]).String() != HostAddr4 {
		t.Errorf("datagram %s:%d -> %s, want %s:%d -> %s", src, sport, net.IP(f[30:34]), HostGW4, clientPort, HostAddr4)
	}
	q.send(udp4Frame(macA, ourMAC, net.ParseIP(HostAddr4), net.ParseIP(HostGW4), 5353, sport, []byte("pong from guest")))
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 100)
	n, from, err := pc.ReadFrom(b)
	if err != nil || string(b[:n]) != "pong from guest" || from.String() != "127.0.0.1:19185" {
		t.Errorf("reply %q from %v: %v", b[:n], from, err)
	}
}

// TestPrintCapabilities: --print-capabilities prints the vhost-user
// back-end capabilities to stdout (passt writes the same bytes to stderr;
// the vhost-user convention is stdout) and exits 0 at once, in either
// mode, without starting a daemon or binding its socket.
func TestPrintCapabilities(t *testing.T) {
	// In a namespace of its own: a daemon started by mistake goes with it.
	ns := NewNetns(t, "cap")
	dir := t.TempDir()
	sock := filepath.Join(dir, "vu.sock")
	for _, argv := range [][]string{
		{passtBin(t), "--vhost-user", "-s", sock, "--print-capabilities"},
		{passtBin(t), "-s", sock, "--print-capabilities"},
		{gopastaBin, "--print-capabilities"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		cmd := ns.Command(ctx, argv...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		start := time.Now()
		err := cmd.Run()
		cancel()
		if err != nil || time.Since(start) > 2*time.Second {
			t.Errorf("%q: %v after %v\n%s", argv[1:], err, time.Since(start), stderr.String())
		}
		if want := "{\n  \"type\": \"net\"\n}\n"; stdout.String() != want || stderr.Len() != 0 {
			t.Errorf("%q: stdout %q stderr %q, want stdout %q", argv[1:], stdout.String(), stderr.String(), want)
		}
		if _, err := os.Stat(sock); err == nil {
			t.Errorf("%q: bound %s", argv[1:], sock)
		}
	}
}
