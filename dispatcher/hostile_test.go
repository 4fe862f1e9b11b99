package dispatcher

import (
	"bytes"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
	"github.com/gopasta/gopasta/link/wire/wiretest"
)

// manyIANA returns a DHCPv6 message of type typ carrying n IA_NAs, the
// client's DUID, and our server ID for the types that need one.
func manyIANA(t testing.TB, typ dhcpv6.MessageType, n int) *dhcpv6.Message {
	t.Helper()
	m, err := dhcpv6.NewSolicit(net.HardwareAddr(guestMAC[:]))
	if err != nil {
		t.Fatal(err)
	}
	m.MessageType = typ
	m.Options.Del(dhcpv6.OptionIANA)
	if typ != dhcpv6.MessageTypeSolicit {
		dhcpv6.WithServerID(&dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: net.HardwareAddr(ourMAC[:])})(m)
	}
	for i := range n {
		m.AddOption(&dhcpv6.OptIANA{IaId: [4]byte{byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}})
	}
	return m
}

// TestDHCPv6ManyIANA is the one-frame crash: a SOLICIT with 1600 IA_NAs
// got a reply larger than the largest frame, and GetFrame panicked on the
// dispatcher's goroutine. The reply now answers the first maxIANA of them.
func TestDHCPv6ManyIANA(t *testing.T) {
	h := newHarness(t, nil, nil)
	for _, typ := range []dhcpv6.MessageType{dhcpv6.MessageTypeSolicit, dhcpv6.MessageTypeRequest, dhcpv6.MessageTypeRebind} {
		req := manyIANA(t, typ, 1600)
		if n := len(req.ToBytes()); n < 1600*16 {
			t.Fatalf("request of %d bytes only", n)
		}
		h.send(dhcpv6Frame(req))
		resp := recvDHCPv6(t, h)
		ias := resp.Options.IANA()
		if len(ias) != maxIANA {
			t.Fatalf("%s: %d IA_NAs answered, want %d", typ, len(ias), maxIANA)
		}
		for i, ia := range ias {
			if ia.IaId != req.Options.IANA()[i].IaId || len(ia.Options.Addresses()) != 1 {
				t.Fatalf("%s: IA_NA %d: %v", typ, i, ia)
			}
		}
	}
	if n := h.d.Stats()["dispatcher_panics"]; n != 0 {
		t.Fatalf("%d panics", n)
	}
}

// TestDHCPv6LongDUID: the reply echoes the client's DUID, so one longer
// than a DUID can be is refused rather than echoed.
func TestDHCPv6LongDUID(t *testing.T) {
	h := newHarness(t, nil, nil)
	m := manyIANA(t, dhcpv6.MessageTypeSolicit, 1)
	m.UpdateOption(dhcpv6.OptClientID(&dhcpv6.DUIDOpaque{Type: 0x7777, Data: bytes.Repeat([]byte{0xaa}, 60000)}))
	h.send(dhcpv6Frame(m))
	h.waitStat("drop_dhcpv6_invalid", 1)
	// A sane one is still answered.
	h.send(dhcpv6Frame(manyIANA(t, dhcpv6.MessageTypeSolicit, 1)))
	recvDHCPv6(t, h)
}

// TestDHCPv4NoUnboundedEcho: option 82 (relay agent information, which
// only a relay may add) is never echoed, and the client identifier only up
// to one option's worth; as dhcpv4.NewReplyFromRequest had it, a DISCOVER
// carrying 60 KB of either got all of it back.
func TestDHCPv4NoUnboundedEcho(t *testing.T) {
	h := newHarness(t, nil, nil)
	for _, c := range []struct {
		relay, id []byte
		echoID    bool
	}{
		{relay: bytes.Repeat([]byte{1}, 30000), id: bytes.Repeat([]byte{2}, 30000)},
		{relay: []byte{1, 4, 't', 'e', 's', 't'}, id: []byte{1, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}, echoID: true},
		{id: bytes.Repeat([]byte{3}, 255), echoID: true},
		{id: bytes.Repeat([]byte{3}, 256)},
	} {
		disc, err := dhcpv4.NewDiscovery(net.HardwareAddr(guestMAC[:]))
		if err != nil {
			t.Fatal(err)
		}
		if c.relay != nil {
			disc.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionRelayAgentInformation, c.relay))
		}
		disc.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientIdentifier, c.id))
		h.send(dhcpFrame(disc))
		offer, _, b := recvDHCP(t, h)
		if offer.MessageType() != dhcpv4.MessageTypeOffer {
			t.Fatalf("%s", offer.MessageType())
		}
		if offer.Options.Has(dhcpv4.OptionRelayAgentInformation) {
			t.Errorf("option 82 echoed (%d bytes)", len(offer.Options.Get(dhcpv4.OptionRelayAgentInformation)))
		}
		got := offer.Options.Get(dhcpv4.OptionClientIdentifier)
		if c.echoID != (got != nil) || (got != nil && !bytes.Equal(got, c.id)) {
			t.Errorf("client id of %d bytes: echoed %d bytes", len(c.id), len(got))
		}
		if len(b) > 1000 {
			t.Errorf("offer of %d bytes", len(b))
		}
	}
}

// lockedBuffer is a log sink a test reads while the dispatcher writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestPanicIsACountedDrop: a bug some frame reaches (here, a starter that
// panics) costs that frame, counted, with one stack in the log per call
// site (two sites here, each hit several times); the dispatcher goes on
// serving the link.
func TestPanicIsACountedDrop(t *testing.T) {
	var logBuf lockedBuffer
	boom := func(_ *envT, _ keyT, f *frameT) *handleT {
		var s []byte
		_ = s[len(f.Data)] // index out of range
		return nil
	}
	bang := func(_ *envT, _ keyT, f *frameT) *handleT {
		var h *handleT
		_ = h.Key // nil dereference: another site
		return nil
	}
	h := newHarness(t, nil, func(d *Dispatcher) {
		d.log.Out = &logBuf
		d.setStarts(boom, bang, nil)
	})
	for i := range 5 {
		h.send(wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(uint16(40000+i), 80, 1, 0, wire.TCPSyn, nil)))
	}
	for i := range 3 {
		h.send(wiretest.IP(guest4, far4, wire.ProtoUDP, wiretest.UDP(uint16(4000+i), 53, []byte("q"))))
	}
	h.waitStat("dispatcher_panics", 8)
	// Still serving.
	h.send(arpRequest(guest4, gw4))
	h.recv(func(b []byte, p *wire.Parsed) bool { return p.EtherType == wire.EtherTypeARP })
	log := logBuf.String()
	if n := strings.Count(log, "frame handling panicked"); n != 2 {
		t.Fatalf("%d panics logged, want 2 (two sites):\n%s", n, log)
	}
	if !strings.Contains(log, "index out of range") || !strings.Contains(log, "nil pointer dereference") ||
		!strings.Contains(log, "hostile_test.go") {
		t.Fatalf("log lacks the panics or their stacks:\n%s", log)
	}
}

// TestPanicMidBatch: the frames after one whose handling panicked, in the
// same batch, are handled as if nothing happened.
func TestPanicMidBatch(t *testing.T) {
	d, guest, _ := offline(t)
	d.setStarts(func(_ *envT, _ keyT, f *frameT) *handleT {
		f.Release()
		panic("boom")
	}, nil, nil)
	frames := [][]byte{
		wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40000, 80, 1, 0, wire.TCPSyn, nil)),
		arpRequest(guest4, gw4),
		wiretest.IP(guest4, far4, wire.ProtoTCP, wiretest.TCP(40001, 80, 1, 0, wire.TCPSyn, nil)),
		arpRequest(guest4, dns4),
	}
	batch := make([]*frameT, len(frames))
	for i, b := range frames {
		batch[i] = link.GetFrame(link.MaxFrameSize)
		batch[i].Data = batch[i].Data[:copy(batch[i].Data, b)]
	}
	d.handleBatch(batch)
	link.ReleaseAll(batch)
	if st := d.Stats(); st["dispatcher_panics"] != 2 || st["arp_replies"] != 2 || st["frames_in"] != 4 {
		t.Fatalf("stats %v", nonzero(st))
	}
	for range 2 {
		select {
		case <-guest.Frames():
		case <-time.After(3 * time.Second):
			t.Fatal("ARP reply missing")
		}
	}
}
