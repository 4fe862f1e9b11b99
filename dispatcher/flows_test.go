package dispatcher

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/flowtrace"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// Flows answers from the table, promptly even on an idle link: the
// dispatcher's read is cut short rather than waited out (a tick).
func TestFlowsSnapshot(t *testing.T) {
	for _, split := range []bool{false, true} {
		t.Run(map[bool]string{false: "inline", true: "split"}[split], func(t *testing.T) {
			fa := &fakeActors{depth: 4}
			h := newHarnessOn(t, split, nil, withFakes(fa))
			h.send(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 1, 0, wire.TCPSyn, nil)))
			h.send(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40001, 443, 1, 0, wire.TCPSyn, nil)))
			h.waitStat("flows_started", 2)
			// The link is idle now: several snapshots, each prompt.
			for i := range 5 {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				start := time.Now()
				fl, err := h.d.Flows(ctx)
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				if d := time.Since(start); d > tick/3 {
					t.Fatalf("snapshot %d took %v", i, d)
				}
				ports := map[uint16]bool{}
				for _, f := range fl {
					ports[f.Key.Far.Port()] = true
				}
				if len(fl) != 2 || !ports[80] || !ports[443] {
					t.Fatalf("snapshot %+v", fl)
				}
			}
			// Frames still flow after the snapshots moved the deadline.
			h.send(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40002, 22, 1, 0, wire.TCPSyn, nil)))
			h.waitStat("flows_started", 3)
		})
	}
}

// Flows gives up with its context when the dispatcher does not run.
func TestFlowsNotRunning(t *testing.T) {
	d := New(testConfig(), nil, &actors.Env{Peer: &link.Peer{}, Reg: actors.NewRegistrar()}, nil, actors.Protocols{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := d.Flows(ctx); err == nil {
		t.Fatal("snapshot from a dispatcher that does not run")
	}
}

// UDP flows' lines come from the dispatcher, to the subscribers that
// select them only.
func TestTraceUDPFromDispatcher(t *testing.T) {
	fa := &fakeActors{depth: 4}
	var hub flowtrace.Hub
	sub := hub.Subscribe(flowtrace.Filter{Proto: wire.ProtoUDP, Port: 53}, 100)
	defer sub.Close()
	h := newHarnessOn(t, false, nil, func(d *Dispatcher) {
		withFakes(fa)(d)
		d.env.Trace = &hub
	})
	h.send(wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(5000, 53, []byte("query"))))
	h.send(wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(5000, 53, []byte("again!"))))
	h.send(wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(5001, 123, []byte("ntp"))))
	h.send(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 53, 1, 0, wire.TCPSyn, nil)))
	h.waitStat("flows_started", 3)
	var got []string
	deadline := time.After(3 * time.Second)
	for len(got) < 2 {
		select {
		case l := <-sub.Lines():
			got = append(got, l)
		case <-deadline:
			t.Fatalf("lines %q", got)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if len(sub.Lines()) != 0 {
		t.Fatalf("more lines: %q", <-sub.Lines())
	}
	desc := flowtrace.Desc(0, wire.ProtoUDP, netip.MustParseAddrPort("10.0.2.100:5000"), netip.MustParseAddrPort("93.184.216.34:53"))
	if !strings.HasSuffix(got[0], " "+desc+": flow started by the guest, in  datagram, 5 bytes") ||
		!strings.HasSuffix(got[1], " "+desc+": in  datagram, 6 bytes") {
		t.Fatalf("lines %q", got)
	}
}
