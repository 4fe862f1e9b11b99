package actors

import (
	"testing"
	"time"

	"github.com/gopasta/gopasta/conf"
)

// TestOptionsFrom: what a configuration leaves zero takes its default,
// what it sets is kept, and a flow's share of the buffer budget is never
// more than an eighth of the whole.
func TestOptionsFrom(t *testing.T) {
	for _, o := range []Options{OptionsFrom(nil), OptionsFrom(&conf.Config{})} {
		if o.MTU != 65520 || o.FlowLimit != conf.DefaultFlowLimit ||
			o.UDPTimeout != 180*time.Second || o.ICMPTimeout != 60*time.Second ||
			o.TotalBuffer != DefaultTotalBuffer || o.FlowBuffer != DefaultFlowBuffer {
			t.Errorf("defaults: %+v", o)
		}
	}
	o := OptionsFrom(&conf.Config{MTU: 1500, FlowLimit: 7, UDPTimeout: time.Second,
		ICMPTimeout: 2 * time.Second, FlowBuffer: 1 << 20, TotalBuffer: 64 << 20, NoUDP: true})
	if o.MTU != 1500 || o.FlowLimit != 7 || o.UDPTimeout != time.Second || o.ICMPTimeout != 2*time.Second ||
		o.FlowBuffer != 1<<20 || o.TotalBuffer != 64<<20 || !o.NoUDP {
		t.Errorf("set: %+v", o)
	}
	if o := (Options{FlowBuffer: 8 << 20, TotalBuffer: 16 << 20}).WithDefaults(); o.FlowBuffer != 2<<20 {
		t.Errorf("FlowBuffer = %d, want an eighth of 16 MiB", o.FlowBuffer)
	}
}
