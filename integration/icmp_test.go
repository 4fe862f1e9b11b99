package integration

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"regexp"
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
