package dispatcher

import (
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/conf"
)

// TestNextTick pins down the periodic-work policy of an idle dispatcher:
// a long tick with no flows, a short one with flows, and due work
// (router advertisement, statistics line) pulling it in.
func TestNextTick(t *testing.T) {
	now := time.Unix(1000, 0)
	d := &Dispatcher{cfg: &conf.Config{}, flows: map[actors.Key]*actors.Handle{}}
	if got := d.nextTick(now); got != now.Add(idleTick) {
		t.Fatalf("empty table: next in %v, want %v", got.Sub(now), idleTick)
	}
	next := now.Add(idleTick)
	if d.periodicDue(now.Add(time.Second), next) {
		t.Fatal("due before the idle tick with an empty table")
	}

	// A flow appears: the long tick is cut short at the next look.
	d.flows[actors.Key{}] = &actors.Handle{}
	if !d.periodicDue(now.Add(time.Millisecond), next) {
		t.Fatal("long tick kept with flows in the table")
	}
	if got := d.nextTick(now); got != now.Add(tick) {
		t.Fatalf("with flows: next in %v, want %v", got.Sub(now), tick)
	}
	if d.periodicDue(now.Add(tick/2), now.Add(tick)) {
		t.Fatal("due before the tick with flows")
	}
	clear(d.flows)

	// The statistics line comes first when it is due earlier.
	d.cfg.Stats = 3
	d.svc.nextStats = now.Add(3 * time.Second)
	if got := d.nextTick(now); got != d.svc.nextStats {
		t.Fatalf("stats due in 3s: next in %v", got.Sub(now))
	}
	d.cfg.Stats = 0

	// The guest's first IPv6 frame makes an advertisement due at once,
	// whatever the tick.
	d.svc.raEnabled = true
	if d.periodicDue(now, next) {
		t.Fatal("advertisement due before the guest spoke IPv6")
	}
	d.svc.guestSpeaksIPv6(d)
	if !d.periodicDue(time.Now(), time.Now().Add(idleTick)) {
		t.Fatal("first advertisement not due at once")
	}
	d.svc.nextRA = now.Add(2 * time.Second)
	if got := d.nextTick(now); got != d.svc.nextRA {
		t.Fatalf("advertisement due in 2s: next in %v", got.Sub(now))
	}
}
