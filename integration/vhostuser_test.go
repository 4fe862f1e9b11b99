package integration

// passt --vhost-user life cycle at the protocol level, without a VM: a
// minimal front end asks the back end for its features over the -s socket
// (or the --fd socket), as QEMU does first, and leaves. The data path is
// covered by link/vhostuser's tests and by TestPasstVhostUserVM.

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// vuFeatures is what gopasta's back end offers: VERSION_1, CSUM, GUEST_CSUM,
// MRG_RXBUF, EVENT_IDX, PROTOCOL_FEATURES.
const vuFeatures = 1<<32 | 1<<0 | 1<<1 | 1<<15 | 1<<29 | 1<<30

// vuGetFeatures sends GET_FEATURES on c and returns the reply's value, or
// ok false if the back end closed the connection.
func vuGetFeatures(t *testing.T, c net.Conn) (uint64, bool) {
	t.Helper()
	var req [12]byte
	binary.LittleEndian.PutUint32(req[0:], 1) // GET_FEATURES
	binary.LittleEndian.PutUint32(req[4:], 1) // version 1
	if _, err := c.Write(req[:]); err != nil {
		return 0, false
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var rep [20]byte
	n := 0
	for n < len(rep) {
		k, err := c.Read(rep[n:])
		n += k
		if err != nil {
			return 0, false
		}
	}
	if r, f, s := binary.LittleEndian.Uint32(rep[0:]), binary.LittleEndian.Uint32(rep[4:]), binary.LittleEndian.Uint32(rep[8:]); r != 1 || f != 5 || s != 8 {
		t.Errorf("reply header: request %d flags %#x size %d", r, f, s)
	}
	return binary.LittleEndian.Uint64(rep[12:]), true
}

func dialVU(t *testing.T, path string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("connect %s: %v", path, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestPasstVhostUserOneOff: with -1 the daemon serves one front end,
// refuses a second one meanwhile, and exits 0 when the first leaves.
func TestPasstVhostUserOneOff(t *testing.T) {
	h := HostNetns(t)
	sock := filepath.Join(t.TempDir(), "vu.sock")
	p := startFgPasst(t, h, nil, passtBin(t), "-f", "-1", "--vhost-user", "-s", sock)
	waitSocket(t, sock, 5*time.Second)
	a := dialVU(t, sock)
	if f, ok := vuGetFeatures(t, a); !ok || f != vuFeatures {
		t.Fatalf("GET_FEATURES = %#x (ok %v), want %#x", f, ok, uint64(vuFeatures))
	}
	b := dialVU(t, sock)
	if _, ok := vuGetFeatures(t, b); ok {
		t.Error("second front end served while the first is connected")
	}
	if _, ok := vuGetFeatures(t, a); !ok {
		t.Error("first front end lost")
	}
	a.Close()
	if st := p.wait(t, 5*time.Second); st != 0 {
		t.Errorf("exit status %d after the front end left, want 0", st)
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Error("socket file left behind")
	}
	out := p.out.String()
	for _, want := range []string{"vhost-user", "accepted connection", "discarding connection", "client closed connection"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// TestPasstVhostUserReconnect: without -1 a front end may leave and come
// back (QEMU restarted, the VM rebooted into a new QEMU).
func TestPasstVhostUserReconnect(t *testing.T) {
	h := HostNetns(t)
	sock := filepath.Join(t.TempDir(), "vu.sock")
	startFgPasst(t, h, nil, passtBin(t), "-f", "--vhost-user", "-s", sock)
	waitSocket(t, sock, 5*time.Second)
	for i := range 3 {
		var c net.Conn
		// The previous front end's session may still be ending.
		ok := Eventually(5*time.Second, func() bool {
			c = dialVU(t, sock)
			_, ok := vuGetFeatures(t, c)
			return ok
		})
		if !ok {
			t.Fatalf("front end %d not served", i)
		}
		c.Close()
	}
}

// TestPasstVhostUserFD: --fd hands the back end a connected socket; it
// serves it and exits 0 when the peer closes it.
func TestPasstVhostUserFD(t *testing.T) {
	h := HostNetns(t)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "vu-end")
	p := startFgPasst(t, h, []*os.File{theirs}, passtBin(t), "-f", "--vhost-user", "--fd", "3")
	theirs.Close()
	f := os.NewFile(uintptr(fds[0]), "front-end")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := vuGetFeatures(t, c); !ok || v != vuFeatures {
		t.Fatalf("GET_FEATURES over --fd = %#x (ok %v)", v, ok)
	}
	c.Close()
	if st := p.wait(t, 5*time.Second); st != 0 {
		t.Errorf("exit status %d after the peer closed, want 0", st)
	}
}

// TestPasstVhostUserTOML: "vhost-user = true" in the file does what
// --vhost-user does.
func TestPasstVhostUserTOML(t *testing.T) {
	h := HostNetns(t)
	dir := t.TempDir()
	sock, file := filepath.Join(dir, "vu.sock"), filepath.Join(dir, "vm.toml")
	toml := fmt.Sprintf("mode = \"passt\"\nsocket = %q\nvhost-user = true\none-off = true\n", sock)
	if err := os.WriteFile(file, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startFgPasst(t, h, nil, gopastaBin, "-f", "--config", file)
	waitSocket(t, sock, 5*time.Second)
	c := dialVU(t, sock)
	if v, ok := vuGetFeatures(t, c); !ok || v != vuFeatures {
		t.Fatalf("GET_FEATURES = %#x (ok %v)", v, ok)
	}
	c.Close()
	if st := p.wait(t, 5*time.Second); st != 0 {
		t.Errorf("exit status %d, want 0", st)
	}
}

// TestPasstVhostUserVMLifecycle boots the e2e guest against one gopasta
// --vhost-user daemon (no -1) and puts the back end through what a VM's
// life does to it: the guest gets its address (DHCP through the rings),
// the machine is reset (QEMU stops the rings, the guest's driver starts
// them again from scratch), the guest gets its address again, then QEMU
// goes away and a new QEMU, with new memory, connects and does the same.
// The daemon must serve all three boots and log no error.
func TestPasstVhostUserVMLifecycle(t *testing.T) {
	vmGuest(t)
	qemu := os.Getenv("QEMU")
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	guest := os.Getenv("GUEST_DIR")
	if guest == "" {
		guest = "/var/tmp/gopasta-vm/guest"
	}
	h := HostNetns(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "vu.sock")
	p := startFgPasst(t, h, nil, passtBin(t), "-f", "--vhost-user", "-s", sock)
	waitSocket(t, sock, 5*time.Second)

	boot := func(n int) (console *syncBuf, monitor string, stop func()) {
		console = &syncBuf{}
		monitor = filepath.Join(dir, fmt.Sprintf("mon%d", n))
		kernel := filepath.Join(guest, "vmlinux")
		if _, err := os.Stat(kernel); err != nil {
			kernel = filepath.Join(guest, "vmlinuz")
		}
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		// The guest's steps beyond DHCP fail (nothing listens for
		// them) and it powers off: -no-shutdown keeps the machine for
		// a reset. No MSI-X: QEMU 7.2 crashes with vhost-user + MSI-X
		// under TCG (see vm-e2e.sh).
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", h.Name, qemu,
			"-accel", "tcg", "-nographic", "-no-shutdown", "-m", "256", "-smp", "1",
			"-kernel", kernel, "-initrd", filepath.Join(guest, "initramfs.gz"),
			"-append", "console=ttyS0 panic=-1 loglevel=4 e2e.http=1 e2e.token=x e2e.sink=1 e2e.iperf=0 e2e.bigmb=1 e2e.ipv6=0 e2e.fwdwait=1",
			"-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-machine", "memory-backend=mem",
			"-chardev", "socket,id=c,path="+sock, "-netdev", "vhost-user,id=s,chardev=c",
			"-device", "virtio-net-pci,netdev=s,mac=52:54:00:12:34:56,romfile=,vectors=0",
			"-monitor", "unix:"+monitor+",server=on,wait=off")
		cmd.Stdout, cmd.Stderr = console, console
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		stop = func() { cancel(); <-exited }
		t.Cleanup(stop)
		return console, monitor, stop
	}
	leases := func(c *syncBuf) int { return strings.Count(c.String(), "E2E-RESULT dhcp PASS") }
	waitLeases := func(c *syncBuf, n int, what string) {
		t.Helper()
		if !Eventually(90*time.Second, func() bool { return leases(c) >= n }) {
			t.Fatalf("%s: no DHCP lease through the vhost-user link; console:\n%s", what, tail(c.String(), 3000))
		}
	}
	monitorCmd := func(path string, cmds ...string) {
		t.Helper()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("QEMU monitor: %v", err)
		}
		defer c.Close()
		for _, s := range cmds {
			if _, err := c.Write([]byte(s + "\n")); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	con, mon, stop := boot(1)
	waitLeases(con, 1, "first boot")
	monitorCmd(mon, "system_reset", "cont")
	waitLeases(con, 2, "after a machine reset")
	stop()

	con, _, _ = boot(2)
	waitLeases(con, 1, "second QEMU")
	out := p.out.String()
	if n := strings.Count(out, "accepted connection"); n != 2 {
		t.Errorf("%d connections accepted, want 2", n)
	}
	for _, bad := range []string{"broke a virtqueue", "closing the connection"} {
		if strings.Contains(out, bad) {
			t.Errorf("daemon log has %q:\n%s", bad, tail(out, 3000))
		}
	}
}
