package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The sandbox (package sandbox, cmd/gopasta/sandbox.go): once ready, the
// daemon holds no capability but CAP_NET_BIND_SERVICE where "auto" may
// need it, has no_new_privs and a seccomp filter, and, started as real
// root, runs as nobody. Every thread is checked: capabilities and
// no_new_privs are per thread, and the namespace worker thread is the one
// that matters most. The other integration tests show that what the
// daemon does after readiness (netns deletion watch, resolv.conf
// follower, log size cap, auto rescans, QEMU reconnects) works with it.

// sandboxWant is what every thread's status must say.
type sandboxWant struct {
	capEff string // CapEff and CapPrm
	uid    int    // -1: not checked
}

const capNetBindService = "0000000000000400"

// checkSandboxed reads /proc/PID/task/*/status of the daemon.
func checkSandboxed(t *testing.T, pid int, want sandboxWant) {
	t.Helper()
	if pid <= 0 {
		t.Fatal("no daemon PID")
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("threads of %d: %v", pid, err)
	}
	for _, task := range tasks {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		if err != nil {
			continue // the thread ended
		}
		fields := map[string]string{}
		for _, line := range strings.Split(string(status), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				fields[k] = strings.TrimSpace(v)
			}
		}
		check := func(k, want string) {
			if fields[k] != want {
				t.Errorf("pid %d thread %s: %s %q, want %q", pid, task.Name(), k, fields[k], want)
			}
		}
		check("CapEff", want.capEff)
		check("CapPrm", want.capEff)
		check("CapInh", "0000000000000000")
		check("CapAmb", "0000000000000000")
		check("CapBnd", "0000000000000000")
		check("NoNewPrivs", "1")
		check("Seccomp", "2")
		if want.uid >= 0 {
			u := strconv.Itoa(want.uid)
			check("Uid", u+"\t"+u+"\t"+u+"\t"+u)
			check("Groups", "")
		}
	}
	// The root is the empty read-only tmpfs: nothing in it but the
	// daemon's own /proc/PID/task, which psx lists (cmd/gopasta/sandbox/filesystem.go).
	root := fmt.Sprintf("/proc/%d/root", pid)
	if got := dirNames(t, root); strings.Join(got, " ") != "proc" {
		t.Errorf("root of %d holds %v, want only proc", pid, got)
	} else if got := dirNames(t, root+"/proc"); len(got) != 1 || strings.Join(dirNames(t, root+"/proc/"+got[0]), " ") != "task" {
		t.Errorf("root of %d: /proc holds %v, want only PID/task", pid, got)
	}
	mounts, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	rootMount := ""
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == "/" {
			rootMount = line
		}
	}
	if !strings.Contains(rootMount, " - tmpfs ") || !strings.Contains(rootMount, " ro,") {
		t.Errorf("root mount of %d: %q, want a read-only tmpfs", pid, rootMount)
	}
	// PR_SET_DUMPABLE 0: /proc/PID files belong to root, not the user
	// (in a user namespace, to its root: the same user, nothing to see).
	if want.uid < 0 {
		return
	}
	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/status", pid), &st); err != nil || st.Uid != 0 {
		t.Errorf("/proc/%d/status owned by %d (%v): the daemon is dumpable", pid, st.Uid, err)
	}
}

// TestSandboxPodman: real root with podman's options (rootful podman)
// ends up as nobody with no capability at all (no "auto" rule).
func TestSandboxPodman(t *testing.T) {
	gp := LaunchGopasta(t, "--config-net", "--dns-forward", "169.254.1.1",
		"-t", "none", "-u", "none", "-T", "none", "-U", "none", "--no-map-gw", "--quiet",
		"--map-guest-addr", "169.254.1.2")
	checkSandboxed(t, gp.PID(), sandboxWant{capEff: "0000000000000000", uid: 65534})

	// Still reaches the host through --map-guest-addr.
	ServeInfo(ListenTCPIn(t, gp.Host, "tcp4", HostAddr4+":18911"))
	if local, _, err := askInfo(t, gp.Guest, "tcp4", "169.254.1.2:18911"); err != nil || local == "" {
		t.Errorf("outbound to the host: %q, %v", local, err)
	}
}

// TestSandboxAuto: with "auto" (and ip_unprivileged_port_start at its
// default of 1024), CAP_NET_BIND_SERVICE is the one capability kept, and
// with it "auto" still binds a low port that appears after setup.
func TestSandboxAuto(t *testing.T) {
	gp := StartGopasta(t, "-t", "auto", "-u", "none", "-T", "none", "-U", "none")
	checkSandboxed(t, gp.PID(), sandboxWant{capEff: capNetBindService, uid: 65534})

	ServeInfo(ListenTCPIn(t, gp.Guest, "tcp", ":703"))
	if !Eventually(5*time.Second, func() bool {
		local, _, err := askInfo(t, gp.Host, "tcp4", HostAddr4+":703")
		return err == nil && portOf(local) == "703"
	}) {
		t.Errorf("auto did not forward port 703 bound after setup\n%s", tail(gp.Log(), 2000))
	}
}

// TestSandboxPasst: passt mode, in the background, as root.
func TestSandboxPasst(t *testing.T) {
	h := HostNetns(t)
	dir := t.TempDir()
	sock, pidf := filepath.Join(dir, "p.sock"), filepath.Join(dir, "p.pid")
	r := runFrontBin(t, h, 10*time.Second, passtBin(t), "-s", sock, "-P", pidf, "-t", "19183:80")
	t.Cleanup(func() { killPIDFile(pidf) })
	if r.code != 0 {
		t.Fatalf("front exit %d: %s", r.code, r.out)
	}
	pid := (&Gopasta{PIDFile: pidf}).PID()
	checkSandboxed(t, pid, sandboxWant{capEff: "0000000000000000", uid: 65534})
	checkOwnPIDNS(t, pid)
	m, f := dialQemu(t, sock, macA).dhcp()
	checkOffer(t, m, f, macA, HostAddr4)
}

// checkOwnPIDNS: pid (the number the PID file gives, the caller's) is
// PID 1 of a PID namespace of its own, as upstream passt is.
func checkOwnPIDNS(t *testing.T, pid int) {
	t.Helper()
	status := readFile(t, fmt.Sprintf("/proc/%d/status", pid))
	if want := fmt.Sprintf("\nNSpid:\t%d\t1\n", pid); !strings.Contains(status, want) {
		i := strings.Index(status, "NSpid")
		t.Errorf("daemon %d not PID 1 of a PID namespace of its own: %q", pid, status[i:i+strings.IndexByte(status[i:], '\n')])
	}
	ours, _ := os.Readlink("/proc/self/ns/pid")
	if its, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); err != nil || its == ours {
		t.Errorf("daemon's PID namespace %q (%v), the caller's %q", its, err, ours)
	}
}

// TestSandboxPasstUser: passt mode started by a user is PID 1 of its own
// PID namespace too (owned by its user namespace), and its socket file is
// gone once it has exited on SIGTERM (the front's cleaner).
func TestSandboxPasstUser(t *testing.T) {
	h := HostNetns(t)
	dir, err := os.MkdirTemp("", "gopasta-sandbox-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	_ = os.Chmod(dir, 0o777)
	sock, pidf, bin := filepath.Join(dir, "p.sock"), filepath.Join(dir, "p.pid"), filepath.Join(dir, "passt")
	if err := os.Symlink(gopastaBin, bin); err != nil {
		t.Fatal(err)
	}
	r := runFrontBin(t, h, 10*time.Second, "runuser", "-u", "nobody", "--", bin, "-q", "-s", sock, "-P", pidf)
	t.Cleanup(func() { killPIDFile(pidf) })
	if r.code != 0 {
		t.Fatalf("front exit %d: %s", r.code, r.out)
	}
	pid := (&Gopasta{PIDFile: pidf}).PID()
	checkSandboxed(t, pid, sandboxWant{capEff: "0000000000000000", uid: -1})
	checkOwnPIDNS(t, pid)
	m, f := dialQemu(t, sock, macA).dhcp()
	checkOffer(t, m, f, macA, HostAddr4)
	_ = syscall.Kill(pid, syscall.SIGTERM)
	if _, ok := waitGone(pid, 3*time.Second); !ok {
		t.Fatal("daemon still running 3 s after SIGTERM")
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket file left behind: %v", err)
	}
}

// TestSandboxCommand: command mode, as root and unprivileged (root of a
// user namespace of its own, which it stays, without capabilities).
func TestSandboxCommand(t *testing.T) {
	h := HostNetns(t)
	for _, c := range []struct {
		name string
		pre  []string
		uid  int
	}{{"root", nil, 65534}, {"unprivileged", []string{"runuser", "-u", "nobody", "--"}, -1}} {
		t.Run(c.name, func(t *testing.T) {
			// A directory the command may write to as nobody.
			dir, err := os.MkdirTemp("", "gopasta-sandbox-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			_ = os.Chmod(dir, 0o777)
			out := filepath.Join(dir, "started")
			args := append(append([]string{}, c.pre...), gopastaBin, "-q", "-t", "none", "-u", "none", "-T", "none", "-U", "none",
				"--", "sh", "-c", "echo > "+out+"; sleep 30")
			front := h.Start(t, args...)
			// COMMAND is PID 1 of its own PID namespace, where the
			// daemon is not to be seen: the daemon is the descendant
			// of the front with the seccomp filter, the last step
			// before its readiness.
			var pid int
			if !Eventually(5*time.Second, func() bool {
				for _, p := range descendants(front.Process.Pid) {
					b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
					if strings.Contains(string(b), "\nSeccomp:\t2\n") {
						pid = p
						return true
					}
				}
				return false
			}) {
				t.Fatal("no sandboxed daemon under the front")
			}
			checkSandboxed(t, pid, sandboxWant{capEff: "0000000000000000", uid: c.uid})
		})
	}
}

// descendants lists the processes below pid, depth first. A child is
// listed under the thread that forked it, and a Go program forks from any.
func descendants(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, task := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
				out = append(out, descendants(c)...)
			}
		}
	}
	return out
}

// TestCommandPIDNamespace: COMMAND is PID 1 of a PID namespace of its
// own, as with pasta, with a /proc that shows only its processes, its
// exit status is gopasta's, and SIGTERM to gopasta ends a COMMAND that
// leaves it at its default action (which PID 1 would not get) as if it
// had got it, while one that catches it decides.
func TestCommandPIDNamespace(t *testing.T) {
	h := HostNetns(t)
	for _, c := range []struct {
		name string
		pre  []string
	}{{"root", nil}, {"unprivileged", []string{"runuser", "-u", "nobody", "--"}}} {
		t.Run(c.name, func(t *testing.T) {
			args := append(append([]string{}, c.pre...), gopastaBin, "-q", "-t", "none", "-u", "none", "-T", "none", "-U", "none",
				"--", "sh", "-c", "echo pid=$$; echo procs=$(cd /proc && echo [0-9]*); exit 7")
			r := runFrontBin(t, h, 10*time.Second, args[0], args[1:]...)
			if r.code != 7 {
				t.Errorf("exit status %d, want COMMAND's 7 (output %q)", r.code, r.out)
			}
			if !strings.Contains(r.out, "pid=1\n") {
				t.Errorf("COMMAND's $$ is not 1: %q", r.out)
			}
			// sh (1) and the subshell of $(...): nothing of the host.
			if !regexp.MustCompile(`(?m)^procs=1 [0-9]+$`).MatchString(r.out) {
				t.Errorf("COMMAND's /proc shows other processes: %q", r.out)
			}
		})
	}
	for _, c := range []struct {
		name, script string
		want         int
	}{{"default", "exec sleep 30", 128 + int(syscall.SIGTERM)}, {"caught", "trap 'exit 3' TERM; sleep 30 & wait", 3}} {
		t.Run("SIGTERM "+c.name, func(t *testing.T) {
			dir := t.TempDir()
			started := filepath.Join(dir, "started")
			front := h.Start(t, gopastaBin, "-q", "-t", "none", "-u", "none", "-T", "none", "-U", "none",
				"--", "sh", "-c", "echo > "+started+"; "+c.script)
			if !Eventually(5*time.Second, func() bool { _, err := os.Stat(started); return err == nil }) {
				t.Fatal("command did not start")
			}
			// Readiness: the front knows COMMAND once the daemon is
			// sealed.
			Eventually(5*time.Second, func() bool {
				for _, p := range descendants(front.Process.Pid) {
					b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
					if strings.Contains(string(b), "\nSeccomp:\t2\n") {
						return true
					}
				}
				return false
			})
			time.Sleep(100 * time.Millisecond)
			_ = front.Process.Signal(syscall.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- front.Wait() }()
			select {
			case err := <-done:
				if code := exitCode(err); code != c.want {
					t.Errorf("exit status %d after SIGTERM, want %d", code, c.want)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("still running 3 s after SIGTERM")
			}
		})
	}
}

// dirNames lists a directory's entries.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Errorf("%s: %v", dir, err)
		return nil
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestSandboxOff: --no-sandbox (debugging only) leaves the daemon as it
// was set up: root, its capabilities, no seccomp filter, the host's root.
func TestSandboxOff(t *testing.T) {
	gp := StartGopasta(t, "--no-sandbox", "-t", "none", "-u", "none", "-T", "none", "-U", "none")
	status := readFile(t, fmt.Sprintf("/proc/%d/status", gp.PID()))
	for _, want := range []string{"\nUid:\t0\t0\t0\t0\n", "\nSeccomp:\t0\n", "\nNoNewPrivs:\t0\n"} {
		if !strings.Contains(status, want) {
			t.Errorf("status lacks %q", strings.TrimSpace(want))
		}
	}
	if got := dirNames(t, fmt.Sprintf("/proc/%d/root", gp.PID())); len(got) < 5 {
		t.Errorf("root holds %v, want the host's", got)
	}
	if !strings.Contains(gp.Log(), "--no-sandbox") {
		t.Error("no warning about --no-sandbox in the log")
	}
}

// TestSandboxCtlPcap: the control socket keeps working for the user who
// started the daemon (root, although the daemon is nobody now), "pcap
// FILE" at run time writes the file ctl created and sent (root's, 0600),
// capped at --pcap-size, and the socket file is removed at exit by the
// cleaner.
func TestSandboxCtlPcap(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	const limit = 8192
	gp := StartGopasta(t, "-c", sock, "--pcap-size", fmt.Sprint(limit))
	if out := ctl(t, sock, "stats"); !strings.Contains(out, "tcp_flows") {
		t.Errorf("ctl stats: %q", out)
	}
	pc := filepath.Join(t.TempDir(), "x.pcap")
	if out := ctl(t, sock, "pcap", pc, "icmp"); !strings.Contains(out, "capturing icmp to "+pc) {
		t.Fatalf("ctl pcap under the sandbox: %q", out)
	}
	if st, err := os.Stat(pc); err != nil || st.Mode().Perm() != 0o600 || st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatalf("capture file: %v %v, want root's, 0600", st, err)
	}
	// 1000-byte pings, each 1042-byte frame captured both ways: the cap
	// is passed within a few.
	gp.Guest.Try("ping", "-c", "20", "-i", "0.01", "-s", "1000", "-W", "1", HostGW4)
	if !Eventually(3*time.Second, func() bool { return strings.Contains(gp.Log(), "size cap of 8192 bytes reached") }) {
		t.Fatalf("no word of the cap in the log:\n%s", tail(gp.Log(), 3000))
	}
	if out := ctl(t, sock, "pcap", "stop"); !strings.Contains(out, "stopped") {
		t.Fatalf("pcap stop %q", out)
	}
	st, err := os.Stat(pc)
	if err != nil || st.Size() > limit {
		t.Fatalf("capture of %v bytes over --pcap-size %d (%v)", st.Size(), limit, err)
	}
	frames := readPcap(t, pc)
	if len(frames) == 0 {
		t.Fatal("empty capture")
	}
	// "icmp" selects ICMPv6 too (neighbour discovery may show up).
	for _, f := range frames {
		if len(f.data) < 14 || (f.data[12] == 8 && f.data[13] == 0 && f.proto != 1) {
			t.Fatalf("captured a frame the filter does not select: % x", f.data)
		}
	}
	pid := gp.PID()
	gp.Kill()
	if _, ok := waitGone(pid, 3*time.Second); !ok {
		t.Fatal("daemon still running")
	}
	if !Eventually(time.Second, func() bool { _, err := os.Lstat(sock); return os.IsNotExist(err) }) {
		t.Error("control socket file left behind")
	}
}
