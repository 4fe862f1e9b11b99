package forward

import (
	"encoding/binary"
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func hostDiagSocket() (int, error) {
	return unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
}

// TestDiagScannerListening: sock_diag lists this namespace's listening
// TCP sockets of both families as /proc/net/tcp does, and not the ports of
// connected sockets; a skipped inode is left out.
func TestDiagScannerListening(t *testing.T) {
	s, err := openTCPScanner(hostDiagSocket, openHere)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, ok := s.(*diagScanner); !ok {
		t.Skip("no sock_diag here: the /proc fallback is in use")
	}
	l4, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l4.Close()
	l6, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6:", err)
	}
	defer l6.Close()
	skipped, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer skipped.Close()
	c, err := net.Dial("tcp4", l4.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	port := func(a net.Addr) uint16 { return uint16(a.(*net.TCPAddr).Port) }
	var got portSet
	if err := s.scan(&got, map[uint64]struct{}{inode(t, skipped): {}}); err != nil {
		t.Fatal(err)
	}
	for _, l := range []net.Listener{l4, l6} {
		if !got.has(port(l.Addr())) {
			t.Errorf("listening port %d not listed", port(l.Addr()))
		}
	}
	if got.has(port(skipped.Addr())) {
		t.Errorf("skipped socket's port %d listed", port(skipped.Addr()))
	}
	if got.has(port(c.LocalAddr())) {
		t.Errorf("connected socket's port %d listed", port(c.LocalAddr()))
	}
	// Everything the diag scanner lists, /proc lists too.
	proc := hostListening(t)
	for p := 0; p < 65536; p++ {
		if got.has(uint16(p)) && !proc.has(uint16(p)) {
			t.Errorf("port %d from sock_diag, not in /proc/net/tcp", p)
		}
	}
}

// inode returns the socket inode of a listener.
func inode(t *testing.T, l net.Listener) uint64 {
	t.Helper()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// TestParseDiagDump: malformed answers are errors, not panics; messages
// of another dump (sequence) are ignored.
func TestParseDiagDump(t *testing.T) {
	msg := func(typ uint16, seq uint32, body []byte) []byte {
		b := make([]byte, unix.NLMSG_HDRLEN+len(body))
		binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
		binary.NativeEndian.PutUint16(b[4:], typ)
		binary.NativeEndian.PutUint32(b[8:], seq)
		copy(b[unix.NLMSG_HDRLEN:], body)
		return b
	}
	sock := func(port uint16, state byte) []byte {
		b := make([]byte, inetDiagMsgLen)
		b[0], b[1] = unix.AF_INET, state
		binary.BigEndian.PutUint16(b[4:], port)
		return b
	}
	var out portSet
	b := append(msg(sockDiagByFamily, 7, sock(8080, tcpListen)), msg(sockDiagByFamily, 7, sock(9090, 1))...)
	b = append(b, msg(sockDiagByFamily, 6, sock(7070, tcpListen))...)
	if done, err := parseDiagDump(b, 7, &out, nil); done || err != nil {
		t.Fatalf("done %v err %v", done, err)
	}
	if !out.has(8080) || out.has(9090) || out.has(7070) || out.count() != 1 {
		t.Errorf("ports %d, 8080 %v 9090 %v 7070 %v", out.count(), out.has(8080), out.has(9090), out.has(7070))
	}
	if done, err := parseDiagDump(msg(unix.NLMSG_DONE, 7, make([]byte, 4)), 7, &out, nil); !done || err != nil {
		t.Errorf("DONE: %v %v", done, err)
	}
	e := make([]byte, 4)
	errno := -int32(unix.ENOENT)
	binary.NativeEndian.PutUint32(e, uint32(errno))
	if _, err := parseDiagDump(msg(unix.NLMSG_ERROR, 7, e), 7, &out, nil); err == nil {
		t.Error("error message not reported")
	}
	whole := msg(sockDiagByFamily, 7, sock(1, tcpListen))
	for i := range whole {
		parseDiagDump(whole[:i], 7, &out, nil) // must not panic
	}
	bad := msg(sockDiagByFamily, 7, sock(1, tcpListen))
	binary.NativeEndian.PutUint32(bad, 3)
	if _, err := parseDiagDump(bad, 7, &out, nil); err == nil {
		t.Error("a length below the header accepted")
	}
}
