package dispatcher

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// teeLog records what the capture hooks see, as a pcap writer would: a
// copy of each frame, tagged with its direction.
type teeLog struct {
	mu     sync.Mutex
	frames [][]byte
	dirs   []string
}

func (l *teeLog) hook(dir string) func(*link.Frame) {
	return func(f *link.Frame) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.frames = append(l.frames, bytes.Clone(f.Data))
		l.dirs = append(l.dirs, dir)
	}
}

func (l *teeLog) snapshot() ([][]byte, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][]byte(nil), l.frames...), append([]string(nil), l.dirs...)
}

// TestTee: Dispatcher.Tee sees every frame from the guest, byte for byte
// and in order, whatever happens to it next (answered inline, dropped as
// malformed, handed to an actor), and Writer.Tee sees the replies.
func TestTee(t *testing.T) {
	bothReaders(t, testTee)
}

func testTee(t *testing.T, newHarness func(*testing.T, func(*conf.Config), func(*Dispatcher)) *harness) {
	fa := &fakeActors{depth: 4}
	var l teeLog
	h := newHarness(t, nil, func(d *Dispatcher) {
		withFakes(fa)(d)
		d.Tee = l.hook("in")
		d.env.Out.Tee = l.hook("out")
	})
	arp := arpRequest(guest4, gw4)
	bad := append(append([]byte(nil), arp[:12]...), 0x88, 0xb5, 1, 2, 3, 4) // unknown EtherType
	udp := wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(5000, 53, []byte("query")))
	syn := wiretest.IP(guest6, far6, wire.ProtoTCP, wiretest.TCP(40000, 443, 1, 0, wire.TCPSyn, nil))
	sent := [][]byte{arp, bad, udp, syn}
	for _, b := range sent {
		h.send(b)
	}
	reply, _ := h.recv(isARP)
	h.waitStat("flows_started", 2)

	// The writer's hook runs after the frame is on the link, so the reply
	// may be recorded just after the guest read it.
	var frames [][]byte
	var dirs []string
	deadline := time.Now().Add(3 * time.Second)
	for {
		frames, dirs = l.snapshot()
		if len(frames) >= len(sent)+1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	var in [][]byte
	var out [][]byte
	for i, b := range frames {
		if dirs[i] == "in" {
			in = append(in, b)
		} else {
			out = append(out, b)
		}
	}
	if len(in) != len(sent) {
		t.Fatalf("Tee saw %d frames from the guest, want %d (directions %v)", len(in), len(sent), dirs)
	}
	for i := range sent {
		if !bytes.Equal(in[i], sent[i]) {
			t.Errorf("incoming frame %d:\n got %x\nwant %x", i, in[i], sent[i])
		}
	}
	if len(out) < 1 || !bytes.Equal(out[0], reply) {
		t.Errorf("outgoing frames %d, first %x, want the ARP reply %x", len(out), out, reply)
	}
	// The ARP request precedes its reply in the capture.
	if dirs[0] != "in" {
		t.Errorf("first captured frame went %s", dirs[0])
	}
}
