// Package integration runs gopasta end to end, as root, against real
// programs in network namespaces the tests create.
//
// # Topology
//
// Tests never touch the machine's own network. Each test gets a "host"
// namespace that stands in for the init namespace, with a template
// interface as pasta expects one:
//
//	host netns   up0  198.51.100.2/24, 2001:db8:1::2/64, default via .1 / ::1
//	             (its veth peer lives in an "upstream" netns that only
//	             answers neighbour discovery, so the routes resolve)
//	             lo   127.0.0.1, where host-side servers listen
//	guest netns  created empty; gopasta, run inside the host netns, attaches
//	             to it with --netns and builds its tap there
//
// Every namespace and every process a test starts is removed in t.Cleanup,
// also when the test fails.
package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Addresses of the host namespace's template interface.
const (
	HostAddr4 = "198.51.100.2"
	HostGW4   = "198.51.100.1"
	HostAddr6 = "2001:db8:1::2"
	HostGW6   = "2001:db8:1::1"
	HostIf    = "up0"
)

var gopastaBin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("integration: not root, skipping")
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "gopasta-it-")
	if err != nil {
		panic(err)
	}
	gopastaBin = filepath.Join(dir, "gopasta")
	if bin := os.Getenv("GOPASTA_TEST_BIN"); bin != "" {
		// A prebuilt binary, e.g. to compare two versions with the same
		// test binary (BenchmarkUDPRR).
		gopastaBin = bin
	} else {
		build := exec.Command("go", "build", "-o", gopastaBin, "../cmd/gopasta")
		build.Stdout, build.Stderr = os.Stdout, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Println("integration: build failed:", err)
			os.Exit(1)
		}
	}
	_ = os.Chmod(dir, 0o755)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

func needTool(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

func uniq() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Netns is a named network namespace under /run/netns.
type Netns struct {
	Name string
}

// Path is the bind-mount path of the namespace.
func (n Netns) Path() string { return "/run/netns/" + n.Name }

// NewNetns creates a uniquely named network namespace (prefix "gpt-") and
// removes it, killing every process still in it, when the test ends.
func NewNetns(t testing.TB, role string) Netns {
	t.Helper()
	needRoot(t)
	n := Netns{Name: "gpt-" + role + "-" + uniq()}
	run(t, "ip", "netns", "add", n.Name)
	t.Cleanup(func() { n.destroy() })
	run(t, "ip", "-n", n.Name, "link", "set", "lo", "up")
	return n
}

func (n Netns) destroy() {
	for range 3 {
		out, _ := exec.Command("ip", "netns", "pids", n.Name).Output()
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			var pid int
			fmt.Sscan(p, &pid)
			if pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = exec.Command("ip", "netns", "del", n.Name).Run()
}

// Exec runs a command in the namespace and returns its combined output,
// failing the test if it fails.
func (n Netns) Exec(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, append([]string{"ip", "netns", "exec", n.Name}, args...)...)
}

// Try runs a command in the namespace and returns output and error.
func (n Netns) Try(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...).CombinedOutput()
	return string(out), err
}

// Command returns an exec.Cmd running in the namespace.
func (n Netns) Command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// Start starts a background process in the namespace, killed at cleanup.
func (n Netns) Start(t testing.TB, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", args, err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		if t.Failed() && out.Len() > 0 {
			t.Logf("output of %v:\n%s", args, tail(out.String(), 4000))
		}
	})
	return cmd
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// HostNetns makes the stand-in host namespace described in the package
// comment, with its upstream neighbour.
func HostNetns(t testing.TB) Netns {
	t.Helper()
	h := NewNetns(t, "h")
	up := NewNetns(t, "u")
	peer := "gpu" + uniq()[:6]
	run(t, "ip", "link", "add", HostIf, "netns", h.Name, "type", "veth", "peer", "name", peer, "netns", up.Name)
	h.Exec(t, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	up.Exec(t, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	h.Exec(t, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
	h.Exec(t, "ip", "addr", "add", HostAddr4+"/24", "dev", HostIf)
	h.Exec(t, "ip", "addr", "add", HostAddr6+"/64", "dev", HostIf, "nodad")
	h.Exec(t, "ip", "link", "set", HostIf, "up")
	h.Exec(t, "ip", "route", "add", "default", "via", HostGW4)
	h.Exec(t, "ip", "-6", "route", "add", "default", "via", HostGW6)
	up.Exec(t, "ip", "addr", "add", HostGW4+"/24", "dev", peer)
	up.Exec(t, "ip", "addr", "add", HostGW6+"/64", "dev", peer, "nodad")
	up.Exec(t, "ip", "link", "set", peer, "up")
	return h
}

// Gopasta is a running gopasta daemon.
type Gopasta struct {
	Host, Guest Netns
	LogFile     string
	PIDFile     string
}

// StartGopasta runs gopasta in the host namespace, attached to a new guest
// namespace with --config-net, in the background as podman runs it (the
// first process exits 0 once set up). Extra arguments come after the
// defaults. The daemon is killed at cleanup.
func StartGopasta(t testing.TB, extra ...string) *Gopasta {
	t.Helper()
	return LaunchGopasta(t, append([]string{"--config-net"}, extra...)...)
}

// LaunchGopasta is StartGopasta without the implied --config-net: args are
// all the options but --netns, -P and -l.
func LaunchGopasta(t testing.TB, extra ...string) *Gopasta {
	t.Helper()
	return LaunchGopastaIn(t, HostNetns(t), extra...)
}

// LaunchGopastaIn is LaunchGopasta in a host namespace the test prepared.
func LaunchGopastaIn(t testing.TB, h Netns, extra ...string) *Gopasta {
	t.Helper()
	return LaunchGopastaWrapped(t, h, nil, extra...)
}

// LaunchGopastaWrapped is LaunchGopastaIn with gopasta run by the command
// wrapper (e.g. prlimit with its options), if not empty.
func LaunchGopastaWrapped(t testing.TB, h Netns, wrapper []string, extra ...string) *Gopasta {
	t.Helper()
	g := NewNetns(t, "g")
	dir := t.TempDir()
	gp := &Gopasta{Host: h, Guest: g, LogFile: filepath.Join(dir, "gopasta.log"), PIDFile: filepath.Join(dir, "gopasta.pid")}
	args := append(append(append([]string(nil), wrapper...), gopastaBin, "--netns", g.Path(), "-P", gp.PIDFile, "-l", gp.LogFile), extra...)
	out, err := h.Try(args...)
	if err != nil {
		t.Fatalf("gopasta %v: %v\n%s", extra, err, out)
	}
	t.Cleanup(func() {
		gp.Kill()
		if t.Failed() {
			if b, err := os.ReadFile(gp.LogFile); err == nil {
				t.Logf("gopasta log:\n%s", tail(string(b), 8000))
			}
		}
	})
	return gp
}

// PID returns the daemon's PID from its pid file (0 if none).
func (g *Gopasta) PID() int {
	b, err := os.ReadFile(g.PIDFile)
	if err != nil {
		return 0
	}
	var pid int
	fmt.Sscan(strings.TrimSpace(string(b)), &pid)
	return pid
}

// Alive reports whether the daemon process still runs (a zombie waiting
// for a slow reaper counts as gone).
func (g *Gopasta) Alive() bool {
	return pidAlive(g.PID())
}

// pidAlive reports whether pid exists and is not a zombie.
func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses, which may itself
	// contain spaces or parentheses: look after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// Kill stops the daemon with SIGTERM, then SIGKILL after a second.
func (g *Gopasta) Kill() {
	pid := g.PID()
	if pid <= 0 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for range 20 {
		if !pidAlive(pid) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// Log returns the daemon's log so far.
func (g *Gopasta) Log() string {
	b, _ := os.ReadFile(g.LogFile)
	return string(b)
}

// Eventually polls cond every 20 ms until it is true or d passes.
func Eventually(d time.Duration, cond func() bool) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if cond() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cond()
}
