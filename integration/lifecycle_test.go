package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopasta/gopasta/conf"
)

// processGone reports whether pid has exited. A zombie counts as gone: a
// daemon in the background is reparented to init, which may reap it late.
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z' || s[i+2] == 'X'
}

// waitGone waits up to d for pid to exit and reports how long it took.
func waitGone(pid int, d time.Duration) (time.Duration, bool) {
	start := time.Now()
	ok := Eventually(d, func() bool { return processGone(pid) })
	return time.Since(start), ok
}

// frontResult is how a front process ended.
type frontResult struct {
	out     string
	code    int
	elapsed time.Duration
	err     error
}

// runFront runs gopasta in the host namespace the way podman does: stdout
// and stderr on one pipe, waiting for EOF on it (CombinedOutput), with a
// timeout. If the daemon kept the pipe, this would not return before the
// timeout.
func runFront(t *testing.T, h Netns, timeout time.Duration, args ...string) frontResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	cmd := h.Command(ctx, append([]string{gopastaBin}, args...)...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	r := frontResult{out: string(out), elapsed: time.Since(start), err: err, code: exitCode(err)}
	if ctx.Err() != nil {
		t.Fatalf("gopasta %v: no EOF on its output pipe within %v (output %q)", args, timeout, out)
	}
	return r
}

func TestVersion(t *testing.T) {
	needRoot(t)
	out, err := exec.Command(gopastaBin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("--version: %v\n%s", err, out)
	}
	if want := "gopasta " + conf.Version + "\n"; string(out) != want {
		t.Errorf("--version printed %q, want %q", out, want)
	}
}

func TestHelp(t *testing.T) {
	needRoot(t)
	out, err := exec.Command(gopastaBin, "-h").Output()
	if err != nil || !strings.HasPrefix(string(out), "Usage:") {
		t.Errorf("-h: %v, output starts %q", err, tail(string(out), 40))
	}
}

func TestUnknownOption(t *testing.T) {
	needRoot(t)
	cmd := exec.Command(gopastaBin, "--no-such-option")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	code := exitCode(cmd.Run())
	if code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	// podman's fallback for old pasta matches getopt_long's wording.
	if want := "gopasta: unrecognized option '--no-such-option'\n"; stderr.String() != want || stdout.Len() != 0 {
		t.Errorf("stderr %q stdout %q, want stderr %q", stderr.String(), stdout.String(), want)
	}
}

// TestSetupFailureIsOneLine: an error during the daemon's setup is the
// front's exit status 1 and one line naming the problem.
func TestSetupFailureIsOneLine(t *testing.T) {
	h := HostNetns(t)
	r := runFront(t, h, 5*time.Second, "--config-net", "--netns", "/nonexistent/netns", "-q")
	if r.code != 1 {
		t.Errorf("exit status %d, want 1", r.code)
	}
	lines := strings.Split(strings.TrimSuffix(r.out, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "gopasta: ") || !strings.Contains(lines[0], "/nonexistent/netns") {
		t.Errorf("output %q: want one line \"gopasta: ...\" naming the path", r.out)
	}
	// A control socket that cannot be created is such an error too.
	g := NewNetns(t, "g")
	r = runFront(t, h, 5*time.Second, "--config-net", "--netns", g.Path(), "-c", "/nonexistent/gopasta-ctl.sock")
	if want := "gopasta: couldn't open control socket /nonexistent/gopasta-ctl.sock: listen unix /nonexistent/gopasta-ctl.sock: bind: no such file or directory\n"; r.code != 1 || r.out != want {
		t.Errorf("-c: exit status %d, output %q; want 1, %q", r.code, r.out, want)
	}
}

// TestBackgroundReadiness: in the background the front exits 0 with the
// pid file already written, its output pipe reaches EOF although the
// daemon lives on, and the daemon holds no descriptor of that pipe.
func TestBackgroundReadiness(t *testing.T) {
	h := HostNetns(t)
	g := NewNetns(t, "g")
	pidFile := filepath.Join(t.TempDir(), "pid")
	t.Cleanup(func() { killPIDFile(pidFile) })

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(pw.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	pipeLink := fmt.Sprintf("pipe:[%d]", st.Ino)
	// podman's own argument list (common/libnetwork/pasta), so that no
	// warning is expected.
	cmd := h.Command(t.Context(), gopastaBin, "--config-net", "--dns-forward", "169.254.1.1",
		"-t", "none", "-u", "none", "-T", "none", "-U", "none", "--no-map-gw", "--quiet",
		"--netns", g.Path(), "--map-guest-addr", "169.254.1.2", "-P", pidFile)
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	eof := make(chan []byte, 1)
	go func() {
		var all []byte
		buf := make([]byte, 4096)
		for {
			n, err := pr.Read(buf)
			all = append(all, buf[:n]...)
			if err != nil {
				eof <- all
				return
			}
		}
	}()
	var out []byte
	select {
	case out = <-eof:
	case <-time.After(5 * time.Second):
		t.Fatal("no EOF on the output pipe: the daemon kept it open")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("front: %v, output %q", err, out)
	}
	if len(out) != 0 {
		t.Errorf("output with -q and no problem: %q", out)
	}
	// Read right after the front exited: written before readiness.
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("pid file not there when the front exited: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || processGone(pid) {
		t.Fatalf("pid file %q: no running daemon", b)
	}
	if pid == cmd.Process.Pid {
		t.Errorf("pid file holds the front's pid, want the daemon's")
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if target == pipeLink {
			t.Errorf("daemon fd %s is the caller's output pipe", fd.Name())
		}
	}
	// By device, not by name: the sandbox detaches /dev with the old
	// root, and the link then reads "/null".
	var null syscall.Stat_t
	if err := syscall.Stat("/dev/null", &null); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 2} {
		var st syscall.Stat_t
		err := syscall.Stat(fmt.Sprintf("/proc/%d/fd/%d", pid, n), &st)
		if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, n)); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != null.Rdev {
			t.Errorf("daemon fd %d is %q (%v), want /dev/null", n, target, err)
		}
	}
	// Setsid: the daemon leads its own session.
	if sid, _ := getsid(pid); sid != pid {
		t.Errorf("daemon session %d, want its own (%d)", sid, pid)
	}
}

func getsid(pid int) (int, error) {
	sid, _, errno := syscall.RawSyscall(syscall.SYS_GETSID, uintptr(pid), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(sid), nil
}

// TestExitOnNetnsDelete: `ip netns del` (unmount and unlink) ends the
// daemon within a second.
func TestExitOnNetnsDelete(t *testing.T) {
	gp := StartGopasta(t)
	pid := gp.PID()
	if pid <= 0 || processGone(pid) {
		t.Fatal("daemon not running")
	}
	run(t, "ip", "netns", "del", gp.Guest.Name)
	if took, ok := waitGone(pid, 1500*time.Millisecond); !ok || took > time.Second {
		t.Errorf("daemon still running %v after ip netns del (gone: %v)", took, ok)
	}
	if !strings.Contains(gp.Log(), "is gone") {
		t.Errorf("log does not say why it exited:\n%s", gp.Log())
	}
}

// boundNetnsFile bind-mounts g's namespace on a file in a new temporary
// directory (mode 0700), as podman does outside /run/netns, and returns
// it with a PID file path beside it; the mount and any daemon that wrote
// the PID file are gone after the test.
func boundNetnsFile(t *testing.T, g Netns) (nsFile, pidFile string) {
	t.Helper()
	dir := t.TempDir()
	nsFile = filepath.Join(dir, "netns-test")
	if err := os.WriteFile(nsFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "--bind", g.Path(), nsFile)
	t.Cleanup(func() { _ = exec.Command("umount", nsFile).Run() })
	pidFile = filepath.Join(dir, "pid")
	t.Cleanup(func() { killPIDFile(pidFile) })
	return nsFile, pidFile
}

// TestExitOnNetnsFileRemoved: podman's teardown of its own bind mount
// (umount, then rm) outside /run/netns.
func TestExitOnNetnsFileRemoved(t *testing.T) {
	h := HostNetns(t)
	nsFile, pidFile := boundNetnsFile(t, NewNetns(t, "g"))
	if r := runFront(t, h, 5*time.Second, "--config-net", "-q", "--netns", nsFile, "-P", pidFile); r.code != 0 {
		t.Fatalf("gopasta: %v\n%s", r.err, r.out)
	}
	pid := (&Gopasta{PIDFile: pidFile}).PID()
	run(t, "umount", nsFile)
	if err := os.Remove(nsFile); err != nil {
		t.Fatal(err)
	}
	if took, ok := waitGone(pid, 1500*time.Millisecond); !ok || took > time.Second {
		t.Errorf("daemon still running %v after the namespace file was removed (gone: %v)", took, ok)
	}
}

// TestNoNetnsQuit: with --no-netns-quit the daemon outlives the file.
func TestNoNetnsQuit(t *testing.T) {
	gp := StartGopasta(t, "--no-netns-quit")
	pid := gp.PID()
	run(t, "ip", "netns", "del", gp.Guest.Name)
	time.Sleep(1500 * time.Millisecond)
	if processGone(pid) {
		t.Error("daemon exited although --no-netns-quit was given")
	}
}

// TestExitOnSIGTERM: SIGTERM is a clean exit, status 0, within a second.
// In the foreground the front's status is the daemon's.
func TestExitOnSIGTERM(t *testing.T) {
	h := HostNetns(t)
	g := NewNetns(t, "g")
	pidFile := filepath.Join(t.TempDir(), "pid")
	t.Cleanup(func() { killPIDFile(pidFile) })
	cmd := h.Command(t.Context(), gopastaBin, "-f", "-q", "--config-net", "--netns", g.Path(), "-P", pidFile)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	gp := &Gopasta{PIDFile: pidFile}
	if !Eventually(5*time.Second, func() bool { return gp.PID() > 0 }) {
		t.Fatalf("no pid file; output %q", out.String())
	}
	// The namespace is configured by the time the pid file exists.
	if _, err := g.Try("ip", "link", "show", HostIf); err != nil {
		t.Errorf("tap missing when the pid file appeared: %v", err)
	}
	pid := gp.PID()
	start := time.Now()
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v, want status 0; output %q", err, out.String())
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("exit took %v after SIGTERM", took)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("still running 2 s after SIGTERM")
	}
}

// TestForegroundRelaysSignals: SIGTERM to the front reaches the daemon.
func TestForegroundRelaysSignals(t *testing.T) {
	h := HostNetns(t)
	g := NewNetns(t, "g")
	pidFile := filepath.Join(t.TempDir(), "pid")
	t.Cleanup(func() { killPIDFile(pidFile) })
	// No `ip netns exec` in between: the signal must reach gopasta itself.
	cmd := exec.Command("nsenter", "--net="+h.Path(), gopastaBin, "-f", "-q", "--config-net", "--netns", g.Path(), "-P", pidFile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	gp := &Gopasta{PIDFile: pidFile}
	if !Eventually(5*time.Second, func() bool { return gp.PID() > 0 }) {
		t.Fatal("no pid file")
	}
	daemon := gp.PID()
	if daemon == cmd.Process.Pid {
		t.Fatal("no separate daemon process")
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("front after SIGTERM: %v, want status 0", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("front still running 2 s after SIGTERM")
	}
	if _, ok := waitGone(daemon, time.Second); !ok {
		t.Error("daemon survived the relayed SIGTERM")
	}
}

// TestExitOnTargetPIDGone: attached by PID, the daemon ends with the
// target process.
func TestExitOnTargetPIDGone(t *testing.T) {
	h := HostNetns(t)
	target := h.Start(t, "unshare", "-n", "sleep", "60")
	// `ip netns exec` execs, so target.Process is unshare, which execs sleep.
	tpid := target.Process.Pid
	if !Eventually(2*time.Second, func() bool {
		a, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", tpid))
		b, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", os.Getpid()))
		c, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", tpid))
		return a != b && strings.HasSuffix(c, "sleep")
	}) {
		t.Fatal("target did not get its own network namespace")
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	t.Cleanup(func() { killPIDFile(pidFile) })
	if r := runFront(t, h, 5*time.Second, "-q", "--config-net", "-P", pidFile, strconv.Itoa(tpid)); r.code != 0 {
		t.Fatalf("gopasta PID: %v\n%s", r.err, r.out)
	}
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(tpid), "-n", "ip", "-br", "addr", "show", HostIf).CombinedOutput()
	if err != nil || !strings.Contains(string(out), HostAddr4+"/24") {
		t.Errorf("target's namespace not configured: %v %s", err, out)
	}
	daemon := (&Gopasta{PIDFile: pidFile}).PID()
	_ = syscall.Kill(tpid, syscall.SIGKILL)
	if took, ok := waitGone(daemon, 1500*time.Millisecond); !ok || took > time.Second {
		t.Errorf("daemon still running %v after its target exited (gone: %v)", took, ok)
	}
}

// TestCommandExitStatus: the command's status is gopasta's (128+N for a
// signal: TestCommandPIDNamespace). As with pasta, the command is PID 1 of
// its PID namespace, which the kernel does not let a signal it leaves at
// its default action end, not even its own: "kill -TERM $$" goes on.
func TestCommandExitStatus(t *testing.T) {
	h := HostNetns(t)
	for _, c := range []struct {
		script string
		want   int
	}{{"exit 0", 0}, {"exit 7", 7}, {"kill -TERM $$; exit 5", 5}} {
		err := h.Command(t.Context(), gopastaBin, "-q", "--", "sh", "-c", c.script).Run()
		if got := exitCode(err); got != c.want {
			t.Errorf("gopasta -- sh -c %q: status %d, want %d", c.script, got, c.want)
		}
	}
	// A missing command is a setup error.
	out, err := h.Try(gopastaBin, "-q", "-t", "none", "-u", "none", "-T", "none", "-U", "none", "--", "/nonexistent/cmd")
	if exitCode(err) != 1 || !strings.HasPrefix(out, "gopasta: ") || strings.Count(out, "\n") != 1 {
		t.Errorf("missing command: %v %q", err, out)
	}
}

// TestRunAs: started as root with --runas, the daemon has that user's
// UID and GID and no capabilities once it is ready, forwards both ways
// as before, and still exits when its namespace file is removed from a
// directory only root may read (the inotify watch was made before).
func TestRunAs(t *testing.T) {
	h := HostNetns(t)
	g := NewNetns(t, "g")
	nsFile, pidFile := boundNetnsFile(t, g) // in a 0700 directory of root's
	if r := runFront(t, h, 5*time.Second, "--config-net", "-q", "--netns", nsFile, "-P", pidFile, "--runas", "nobody",
		"-t", "18900:28900", "-u", "none", "-T", "none", "-U", "none"); r.code != 0 {
		t.Fatalf("gopasta: %v\n%s", r.err, r.out)
	}
	pid := (&Gopasta{PIDFile: pidFile}).PID()
	status := readFile(t, fmt.Sprintf("/proc/%d/status", pid))
	for _, want := range []string{"Uid:\t65534\t65534\t65534\t65534\n", "Gid:\t65534\t65534\t65534\t65534\n",
		"CapEff:\t0000000000000000\n", "CapPrm:\t0000000000000000\n"} {
		if !strings.Contains(status, want) {
			t.Errorf("status lacks %q:\n%s", want, status)
		}
	}
	for _, line := range strings.Split(status, "\n") {
		if groups, ok := strings.CutPrefix(line, "Groups:"); ok && strings.TrimSpace(groups) != "" {
			t.Errorf("supplementary groups kept: %q", line)
		}
	}

	ServeInfo(ListenTCPIn(t, g, "tcp", ":28900"))
	if local, _, err := askInfo(t, h, "tcp4", HostAddr4+":18900"); err != nil || portOf(local) != "28900" {
		t.Errorf("inbound through -t: %q, %v", local, err)
	}
	ServeInfo(ListenTCPIn(t, h, "tcp4", "127.0.0.1:18901"))
	if local, _, err := askInfo(t, g, "tcp4", HostGW4+":18901"); err != nil || portOf(local) != "18901" {
		t.Errorf("outbound to the host: %q, %v", local, err)
	}

	run(t, "umount", nsFile)
	if err := os.Remove(nsFile); err != nil {
		t.Fatal(err)
	}
	if took, ok := waitGone(pid, 1500*time.Millisecond); !ok || took > time.Second {
		t.Errorf("daemon still running %v after the namespace file was removed (gone: %v)", took, ok)
	}
}
