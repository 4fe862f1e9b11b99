package dispatcher

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/linktest"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// TestInlineIdle checks what the single-goroutine dispatcher does while no
// frame arrives: the read deadline still brings it round for periodic work
// and for actors that ended, and the device closing ends Run.
func TestInlineIdle(t *testing.T) {
	ours, guest := linktest.NewMemoryPair(1500, 4)
	defer guest.Close()
	dev := newDeadlineDevice(ours)
	log, hook := test.NewNullLogger()
	log.Out = io.Discard
	cfg := testConfig()
	cfg.Stats = 1
	env := &actors.Env{Ctx: context.Background(), Opts: actors.OptionsFrom(cfg), Out: link.NewWriter(ours, 4), Peer: &link.Peer{OurMAC: ourMAC}, Log: log, Reg: actors.NewRegistrar()}
	d := New(cfg, dev, env, log, realProtocols(t, env))
	k := keyT{Proto: wire.ProtoTCP, Guest: netip.AddrPortFrom(guest4, 1000), Far: netip.AddrPortFrom(far4, 80)}
	hd := &actors.Handle{Key: k, In: make(chan *link.Frame, 1)}
	env.Reg.Register <- hd
	errc := make(chan error, 1)
	go func() { errc <- d.Run(context.Background()) }()

	deadline := time.Now().Add(3 * time.Second)
	for !hasMessage(hook, "dispatcher statistics") || d.Stats()["flows_registered"] != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("idle dispatcher: stats logged %v, stats %v", hasMessage(hook, "dispatcher statistics"), nonzero(d.Stats()))
		}
		time.Sleep(5 * time.Millisecond)
	}
	env.Reg.Ended <- hd
	for d.Stats()["flows_active"] != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("ended flow not removed while idle: %v", nonzero(d.Stats()))
		}
		time.Sleep(5 * time.Millisecond)
	}

	dev.Close()
	select {
	case err := <-errc:
		if err != link.ErrClosed {
			t.Fatalf("Run returned %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Run did not return on ErrClosed")
	}
}

// testFrames is a mix of flow traffic and drops.
func testFrames() [][]byte {
	good := wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(5000, 53, []byte("abcd")))
	bad := append([]byte(nil), good...)
	bad[len(bad)-1] ^= 1
	return [][]byte{
		wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(1000, 80, 1, 0, wire.TCPSyn, nil)),
		wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(1000, 80, 2, 1, wire.TCPAck, []byte("x"))),
		wiretest.IP(guest6, far6, wire.ProtoTCP, wiretest.TCP(1001, 443, 1, 0, wire.TCPSyn, nil)),
		good, good, bad,
		wiretest.Eth(ourMAC, guestMAC, 0x88cc, make([]byte, 50)),
	}
}

func hasMessage(h *test.Hook, msg string) bool {
	for _, e := range h.AllEntries() {
		if e.Message == msg && e.Level == logrus.InfoLevel {
			return true
		}
	}
	return false
}

// TestInlineSplitSameResult sends the same frames through both readers and
// expects the same counters: the two loops share every handler.
func TestInlineSplitSameResult(t *testing.T) {
	var got [2]map[string]uint64
	for i, mk := range []func(*testing.T, func(*conf.Config), func(*Dispatcher)) *harness{newHarness, newSplitHarness} {
		fa := &fakeActors{depth: 64}
		h := mk(t, nil, withFakes(fa))
		for _, b := range testFrames() {
			h.send(b)
		}
		h.waitStat("frames_in", uint64(len(testFrames())))
		h.stop()
		got[i] = nonzero(h.d.Stats())
		delete(got[i], "batches_in") // how frames group into batches is timing
	}
	if len(got[0]) != len(got[1]) {
		t.Fatalf("inline %v, split %v", got[0], got[1])
	}
	for k, v := range got[0] {
		if got[1][k] != v {
			t.Fatalf("%s: inline %d, split %d (inline %v, split %v)", k, v, got[1][k], got[0], got[1])
		}
	}
}
