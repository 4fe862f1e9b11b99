package netcfg

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/actors/nat"
)

// startResolvFollowerIn follows path for a NAT forwarding to the first
// nameservers path has now, and returns the NAT. With keepRoot it runs as
// the sandboxed daemon runs it: everything through a descriptor of the
// mount tree (resolvroot.go).
func startResolvFollowerIn(t *testing.T, path string, keepRoot bool) *nat.NAT {
	t.Helper()
	servers, _ := readResolvConf(path)
	n := &nat.NAT{DNSForward4: netip.MustParseAddr("169.254.1.1"), DNSForward6: netip.MustParseAddr("fd00::53")}
	for _, a := range servers {
		if a.Is4() && !n.DNSHost4.IsValid() {
			n.DNSHost4 = a
		} else if a.Is6() && !n.DNSHost6.IsValid() {
			n.DNSHost6 = a
		}
	}
	log := logrus.New()
	log.Out = io.Discard
	r, err := FollowResolvConf(path, false, n, log)
	if err != nil || r == nil {
		t.Fatalf("FollowResolvConf: %v %v", r, err)
	}
	if keepRoot {
		if err := r.KeepRoot(); err != nil {
			t.Fatal(err)
		}
	}
	runUntilCleanup(t, r.Run)
	return n
}

// waitDNS waits until nat forwards to want4 and want6.
func waitDNS(t *testing.T, n *nat.NAT, step, want4, want6 string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		v4, v6 := n.DNSHosts()
		if v4.String() == want4 && v6.String() == want6 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: DNS hosts %s %s, want %s %s", step, v4, v6, want4, want6)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replaceFile writes s beside path and renames it over path, as
// NetworkManager and resolvconf do.
func replaceFile(t *testing.T, path, s string) {
	t.Helper()
	tmp := path + ".tmp"
	writeFile(t, tmp, s)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestResolvFollowerFile: a resolv.conf rewritten in place and replaced by
// renames moves the forward addresses; a file without nameservers of a
// family leaves that family alone.
func TestResolvFollowerFile(t *testing.T) {
	for _, keepRoot := range []bool{false, true} {
		t.Run(fmt.Sprintf("keepRoot=%v", keepRoot), func(t *testing.T) { testResolvFollowerFile(t, keepRoot) })
	}
}

func testResolvFollowerFile(t *testing.T, keepRoot bool) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	writeFile(t, path, "nameserver 192.0.2.1\nnameserver 2001:db8::1\n")
	n := startResolvFollowerIn(t, path, keepRoot)
	waitDNS(t, n, "start", "192.0.2.1", "2001:db8::1")

	writeFile(t, path, "# in place\nnameserver 192.0.2.2\nnameserver 2001:db8::2\n")
	waitDNS(t, n, "in place", "192.0.2.2", "2001:db8::2")

	replaceFile(t, path, "nameserver 192.0.2.3\n")
	waitDNS(t, n, "renamed, IPv4 only", "192.0.2.3", "2001:db8::2")

	writeFile(t, path, "")
	replaceFile(t, path, "search example.org\n")
	// Nothing to change to: a later change must still be seen, so the
	// inode watch has followed the replacement.
	writeFile(t, path, "nameserver 2001:db8::4\nnameserver 192.0.2.4\n")
	waitDNS(t, n, "in place after rename", "192.0.2.4", "2001:db8::4")

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	replaceFile(t, path, "nameserver 192.0.2.5\n")
	waitDNS(t, n, "deleted, then created", "192.0.2.5", "2001:db8::4")
}

// TestResolvFollowerSymlink: resolv.conf as a link to a file another
// daemon replaces in its own directory (systemd-resolved, resolvconf), and
// the link re-pointed to another directory's file.
func TestResolvFollowerSymlink(t *testing.T) {
	for _, keepRoot := range []bool{false, true} {
		t.Run(fmt.Sprintf("keepRoot=%v", keepRoot), func(t *testing.T) { testResolvFollowerSymlink(t, keepRoot) })
	}
}

func testResolvFollowerSymlink(t *testing.T, keepRoot bool) {
	etc, run1, run2 := t.TempDir(), t.TempDir(), t.TempDir()
	path := filepath.Join(etc, "resolv.conf")
	target1, target2 := filepath.Join(run1, "resolv.conf"), filepath.Join(run2, "stub.conf")
	writeFile(t, target1, "nameserver 192.0.2.1\n")
	writeFile(t, target2, "nameserver 198.51.100.1\n")
	if err := os.Symlink(target1, path); err != nil {
		t.Fatal(err)
	}
	n := startResolvFollowerIn(t, path, keepRoot)
	waitDNS(t, n, "start", "192.0.2.1", "invalid IP")

	replaceFile(t, target1, "nameserver 192.0.2.2\n")
	waitDNS(t, n, "target replaced", "192.0.2.2", "invalid IP")

	tmp := path + ".new"
	if err := os.Symlink(target2, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	waitDNS(t, n, "link re-pointed", "198.51.100.1", "invalid IP")

	replaceFile(t, target2, "nameserver 198.51.100.2\n")
	waitDNS(t, n, "new target replaced", "198.51.100.2", "invalid IP")
}

// TestResolvFollowerNotNeeded: nothing is followed for a resolver given on
// the command line, or without a forward address.
func TestResolvFollowerNotNeeded(t *testing.T) {
	n := &nat.NAT{DNSForward4: netip.MustParseAddr("169.254.1.1")}
	if r, err := FollowResolvConf("/etc/resolv.conf", true, n, logrus.New()); r != nil || err != nil {
		t.Errorf("with --dns-host: %v %v", r, err)
	}
	if r, err := FollowResolvConf("/etc/resolv.conf", false, &nat.NAT{}, logrus.New()); r != nil || err != nil {
		t.Errorf("without --dns-forward: %v %v", r, err)
	}
}
