package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The control socket (-c) against upstream's pesto, side by side with
// upstream pasta 2026: the same pesto commands must print the same text
// and have the same effect on both.

// upstreamTools returns upstream's pesto and pasta (2026) built by
// ../shared/bench/get-tools.sh, or skips.
func upstreamTools(t *testing.T) (pesto, pasta string) {
	t.Helper()
	pesto, pasta = os.Getenv("PESTO"), os.Getenv("PASTA_2026")
	if pesto == "" || pasta == "" {
		out, err := exec.Command("../../shared/bench/get-tools.sh").Output()
		if err != nil {
			out, err = exec.Command("../shared/bench/get-tools.sh").Output()
		}
		if err != nil {
			t.Skipf("get-tools.sh: %v", err)
		}
		for _, f := range strings.Fields(string(out)) {
			if v, ok := strings.CutPrefix(f, "PESTO="); ok {
				pesto = v
			}
			if v, ok := strings.CutPrefix(f, "PASTA_2026="); ok {
				pasta = v
			}
		}
	}
	for _, p := range []string{pesto, pasta} {
		if _, err := os.Stat(p); p == "" || err != nil {
			t.Skipf("upstream pesto/pasta not built (%q)", p)
		}
	}
	return pesto, pasta
}

// ctlDaemon is one of the two daemons under comparison.
type ctlDaemon struct {
	name  string
	h, g  Netns
	sock  string
	log   func() string
	pesto string
}

// run runs pesto with args against the daemon's socket and returns its
// output (the socket's path written SOCK) and exit status.
func (d *ctlDaemon) run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(d.pesto, append(args, d.sock)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("pesto: %v", err)
	}
	return strings.ReplaceAll(string(out), d.sock, "SOCK"), code
}

// startPasta2026 runs upstream pasta in h, attached to a new guest
// namespace, with a control socket.
func startPasta2026(t *testing.T, pasta string, h Netns, sock string, args ...string) *ctlDaemon {
	t.Helper()
	g := NewNetns(t, "g")
	dir := t.TempDir()
	pidf, logf := filepath.Join(dir, "pasta.pid"), filepath.Join(dir, "pasta.log")
	all := append([]string{pasta, "--config-net", "--runas", "0", "-c", sock, "--netns", g.Path(), "-P", pidf, "-l", logf}, args...)
	if out, err := h.Try(all...); err != nil {
		t.Fatalf("pasta: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		b, _ := os.ReadFile(pidf)
		var pid int
		fmt.Sscan(strings.TrimSpace(string(b)), &pid)
		if pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf)
			t.Logf("pasta log:\n%s", tail(string(b), 4000))
		}
	})
	return &ctlDaemon{name: "pasta", h: h, g: g, sock: sock, log: func() string { b, _ := os.ReadFile(logf); return string(b) }}
}

// echoIn serves an echo server in ns on addr.
func echoIn(t *testing.T, ns Netns, addr string) {
	l := ListenTCPIn(t, ns, "tcp4", addr)
	ServeEach(l, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// echoes says whether c still carries bytes both ways.
func echoes(c net.Conn, msg string) bool {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && line == msg+"\n"
}

// reaches says whether a connection from ns to addr gets a line from the
// server behind it, within 3 s.
func reaches(t *testing.T, ns Netns, addr string) bool {
	return Eventually(3*time.Second, func() bool {
		_, _, err := askInfo(t, ns, "tcp4", addr)
		return err == nil
	})
}

// refusedNow says whether connections from ns to addr fail (within 3 s).
func refusedNow(t *testing.T, ns Netns, addr string) bool {
	return Eventually(3*time.Second, func() bool {
		_, _, err := askInfo(t, ns, "tcp4", addr)
		return err != nil
	})
}

// TestPestoLikePasta runs one sequence of pesto commands against gopasta
// and upstream pasta 2026 in the same run: listings, outputs and exit
// statuses must be equal, and forwarded ports must work (and stop
// working) the same way on both, loopback clients spliced and others
// through the tap; a connection open through a rule that is deleted
// keeps carrying bytes; a port already bound is logged alike.
func TestPestoLikePasta(t *testing.T) {
	pesto, pasta := upstreamTools(t)
	dir := t.TempDir()
	start := []string{"-t", "18800", "-u", "none", "-T", "none", "-U", "none"}

	hg := HostNetns(t)
	sockG := filepath.Join(dir, "gopasta.sock")
	gp := LaunchGopastaIn(t, hg, append([]string{"--config-net", "-c", sockG}, start...)...)
	dg := &ctlDaemon{name: "gopasta", h: hg, g: gp.Guest, sock: sockG, log: gp.Log}
	dp := startPasta2026(t, pasta, HostNetns(t), filepath.Join(dir, "pasta.sock"), start...)
	ds := []*ctlDaemon{dg, dp}
	for _, d := range ds {
		d.pesto = pesto
		// Guest services: info servers and an echo server.
		for _, p := range []string{"18800", "18801", "28802", "18811", "18813"} {
			ServeInfo(ListenTCPIn(t, d.g, "tcp4", "0.0.0.0:"+p))
		}
		echoIn(t, d.g, "0.0.0.0:18804")
		ServeUDPEcho(ListenUDPIn(t, d.g, "udp4", ":18803"))
		ServeUDPEcho(ListenUDPIn(t, d.h, "udp4", "127.0.0.1:28806"))
		// Host services for -T.
		ServeInfo(ListenTCPIn(t, d.h, "tcp4", "127.0.0.1:18805"))
		ServeInfo(ListenTCPIn(t, d.h, "tcp4", "127.0.0.1:18831"))
	}

	same := func(step string, args ...string) {
		t.Helper()
		outG, codeG := dg.run(t, args...)
		outP, codeP := dp.run(t, args...)
		if outG != outP || codeG != codeP {
			t.Fatalf("%s: pesto %v differs:\ngopasta (%d):\n%s\npasta (%d):\n%s", step, args, codeG, outG, codeP, outP)
		}
		listG, _ := dg.run(t)
		listP, _ := dp.run(t)
		if listG != listP {
			t.Fatalf("%s: listings differ:\ngopasta:\n%s\npasta:\n%s", step, listG, listP)
		}
		t.Logf("%s: pesto %v\n%s%s", step, args, outG, listG)
	}
	each := func(what string, ok func(d *ctlDaemon) bool) {
		t.Helper()
		for _, d := range ds {
			if !ok(d) {
				t.Errorf("%s: not so with %s", what, d.name)
			}
		}
	}

	same("start")
	each("-t 18800 forwarded", func(d *ctlDaemon) bool { return reaches(t, d.h, "127.0.0.1:18800") })

	same("replace", "-t", "18801,18802:28802", "-t", "127.0.0.1/18804", "-u", "18803", "-T", "18805", "-U", "18806-18807:28806-28807")
	each("18800 no longer forwarded", func(d *ctlDaemon) bool { return refusedNow(t, d.h, "127.0.0.1:18800") })
	each("18801 spliced", func(d *ctlDaemon) bool { return reaches(t, d.h, "127.0.0.1:18801") })
	each("18802 through the tap to 28802", func(d *ctlDaemon) bool {
		var local string
		ok := Eventually(3*time.Second, func() bool {
			var err error
			local, _, err = askInfo(t, d.h, "tcp4", HostAddr4+":18802")
			return err == nil
		})
		return ok && portOf(local) == "28802"
	})
	each("-T 18805 to the host", func(d *ctlDaemon) bool { return reaches(t, d.g, "127.0.0.1:18805") })
	udps := map[*ctlDaemon]*net.UDPConn{}
	each("-u 18803 spliced", func(d *ctlDaemon) bool {
		udps[d] = DialUDPIn(t, d.h, "udp4", "127.0.0.1:18803")
		return Eventually(3*time.Second, func() bool { return udpPing(udps[d], "u") })
	})
	each("-U 18806 to the host's 28806", func(d *ctlDaemon) bool {
		c := DialUDPIn(t, d.g, "udp4", "127.0.0.1:18806")
		return Eventually(3*time.Second, func() bool { return udpPing(c, "U") })
	})
	conns := map[*ctlDaemon]net.Conn{}
	for _, d := range ds {
		c, err := DialTCPIn(t, d.h, "tcp4", "", "127.0.0.1:18804")
		if err != nil || !echoes(c, "before") {
			t.Fatalf("%s: echo through 18804: %v", d.name, err)
		}
		t.Cleanup(func() { c.Close() })
		conns[d] = c
	}

	same("add and delete", "-A", "-t", "18810-18815,~18812", "-D", "-t", "18801", "-A", "-u", "[::1]/18816")
	each("18801 deleted", func(d *ctlDaemon) bool { return refusedNow(t, d.h, "127.0.0.1:18801") })
	each("18811 added", func(d *ctlDaemon) bool { return reaches(t, d.h, "127.0.0.1:18811") })
	each("18812 excluded", func(d *ctlDaemon) bool { return refusedNow(t, d.h, "127.0.0.1:18812") })
	each("18813 through the tap", func(d *ctlDaemon) bool { return reaches(t, d.h, HostAddr4+":18813") })
	// pasta closes and reopens every listener on a change; gopasta keeps
	// the ones the new tables still want, and the UDP flows on them.
	if !udpPing(udps[dg], "still") {
		t.Error("gopasta: the UDP flow through an unchanged -u rule broke")
	}

	same("delete the echo rule", "-D", "-t", "127.0.0.1/18804")
	each("18804 deleted", func(d *ctlDaemon) bool { return refusedNow(t, d.h, "127.0.0.1:18804") })
	each("the open connection survives", func(d *ctlDaemon) bool { return echoes(conns[d], "after") })

	// A port some other program holds.
	for _, d := range ds {
		ListenTCPIn(t, d.h, "tcp4", "127.0.0.1:18820")
	}
	same("busy port", "-A", "-t", "127.0.0.1/18820")
	want := "Listen failed for HOST TCP port 127.0.0.1/18820: Address already in use"
	each("bind failure logged as pasta logs it", func(d *ctlDaemon) bool {
		return Eventually(3*time.Second, func() bool { return strings.Contains(d.log(), want) })
	})

	same("auto", "-T", "18830-18832,auto")
	each("-T auto follows a host listener", func(d *ctlDaemon) bool {
		return Eventually(4*time.Second, func() bool { _, _, err := askInfo(t, d.g, "tcp4", "127.0.0.1:18831"); return err == nil })
	})
	each("-T auto leaves an unbound port", func(d *ctlDaemon) bool { return refusedNow(t, d.g, "127.0.0.1:18832") })

	same("clear", "-C", "HOST")
	each("18802 cleared", func(d *ctlDaemon) bool { return refusedNow(t, d.h, HostAddr4+":18802") })
	each("18811 cleared", func(d *ctlDaemon) bool { return refusedNow(t, d.h, "127.0.0.1:18811") })

	same("bad spec", "-t", "80-70")
	same("bad table", "-C", "TAP")
	same("conflict", "-A", "-T", "18830")
	same("all", "-u", "~1-18000,~18100-65535")
	if !gp.Alive() {
		t.Fatal("gopasta died")
	}
}

// TestSIGHUPReload: SIGHUP re-reads the --config file and applies its
// changed forwarding rules and log level, logging what changed; an open
// connection through a rule that stays, or goes, keeps working; a file
// that does not load changes nothing.
func TestSIGHUPReload(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "gopasta.toml")
	write := func(s string) {
		if err := os.WriteFile(cfg, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("tcp-ports = [\"18840\"]\nudp-ports = \"none\"\ntcp-ns = \"none\"\nudp-ns = \"none\"\n")
	gp := StartGopasta(t, "--config", cfg)
	echoIn(t, gp.Guest, "0.0.0.0:18840")
	ServeInfo(ListenTCPIn(t, gp.Guest, "tcp4", "0.0.0.0:18841"))
	c, err := DialTCPIn(t, gp.Host, "tcp4", "", "127.0.0.1:18840")
	if err != nil || !echoes(c, "one") {
		t.Fatalf("echo through 18840: %v", err)
	}
	defer c.Close()
	hup := func() {
		t.Helper()
		if err := syscall.Kill(gp.PID(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	logged := func(s string) bool {
		return Eventually(3*time.Second, func() bool { return strings.Contains(gp.Log(), s) })
	}

	write("debug = true\ntcp-ports = [\"18840\", \"18841\"]\nudp-ports = \"none\"\ntcp-ns = \"none\"\nudp-ns = \"none\"\n")
	hup()
	if !logged("HOST: rule added: TCP [*]:18841  =>  18841") || !logged("log level debug (was info)") {
		t.Fatalf("reload not logged:\n%s", gp.Log())
	}
	if !reaches(t, gp.Host, "127.0.0.1:18841") {
		t.Fatal("added rule not in force")
	}
	if !echoes(c, "two") {
		t.Fatal("connection through an unchanged rule broken by the reload")
	}

	write("tcp-ports = [\"80-70\"]\n")
	hup()
	if !logged("running configuration kept") {
		t.Fatalf("bad file not refused:\n%s", gp.Log())
	}
	c2, err := DialTCPIn(t, gp.Host, "tcp4", "", "127.0.0.1:18840")
	if err != nil || !echoes(c2, "new") || !reaches(t, gp.Host, "127.0.0.1:18841") {
		t.Fatalf("a refused file changed the rules: %v", err)
	}
	c2.Close()

	write("tcp-ports = [\"18841\"]\nudp-ports = \"none\"\ntcp-ns = \"none\"\nudp-ns = \"none\"\n")
	hup()
	if !logged("HOST: rule removed: TCP [*]:18840  =>  18840") {
		t.Fatalf("removal not logged:\n%s", gp.Log())
	}
	if !Eventually(3*time.Second, func() bool {
		c, err := DialTCPIn(t, gp.Host, "tcp4", "", "127.0.0.1:18840")
		if err == nil {
			defer c.Close()
			return !echoes(c, "gone?")
		}
		return true
	}) {
		t.Fatal("removed rule still in force")
	}
	if !echoes(c, "three") {
		t.Fatal("open connection broken by the removal of its rule")
	}
	if !gp.Alive() {
		t.Fatal("daemon exited on SIGHUP")
	}
}

// TestNotifyReady: started by systemd (Type=notify), gopasta reports
// READY=1 once set up, with MAINPID naming the daemon.
func TestNotifyReady(t *testing.T) {
	h := HostNetns(t)
	g := NewNetns(t, "g")
	dir := t.TempDir()
	nsock := filepath.Join(dir, "notify")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: nsock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	pidf := filepath.Join(dir, "pid")
	cmd := exec.Command("ip", "netns", "exec", h.Name, gopastaBin, "--config-net", "--netns", g.Path(), "-P", pidf, "-t", "none", "-u", "none", "-T", "none", "-U", "none")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+nsock)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gopasta: %v\n%s", err, out)
	}
	gp := &Gopasta{Host: h, Guest: g, PIDFile: pidf}
	t.Cleanup(gp.Kill)
	buf := make([]byte, 256)
	_ = l.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := l.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("READY=1\nMAINPID=%d\n", gp.PID()); string(buf[:n]) != want {
		t.Fatalf("got %q, want %q", buf[:n], want)
	}
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", gp.PID()))
	if strings.Contains(string(env), "NOTIFY_SOCKET") {
		t.Fatal("the daemon kept NOTIFY_SOCKET")
	}
}

// TestControlRunAs: a daemon started as root with --runas gives its
// control socket (mode 0600) to the user it becomes: that user's client
// changes rules, root's is refused (another uid), and a socket file left
// behind is replaced by the next daemon.
func TestControlRunAs(t *testing.T) {
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv not installed")
	}
	h := HostNetns(t)
	g := NewNetns(t, "g")
	dir := t.TempDir()
	_ = os.Chmod(dir, 0o755) // and its parent, the test's: nobody must reach the socket
	_ = os.Chmod(filepath.Dir(dir), 0o755)
	sock, pidFile := filepath.Join(dir, "ctl.sock"), filepath.Join(dir, "pid")
	gp := &Gopasta{Host: h, Guest: g, PIDFile: pidFile}
	t.Cleanup(gp.Kill)
	if out, err := h.Try(gopastaBin, "--config-net", "-q", "--netns", g.Path(), "-P", pidFile, "--runas", "nobody", "-c", sock,
		"-t", "18940", "-u", "none", "-T", "none", "-U", "none"); err != nil {
		t.Fatalf("gopasta: %v\n%s", err, out)
	}
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket owner %d mode %v", st.Uid, fi.Mode())
	}
	asNobody := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", gopastaBin, "ctl", sock, "rules", "add", "-t", "18941")
	if out, err := asNobody.CombinedOutput(); err != nil {
		t.Fatalf("ctl as nobody: %v\n%s", err, out)
	}
	ServeInfo(ListenTCPIn(t, g, "tcp4", ":18941"))
	if !reaches(t, h, HostAddr4+":18941") {
		t.Fatal("rule added by nobody not in force")
	}
	out, err := exec.Command(gopastaBin, "ctl", sock, "rules").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "greeting") {
		t.Fatalf("root's client served by nobody's daemon: %v\n%s", err, out)
	}
	// nobody cannot remove the file from root's directory at exit; the
	// next daemon replaces the stale socket.
	gp.Kill()
	if out, err := h.Try(gopastaBin, "--config-net", "-q", "--netns", g.Path(), "-P", pidFile, "--runas", "nobody", "-c", sock,
		"-t", "none", "-u", "none", "-T", "none", "-U", "none"); err != nil {
		t.Fatalf("second gopasta on the same socket path: %v\n%s", err, out)
	}
}
