package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pcapFrame is one record of a capture file, with the little of the frame
// the tests look at decoded (IPv4 only, which is what they send).
type pcapFrame struct {
	ts       int64 // nanoseconds
	data     []byte
	proto    byte
	src, dst netip.Addr
	// ICMP
	icmpType    byte
	icmpID, seq uint16
	// TCP
	sport, dport uint16
	flags        byte
	payload      int
}

// readPcap reads a capture gopasta wrote and fails t unless it is a
// well-formed classic pcap file of Ethernet frames, to its last byte.
func readPcap(t *testing.T, path string) []pcapFrame {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 24 {
		t.Fatalf("capture is %d bytes", len(b))
	}
	le := binary.LittleEndian
	var nsPerUnit int64
	switch le.Uint32(b) {
	case 0xa1b2c3d4:
		nsPerUnit = 1000
	case 0xa1b23c4d:
		nsPerUnit = 1
	default:
		t.Fatalf("magic %#x", le.Uint32(b))
	}
	if v := [2]uint16{le.Uint16(b[4:]), le.Uint16(b[6:])}; v != [2]uint16{2, 4} {
		t.Errorf("version %d.%d", v[0], v[1])
	}
	snap := int(le.Uint32(b[16:]))
	if lt := le.Uint32(b[20:]); lt != 1 {
		t.Errorf("link type %d, want 1 (Ethernet)", lt)
	}
	var frames []pcapFrame
	for off := 24; off < len(b); {
		if len(b)-off < 16 {
			t.Fatalf("record %d: truncated header (%d bytes left)", len(frames), len(b)-off)
		}
		h := b[off:]
		ts := int64(le.Uint32(h))*1e9 + int64(le.Uint32(h[4:]))*nsPerUnit
		incl, orig := int(le.Uint32(h[8:])), int(le.Uint32(h[12:]))
		off += 16
		if incl > orig || incl > snap || len(b)-off < incl {
			t.Fatalf("record %d: incl_len %d orig_len %d snaplen %d, %d bytes left", len(frames), incl, orig, snap, len(b)-off)
		}
		f := pcapFrame{ts: ts, data: b[off : off+incl]}
		decodeIPv4(&f)
		frames = append(frames, f)
		off += incl
	}
	return frames
}

// decodeIPv4 fills f's fields from an Ethernet/IPv4 frame.
func decodeIPv4(f *pcapFrame) {
	b := f.data
	if len(b) < 34 || binary.BigEndian.Uint16(b[12:]) != 0x0800 {
		return
	}
	ip := b[14:]
	ihl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < 20 || total < ihl || total > len(ip) {
		return
	}
	f.proto = ip[9]
	f.src = netip.AddrFrom4([4]byte(ip[12:16]))
	f.dst = netip.AddrFrom4([4]byte(ip[16:20]))
	l4 := ip[ihl:total]
	switch {
	case f.proto == 1 && len(l4) >= 8:
		f.icmpType = l4[0]
		f.icmpID, f.seq = binary.BigEndian.Uint16(l4[4:]), binary.BigEndian.Uint16(l4[6:])
	case f.proto == 6 && len(l4) >= 20:
		f.sport, f.dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		f.flags = l4[13]
		f.payload = len(l4) - int(l4[12]>>4)*4
	}
}

// TCP flag bits, as in the header.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpACK = 0x10
)

// TestPcap: with --pcap, gopasta writes every frame it exchanges with the
// guest, both ways, and leaves a complete file when it exits on SIGTERM:
// a raw ping to the gateway (requests and replies matched by identifier
// and sequence number) and a small TCP transfer (handshake, every byte of
// the data, both FINs).
func TestPcap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "guest.pcap")
	gp := StartGopasta(t, "--pcap", path)
	// The file exists, with its header, once gopasta is ready.
	if st, err := os.Stat(path); err != nil || st.Size() < 24 {
		t.Fatalf("capture after start: %v, %v", st, err)
	}
	guest4 := guestAddr4(t, gp.Guest)
	gw := netip.MustParseAddr(HostGW4)

	const pingID = 0x5a5a
	rawPing(t, gp.Guest, gw, pingID, 3)

	const size = 200 << 10
	l := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	got := make(chan int, 1)
	go func() {
		c, err := l.AcceptTCP()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		n, _ := io.Copy(io.Discard, c)
		got <- int(n)
	}()
	c := mustDial(t, gp.Guest, "tcp4", hostPort(HostGW4, lport(l)))
	guestPort := uint16(c.LocalAddr().(interface{ AddrPort() netip.AddrPort }).AddrPort().Port())
	if _, err := c.Write(bytes.Repeat([]byte("pcap"), size/4)); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	if n := <-got; n != size {
		t.Fatalf("server got %d bytes, want %d", n, size)
	}
	// The server's FIN reaches the guest when the guest reads EOF.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("guest read after the server closed: %d, %v", n, err)
	}
	c.Close()

	// Stop gopasta at once, so that the last frames are still in the
	// capture's buffer: the file is only complete if the exit flushes.
	pid := gp.PID()
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, ok := waitGone(pid, 3*time.Second); !ok {
		t.Fatal("gopasta still running 3 s after SIGTERM")
	}

	frames := readPcap(t, path)
	var last int64
	for i, f := range frames {
		if f.ts < last {
			t.Errorf("record %d: timestamp %d before the previous one's %d", i, f.ts, last)
		}
		last = f.ts
	}

	// ICMP: every request from the guest and the reply to it, in order.
	for seq := uint16(1); seq <= 3; seq++ {
		req, rep := -1, -1
		for i, f := range frames {
			if f.proto != 1 || f.icmpID != pingID || f.seq != seq {
				continue
			}
			if f.icmpType == 8 && f.src == guest4 && f.dst == gw && req < 0 {
				req = i
			}
			if f.icmpType == 0 && f.src == gw && f.dst == guest4 && rep < 0 {
				rep = i
			}
		}
		if req < 0 || rep < 0 || rep < req {
			t.Errorf("echo seq %d: request at record %d, reply at record %d (of %d)", seq, req, rep, len(frames))
		}
	}

	// TCP: the handshake, the data and both FINs, each way.
	var syn, synAck, finOut, finIn bool
	var data int
	for _, f := range frames {
		if f.proto != 6 {
			continue
		}
		switch {
		case f.src == guest4 && f.sport == guestPort:
			syn = syn || f.flags&(tcpSYN|tcpACK) == tcpSYN
			finOut = finOut || f.flags&tcpFIN != 0
			data += f.payload
		case f.dst == guest4 && f.dport == guestPort:
			synAck = synAck || f.flags&(tcpSYN|tcpACK) == tcpSYN|tcpACK
			finIn = finIn || f.flags&tcpFIN != 0
		}
	}
	if !syn || !synAck || !finOut || !finIn || data < size {
		t.Errorf("TCP from port %d: SYN %v, SYN-ACK %v, FIN from guest %v, FIN to guest %v, %d of %d bytes of data",
			guestPort, syn, synAck, finOut, finIn, data, size)
	}

	// An independent reader agrees, if there is one.
	if _, err := exec.LookPath("tcpdump"); err == nil {
		checkTcpdump(t, path, len(frames), pingID)
	}
}

// checkTcpdump reads the capture with tcpdump, which must read all of its
// records without complaint and see the pings of identifier id.
func checkTcpdump(t *testing.T, path string, records int, id uint16) {
	t.Helper()
	cmd := exec.Command("tcpdump", "-r", path, "-nn")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, stderr.String())
	}
	if s := stderr.String(); strings.Contains(s, "truncated") || strings.Contains(s, "error") {
		t.Errorf("tcpdump complains: %s", s)
	}
	out := stdout.String()
	if n := strings.Count(out, "\n"); n != records {
		t.Errorf("tcpdump printed %d lines for %d records", n, records)
	}
	for _, kind := range []string{"request", "reply"} {
		re := regexp.MustCompile(fmt.Sprintf(`ICMP echo %s, id %d, seq [123],`, kind, id))
		if n := len(re.FindAllString(out, -1)); n < 3 {
			t.Errorf("tcpdump shows %d echo %s messages with id %d:\n%s", n, kind, id, tail(out, 3000))
		}
	}
}

// guestAddr4 returns the guest's IPv4 address, as --config-net set it.
func guestAddr4(t *testing.T, g Netns) netip.Addr {
	t.Helper()
	out := g.Exec(t, "ip", "-4", "-o", "addr", "show", "scope", "global")
	m := regexp.MustCompile(`inet ([0-9.]+)/`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no IPv4 address in the guest: %s", out)
	}
	return netip.MustParseAddr(m[1])
}

// TestPcapUncreatable: a capture path that cannot be created is a setup
// error, as in pasta: exit status 1 and one line naming the file.
func TestPcapUncreatable(t *testing.T) {
	h := HostNetns(t)
	g := NewNetns(t, "g")
	r := runFront(t, h, 5*time.Second, "--config-net", "--netns", g.Path(), "-q", "--pcap", "/nonexistent/dir/x.pcap")
	if r.code != 1 {
		t.Errorf("exit status %d, want 1 (output %q)", r.code, r.out)
	}
	want := "gopasta: cannot open pcap file /nonexistent/dir/x.pcap: no such file or directory\n"
	if r.out != want {
		t.Errorf("output %q, want %q", r.out, want)
	}
}

// TestPcapPasst: passt mode captures the same way: a client's DHCP
// DISCOVER and the OFFER it got are in the file, byte for byte, once the
// one-off daemon has exited because its client left.
func TestPcapPasst(t *testing.T) {
	h := HostNetns(t)
	dir := t.TempDir()
	sock, path := filepath.Join(dir, "p.sock"), filepath.Join(dir, "vm.pcap")
	p := startFgPasst(t, h, nil, passtBin(t), "-f", "-1", "-s", sock, "--pcap", path)
	waitSocket(t, sock, 5*time.Second)
	a := dialQemu(t, sock, macA)
	_, offer := a.dhcp()
	a.c.Close()
	if st := p.wait(t, 5*time.Second); st != 0 {
		t.Fatalf("exit status %d after the client left, want 0", st)
	}
	var discover, offered bool
	for _, f := range readPcap(t, path) {
		b := f.data
		if len(b) >= 42 && bytes.Equal(b[6:12], macA) && f.proto == 17 && binary.BigEndian.Uint16(b[36:]) == 67 {
			discover = true
		}
		offered = offered || bytes.Equal(b, offer)
	}
	if !discover || !offered {
		t.Errorf("capture has DISCOVER %v, the OFFER %v", discover, offered)
	}
	if out := p.out.String(); !strings.Contains(out, "Saving packet capture to "+path) {
		t.Errorf("output lacks the capture notice:\n%s", out)
	}
}

// TestPcapNetnsGone: when the namespace goes away, gopasta exits with a
// complete capture too (here: the ping that ran just before).
func TestPcapNetnsGone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "guest.pcap")
	gp := StartGopasta(t, "--pcap", path)
	const pingID = 0x7e57
	rawPing(t, gp.Guest, netip.MustParseAddr(HostGW4), pingID, 1)
	pid := gp.PID()
	run(t, "ip", "netns", "del", gp.Guest.Name)
	if _, ok := waitGone(pid, 3*time.Second); !ok {
		t.Fatal("gopasta still running 3 s after ip netns del")
	}
	var req, rep bool
	for _, f := range readPcap(t, path) {
		if f.proto == 1 && f.icmpID == pingID && f.seq == 1 {
			req = req || f.icmpType == 8
			rep = rep || f.icmpType == 0
		}
	}
	if !req || !rep {
		t.Errorf("capture has echo request %v, reply %v", req, rep)
	}
}
