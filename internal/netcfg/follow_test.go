package netcfg

import (
	"context"
	"io"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link/netns"
)

func TestPickHostAddr(t *testing.T) {
	a := netip.MustParseAddr
	orig, cur := a("198.51.100.2"), a("198.51.100.2")
	have := []hostAddr{
		{"lo", a("127.0.0.1"), 0},
		{"up0", a("169.254.9.9"), 0},
		{"other0", a("192.0.2.2"), 0},
		{"up0", a("198.51.100.8"), unix.IFA_F_TENTATIVE},
		{"up0", a("198.51.100.9"), unix.IFA_F_DEPRECATED},
		{"up0", a("198.51.100.10"), 0},
		{"up0", a("2001:db8:1::10"), 0},
	}
	cases := []struct {
		name      string
		orig, cur netip.Addr
		is6       bool
		have      []hostAddr
		want      netip.Addr
	}{
		{"still there", orig, cur, false, append(have, hostAddr{"up0", orig, 0}), orig},
		{"back again", orig, a("198.51.100.10"), false, append(have, hostAddr{"up0", orig, 0}), orig},
		{"current kept", orig, a("192.0.2.2"), false, have, a("192.0.2.2")},
		{"template first, fresh, not tentative", orig, cur, false, have, a("198.51.100.10")},
		{"any interface", orig, cur, false, []hostAddr{{"other0", a("192.0.2.2"), 0}}, a("192.0.2.2")},
		{"deprecated as a last resort", orig, cur, false, []hostAddr{{"up0", a("198.51.100.9"), unix.IFA_F_DEPRECATED}}, a("198.51.100.9")},
		{"nothing usable", orig, cur, false, have[:2], netip.Addr{}},
		{"IPv6", a("2001:db8:1::2"), a("2001:db8:1::2"), true, have, a("2001:db8:1::10")},
	}
	for _, c := range cases {
		if got := pickHostAddr(c.orig, c.cur, "up0", c.is6, c.have); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

// TestFollowHostAddrs changes the addresses of a host-like namespace under
// a running follower and checks where the guest-address alias leads.
func TestFollowHostAddrs(t *testing.T) {
	h, fd := nsHandle(t)
	up := addLink(t, h, "up0")
	addr(t, h, up, "198.51.100.2/24")
	addr(t, h, up, "2001:db8:1::2/64")
	route(t, h, up, "0.0.0.0/0", "198.51.100.1")
	route(t, h, up, "::/0", "2001:db8:1::1")
	other := addLink(t, h, "other0")

	cfg := &conf.Config{MapGuestAddr4: netip.MustParseAddr("169.254.1.2"), MapGuestAddr6: netip.MustParseAddr("fd00::2"), NoMapGW: true}
	host, err := resolve(h, cfg, resolvConf(t, "nameserver 192.0.2.53\n"), true)
	must(t, err)
	hook := runFollower(t, fd, host)

	n := host.NAT
	leads := func(want4, want6 string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			v4, v6 := n.HostAddrs()
			if v4.String() == want4 && v6.String() == want6 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("alias leads to %v %v, want %s %s; log: %v", v4, v6, want4, want6, entries(hook))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	leads("198.51.100.2", "2001:db8:1::2")
	// Another network: the new address comes, the old one goes.
	addr(t, h, up, "203.0.113.77/24")
	must(t, h.AddrDel(up, nlAddr("198.51.100.2/24")))
	leads("203.0.113.77", "2001:db8:1::2")
	if got := n.Outbound(netip.MustParseAddrPort("169.254.1.2:80")); got != netip.MustParseAddrPort("203.0.113.77:80") {
		t.Errorf("Outbound = %s", got)
	}
	// The template loses its address; another interface has one.
	addr(t, h, other, "192.0.2.9/24")
	must(t, h.AddrDel(up, nlAddr("203.0.113.77/24")))
	leads("192.0.2.9", "2001:db8:1::2")
	// IPv6 moves on its own.
	addr(t, h, up, "2001:db8:2::77/64")
	must(t, h.AddrDel(up, nlAddr("2001:db8:1::2/64")))
	leads("192.0.2.9", "2001:db8:2::77")
	// No IPv4 address left at all, then one again.
	must(t, h.AddrDel(other, nlAddr("192.0.2.9/24")))
	leads("invalid IP", "2001:db8:2::77")
	addr(t, h, other, "192.0.2.10/24")
	leads("192.0.2.10", "2001:db8:2::77")
	// The original address comes back: the alias returns to it.
	addr(t, h, up, "198.51.100.2/24")
	leads("198.51.100.2", "2001:db8:2::77")

	want := []string{
		"host address 198.51.100.2 gone: the guest-address alias leads to 203.0.113.77 now",
		"host address 203.0.113.77 gone: the guest-address alias leads to 192.0.2.9 now",
		"host address 2001:db8:1::2 gone: the guest-address alias leads to 2001:db8:2::77 now",
		"host address 192.0.2.9 gone and the host has no other: the host is unreachable through the guest-address alias",
		"the host has an address: the guest-address alias leads to 192.0.2.10",
		"host address 198.51.100.2 is back: the guest-address alias leads to it again",
	}
	got := entries(hook)
	if len(got) != len(want) {
		t.Fatalf("log:\n%q\nwant\n%q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("log line %d: %q, want %q", i, got[i], want[i])
		}
	}
}

// TestFollowHostAddrsLocalMode: a host without a default route at start
// puts the guest in local mode; once the host has an address, the alias
// leads there.
func TestFollowHostAddrsLocalMode(t *testing.T) {
	h, fd := nsHandle(t)
	up := addLink(t, h, "up0")
	cfg := &conf.Config{MapGuestAddr4: netip.MustParseAddr("169.254.1.2"), IPv4Only: true}
	host, err := resolve(h, cfg, resolvConf(t, ""), true)
	must(t, err)
	if cfg.Addr4 != LocalAddr4 {
		t.Fatalf("not local mode: %v", cfg.Addr4)
	}
	hook := runFollower(t, fd, host)
	time.Sleep(200 * time.Millisecond)
	if v4, _ := host.NAT.HostAddrs(); v4.IsValid() && v4 != LocalAddr4.Addr() {
		t.Errorf("alias leads to %v before the host has an address", v4)
	}
	addr(t, h, up, "198.51.100.2/24")
	deadline := time.Now().Add(5 * time.Second)
	for {
		if v4, _ := host.NAT.HostAddrs(); v4 == netip.MustParseAddr("198.51.100.2") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alias does not lead to the host's new address; log %q", entries(hook))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := entries(hook); len(got) != 1 || got[0] != "the host has an address: the guest-address alias leads to 198.51.100.2" {
		t.Errorf("log %q", got)
	}
}

// runFollower starts a follower for host in the namespace fd; at cleanup
// it is stopped and must return. The hook has its log.
func runFollower(t *testing.T, fd int, host *Host) *test.Hook {
	t.Helper()
	log, hook := test.NewNullLogger()
	var f *HostAddrFollower
	must(t, netns.Do(fd, func() (err error) {
		f, err = FollowHostAddrs(host, host.NAT, log)
		return err
	}))
	if f == nil {
		t.Fatal("nothing to follow")
	}
	runUntilCleanup(t, f.Run)
	return hook
}

// runUntilCleanup runs a follower's Run on its own goroutine until the
// test's cleanup cancels its context, and checks that it then returns.
func runUntilCleanup(t *testing.T, run func(context.Context)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
}

// TestFollowHostAddrsNotForUserAddrs: an address from -a is the user's,
// not the host's; nothing follows it.
func TestFollowHostAddrsNotForUserAddrs(t *testing.T) {
	h, fd := nsHandle(t)
	up := addLink(t, h, "up0")
	addr(t, h, up, "198.51.100.2/24")
	route(t, h, up, "0.0.0.0/0", "198.51.100.1")
	cfg := &conf.Config{Addr4: netip.MustParsePrefix("10.0.2.15/24"), IPv4Only: true}
	host, err := resolve(h, cfg, resolvConf(t, ""), true)
	must(t, err)
	log := logrus.New()
	log.Out = io.Discard
	must(t, netns.Do(fd, func() error {
		f, err := FollowHostAddrs(host, host.NAT, log)
		if f != nil {
			f.Close()
			t.Error("a follower for a user-given address")
		}
		return err
	}))
}

func nlAddr(p string) *netlink.Addr { return &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix(p))} }

func entries(h *test.Hook) []string {
	var out []string
	for _, e := range h.AllEntries() {
		out = append(out, e.Message)
	}
	return out
}

// TestFollowHostAddrsStopsQuietly: the daemon stops the follower (Close)
// while its Run may still be starting, as a short command-mode run does at
// exit; nothing of that is a warning (such as "cannot list the host's
// addresses error=use of closed file", were Close to close the netlink
// handle under Run's first look).
func TestFollowHostAddrsStopsQuietly(t *testing.T) {
	h, fd := nsHandle(t)
	up := addLink(t, h, "up0")
	addr(t, h, up, "198.51.100.2/24")
	route(t, h, up, "0.0.0.0/0", "198.51.100.1")
	cfg := &conf.Config{MapGuestAddr4: netip.MustParseAddr("169.254.1.2"), IPv4Only: true}
	host, err := resolve(h, cfg, resolvConf(t, ""), true)
	must(t, err)
	log, hook := test.NewNullLogger()
	for i := range 300 {
		var f *HostAddrFollower
		must(t, netns.Do(fd, func() (err error) {
			f, err = FollowHostAddrs(host, host.NAT, log)
			return err
		}))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); f.Run(ctx) }()
		if i%3 == 1 {
			runtime.Gosched()
		} else if i%3 == 2 {
			time.Sleep(time.Duration(i%7) * 50 * time.Microsecond)
		}
		f.Close() // the daemon's teardown: stops first, then the context
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return after Close")
		}
		f.Close()
	}
	// Closed before Run starts: Run returns at once, quietly.
	var f *HostAddrFollower
	must(t, netns.Do(fd, func() (err error) {
		f, err = FollowHostAddrs(host, host.NAT, log)
		return err
	}))
	f.Close()
	f.Run(context.Background())
	for _, e := range hook.AllEntries() {
		if e.Level <= logrus.WarnLevel {
			t.Fatalf("%s at shutdown: %s %v", e.Level, e.Message, e.Data)
		}
	}
}
