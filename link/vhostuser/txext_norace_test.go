//go:build !race

package vhostuser

import "testing"

// (Without the race detector, which makes sync.Pool drop items.)

// Reading a frame whose payload stays in guest memory, and releasing it,
// allocates nothing.
func TestTransmitExtZeroAllocs(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	q := f.q[txQ]
	p := tcpFrame(false, 8000)
	h := r.g.alloc(virtioNetHdrSize)
	b := r.g.alloc(len(p))
	copy(r.g.at(b, len(p)), p)
	frames := newFrames(1)
	round := func() {
		q.addChain(seg{h, virtioNetHdrSize, false}, seg{b, 100, false}, seg{b + 100, uint32(len(p) - 100), false})
		if n, err := r.d.ReadBatch(frames); n != 1 || err != nil || frames[0].Ext == nil {
			t.Fatalf("ReadBatch %d %v", n, err)
		}
		frames[0].Ext.Release()
		frames[0].Ext = nil
	}
	round()
	if a := testing.AllocsPerRun(200, round); a != 0 {
		t.Errorf("%.1f allocations per frame", a)
	}
}
