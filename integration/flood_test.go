package integration

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// Floods: a guest that opens flows without end, or a daemon with few
// descriptors, must leave everyone else working (issue 16, item 4). Each
// test checks, while the flood goes on, that a transfer opened before it,
// a -t forward, DNS through --dns-forward and ping still work, that memory
// stays bounded, and that afterwards the daemon is back to its baseline of
// descriptors and goroutines.

// Ports and addresses of the flood tests.
const (
	floodFwdHost  = 18950 // -t floodFwdHost:floodFwdGuest
	floodFwdGuest = 28950
	floodClient   = "198.51.100.9"       // a host address that connects to the -t port
	floodDNS      = "169.254.1.1"        // --dns-forward
	blackholeDst  = "203.0.113.7:80"     // behind the upstream namespace, which drops it
	floodNameTest = "flood.test.example" // what dnsmasq answers
	floodNameAddr = "192.0.2.78"
)

// floodHost prepares a host namespace for the flood tests: a black hole
// (a SYN there is neither answered nor refused) and dnsmasq on
// 127.0.0.1:53 for --dns-forward.
func floodHost(t *testing.T) Netns {
	t.Helper()
	needTool(t, "dig", "dnsmasq", "ping")
	h := HostNetns(t)
	// The black hole: the default route leads to the upstream namespace,
	// which does not forward, and a router that does not forward drops
	// what is not for it without an ICMP error.
	var err error
	InNetns(t, h, func() {
		var c net.Conn
		if c, err = net.DialTimeout("tcp4", blackholeDst, time.Second); err == nil {
			c.Close()
		}
	})
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("a connect to the black hole %s: %v, want no answer at all", blackholeDst, err)
	}
	h.Start(t, "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--listen-address=127.0.0.1",
		"--port=53", "--bind-interfaces", "--pid-file=", "--user=root", "--address=/"+floodNameTest+"/"+floodNameAddr)
	if !Eventually(5*time.Second, func() bool {
		out, _ := h.Try("dig", "+short", "+time=1", "+tries=1", "@127.0.0.1", floodNameTest)
		return strings.TrimSpace(out) == floodNameAddr
	}) {
		t.Fatal("dnsmasq did not come up")
	}
	return h
}

// floodArgs are gopasta's options for the flood tests: short UDP and ICMP
// timeouts, so that the flows of the checks are gone when the baseline is
// compared.
var floodArgs = []string{"--config-net", "-t", fmt.Sprintf("%d:%d", floodFwdHost, floodFwdGuest),
	"-u", "none", "-T", "none", "-U", "none", "--dns-forward", floodDNS, "--dns-host", "127.0.0.1",
	"--udp-timeout", "1", "--icmp-timeout", "1"}

// bystanders are the users a flood must not disturb.
type bystanders struct {
	gp   *Gopasta
	c, s *net.TCPConn // a connection opened before the flood: guest, host end
	seed uint64
}

func newBystanders(t *testing.T, gp *Gopasta) *bystanders {
	t.Helper()
	// Added only now: --config-net would give the guest this address too.
	gp.Host.Exec(t, "ip", "addr", "add", floodClient+"/24", "dev", HostIf)
	ServeInfo(ListenTCPIn(t, gp.Guest, "tcp4", fmt.Sprintf("0.0.0.0:%d", floodFwdGuest)))
	l := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	c := mustDial(t, gp.Guest, "tcp4", hostPort(HostGW4, lport(l)))
	return &bystanders{gp: gp, c: c, s: acceptOne(t, l)}
}

// check runs every bystander once and reports what failed.
func (b *bystanders) check(t *testing.T) {
	t.Helper()
	// The transfer opened before: 4 MiB each way, by hash.
	for _, dir := range []struct {
		name string
		w, r *net.TCPConn
	}{{"guest->host", b.c, b.s}, {"host->guest", b.s, b.c}} {
		b.seed++
		if err := exchangeOn(dir.w, dir.r, 4<<20, b.seed); err != nil {
			t.Errorf("existing transfer %s: %v", dir.name, err)
		}
	}
	// A new connection to the -t forward, from a host address.
	if err := askFrom(t, b.gp.Host, floodClient, hostPort(HostAddr4, floodFwdHost)); err != nil {
		t.Errorf("-t forward: %v", err)
	}
	// DNS through --dns-forward, a new flow (dig picks a new port).
	out, err := b.gp.Guest.Try("dig", "+short", "+time=2", "+tries=2", "@"+floodDNS, floodNameTest)
	if err != nil || strings.TrimSpace(out) != floodNameAddr {
		t.Errorf("DNS: %v %q", err, out)
	}
	// Ping, a new flow.
	if out, err := b.gp.Guest.Try("ping", "-c", "1", "-W", "3", HostGW4); err != nil {
		t.Errorf("ping: %v\n%s", err, out)
	}
}

// exchangeOn writes n pseudo-random bytes on w and checks, by hash, that
// exactly those arrive on r.
func exchangeOn(w, r *net.TCPConn, n int64, seed uint64) error {
	type res struct {
		sum [32]byte
		err error
	}
	got := make(chan res, 1)
	_ = r.SetReadDeadline(time.Now().Add(20 * time.Second))
	go func() {
		h := sha256.New()
		_, err := io.CopyN(h, r, n)
		got <- res{[32]byte(h.Sum(nil)), err}
	}()
	_ = w.SetWriteDeadline(time.Now().Add(20 * time.Second))
	want, err := stream(w, n, seed)
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	g := <-got
	switch {
	case g.err != nil:
		return fmt.Errorf("read: %w", g.err)
	case g.sum != want:
		return errors.New("bytes differ")
	}
	return nil
}

// askFrom connects from ns, from address local, to a ServeInfo server at
// addr and reads its line.
func askFrom(t *testing.T, ns Netns, local, addr string) error {
	c, err := DialTCPIn(t, ns, "tcp4", local, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.Contains(line, local+":") {
		return fmt.Errorf("the guest saw %q, not a client at %s", strings.TrimSpace(line), local)
	}
	return nil
}

// usage is what the daemon holds at one moment.
type usage struct {
	fds, goroutines int
	rssKiB          int
	st              map[string]int
}

func (u usage) String() string {
	return fmt.Sprintf("%d fds, %d goroutines, RSS %d KiB, %d TCP flows, %d connecting", u.fds, u.goroutines, u.rssKiB,
		u.st["tcp_flows"], u.st["tcp_connecting"])
}

func usageOf(t *testing.T, gp *Gopasta) usage {
	t.Helper()
	st := statsOf(t, gp)
	return usage{fds: countFDs(gp.PID()), goroutines: st["goroutines"], rssKiB: rssKiB(gp.PID()), st: st}
}

// rssKiB is the resident set size of pid.
func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}

// settle waits until the daemon holds no more than base (the flows of the
// checks are gone, and every flow of the flood) and returns what it holds.
func settle(t *testing.T, gp *Gopasta, base usage, d time.Duration) usage {
	t.Helper()
	var u usage
	ok := Eventually(d, func() bool {
		u = usageOf(t, gp)
		return u.fds <= base.fds && u.goroutines <= base.goroutines && u.st["tcp_flows"] <= base.st["tcp_flows"] &&
			u.st["tcp_connecting"] == 0 && u.st["udp_flows"] == 0 && u.st["icmp_flows"] == 0
	})
	if !ok {
		t.Errorf("not back to the baseline after %v: %v; baseline %v", d, u, base)
	}
	return u
}

// rawTap sends frames into the guest's tap from the guest's side, as a
// process in the guest with CAP_NET_RAW would: an AF_PACKET socket bound
// to the tap, with the guest's own MAC and address, so that gopasta sees
// nothing but a guest sending.
type rawTap struct {
	fd  int
	mac [6]byte
	src netip.Addr
}

func openRawTap(t *testing.T, g Netns) *rawTap {
	t.Helper()
	tap := guestTap(t, g)
	var ifi *net.Interface
	var fd int
	var err error
	InNetns(t, g, func() {
		if ifi, err = net.InterfaceByName(tap); err != nil {
			return
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	})
	if err != nil {
		t.Fatalf("packet socket on %s: %v", tap, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		t.Fatal(err)
	}
	r := &rawTap{fd: fd, src: netip.MustParseAddr(HostAddr4)}
	copy(r.mac[:], ifi.HardwareAddr)
	return r
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// syn sends a SYN from the guest's address and port sport to dst.
func (r *rawTap) syn(dst netip.AddrPort, sport uint16) error {
	l4 := wiretest.TCP(sport, dst.Port(), uint32(sport)<<16, 0, wire.TCPSyn, nil)
	_, err := unix.Write(r.fd, wiretest.IPFrom(r.mac, wiretest.OurMAC, r.src, dst.Addr(), wire.ProtoTCP, l4))
	return err
}

// countRSTs counts, until stop is closed, the resets gopasta sends from
// far to the guest, on the raw socket.
func (r *rawTap) countRSTs(far netip.AddrPort, stop <-chan struct{}, n *atomic.Int64, wg *sync.WaitGroup) {
	defer wg.Done()
	_ = unix.SetsockoptTimeval(r.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	buf := make([]byte, 2048)
	var p wire.Parsed
	for {
		select {
		case <-stop:
			return
		default:
		}
		m, _, err := unix.Recvfrom(r.fd, buf, 0)
		if err != nil || wire.ParseFrame(buf[:m], &p) != nil {
			continue
		}
		if p.Proto == wire.ProtoTCP && p.Src == far.Addr() && p.SrcPort == far.Port() && p.TCPFlags&wire.TCPRst != 0 {
			n.Add(1)
		}
	}
}

// TestFloodSYNBlackhole: the guest sends SYNs as fast as it can towards a
// host that never answers. Pending connects stay under their cap, every
// SYN over it is reset at once, the rest are reset at the connect
// deadline, and meanwhile everything else works.
func TestFloodSYNBlackhole(t *testing.T) {
	h := floodHost(t)
	gp := LaunchGopastaIn(t, h, floodArgs...)
	b := newBystanders(t, gp)
	b.check(t) // lazily created things exist, and the check flows expire
	time.Sleep(2500 * time.Millisecond)
	base := usageOf(t, gp)
	limit := base.st["tcp_connect_limit"]
	if limit == 0 {
		t.Errorf("no tcp_connect_limit in the statistics")
		limit = 1024
	}

	r := openRawTap(t, gp.Guest)
	dst := netip.MustParseAddrPort(blackholeDst)
	stop := make(chan struct{})
	var rsts atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go r.countRSTs(dst, stop, &rsts, &wg)
	const burst = 4000
	for i := range burst {
		if err := r.syn(dst, uint16(10000+i)); err != nil {
			t.Fatalf("raw SYN: %v", err)
		}
		if i%200 == 199 {
			time.Sleep(5 * time.Millisecond) // the tap's queue holds 1000
		}
	}
	// Then a steady 2000 SYNs a second while the bystanders run.
	var sent atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			for j := range 20 {
				if r.syn(dst, uint16(20000+(i*20+j)%30000)) == nil {
					sent.Add(1)
				}
			}
		}
	}()
	// The checks, over and over for a few seconds of flood.
	for start := time.Now(); time.Since(start) < 3*time.Second; {
		b.check(t)
	}
	during := usageOf(t, gp)
	close(stop)
	wg.Wait()

	refused := during.st["tcp_connect_refused"]
	t.Logf("baseline: %v", base)
	t.Logf("during:   %v; %d + %d SYNs sent, %d refused (%d RSTs seen), cap %d", during, burst, sent.Load(), refused, rsts.Load(), limit)
	if c := during.st["tcp_connecting"]; c > limit || c < limit/2 {
		t.Errorf("%d connects pending, cap %d", c, limit)
	}
	if refused < burst-limit-100 || rsts.Load() < int64(burst-limit-100) {
		t.Errorf("%d SYNs refused, %d resets seen; want at least %d", refused, rsts.Load(), burst-limit-100)
	}
	if during.fds > base.fds+limit+64 {
		t.Errorf("%d descriptors during the flood, baseline %d, cap %d", during.fds, base.fds, limit)
	}
	if during.rssKiB > base.rssKiB+128<<10 {
		t.Errorf("RSS grew from %d to %d KiB", base.rssKiB, during.rssKiB)
	}
	if strings.Contains(gp.Log(), "too many open files") {
		t.Error("the daemon ran out of descriptors")
	}
	after := settle(t, gp, base, 30*time.Second)
	t.Logf("after:    %v; %d connect timeouts", after, after.st["tcp_connect_timeouts"])
	if n := after.st["tcp_connect_timeouts"]; n < limit/2 {
		t.Errorf("%d connects timed out, want the pending ones (about %d)", n, limit)
	}
	b.check(t)
}

// TestFloodLowNofile: a daemon started with few descriptors (prlimit
// --nofile) while the guest opens many more connections than they allow.
// Those over the guest's share of the budget are reset at once, the
// daemon never runs out of descriptors, and everything else works.
func TestFloodLowNofile(t *testing.T) {
	needTool(t, "prlimit")
	h := floodHost(t)
	const nofile = 256
	gp := LaunchGopastaWrapped(t, h, []string{"prlimit", fmt.Sprintf("--nofile=%d:%d", nofile, nofile)}, floodArgs...)
	b := newBystanders(t, gp)
	b.check(t)
	time.Sleep(2500 * time.Millisecond)
	base := usageOf(t, gp)
	budget := base.st["fd_budget"]
	if budget == 0 || budget >= nofile {
		t.Errorf("descriptor budget %d under a limit of %d", budget, nofile)
		budget = nofile - 64
	}

	srv := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	var held sync.Map
	ServeEach(srv, func(c net.Conn) { io.Copy(io.Discard, c) })
	const flood = 2 * nofile
	var ok, refusedN atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range flood {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := DialTCPIn(t, gp.Guest, "tcp4", "", hostPort(HostGW4, lport(srv)))
			switch {
			case err == nil:
				held.Store(i, c)
				ok.Add(1)
			case errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET):
				refusedN.Add(1)
			default:
				t.Errorf("connection %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	b.check(t)
	during := usageOf(t, gp)
	t.Logf("baseline: %v; budget %d of %d descriptors", base, budget, nofile)
	t.Logf("during:   %v; %d of %d connections opened, %d refused, %d refusals counted", during, ok.Load(), flood,
		refusedN.Load(), during.st["fd_budget_refused"])
	if refusedN.Load() == 0 || during.st["fd_budget_refused"] == 0 {
		t.Error("no connection refused: the budget did not apply")
	}
	if share := int64(budget - budget/4); ok.Load() > share || ok.Load() < share/2 {
		t.Errorf("%d connections held, the guest's TCP share is %d", ok.Load(), share)
	}
	if during.fds >= nofile {
		t.Errorf("%d descriptors open, limit %d", during.fds, nofile)
	}
	if during.rssKiB > base.rssKiB+64<<10 {
		t.Errorf("RSS grew from %d to %d KiB", base.rssKiB, during.rssKiB)
	}
	// Data still flows on the flood's connections that were accepted.
	held.Range(func(_, v any) bool {
		if _, err := v.(*net.TCPConn).Write([]byte("still here")); err != nil {
			t.Errorf("a held connection: %v", err)
		}
		return true
	})
	held.Range(func(k, v any) bool {
		v.(*net.TCPConn).Close()
		return true
	})
	if strings.Contains(gp.Log(), "too many open files") {
		t.Error("the daemon ran out of descriptors")
	}
	after := settle(t, gp, base, 15*time.Second)
	t.Logf("after:    %v", after)
	b.check(t)
	// The budget is back: as many connections as before fit again.
	c, err := DialTCPIn(t, gp.Guest, "tcp4", "", hostPort(HostGW4, lport(srv)))
	if err != nil {
		t.Fatalf("a connection after the flood: %v", err)
	}
	c.Close()
}
