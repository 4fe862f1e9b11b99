package dispatcher

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/actors/nat"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/linktest"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// Addresses of the test network: actorstest's plan (a guest at .100
// behind gateway .2, as podman's defaults would have it), with an IPv6 /64
// whose gateway is link-local (as pasta copies it from a typical host).
var (
	guest4   = actorstest.Guest4
	gw4      = actorstest.GW4
	dns4     = netip.MustParseAddr("10.0.2.3")
	far4     = netip.MustParseAddr("93.184.216.34")
	guest6   = actorstest.Guest6
	guestLL  = netip.MustParseAddr("fe80::2")
	gw6      = netip.MustParseAddr("fe80::1")
	dns6     = netip.MustParseAddr("2001:db8::53")
	far6     = netip.MustParseAddr("2001:db8:1::1")
	guestMAC = wiretest.GuestMAC
	ourMAC   = conf.DefaultMAC
	bcastMAC = link.Broadcast
)

func testConfig() *conf.Config {
	return &conf.Config{
		MTU:      65520,
		Addr4:    netip.PrefixFrom(guest4, 24),
		Gateway4: gw4,
		Addr6:    guest6,
		Gateway6: gw6,
		OurMAC:   ourMAC,
		DNS:      []netip.Addr{dns4, dns6, netip.MustParseAddr("127.0.0.53")},
		Search:   []string{"example.com", "corp.example.org"},
		// Advertised: the tests look at the options. Whether they are
		// by default is TestDNSAdvertisedPerMode's business.
		DHCPDNS: boolPtr(true), DHCPSearch: boolPtr(true),
	}
}

func boolPtr(b bool) *bool { return &b }

// harness runs a real Dispatcher and Writer on one end of an in-memory
// link; the test plays the guest on the other end.
type harness struct {
	t     *testing.T
	cfg   *conf.Config
	d     *Dispatcher
	env   *actors.Env
	guest *linktest.MemoryDevice
	ours  *linktest.MemoryDevice
	stop  func() error
}

// newHarness starts a dispatcher with the test configuration, changed by
// mod, and with before applied to the Dispatcher before Run (to install
// fake actor starters).
//
// The dispatcher reads through a deadlineDevice, so it runs on one
// goroutine as it does on a tap; newSplitHarness gives it the bare memory
// device, which has no read deadline, for the two-goroutine fallback.
func newHarness(t *testing.T, mod func(*conf.Config), before func(*Dispatcher)) *harness {
	t.Helper()
	return newHarnessOn(t, false, mod, before)
}

// newSplitHarness is newHarness on the split reader of passt mode.
func newSplitHarness(t *testing.T, mod func(*conf.Config), before func(*Dispatcher)) *harness {
	t.Helper()
	return newHarnessOn(t, true, mod, before)
}

func newHarnessOn(t *testing.T, split bool, mod func(*conf.Config), before func(*Dispatcher)) *harness {
	t.Helper()
	cfg := testConfig()
	if mod != nil {
		mod(cfg)
	}
	ours, guest := linktest.NewMemoryPair(65520, 512)
	log := logrus.New()
	log.Out = io.Discard
	if testing.Verbose() {
		log.Out = testWriter{t}
		log.SetLevel(logrus.TraceLevel)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := link.NewWriter(ours, 256)
	env := &actors.Env{Ctx: ctx, Opts: actors.OptionsFrom(cfg), Out: w, Peer: &link.Peer{OurMAC: cfg.OurMAC}, Log: log, NAT: &nat.NAT{}, Reg: actors.NewRegistrar()}
	var dev link.Device = newDeadlineDevice(ours)
	if split {
		dev = ours
	}
	d := New(cfg, dev, env, log, realProtocols(t, env))
	if before != nil {
		before(d)
	}
	runErr := make(chan error, 1)
	wErr := make(chan error, 1)
	go func() { wErr <- w.Run(ctx) }()
	go func() { runErr <- d.Run(ctx) }()
	h := &harness{t: t, cfg: cfg, d: d, env: env, guest: guest, ours: ours}
	stopped := false
	h.stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		var err error
		select {
		case err = <-runErr:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
		<-wErr
		guest.Close()
		return err
	}
	t.Cleanup(func() {
		if err := h.stop(); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
	return h
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// send injects a frame from the guest.
func (h *harness) send(b []byte) {
	h.t.Helper()
	if err := h.guest.WriteFrame(b); err != nil {
		h.t.Fatal(err)
	}
}

// recv returns the next frame towards the guest that match accepts,
// skipping others (unsolicited router advertisements, say).
func (h *harness) recv(match func(b []byte, p *wire.Parsed) bool) ([]byte, *wire.Parsed) {
	h.t.Helper()
	deadline := time.After(3 * time.Second)
	for {
		select {
		case b := <-h.guest.Frames():
			p := new(wire.Parsed)
			if err := wire.ParseFrame(b, p); err != nil {
				// Every frame we send must pass our own strict
				// parser: that checks all lengths and checksums.
				h.t.Fatalf("frame to guest does not parse (%v): %x", err, b)
			}
			if match == nil || match(b, p) {
				return b, p
			}
		case <-deadline:
			h.t.Fatal("no frame for the guest")
			return nil, nil
		}
	}
}

// waitStat waits until counter name reaches want.
func (h *harness) waitStat(name string, want uint64) {
	h.t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		got := h.d.Stats()[name]
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s = %d, want %d (stats %v)", name, got, want, nonzero(h.d.Stats()))
		}
		time.Sleep(time.Millisecond)
	}
}

func nonzero(m map[string]uint64) map[string]uint64 {
	o := map[string]uint64{}
	for k, v := range m {
		if v != 0 {
			o[k] = v
		}
	}
	return o
}

// Matchers for recv.
func isARP(_ []byte, p *wire.Parsed) bool { return p.EtherType == wire.EtherTypeARP }
func isICMPv6(typ uint8) func([]byte, *wire.Parsed) bool {
	return func(_ []byte, p *wire.Parsed) bool { return p.Proto == wire.ProtoICMPv6 && p.ICMPType == typ }
}
func isUDPTo(port uint16) func([]byte, *wire.Parsed) bool {
	return func(_ []byte, p *wire.Parsed) bool { return p.Proto == wire.ProtoUDP && p.DstPort == port }
}

// deadlineDevice gives the reading end of an in-memory link a read
// deadline, as the tap has one through the runtime poller. Like the
// poller, it reports an expired deadline before looking for frames.
type deadlineDevice struct {
	*linktest.MemoryDevice
	mu       sync.Mutex
	deadline time.Time
	wake     chan struct{} // closed and replaced by SetReadDeadline
	closed   chan struct{}
	once     sync.Once
}

func newDeadlineDevice(m *linktest.MemoryDevice) *deadlineDevice {
	return &deadlineDevice{MemoryDevice: m, wake: make(chan struct{}), closed: make(chan struct{})}
}

func (d *deadlineDevice) SetReadDeadline(t time.Time) error {
	d.mu.Lock()
	d.deadline = t
	close(d.wake)
	d.wake = make(chan struct{})
	d.mu.Unlock()
	return nil
}

func (d *deadlineDevice) Close() error {
	d.once.Do(func() { close(d.closed) })
	return d.MemoryDevice.Close()
}

func (d *deadlineDevice) ReadBatch(frames []*link.Frame) (int, error) {
	rx := d.Frames()
	var p []byte
	for p == nil {
		d.mu.Lock()
		dl, wake := d.deadline, d.wake
		d.mu.Unlock()
		var expire <-chan time.Time
		if !dl.IsZero() {
			wait := time.Until(dl)
			if wait <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			tm := time.NewTimer(wait)
			defer tm.Stop()
			expire = tm.C
		}
		select {
		case p = <-rx:
		case <-d.closed:
			return 0, link.ErrClosed
		case <-expire:
			return 0, os.ErrDeadlineExceeded
		case <-wake:
		}
	}
	n := 0
	for {
		frames[n].Data = frames[n].Data[:copy(frames[n].Data[:cap(frames[n].Data)], p)]
		n++
		if n == len(frames) {
			return n, nil
		}
		select {
		case p = <-rx:
		default:
			return n, nil
		}
	}
}
