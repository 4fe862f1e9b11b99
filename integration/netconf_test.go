package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ipLink is the part of `ip -j addr` the tests look at.
type ipLink struct {
	Ifname   string `json:"ifname"`
	MTU      int    `json:"mtu"`
	Address  string `json:"address"`
	Flags    []string
	AddrInfo []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		Prefixlen int    `json:"prefixlen"`
		Scope     string `json:"scope"`
		Tentative bool   `json:"tentative"`
	} `json:"addr_info"`
	TxQLen int `json:"txqlen"`
}

// globalAddrs returns "addr/len" of the link's global addresses, sorted,
// with " tentative" appended where DAD is still running.
func (l ipLink) globalAddrs() []string {
	var out []string
	for _, a := range l.AddrInfo {
		if a.Scope != "global" {
			continue
		}
		s := fmt.Sprintf("%s/%d", a.Local, a.Prefixlen)
		if a.Tentative {
			s += " tentative"
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func parseLinks(t *testing.T, js string) map[string]ipLink {
	t.Helper()
	var links []ipLink
	if err := json.Unmarshal([]byte(js), &links); err != nil {
		t.Fatalf("ip -j addr: %v\n%s", err, js)
	}
	m := map[string]ipLink{}
	for _, l := range links {
		m[l.Ifname] = l
	}
	return m
}

// guestLinks reads the guest namespace's links and addresses.
func guestLinks(t *testing.T, g Netns) map[string]ipLink {
	return parseLinks(t, g.Exec(t, "ip", "-j", "addr"))
}

// guestRoutes returns the non-kernel routes of a family as
// "dst via gw dev if", sorted.
func guestRoutes(t *testing.T, g Netns, family string) []string {
	t.Helper()
	var routes []struct {
		Dst      string `json:"dst"`
		Gateway  string `json:"gateway"`
		Dev      string `json:"dev"`
		Protocol string `json:"protocol"`
	}
	js := g.Exec(t, "ip", "-j", family, "route")
	if err := json.Unmarshal([]byte(js), &routes); err != nil {
		t.Fatalf("ip -j route: %v\n%s", err, js)
	}
	var out []string
	for _, r := range routes {
		if r.Protocol == "kernel" {
			continue
		}
		out = append(out, fmt.Sprintf("%s via %s dev %s", r.Dst, r.Gateway, r.Dev))
	}
	slices.Sort(out)
	return out
}

// TestConfigNetCopiesHost: as podman runs it, gopasta --config-net must have
// finished configuring the namespace when the front process exits: podman
// reads the addresses back at once, so nothing here waits.
func TestConfigNetCopiesHost(t *testing.T) {
	gp := StartGopasta(t)
	links := guestLinks(t, gp.Guest)
	tap, ok := links[HostIf]
	if !ok {
		t.Fatalf("no %s in the guest: %v", HostIf, links)
	}
	if !slices.Contains(tap.Flags, "UP") || !slices.Contains(links["lo"].Flags, "UP") {
		t.Errorf("%s flags %v, lo flags %v: both must be up", HostIf, tap.Flags, links["lo"].Flags)
	}
	if want := []string{HostAddr4 + "/24", HostAddr6 + "/64"}; !slices.Equal(tap.globalAddrs(), want) {
		t.Errorf("addresses %v, want %v (IPv6 without DAD, never tentative)", tap.globalAddrs(), want)
	}
	if tap.MTU != 65520 {
		t.Errorf("MTU %d, want 65520", tap.MTU)
	}
	if tap.TxQLen != 10000 {
		t.Errorf("txqueuelen %d, want 10000", tap.TxQLen)
	}
	if got, want := guestRoutes(t, gp.Guest, "-4"), []string{"default via " + HostGW4 + " dev " + HostIf}; !slices.Equal(got, want) {
		t.Errorf("IPv4 routes %v, want %v", got, want)
	}
	if got, want := guestRoutes(t, gp.Guest, "-6"), []string{"default via " + HostGW6 + " dev " + HostIf}; !slices.Equal(got, want) {
		t.Errorf("IPv6 routes %v, want %v", got, want)
	}
}

// TestConfigNetOverrides: -a/-n/-g/-I/-m/--ns-mac-addr replace what would
// be copied from the host.
func TestConfigNetOverrides(t *testing.T) {
	gp := StartGopasta(t, "-a", "10.0.2.15", "-n", "255.255.255.0", "-g", "10.0.2.2",
		"-a", "fd00::15", "-g", "fd00::2",
		"-I", "eth7", "-m", "1500", "--ns-mac-addr", "02:aa:bb:cc:dd:ee")
	links := guestLinks(t, gp.Guest)
	tap, ok := links["eth7"]
	if !ok {
		t.Fatalf("no eth7 in the guest: %v", links)
	}
	if _, ok := links[HostIf]; ok {
		t.Errorf("%s exists besides eth7", HostIf)
	}
	if want := []string{"10.0.2.15/24", "fd00::15/64"}; !slices.Equal(tap.globalAddrs(), want) {
		t.Errorf("addresses %v, want %v", tap.globalAddrs(), want)
	}
	if tap.MTU != 1500 || tap.Address != "02:aa:bb:cc:dd:ee" {
		t.Errorf("MTU %d MAC %s, want 1500 02:aa:bb:cc:dd:ee", tap.MTU, tap.Address)
	}
	if got := guestRoutes(t, gp.Guest, "-4"); !slices.Equal(got, []string{"default via 10.0.2.2 dev eth7"}) {
		t.Errorf("IPv4 routes %v", got)
	}
	if got := guestRoutes(t, gp.Guest, "-6"); !slices.Equal(got, []string{"default via fd00::2 dev eth7"}) {
		t.Errorf("IPv6 routes %v", got)
	}
}

// TestLocalModeWithoutDefaultRoute: a host without a default route is not
// an error: 169.254.2.1/16 via 169.254.2.2, a warning on stderr, exit 0.
func TestLocalModeWithoutDefaultRoute(t *testing.T) {
	h := NewNetns(t, "h")
	g := NewNetns(t, "g")
	pid := t.TempDir() + "/pid"
	out, err := h.Try(gopastaBin, "--config-net", "--netns", g.Path(), "-P", pid)
	t.Cleanup(func() { killPIDFile(pid) })
	if err != nil {
		t.Fatalf("gopasta: %v\n%s", err, out)
	}
	if !strings.Contains(out, "local mode") {
		t.Errorf("no local-mode warning in the output:\n%s", out)
	}
	links := guestLinks(t, g)
	tap, ok := links["tap0"]
	if !ok {
		t.Fatalf("no tap0 (no host interface to name it after): %v", links)
	}
	if got := tap.globalAddrs(); !slices.Equal(got, []string{"169.254.2.1/16"}) {
		t.Errorf("addresses %v, want [169.254.2.1/16]", got)
	}
	if got := guestRoutes(t, g, "-4"); !slices.Equal(got, []string{"default via 169.254.2.2 dev tap0"}) {
		t.Errorf("IPv4 routes %v", got)
	}
}

// TestARPThroughTap: the guest resolves its gateway's MAC; gopasta's
// dispatcher answers ARP for it.
func TestARPThroughTap(t *testing.T) {
	needTool(t, "arping")
	gp := StartGopasta(t)
	out, err := gp.Guest.Try("arping", "-c", "2", "-w", "2", "-I", HostIf, HostGW4)
	if err != nil {
		t.Fatalf("arping %s: %v\n%s", HostGW4, err, out)
	}
	if !strings.Contains(strings.ToLower(out), "9a:55:9a:55:9a:55") {
		t.Errorf("ARP replies not from gopasta's MAC:\n%s", out)
	}
}

// TestCommandMode: without PID or --netns gopasta makes a namespace, sets
// it up like the host and runs the command there.
func TestCommandMode(t *testing.T) {
	h := HostNetns(t)
	cmd := h.Command(t.Context(), gopastaBin, "-q", "--", "ip", "-j", "addr")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	outb, err := cmd.Output()
	out := string(outb)
	if err != nil {
		t.Fatalf("gopasta -- ip -j addr: %v\n%s%s", err, out, stderr.String())
	}
	links := parseLinks(t, out)
	tap, ok := links[HostIf]
	if !ok {
		t.Fatalf("no %s in the command's namespace: %v", HostIf, out)
	}
	if want := []string{HostAddr4 + "/24", HostAddr6 + "/64"}; !slices.Equal(tap.globalAddrs(), want) {
		t.Errorf("addresses %v, want %v", tap.globalAddrs(), want)
	}
	if len(links) != 2 {
		t.Errorf("the command's namespace has more than lo and the tap: %v", links)
	}
}

// TestCommandModeUnprivileged: the same as an ordinary user, through a user
// namespace of gopasta's own.
func TestCommandModeUnprivileged(t *testing.T) {
	needTool(t, "runuser")
	h := HostNetns(t)
	if out, err := h.Try("runuser", "-u", "nobody", "--", "unshare", "-U", "-r", "-n", "true"); err != nil {
		t.Skipf("unprivileged user namespaces do not work here: %v %s", err, out)
	}
	cmd := h.Command(t.Context(), "runuser", "-u", "nobody", "--", gopastaBin, "-q", "--", "sh", "-c", "id -u; ip -j addr")
	cmd.Dir = "/"
	var stderr strings.Builder
	cmd.Stderr = &stderr
	outb, err := cmd.Output()
	out := string(outb)
	if err != nil {
		t.Fatalf("gopasta as nobody: %v\n%s%s", err, out, stderr.String())
	}
	uid, js, _ := strings.Cut(out, "\n")
	if uid != "0" {
		t.Errorf("command runs as uid %q, want 0 (root in its user namespace)", uid)
	}
	tap, ok := parseLinks(t, js)[HostIf]
	if !ok {
		t.Fatalf("no %s in the command's namespace:\n%s", HostIf, js)
	}
	if want := []string{HostAddr4 + "/24", HostAddr6 + "/64"}; !slices.Equal(tap.globalAddrs(), want) {
		t.Errorf("addresses %v, want %v", tap.globalAddrs(), want)
	}
	// Exit status propagation works unprivileged too.
	code := exitCode(h.Command(t.Context(), "runuser", "-u", "nobody", "--", gopastaBin, "-q", "--", "sh", "-c", "exit 5").Run())
	if code != 5 {
		t.Errorf("exit status %d, want 5", code)
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// killPIDFile stops a daemon by its pid file, for cleanups: SIGTERM, then
// SIGKILL if it is still there after a second.
func killPIDFile(path string) {
	if pid := (&Gopasta{PIDFile: path}).PID(); pid > 0 && !processGone(pid) {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		if _, ok := waitGone(pid, time.Second); !ok {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_ = os.Remove(path)
}

// TestSingleFamily: -4 and -6 (podman: pasta:-4, the survey's workaround
// for hosts whose IPv6 routes pasta could not copy) give the guest one
// family only, and TCP works over it (to a host service through the
// gateway); the other family has no route.
func TestSingleFamily(t *testing.T) {
	for _, c := range []struct {
		opt, network, listen, gw, otherFamily string
		want                                  []string
	}{
		{"-4", "tcp4", "127.0.0.1:0", HostGW4, "-6", []string{HostAddr4 + "/24"}},
		{"-6", "tcp6", "[::1]:0", HostGW6, "-4", []string{HostAddr6 + "/64"}},
	} {
		t.Run(c.opt, func(t *testing.T) {
			gp := StartGopasta(t, c.opt)
			tap := guestLinks(t, gp.Guest)[HostIf]
			if got := tap.globalAddrs(); !slices.Equal(got, c.want) {
				t.Errorf("addresses %v, want %v", got, c.want)
			}
			if got := guestRoutes(t, gp.Guest, c.otherFamily); len(got) != 0 {
				t.Errorf("routes of the other family: %v", got)
			}
			bulkBothWays(t, gp, c.network, c.listen, c.gw, 4<<20)
		})
	}
}

// TestConfigNetIPv6OutsideGatewayPrefix: an IPv6 -a outside the prefix of
// the host's gateway (podman's --net=pasta:-a,2001:db8::1), or a -g outside
// the guest's prefix, still configures the namespace: the default route is
// on-link, as for IPv4, and traffic takes it. Before, setup failed with
// "add default route via ...: no route to host".
func TestConfigNetIPv6OutsideGatewayPrefix(t *testing.T) {
	for _, c := range []struct {
		name, addr, gw string
		args           []string
	}{
		{"-a", "2001:db8::1/64", HostGW6, []string{"-a", "2001:db8::1"}},
		{"-g", HostAddr6 + "/64", "2001:db8:2::1", []string{"-g", "2001:db8:2::1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			gp := StartGopasta(t, append([]string{"-6"}, c.args...)...)
			tap := guestLinks(t, gp.Guest)[HostIf]
			if got := tap.globalAddrs(); !slices.Equal(got, []string{c.addr}) {
				t.Errorf("addresses %v, want [%s]", got, c.addr)
			}
			if got, want := guestRoutes(t, gp.Guest, "-6"), []string{"default via " + c.gw + " dev " + HostIf}; !slices.Equal(got, want) {
				t.Errorf("IPv6 routes %v, want %v", got, want)
			}
			// The route leads somewhere: a host service through it.
			l := ListenTCPIn(t, gp.Host, "tcp6", "["+HostAddr6+"]:0")
			ServeInfo(l)
			dst := hostPort(HostAddr6, lport(l))
			if c.name == "-g" {
				// The guest has the host's address: the host is
				// reached through the gateway, its loopback.
				l = ListenTCPIn(t, gp.Host, "tcp6", "[::1]:0")
				ServeInfo(l)
				dst = hostPort(c.gw, lport(l))
			}
			if _, _, err := askInfo(t, gp.Guest, "tcp6", dst); err != nil {
				t.Errorf("guest to %s: %v", dst, err)
			}
		})
	}
}

// TestCommandModeHostname: in command mode the command runs in a UTS
// namespace of its own, as with pasta: its hostname is -H's, else
// "pasta-" and the host's, and the host's own hostname does not change:
// -H is more than the DHCP host name.
func TestCommandModeHostname(t *testing.T) {
	h := HostNetns(t)
	hostName, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	want := "pasta-" + hostName
	if len(want) > 64 {
		want = want[:64]
	}
	type run struct {
		name string
		argv []string
		want string
	}
	runs := []run{
		{"-H", []string{gopastaBin, "-q", "-H", "box.example", "--", "hostname"}, "box.example"},
		{"default", []string{gopastaBin, "-q", "--", "hostname"}, want},
	}
	if _, err := exec.LookPath("runuser"); err == nil {
		if out, err := h.Try("runuser", "-u", "nobody", "--", "unshare", "-U", "-r", "-n", "-u", "true"); err == nil {
			runs = append(runs, run{"unprivileged", []string{"runuser", "-u", "nobody", "--", gopastaBin, "-q", "-H", "nobody-box", "--", "hostname"}, "nobody-box"})
		} else {
			t.Logf("no unprivileged case: %v %s", err, out)
		}
	}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			cmd := h.Command(t.Context(), r.argv...)
			cmd.Dir = "/"
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("%v: %v\n%s", r.argv, err, stderr.String())
			}
			if got := strings.TrimSpace(string(out)); got != r.want {
				t.Errorf("hostname in the command's namespace %q, want %q", got, r.want)
			}
			if stderr.Len() > 0 {
				t.Errorf("stderr: %s", stderr.String())
			}
		})
	}
	if now, _ := os.Hostname(); now != hostName {
		t.Errorf("the host's hostname changed from %q to %q", hostName, now)
	}
}

// openTapIn opens a tap device (IFF_TAP|IFF_NO_PI) called name inside ns
// from this process, as a caller of pasta -F does.
func openTapIn(t *testing.T, ns Netns, name string) *os.File {
	t.Helper()
	var fd int
	var err error
	InNetns(t, ns, func() {
		if fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
			return
		}
		var ifr *unix.Ifreq
		if ifr, err = unix.NewIfreq(name); err == nil {
			ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
	})
	if err != nil {
		t.Fatalf("tap %s in %s: %v", name, ns.Name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	t.Cleanup(func() { f.Close() })
	return f
}

// TestPastaTapFD: -F in pasta mode takes a tap device the caller opened,
// as pasta does, instead of creating one: --config-net configures that
// interface and traffic flows through it. A descriptor that is not a tap
// is a one-line error, not accepted and ignored.
func TestPastaTapFD(t *testing.T) {
	h := HostNetns(t)
	g := NewNetns(t, "g")
	tap := openTapIn(t, g, "ftap0")
	dir := t.TempDir()
	pid, logf := filepath.Join(dir, "pid"), filepath.Join(dir, "log")
	t.Cleanup(func() { killPIDFile(pid) })
	cmd := h.Command(t.Context(), gopastaBin, "--config-net", "--netns", g.Path(), "-P", pid, "-l", logf,
		"-F", "3", "-t", "none", "-u", "none", "-T", "none", "-U", "none")
	cmd.ExtraFiles = []*os.File{tap}
	if out, err := cmd.CombinedOutput(); err != nil {
		b, _ := os.ReadFile(logf)
		t.Fatalf("gopasta -F 3: %v\n%s%s", err, out, b)
	}
	tap.Close() // the daemon has its own copy
	links := guestLinks(t, g)
	if _, ok := links[HostIf]; ok {
		t.Errorf("gopasta made a tap %s of its own", HostIf)
	}
	if got, want := links["ftap0"].globalAddrs(), []string{HostAddr4 + "/24", HostAddr6 + "/64"}; !slices.Equal(got, want) {
		t.Errorf("ftap0 addresses %v, want %v", got, want)
	}
	l := ListenTCPIn(t, h, "tcp4", "127.0.0.1:0")
	ServeInfo(l)
	if _, _, err := askInfo(t, g, "tcp4", hostPort(HostGW4, lport(l))); err != nil {
		t.Errorf("through the -F tap to the host: %v", err)
	}

	// Not a tap: a one-line error, exit status 1.
	null, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	cmd = h.Command(t.Context(), gopastaBin, "--config-net", "--netns", g.Path(), "-F", "3")
	cmd.ExtraFiles = []*os.File{null}
	out, err := cmd.CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "is not a tap device") || strings.Count(string(out), "\n") != 1 {
		t.Errorf("-F /dev/null: status %d, output %q", code, out)
	}
}
