package integration

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Bulk transfers over the loopback splice path, checked by digest: the
// client sends n bytes and half-closes; the server reads to EOF, then
// sends n bytes of its own and closes; each side's digest must match what
// the other sent. The server still sending after the client's FIN is the
// half-close check.

type bulkResult struct {
	got    [32]byte // what the server received
	gotN   int64
	sent   [32]byte // what it sent back
	err    error
	remote string
}

// ServeBulk serves one bulk exchange per connection, reporting each.
func ServeBulk(l net.Listener, n int64) <-chan bulkResult {
	res := make(chan bulkResult, 4)
	ServeEach(l, func(c net.Conn) {
		r := bulkResult{remote: c.RemoteAddr().String()}
		r.got, r.gotN, r.err = drain(c)
		if r.err == nil {
			r.sent, r.err = stream(c, n, 2)
		}
		res <- r
	})
	return res
}

// bulkClient runs the client side from ns against addr.
func bulkClient(t *testing.T, ns Netns, network, addr string, n int64, server <-chan bulkResult) {
	t.Helper()
	c, err := DialTCPIn(t, ns, network, "", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(120 * time.Second))
	start := time.Now()
	sent, err := stream(c, n, 1)
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, gotN, err := drain(c)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	elapsed := time.Since(start)
	var r bulkResult
	select {
	case r = <-server:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not finish")
	}
	if r.err != nil {
		t.Fatalf("server: %v", r.err)
	}
	if r.gotN != n || !bytes.Equal(r.got[:], sent[:]) {
		t.Fatalf("client -> server: %d of %d bytes, digest match %v", r.gotN, n, r.got == sent)
	}
	if gotN != n || got != r.sent {
		t.Fatalf("server -> client: %d of %d bytes, digest match %v", gotN, n, got == r.sent)
	}
	t.Logf("%s %s: 2 x %d MiB in %v (%.1f Gbit/s), server saw the client as %s", network, addr, n>>20,
		elapsed.Round(time.Millisecond), float64(2*n*8)/elapsed.Seconds()/1e9, r.remote)
}

// TestSpliceHostToNamespace: 256 MiB each way through -t from the host's
// loopback, IPv4 and IPv6.
func TestSpliceHostToNamespace(t *testing.T) {
	gp := StartGopasta(t, "-t", "18900:28900", "-u", "none", "-T", "none", "-U", "none")
	h, g := gp.Host, gp.Guest
	res := ServeBulk(ListenTCPIn(t, g, "tcp", ":28900"), 256<<20)
	bulkClient(t, h, "tcp4", "127.0.0.1:18900", 256<<20, res)
	bulkClient(t, h, "tcp6", "[::1]:18900", 256<<20, res)
}

// TestSpliceNamespaceToHost: 256 MiB each way through -T to a server on
// the host's loopback, IPv4 and IPv6.
func TestSpliceNamespaceToHost(t *testing.T) {
	gp := StartGopasta(t, "-t", "none", "-u", "none", "-T", "18901", "-U", "none")
	h, g := gp.Host, gp.Guest
	res4 := ServeBulk(ListenTCPIn(t, h, "tcp4", "127.0.0.1:18901"), 256<<20)
	res6 := ServeBulk(ListenTCPIn(t, h, "tcp6", "[::1]:18901"), 256<<20)
	bulkClient(t, g, "tcp4", "127.0.0.1:18901", 256<<20, res4)
	bulkClient(t, g, "tcp6", "[::1]:18901", 256<<20, res6)
}

// TestSpliceHostLoToNsLo: with --host-lo-to-ns-lo a spliced client comes
// from the namespace's loopback, and services bound only there are
// reachable.
func TestSpliceHostLoToNsLo(t *testing.T) {
	gp := StartGopasta(t, "--host-lo-to-ns-lo", "-t", "18902", "-u", "none", "-T", "none", "-U", "none")
	ServeInfo(ListenTCPIn(t, gp.Guest, "tcp4", "127.0.0.1:18902"))
	_, peer, err := askInfo(t, gp.Host, "tcp4", "127.0.0.1:18902")
	if err != nil {
		t.Fatal(err)
	}
	if hostOf(peer) != "127.0.0.1" {
		t.Errorf("client seen from %s, want 127.0.0.1", peer)
	}
}

// TestSpliceNsLoopbackNotExposed: without --host-lo-to-ns-lo a service
// bound only to the namespace's loopback is not reachable from the host.
func TestSpliceNsLoopbackNotExposed(t *testing.T) {
	gp := StartGopasta(t, "-t", "18903", "-u", "none", "-T", "none", "-U", "none")
	ServeInfo(ListenTCPIn(t, gp.Guest, "tcp4", "127.0.0.1:18903"))
	if _, _, err := askInfo(t, gp.Host, "tcp4", "127.0.0.1:18903"); !refused(err) {
		t.Fatalf("got %v, want the connection refused", err)
	}
}

// TestSpliceRequestResponse: small exchanges through -T, the loopback
// TCP_RR pattern. Every answer is checked; the pumps make next to no
// reads that find nothing (they make one after every message when they
// cannot tell a FIN from no FIN: see actors.splicePump); and a request
// followed at once by the client's FIN, then the answer and the server's
// close, passes both ends of stream on.
func TestSpliceRequestResponse(t *testing.T) {
	gp := StartGopasta(t, "-t", "none", "-u", "none", "-T", "18905", "-U", "none")
	l := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:18905")
	ServeEach(l, func(c net.Conn) {
		buf := make([]byte, 64)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			for i := range buf[:n] {
				buf[i] = ^buf[i]
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
	})
	c, err := DialTCPIn(t, gp.Guest, "tcp4", "", "127.0.0.1:18905")
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	before, ok := statsOf(t, gp)["splice_tcp_empty_reads"]
	if !ok {
		t.Fatal("no splice_tcp_empty_reads in the statistics")
	}
	const rounds = 1000
	b := make([]byte, 1)
	for i := 0; i < rounds; i++ {
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, b); err != nil || b[0] != ^byte(i) {
			t.Fatalf("exchange %d: got %v, %v", i, b, err)
		}
	}
	c.Close()
	empty := statsOf(t, gp)["splice_tcp_empty_reads"] - before
	t.Logf("%d empty reads in %d exchanges", empty, rounds)
	if empty > rounds/10 {
		t.Errorf("%d reads found nothing in %d exchanges, want almost none", empty, rounds)
	}

	// Request and FIN together; the answer, then the server's FIN.
	for i := 0; i < 20; i++ {
		c, err := DialTCPIn(t, gp.Guest, "tcp4", "", "127.0.0.1:18905")
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		if err != nil || string(got) != string([]byte{^byte('p'), ^byte('i'), ^byte('n'), ^byte('g')}) {
			t.Fatalf("round %d: got %q, %v; want the answer, then end of stream", i, got, err)
		}
		c.Close()
	}
}

// TestSpliceUDPEcho: UDP from the host's loopback through -u and from the
// namespace's loopback through -U, IPv4 and IPv6, many datagrams.
func TestSpliceUDPEcho(t *testing.T) {
	gp := StartGopasta(t, "-t", "none", "-u", "18904:28904", "-T", "none", "-U", "18905")
	h, g := gp.Host, gp.Guest
	ServeUDPEcho(ListenUDPIn(t, g, "udp4", ":28904"))
	ServeUDPEcho(ListenUDPIn(t, g, "udp6", ":28904"))
	ServeUDPEcho(ListenUDPIn(t, h, "udp4", "127.0.0.1:18905"))
	ServeUDPEcho(ListenUDPIn(t, h, "udp6", "[::1]:18905"))
	for _, tc := range []struct {
		ns            Netns
		network, addr string
	}{
		{h, "udp4", "127.0.0.1:18904"}, {h, "udp6", "[::1]:18904"},
		{g, "udp4", "127.0.0.1:18905"}, {g, "udp6", "[::1]:18905"},
	} {
		c := DialUDPIn(t, tc.ns, tc.network, tc.addr)
		if !udpPing(c, "hello") {
			t.Fatalf("%s: no echo", tc.addr)
		}
		udpExchange(t, c, 2000)
	}
}

// TestSpliceOtherFamily: "localhost" often means ::1 first. A client of
// [::1]:PORT is accepted by the [::] listener; when the service on the
// other side listens on IPv4 only, the splice goes on in IPv4 instead of
// resetting a connection the client believes established (it would not
// try 127.0.0.1 then). Both directions, -t and -T.
func TestSpliceOtherFamily(t *testing.T) {
	gp := StartGopasta(t, "-t", "18904", "-u", "none", "-T", "18905", "-U", "none")
	h, g := gp.Host, gp.Guest
	ServeInfo(ListenTCPIn(t, g, "tcp4", ":18904"))
	ServeInfo(ListenTCPIn(t, h, "tcp4", "127.0.0.1:18905"))
	for _, c := range []struct {
		from      Netns
		addr      string
		wantLocal string
	}{
		{h, "[::1]:18904", HostAddr4 + ":18904"}, // reaches the namespace's own IPv4 address
		{g, "[::1]:18905", "127.0.0.1:18905"},
	} {
		local, _, err := askInfo(t, c.from, "tcp6", c.addr)
		if err != nil {
			t.Errorf("%s: %v", c.addr, err)
			continue
		}
		if local != c.wantLocal {
			t.Errorf("%s reached %s, want %s", c.addr, local, c.wantLocal)
		}
	}
}

// TestSpliceOnly: --splice-only gives the namespace no interface but its
// loopback. -t and -u from the host's loopback and -T from the
// namespace's loopback work; a client on the host's public address is
// turned away at once (TCP reset, datagram dropped, both counted); the
// namespace has no way out.
func TestSpliceOnly(t *testing.T) {
	gp := StartGopasta(t, "--splice-only", "-t", "18910", "-u", "18911", "-T", "18912", "-U", "none")
	h, g := gp.Host, gp.Guest
	if out := strings.TrimSpace(g.Exec(t, "ip", "-o", "link", "show")); strings.Contains(out, "\n") || !strings.Contains(out, ": lo:") {
		t.Fatalf("links in the namespace, want lo alone:\n%s", out)
	}
	if out, err := g.Try("ip", "route", "get", HostGW4); err == nil {
		t.Errorf("the namespace has a route out: %s", out)
	}
	ServeInfo(ListenTCPIn(t, g, "tcp", ":18910"))
	ServeInfo(ListenTCPIn(t, h, "tcp4", "127.0.0.1:18912"))
	for _, c := range []struct {
		ns            Netns
		network, addr string
	}{{h, "tcp4", "127.0.0.1:18910"}, {h, "tcp6", "[::1]:18910"}, {g, "tcp4", "127.0.0.1:18912"}} {
		if local, _, err := askInfo(t, c.ns, c.network, c.addr); err != nil || portOf(local) != portOf(c.addr) {
			t.Errorf("%s: server saw %q, %v", c.addr, local, err)
		}
	}
	ServeUDPEcho(ListenUDPIn(t, g, "udp4", ":18911"))
	if c := DialUDPIn(t, h, "udp4", "127.0.0.1:18911"); !udpPing(c, "over loopback") {
		t.Error("-u from the host's loopback: no echo")
	}

	start := time.Now()
	_, _, err := askInfo(t, h, "tcp4", HostAddr4+":18910")
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) {
		t.Errorf("-t from %s: %v, want the connection reset", HostAddr4, err)
	} else if d := time.Since(start); d > time.Second {
		t.Errorf("-t from %s: reset only after %v", HostAddr4, d)
	}
	if c := DialUDPIn(t, h, "udp4", HostAddr4+":18911"); udpPing(c, "from outside") {
		t.Errorf("-u from %s: echoed", HostAddr4)
	}
	if n := statsOf(t, gp)["splice_only_refused"]; n != 2 {
		t.Errorf("splice_only_refused = %d, want 2 (one connection, one datagram)", n)
	}
	if log := gp.Log(); !strings.Contains(log, "Namespace interface: none (--splice-only)") {
		t.Errorf("log:\n%s", tail(log, 2000))
	}
}
