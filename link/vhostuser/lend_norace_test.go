//go:build !race

package vhostuser

import (
	"encoding/binary"
	"testing"

	"github.com/gopasta/gopasta/link"
)

// (Without the race detector, which makes sync.Pool drop items.)
// Lending, committing, writing and releasing allocate nothing.
func TestLendZeroAllocs(t *testing.T) {
	r := newRig(t, Config{})
	f := r.connect(defaultFeatures)
	drv := newRxDriver(t, f.q[rxQ], 8, 4096)
	f.q[rxQ].doKick()
	batch := make([]*link.Frame, 1)
	round := func() {
		fr := r.d.Lend(lendHlen, 6000)
		fr.Loan.Commit(5000, 34, 16)
		batch[0] = fr
		if err := r.d.WriteBatch(batch); err != nil {
			t.Fatal(err)
		}
		fr.Release()
		// Repost what was used, as the driver would.
		q := drv.q
		idx := binary.LittleEndian.Uint16(q.g.at(q.used+2, 2))
		for ; q.usedSeen != idx; q.usedSeen++ {
			e := q.g.at(q.used+4+8*uint64(q.usedSeen%fakeQSize), 8)
			q.publish(uint16(binary.LittleEndian.Uint32(e)))
		}
	}
	round()
	if a := testing.AllocsPerRun(200, round); a != 0 {
		t.Errorf("%.1f allocations per lent frame", a)
	}
}
