package vhostuser

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// maxRegions is how many regions SET_MEM_TABLE may carry
// (VHOST_MEMORY_BASELINE_NREGIONS in the specification).
const maxRegions = 8

// region is one mapped piece of guest memory. The front end gives each
// region at two addresses: the guest-physical one, which descriptors use,
// and its own virtual one, which SET_VRING_ADDR uses.
type region struct {
	gpa, qva, size uint64
	mem            []byte // exactly size bytes, inside mapping
	mapping        []byte // what to munmap; nil for test regions
}

// memTable is the guest's memory as the front end described it last. It is
// replaced whole by SET_MEM_TABLE and read by the data path under the
// device's lock, so a lookup never sees a region being unmapped.
//
// Every guest address goes through gpa or qva, which return a slice of
// mapped memory no longer than what was asked for and never beyond the
// region holding its start: an address outside every region, or a length
// that runs past the end of guest memory, cannot reach anything else.
type memTable struct {
	regions []region

	// refs counts the device's reference and every loan's: the mappings
	// go when the last is released (see lend.go).
	refs atomic.Int32
}

// acquire takes a reference; the caller must hold one already (the
// device's, under its lock).
func (t *memTable) acquire() { t.refs.Add(1) }

// release drops a reference and unmaps the table with the last one.
func (t *memTable) release() {
	if t != nil && t.refs.Add(-1) == 0 {
		t.unmap()
	}
}

// regionDesc is a region as SET_MEM_TABLE describes it.
type regionDesc struct {
	GPA, Size, QVA, MmapOffset uint64
}

// mapRegions maps every region of descs from its fd (fds[i] goes with
// descs[i]). On success the table owns the mappings; the fds are the
// caller's (mmap keeps its own reference).
func mapRegions(descs []regionDesc, fds []int) (*memTable, error) {
	if len(descs) == 0 || len(descs) > maxRegions {
		return nil, fmt.Errorf("memory table with %d regions", len(descs))
	}
	if len(fds) != len(descs) {
		return nil, fmt.Errorf("memory table: %d regions but %d descriptors", len(descs), len(fds))
	}
	t := &memTable{}
	t.refs.Store(1)
	for i, d := range descs {
		if err := checkRegion(d); err != nil {
			t.unmap()
			return nil, fmt.Errorf("region %d: %w", i, err)
		}
		// The offset need not be page aligned: map from the start of
		// the file and skip it, as the specification's examples do.
		n := d.Size + d.MmapOffset
		if n > math.MaxInt {
			t.unmap()
			return nil, fmt.Errorf("region %d: too large", i)
		}
		// Memory past the end of the file would fault when touched:
		// refuse a region the file does not hold.
		var st unix.Stat_t
		if err := unix.Fstat(fds[i], &st); err != nil {
			t.unmap()
			return nil, fmt.Errorf("region %d: %w", i, err)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFREG && uint64(st.Size) < n {
			t.unmap()
			return nil, fmt.Errorf("region %d: %d bytes at offset %d, the file has %d", i, d.Size, d.MmapOffset, st.Size)
		}
		m, err := unix.Mmap(fds[i], 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_NORESERVE)
		if err != nil {
			t.unmap()
			return nil, fmt.Errorf("region %d: mmap of %d bytes: %w", i, n, err)
		}
		t.regions = append(t.regions, region{gpa: d.GPA, qva: d.QVA, size: d.Size,
			mem: m[d.MmapOffset:n:n], mapping: m})
	}
	return t, nil
}

// checkRegion refuses regions whose addresses wrap around.
func checkRegion(d regionDesc) error {
	switch {
	case d.Size == 0:
		return errors.New("empty")
	case d.GPA+d.Size < d.GPA, d.QVA+d.Size < d.QVA, d.MmapOffset+d.Size < d.MmapOffset:
		return errors.New("addresses wrap around")
	}
	return nil
}

// unmap releases every mapping. The table must no longer be reachable
// from the data path.
func (t *memTable) unmap() {
	if t == nil {
		return
	}
	for _, r := range t.regions {
		if r.mapping != nil {
			_ = unix.Munmap(r.mapping)
		}
	}
	t.regions = nil
}

// gpa returns the mapped memory at guest-physical address a, at most n
// bytes, stopping at the end of the region that holds a; nil if no region
// holds a.
func (t *memTable) gpa(a, n uint64) []byte {
	for i := range t.regions {
		r := &t.regions[i]
		if a >= r.gpa && a-r.gpa < r.size {
			off := a - r.gpa
			return r.mem[off : off+min(n, r.size-off)]
		}
	}
	return nil
}

// gpaFull returns exactly n bytes at guest-physical address a, or nil if
// they are not all in one region.
func (t *memTable) gpaFull(a, n uint64) []byte {
	b := t.gpa(a, n)
	if uint64(len(b)) != n {
		return nil
	}
	return b
}

// qva returns exactly n bytes at the front end's virtual address a, or nil
// if they are not all in one region.
func (t *memTable) qva(a, n uint64) []byte {
	for i := range t.regions {
		r := &t.regions[i]
		if a >= r.qva && a-r.qva < r.size {
			off := a - r.qva
			if n > r.size-off {
				return nil
			}
			return r.mem[off : off+n]
		}
	}
	return nil
}

// appendRange appends to dst the pieces of segs (one buffer in order)
// that hold its bytes [skip, skip+n), or fewer if segs ends first, and
// returns dst. The pieces alias segs: no byte is copied.
func appendRange(dst, segs [][]byte, skip, n int) [][]byte {
	for _, s := range segs {
		if n == 0 {
			break
		}
		if skip >= len(s) {
			skip -= len(s)
			continue
		}
		s = s[skip:]
		skip = 0
		if len(s) > n {
			s = s[:n]
		}
		dst = append(dst, s)
		n -= len(s)
	}
	return dst
}
