package integration

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Extra host addresses the guest pings as "a host address": pasta gives
// the guest the host's own address, so that one would be the guest itself.
const (
	HostExtra4 = "198.51.100.3"
	HostExtra6 = "2001:db8:1::3"
)

// rawPing sends count echo requests with identifier id from a raw socket in
// ns and checks that each reply carries the same identifier and sequence
// number and the payload.
func rawPing(t *testing.T, ns Netns, dst netip.Addr, id uint16, count int) {
	t.Helper()
	v6 := dst.Is6()
	var fd int
	var err error
	InNetns(t, ns, func() {
		if v6 {
			fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
		} else {
			fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		}
	})
	if err != nil {
		t.Fatalf("raw socket: %v", err)
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2})
	var sa unix.Sockaddr
	if v6 {
		sa = &unix.SockaddrInet6{Addr: dst.As16()}
	} else {
		sa = &unix.SockaddrInet4{Addr: dst.As4()}
	}
	reqType, repType := byte(8), byte(0)
	if v6 {
		reqType, repType = 128, 129
	}
	for seq := 1; seq <= count; seq++ {
		payload := []byte(fmt.Sprintf("gopasta ping %d", seq))
		m := make([]byte, 8+len(payload))
		m[0] = reqType
		binary.BigEndian.PutUint16(m[4:], id)
		binary.BigEndian.PutUint16(m[6:], uint16(seq))
		copy(m[8:], payload)
		if !v6 {
			binary.BigEndian.PutUint16(m[2:], icmpChecksum(m))
		} // the kernel computes ICMPv6 checksums of raw sockets
		if err := unix.Sendto(fd, m, 0, sa); err != nil {
			t.Fatalf("send: %v", err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for {
			if time.Now().After(deadline) {
				t.Fatalf("no reply to seq %d", seq)
			}
			buf := make([]byte, 1500)
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				t.Fatalf("seq %d: %v", seq, err)
			}
			r := buf[:n]
			if !v6 { // raw IPv4 sockets deliver the IP header
				r = r[int(r[0]&0x0f)*4:]
			}
			if len(r) < 8 || r[0] != repType {
				continue // our own request, or other traffic
			}
			gotID, gotSeq := binary.BigEndian.Uint16(r[4:]), binary.BigEndian.Uint16(r[6:])
			if gotID != id {
				continue // another ping's reply would be a bug only if it had our seq
			}
			if gotSeq != uint16(seq) || string(r[8:]) != string(payload) {
				t.Fatalf("reply id %#x seq %d payload %q, want seq %d %q", gotID, gotSeq, r[8:], seq, payload)
			}
			break
		}
	}
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// TestPing: ping -c 3 from the guest to the gateway (the host's loopback)
// and to a host address, IPv4 and IPv6, and a raw-socket ping that checks
// identifiers and sequence numbers of the replies.
func TestPing(t *testing.T) {
	needTool(t, "ping")
	gp := StartGopasta(t)
	gp.Host.Exec(t, "ip", "addr", "add", HostExtra4+"/32", "dev", HostIf)
	gp.Host.Exec(t, "ip", "addr", "add", HostExtra6+"/128", "dev", HostIf, "nodad")
	received := regexp.MustCompile(`3 packets transmitted, 3 received`)
	for i, dst := range []string{HostGW4, HostExtra4, HostGW6, HostExtra6} {
		t.Run(dst, func(t *testing.T) {
			out, err := gp.Guest.Try("ping", "-c", "3", "-i", "0.2", "-W", "2", dst)
			if err != nil || !received.MatchString(out) {
				t.Fatalf("ping %s: %v\n%s", dst, err, out)
			}
			rawPing(t, gp.Guest, netip.MustParseAddr(dst), uint16(0x4242+i), 3)
		})
	}
}

// pingSocketAddrs returns the local addresses of the ping sockets open in
// ns (/proc/net/icmp and icmp6 print them as the kernel's words in hex).
func pingSocketAddrs(t *testing.T, ns Netns) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, f := range []string{"/proc/net/icmp", "/proc/net/icmp6"} {
		for _, line := range strings.Split(ns.Exec(t, "cat", f), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) < 2 {
				continue
			}
			h, _, _ := strings.Cut(fields[1], ":")
			b, err := hex.DecodeString(h)
			if err != nil || (len(b) != 4 && len(b) != 16) {
				t.Fatalf("%s: %q", f, line)
			}
			for i := 0; i < len(b); i += 4 {
				binary.BigEndian.PutUint32(b[i:], binary.LittleEndian.Uint32(b[i:]))
			}
			a, _ := netip.AddrFromSlice(b)
			out = append(out, a)
		}
	}
	return out
}

// TestPingOutbound: ICMP echo honours -o and --outbound-if4/6 as TCP and
// UDP do, and as pasta does: the host's ping socket is bound to the -o
// address, or to the --outbound-if interface.
func TestPingOutbound(t *testing.T) {
	needTool(t, "ping")
	// The host has a second interface, alt0, towards a neighbour that
	// answers pings; the default route stays on up0.
	newHost := func(t *testing.T) Netns {
		h := HostNetns(t)
		a := NewNetns(t, "a")
		peer := "gpa" + uniq()[:6]
		run(t, "ip", "link", "add", "alt0", "netns", h.Name, "type", "veth", "peer", "name", peer, "netns", a.Name)
		h.Exec(t, "ip", "addr", "add", "203.0.113.2/24", "dev", "alt0")
		h.Exec(t, "ip", "addr", "add", "2001:db8:9::2/64", "dev", "alt0", "nodad")
		h.Exec(t, "ip", "link", "set", "alt0", "up")
		a.Exec(t, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
		a.Exec(t, "ip", "addr", "add", "203.0.113.1/24", "dev", peer)
		a.Exec(t, "ip", "addr", "add", "2001:db8:9::1/64", "dev", peer, "nodad")
		a.Exec(t, "ip", "link", "set", peer, "up")
		// Neighbours resolved from the host first: a first IPv6 echo
		// through a fresh veth may be lost, which would make "no reply"
		// below mean nothing.
		for _, dst := range []string{"2001:db8:9::1", HostGW6} {
			_, _ = h.Try("ping", "-c", "1", "-i", "0.2", "-w", "2", dst)
		}
		return h
	}
	// pings: one reply within a second (echoes every 0.2 s until then).
	pings := func(t *testing.T, g Netns, dst string) bool {
		_, err := g.Try("ping", "-c", "1", "-i", "0.2", "-w", "1", dst)
		return err == nil
	}

	t.Run("-o", func(t *testing.T) {
		gp := LaunchGopastaIn(t, newHost(t), "--config-net", "--no-map-gw", "-o", "203.0.113.2", "-o", "2001:db8:9::2")
		for _, dst := range []string{"203.0.113.1", "2001:db8:9::1"} {
			if !pings(t, gp.Guest, dst) {
				t.Errorf("no echo reply from %s", dst)
			}
		}
		got := pingSocketAddrs(t, gp.Host)
		for _, want := range []string{"203.0.113.2", "2001:db8:9::2"} {
			if !slices.Contains(got, netip.MustParseAddr(want)) {
				t.Errorf("no ping socket bound to -o %s: %v", want, got)
			}
		}
	})
	t.Run("--outbound-if", func(t *testing.T) {
		gp := LaunchGopastaIn(t, newHost(t), "--config-net", "--no-map-gw", "-i", HostIf,
			"--outbound-if4", "alt0", "--outbound-if6", "alt0")
		for _, dst := range []string{"203.0.113.1", "2001:db8:9::1"} {
			if !pings(t, gp.Guest, dst) {
				t.Errorf("no echo reply from %s through alt0", dst)
			}
		}
		// The gateway is on up0: bound to alt0, the echo cannot leave.
		for _, dst := range []string{HostGW4, HostGW6} {
			if pings(t, gp.Guest, dst) {
				t.Errorf("echo reply from %s, which is not reachable through alt0", dst)
			}
		}
	})
}
