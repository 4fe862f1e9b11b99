package forward

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/conf"
)

// TestTCPInboundFlowLimit: connections accepted on a -t listener are held
// to --flow-limit and to the descriptor budget like the guest's own: over
// either, the client is reset and the guest sees nothing.
func TestTCPInboundFlowLimit(t *testing.T) {
	for _, full := range []string{"table", "descriptors"} {
		t.Run(full, func(t *testing.T) {
			te := actorstest.New(t, actors.Options{})
			probe := actorstest.NewServer(t, "tcp4", "127.0.0.1:0")
			port := probe.Port()
			probe.Ln.Close()
			te.Env.Opts.FlowLimit = 4
			opts := Options{TCPPorts: []conf.PortSpec{{Raw: "test", Option: "-t", Bind: netip.MustParseAddr("127.0.0.1"),
				Ranges: []conf.PortRange{{First: port, Last: port, To: 8080}}}}}
			if full == "table" {
				te.Env.TableFlows.Store(4)
			} else {
				te.Env.Limits.SetFDBudget(2)
				te.Env.Limits.TakeFDs(actors.FDInbound, 2)
			}
			stop, err := startForwarding(te.Env, opts, -1, testFlows(t, te.Env))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
			// The reset may come before the dial returns.
			cl, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
			if err == nil {
				defer cl.Close()
				cl.SetReadDeadline(time.Now().Add(2 * time.Second))
				_, err = cl.Read(make([]byte, 1))
			}
			if !errors.Is(err, unix.ECONNRESET) {
				t.Fatalf("client: %v, want a reset", err)
			}
			select {
			case h := <-te.Register:
				t.Fatalf("flow %v registered over the limit", h.Key)
			default:
			}
			te.NoGuestFrame(t, 100*time.Millisecond)
			refused := te.Env.Stats.Refused.Load() + te.Env.Limits.FDRefused.Load()
			if refused != 1 {
				t.Errorf("refusals counted: %d", refused)
			}
		})
	}
}
