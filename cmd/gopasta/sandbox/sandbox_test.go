package sandbox

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The sandbox cannot be undone, so each case runs in a child: the test
// binary again, told by helperEnv which case to play.
const helperEnv = "GOPASTA_SANDBOX_HELPER"

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" {
		os.Exit(helper(h))
	}
	os.Exit(m.Run())
}

// busyThreads starts goroutines locked to threads of their own that stay
// alive, so that a change made on one thread only would show.
func busyThreads(n int) (stop func()) {
	var wg sync.WaitGroup
	done := make(chan struct{})
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			<-done
		}()
	}
	return func() { close(done); wg.Wait() }
}

func helper(name string) int {
	defer busyThreads(4)()
	time.Sleep(10 * time.Millisecond)
	switch name {
	case "kill":
		if err := Seccomp(ModePasst, Kill); err != nil {
			return 3
		}
		_ = unix.Unshare(unix.CLONE_NEWNS) // not allowed: SIGSYS
		return 0
	case "errno":
		if err := Seccomp(ModePasst, Errno); err != nil {
			return 3
		}
		if err := unix.Unshare(unix.CLONE_NEWNS); !errors.Is(err, unix.EPERM) {
			return 4
		}
		// What the daemon does keeps working.
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return 5
		}
		unix.Close(fd)
		// A socket family it has no use for is refused.
		if _, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0); !errors.Is(err, unix.EPERM) {
			return 6
		}
		// A fork (clone without CLONE_THREAD) is refused too.
		if err := exec.Command("/bin/true").Run(); err == nil {
			return 7
		}
		return 0
	case "landlock":
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return 3
		}
		dir, err := unix.Open(os.Getenv("GOPASTA_LANDLOCK_DIR"), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return 3
		}
		pre, err := os.Open("/proc/self/status") // opened before: still readable
		if err != nil {
			return 3
		}
		r, err := Landlock([]int{dir}, false)
		if err != nil {
			os.Stderr.WriteString(err.Error())
			return 4
		}
		if r.ABI == 0 {
			return 10 // no Landlock here: skipped
		}
		if _, err := os.ReadFile("/etc/passwd"); !errors.Is(err, unix.EACCES) {
			return 5
		}
		if _, err := os.ReadFile(os.Getenv("GOPASTA_LANDLOCK_DIR") + "/file"); err != nil {
			return 6
		}
		if f, err := os.Create(os.Getenv("GOPASTA_LANDLOCK_DIR") + "/new"); err == nil {
			f.Close()
			return 7
		}
		if _, err := pre.Read(make([]byte, 64)); err != nil {
			return 8
		}
		return 0
	case "drop":
		d, err := Drop(Privileges{ChangeUser: true, UID: 65534, GID: 65534, KeepBindService: true})
		if err != nil {
			os.Stderr.WriteString(err.Error())
			return 3
		}
		if err := VerifyThreads(d); err != nil {
			os.Stderr.WriteString(err.Error())
			return 4
		}
		if !d.KeptBindService || !d.Bounded {
			return 5
		}
		return 0
	}
	return 2
}

func runHelper(t *testing.T, name string, env ...string) (*exec.Cmd, string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), helperEnv+"="+name), env...)
	out, err := cmd.CombinedOutput()
	return cmd, string(out), err
}

// TestSeccompKills: a call outside the list kills the process with
// SIGSYS, whichever thread makes it.
func TestSeccompKills(t *testing.T) {
	_, out, err := runHelper(t, "kill")
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("helper: %v %s", err, out)
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGSYS {
		t.Errorf("helper ended with %v, want killed by SIGSYS\n%s", ws, out)
	}
}

// TestSeccompErrno: --seccomp-debug's action returns EPERM and the
// daemon's own calls still work.
func TestSeccompErrno(t *testing.T) {
	if _, out, err := runHelper(t, "errno"); err != nil {
		t.Errorf("helper: %v\n%s", err, out)
	}
}

// TestDropAllThreads: as root, every thread ends up as nobody with only
// CAP_NET_BIND_SERVICE and no_new_privs (VerifyThreads checks them all).
func TestDropAllThreads(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, out, err := runHelper(t, "drop"); err != nil {
		t.Errorf("helper: %v\n%s", err, out)
	}
}

func TestParseStatus(t *testing.T) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseStatus(b)
	if err != nil {
		t.Fatal(err)
	}
	if c.TID != os.Getpid() || c.UID[0] != os.Getuid() {
		t.Errorf("parsed %+v", c)
	}
	if _, err := ParseStatus([]byte("Name:\tx\n")); err == nil || !strings.Contains(err.Error(), "lacks") {
		t.Errorf("empty status: %v", err)
	}
}

// TestLandlock: once restricted, no file can be opened or created but
// files beneath the allowed directory read; descriptors opened before
// still work.
func TestLandlock(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/file", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, out, err := runHelper(t, "landlock", "GOPASTA_LANDLOCK_DIR="+dir)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 10 {
		t.Skip("no Landlock in this kernel")
	}
	if err != nil {
		t.Errorf("helper: %v\n%s", err, out)
	}
}
