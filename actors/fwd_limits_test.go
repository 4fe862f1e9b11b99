package actors

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopasta/gopasta/conf"
	"golang.org/x/sys/unix"
)

// TestTCPInboundFlowLimit: connections accepted on a -t listener are held
// to --flow-limit and to the descriptor budget like the guest's own: over
// either, the client is reset and the guest sees nothing.
func TestTCPInboundFlowLimit(t *testing.T) {
	for _, full := range []string{"table", "descriptors"} {
		t.Run(full, func(t *testing.T) {
			te := newTestEnv(t)
			probe := newServer(t, "tcp4", "127.0.0.1:0")
			port := probe.port()
			probe.ln.Close()
			te.env.Conf.FlowLimit = 4
			te.env.Conf.TCPPorts = []conf.PortSpec{{Raw: "test", Option: "-t", Bind: netip.MustParseAddr("127.0.0.1"),
				Ranges: []conf.PortRange{{First: port, Last: port, To: 8080}}}}
			if full == "table" {
				te.env.TableFlows.Store(4)
			} else {
				te.env.Limits.SetFDBudget(2)
				te.env.Limits.takeFDs(fdInbound, 2)
			}
			stop, err := StartTCPForwarders(te.env)
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
			case h := <-te.register:
				t.Fatalf("flow %v registered over the limit", h.Key)
			default:
			}
			if s, ok := te.tryNext(100 * time.Millisecond); ok {
				t.Fatalf("the guest got %#x", s.flags)
			}
			refused := te.env.Stats.Refused.Load() + te.env.Limits.FDRefused.Load()
			if refused != 1 {
				t.Errorf("refusals counted: %d", refused)
			}
		})
	}
}
