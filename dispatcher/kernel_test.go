package dispatcher

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/nat"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// TestRealKernelServices puts the dispatcher behind a real tap device in a
// throwaway network namespace and lets real clients talk to it: the
// kernel's own ARP and NDP (neighbour resolution, router solicitation and
// SLAAC), busybox udhcpc for DHCPv4 and ISC dhclient for DHCPv6. It needs
// root and those tools, and skips otherwise.
func TestRealKernelServices(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range []string{"ip", "busybox", "dhclient", "arping", "ndisc6"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	ns := fmt.Sprintf("gpdisp-%d", os.Getpid())
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	inNS := func(args ...string) string {
		t.Helper()
		return run(append([]string{"ip", "netns", "exec", ns}, args...)...)
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	fd, err := unix.Open(filepath.Join("/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	tap, err := link.OpenTap("tap0", fd, 65520)
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()

	cfg := testConfig()
	// Below the link's MTU, so the kernel takes the advertised value.
	cfg.MTU = 9000
	log := logrus.New()
	log.Out = io.Discard
	ctx, cancel := context.WithCancel(context.Background())
	w := link.NewWriter(tap, 256)
	// Every DHCPv4 reply written is kept, so that a client that gets no
	// lease shows whether we sent a valid one.
	var sent dhcpSent
	w.Tee = sent.tee
	env := &actors.Env{Ctx: ctx, Opts: actors.OptionsFrom(cfg), Out: w, Peer: &link.Peer{OurMAC: cfg.OurMAC}, Log: log, NAT: &nat.NAT{}, Reg: actors.NewRegistrar()}
	d := New(cfg, tap, env, log, actors.Protocols{})
	// Nothing here should start a flow; keep the host out of it.
	fa := &fakeActors{depth: 4}
	withFakes(fa)(d)
	wdone, ddone := make(chan struct{}), make(chan error, 1)
	go func() { w.Run(ctx); close(wdone) }()
	go func() { ddone <- d.Run(ctx) }()
	defer func() {
		cancel()
		<-wdone
		if err := <-ddone; err != context.Canceled {
			t.Errorf("Run: %v", err)
		}
	}()

	inNS("ip", "link", "set", "lo", "up")
	inNS("ip", "link", "set", "tap0", "address", "02:00:00:00:00:01", "mtu", "65520", "up")
	defer func() { t.Logf("stats %v", nonzero(d.Stats())) }()

	// DHCPv4 with busybox udhcpc: the script dumps what it was told.
	dir := t.TempDir()
	script := filepath.Join(dir, "script")
	dump := filepath.Join(dir, "lease")
	os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && env > "+dump+"\nexit 0\n"), 0o755)
	udhcpc := []string{"ip", "netns", "exec", ns, "busybox", "udhcpc", "-i", "tap0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s", script}
	if out, err := exec.Command(udhcpc[0], udhcpc[1:]...).CombinedOutput(); err != nil {
		// Once, in CI under load, udhcpc took the OFFER and then missed
		// three ACKs. Say what we wrote and what the kernel counted, and
		// give the client a second go only if every reply on the wire
		// was a valid ACK for its transaction: then our part was done.
		link := inNS("ip", "-s", "link", "show", "dev", "tap0")
		t.Logf("udhcpc: %v\n%s\nreplies written: %s\nwriter: frames %d errors %d dropped %d, tap skipped %d\n%s",
			err, out, sent.summary(), w.Frames.Load(), w.Errors.Load(), w.Dropped.Load(), tap.Skipped.Load(), link)
		if !sent.allValidAcks() {
			t.Fatal("udhcpc got no lease and our replies were not all valid ACKs")
		}
		run(udhcpc...)
	}
	lease, err := os.ReadFile(dump)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ip=10.0.2.100", "subnet=255.255.255.0", "router=10.0.2.2", "dns=10.0.2.3",
		"mtu=9000", "lease=4294967295", "serverid=10.0.2.2", "search=example.com corp.example.org"} {
		if !strings.Contains(string(lease), want+"\n") {
			t.Errorf("udhcpc lease lacks %q:\n%s", want, lease)
		}
	}

	// ARP from the kernel: configure the lease, resolve the gateway.
	inNS("ip", "addr", "add", "10.0.2.100/24", "dev", "tap0")
	if out := inNS("arping", "-c", "1", "-w", "3", "-I", "tap0", "10.0.2.2"); !strings.Contains(out, "9A:55:9A:55:9A:55") &&
		!strings.Contains(strings.ToLower(out), "9a:55:9a:55:9a:55") {
		t.Errorf("arping: %s", out)
	}

	// NDP: the kernel solicits a router when the link comes up; our RA
	// must give it a SLAAC address in 2001:db8::/64 and a default route
	// via fe80::1, and the advertised MTU.
	deadline := time.Now().Add(15 * time.Second)
	for {
		addrs := inNS("ip", "-6", "addr", "show", "dev", "tap0")
		routes := inNS("ip", "-6", "route", "show", "dev", "tap0")
		if strings.Contains(addrs, "2001:db8::") && !strings.Contains(addrs, "tentative") &&
			strings.Contains(routes, "default via fe80::1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no SLAAC address or default route:\n%s\n%s\nstats %v", addrs, routes, nonzero(d.Stats()))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if mtu := strings.TrimSpace(inNS("cat", "/proc/sys/net/ipv6/conf/tap0/mtu")); mtu != "9000" {
		t.Errorf("IPv6 MTU %s, want the advertised 9000", mtu)
	}
	if out := inNS("ndisc6", "-1", "-w", "2000", "fe80::1", "tap0"); !strings.Contains(strings.ToUpper(out), "9A:55:9A:55:9A:55") {
		t.Errorf("ndisc6: %s", out)
	}

	// DHCPv6 with ISC dhclient (the M flag asks for it).
	leases := filepath.Join(dir, "dhclient6.leases")
	pidFile := filepath.Join(dir, "dhclient6.pid")
	t.Cleanup(func() {
		// dhclient -1 daemonizes once it has a lease; make sure it is
		// gone even if the test failed before releasing.
		if b, err := os.ReadFile(pidFile); err == nil {
			var pid int
			if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 1 {
				unix.Kill(pid, unix.SIGTERM)
			}
		}
	})
	inNS("dhclient", "-6", "-1", "-v", "-lf", leases, "-pf", pidFile, "-sf", "/bin/true", "tap0")
	exec.Command("ip", "netns", "exec", ns, "dhclient", "-6", "-x", "-pf", pidFile).Run()
	l6, _ := os.ReadFile(leases)
	for _, want := range []string{"iaaddr 2001:db8::100", "dhcp6.name-servers 2001:db8::53", "dhcp6.domain-search \"example.com.\", \"corp.example.org.\""} {
		if !strings.Contains(string(l6), want) {
			t.Errorf("dhclient lease lacks %q:\n%s", want, l6)
		}
	}
	if fa.count() != 0 {
		t.Errorf("%d flows started", fa.count())
	}
}

// dhcpSent records the DHCPv4 replies the writer put on the link.
type dhcpSent struct {
	mu     sync.Mutex
	frames [][]byte
}

// tee is a Writer.Tee: it copies frames from the DHCP server port.
func (s *dhcpSent) tee(f *link.Frame) {
	var p wire.Parsed
	if err := wire.ParseFrame(f.Data, &p); err != nil || p.Proto != wire.ProtoUDP || p.SrcPort != 67 {
		return
	}
	s.mu.Lock()
	s.frames = append(s.frames, append([]byte(nil), f.Data...))
	s.mu.Unlock()
}

// check decodes one recorded frame: its message type, transaction, and
// whether its IPv4 and UDP checksums verify.
func (s *dhcpSent) check(b []byte) (typ dhcpv4.MessageType, xid dhcpv4.TransactionID, sumsOK bool, err error) {
	var p wire.Parsed
	if err := wire.ParseFrame(b, &p); err != nil {
		return 0, xid, false, err
	}
	ip := b[p.L3:p.L4]
	u := b[p.L4:p.End]
	sumsOK = wire.Fold(wire.Checksum(ip, 0)) == 0 &&
		wire.Fold(wire.Checksum(u, wire.PseudoHeaderSum(ip[12:16], ip[16:20], wire.ProtoUDP, len(u)))) == 0
	m, err := dhcpv4.FromBytes(b[p.Payload:p.End])
	if err != nil {
		return 0, xid, sumsOK, err
	}
	return m.MessageType(), m.TransactionID, sumsOK, nil
}

func (s *dhcpSent) summary() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, b := range s.frames {
		typ, xid, ok, err := s.check(b)
		out = append(out, fmt.Sprintf("[%d bytes %s xid %s sums-ok %v err %v % x]", len(b), typ, xid, ok, err, b[:42]))
	}
	return strings.Join(out, " ")
}

// allValidAcks reports whether the replies were one OFFER and then at
// least one ACK, all for one transaction, all with good checksums.
func (s *dhcpSent) allValidAcks() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.frames) < 2 {
		return false
	}
	var first dhcpv4.TransactionID
	for i, b := range s.frames {
		typ, xid, ok, err := s.check(b)
		want := dhcpv4.MessageTypeAck
		if i == 0 {
			want, first = dhcpv4.MessageTypeOffer, xid
		}
		if err != nil || !ok || typ != want || xid != first {
			return false
		}
	}
	return true
}
