package tcp

import (
	"io"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/actors/flowtrace"
	"github.com/gopasta/gopasta/link/wire"
)

// A subscriber sees the story of its flow, in order, and nothing of
// another; the flow's counters are published while it runs.
func TestTCPTraceAndStats(t *testing.T) {
	for _, inline := range []bool{false, true} {
		t.Run(map[bool]string{false: "actor", true: "inline"}[inline], func(t *testing.T) {
			te := newTestEnv(t)
			te.env.Trace = &flowtrace.Hub{}
			srv := actorstest.NewServer(t, "tcp4", "127.0.0.1:0")
			sub := te.env.Trace.Subscribe(flowtrace.Filter{Proto: 6, Port: srv.Port()}, 10000)
			other := te.env.Trace.Subscribe(flowtrace.Filter{Port: 1}, 100)
			defer sub.Close()
			defer other.Close()
			g := newGuest(te, netip.AddrPortFrom(testGW4, srv.Port()), 1000)
			g.inline = inline
			g.connect()
			sc := srv.Accept(t)
			g.send(wire.TCPPsh, []byte("hello"))
			buf := make([]byte, 5)
			if _, err := io.ReadFull(sc, buf); err != nil {
				t.Fatal(err)
			}
			if _, err := sc.Write([]byte("world!")); err != nil {
				t.Fatal(err)
			}
			g.readUntil(6, false)
			g.ack()
			s := actorstest.WaitStats(t, g.h, func(s actors.FlowSnapshot) bool {
				return s.GuestBytes == 5 && s.FarBytes == 6 && s.Unacked == 0
			})
			if s.State != "ESTABLISHED" || s.GuestSegs < 3 || s.FarSegs < 2 || s.GuestWnd == 0 || s.OurWnd == 0 || s.ID == 0 {
				t.Fatalf("snapshot %+v", s)
			}
			sc.CloseWrite()
			g.readUntil(6, true)
			g.send(wire.TCPFin, nil)
			if b, err := io.ReadAll(sc); err != nil || len(b) != 0 {
				t.Fatalf("server read %q %v", b, err)
			}
			sc.Close()
			te.waitEnded(g.h)

			var lines []string
			for len(sub.Lines()) > 0 {
				lines = append(lines, <-sub.Lines())
			}
			all := strings.Join(lines, "\n")
			if testing.Verbose() {
				t.Log("\n" + all)
			}
			prefix := flowtrace.Desc(g.h.ID, 6, g.k.Guest, g.k.Far) + ": "
			for _, l := range lines {
				if !strings.Contains(l, " "+prefix) {
					t.Errorf("line without the flow: %q", l)
				}
			}
			for _, want := range []string{
				"in  Flags [S], seq 1000, win 65535, options [mss 65480,wscale",
				"out Flags [S.], seq ",
				"-> SYN_RCVD (host connected, SYN,ACK to the guest)",
				"state SYN_RCVD -> ESTABLISHED (the guest acknowledged our SYN,ACK)",
				"in  Flags [P.], seq 1:6, ack 1, win 65535, length 5",
				"out Flags [P.], seq 1:7, ack 6, win ",
				"(end of stream from the host)",
				"out Flags [F.], seq 7, ack 6",
				"(FIN from the guest)",
				"end (closed) after ",
				"from guest 5 bytes in ",
				"to guest 6 bytes in ",
				" 0 retransmissions",
			} {
				if !strings.Contains(all, want) {
					t.Errorf("no %q in the trace:\n%s", want, all)
				}
			}
			if i, j := strings.Index(all, "Flags [S],"), strings.Index(all, "end (closed)"); i < 0 || j < i {
				t.Errorf("story out of order:\n%s", all)
			}
			if len(other.Lines()) != 0 {
				t.Fatalf("another flow's subscriber got %q", <-other.Lines())
			}
			s = g.h.Snapshot(time.Now())
			if s.State != "GUEST_FIN|SOCK_SHUT|HOST_EOF|FIN_SENT|FIN_ACKED|CLOSED" && !strings.HasSuffix(s.State, "CLOSED") {
				t.Fatalf("final state %q", s.State)
			}
		})
	}
}

// The trace of a retransmission says so, and the counter counts it.
func TestTCPTraceRetransmit(t *testing.T) {
	te := newTestEnv(t)
	te.env.Trace = &flowtrace.Hub{}
	srv := actorstest.NewServer(t, "tcp4", "127.0.0.1:0")
	g := newGuest(te, netip.AddrPortFrom(testGW4, srv.Port()), 5000)
	g.connect()
	sc := srv.Accept(t)
	sub := te.env.Trace.Subscribe(flowtrace.Filter{}, 1000)
	defer sub.Close()
	if _, err := sc.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	te.next(time.Second) // the data, which the guest does not ACK
	// The timeout retransmits it.
	s := te.next(3 * time.Second)
	if s.seq != g.rcvNxt {
		t.Fatalf("retransmission at %d, want %d", s.seq, g.rcvNxt)
	}
	g.ack()
	actorstest.WaitStats(t, g.h, func(s actors.FlowSnapshot) bool { return s.Retrans == 1 })
	var all string
	deadline := time.After(2 * time.Second)
	for !strings.Contains(all, "retransmit from seq 1 (timeout), 4 bytes in flight") {
		select {
		case l := <-sub.Lines():
			all += l + "\n"
		case <-deadline:
			t.Fatalf("no retransmission line in\n%s", all)
		}
	}
	if !strings.Contains(all, "retransmission timeout after 1s, retry 1 of 8") {
		t.Fatalf("no timeout line in\n%s", all)
	}
}

// --trace (the log at trace level) gets the same lines, with the flow.
func TestTCPTraceLog(t *testing.T) {
	te := newTestEnv(t)
	var buf syncBuf
	te.env.Log.SetOutput(&buf)
	te.env.Log.SetLevel(logrus.TraceLevel)
	srv := actorstest.NewServer(t, "tcp4", "127.0.0.1:0")
	g := newGuest(te, netip.AddrPortFrom(testGW4, srv.Port()), 1000)
	g.connect()
	sc := srv.Accept(t)
	g.send(wire.TCPPsh, []byte("hello"))
	if _, err := io.ReadFull(sc, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	sc.Close()
	g.readUntil(0, true)
	g.send(wire.TCPFin, nil)
	te.waitEnded(g.h)
	log := buf.String()
	flow := "flow=\"tcp " + g.k.Guest.String() + " -> " + g.k.Far.String() + "\""
	for _, want := range []string{
		`msg="in  Flags [S], seq 1000, win 65535, options [mss 65480,wscale`,
		`msg="in  Flags [P.], seq 1:6, ack 1, win 65535, length 5"`,
		`msg="state SYN_RCVD -> ESTABLISHED (the guest acknowledged our SYN,ACK)"`,
		`msg="end (closed) after `,
	} {
		found := false
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, want) && strings.Contains(l, flow) {
				found = true
			}
		}
		if !found {
			t.Errorf("no %s with %s in the log:\n%s", want, flow, log)
		}
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
