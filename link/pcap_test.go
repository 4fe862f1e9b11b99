package link

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// pcapRecord is one record read back from a capture.
type pcapRecord struct {
	ts   int64 // Unix nanoseconds
	orig int
	data []byte
}

// parsePcap checks the file header written by Pcap and returns every
// record, failing t if the file is not well-formed to its last byte.
func parsePcap(t *testing.T, b []byte) []pcapRecord {
	t.Helper()
	if len(b) < pcapFileHeaderLen {
		t.Fatalf("capture is %d bytes, shorter than a file header", len(b))
	}
	le := binary.LittleEndian
	for _, c := range []struct {
		name      string
		got, want uint32
	}{
		{"magic", le.Uint32(b[0:]), 0xa1b23c4d},
		{"version major", uint32(le.Uint16(b[4:])), 2},
		{"version minor", uint32(le.Uint16(b[6:])), 4},
		{"thiszone", le.Uint32(b[8:]), 0},
		{"sigfigs", le.Uint32(b[12:]), 0},
		{"snaplen", le.Uint32(b[16:]), 262144},
		{"link type", le.Uint32(b[20:]), 1},
	} {
		if c.got != c.want {
			t.Errorf("file header %s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	var recs []pcapRecord
	for off := pcapFileHeaderLen; off < len(b); {
		if len(b)-off < pcapRecordLen {
			t.Fatalf("record %d: %d bytes left, shorter than a record header", len(recs), len(b)-off)
		}
		h := b[off : off+pcapRecordLen]
		sec, nsec := le.Uint32(h[0:]), le.Uint32(h[4:])
		incl, orig := int(le.Uint32(h[8:])), int(le.Uint32(h[12:]))
		if nsec >= 1e9 {
			t.Fatalf("record %d: %d nanoseconds", len(recs), nsec)
		}
		if incl > orig || incl > PcapSnapLen {
			t.Fatalf("record %d: incl_len %d, orig_len %d", len(recs), incl, orig)
		}
		off += pcapRecordLen
		if len(b)-off < incl {
			t.Fatalf("record %d: %d bytes of data left, header says %d", len(recs), len(b)-off, incl)
		}
		recs = append(recs, pcapRecord{ts: int64(sec)*1e9 + int64(nsec), orig: orig, data: b[off : off+incl]})
		off += incl
	}
	return recs
}

// pcapTestFrame returns a frame of n bytes whose content depends on seed.
func pcapTestFrame(n int, seed byte) *Frame {
	f := GetFrame(n)
	for i := range f.Data {
		f.Data[i] = seed + byte(i*7)
	}
	return f
}

func TestPcapHeaderAndRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.pcap")
	before := time.Now().UnixNano()
	p, err := CreatePcap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{14, 60, 1514, SmallFrameSize + 1, 65535 + 14, MaxFrameSize}
	var want [][]byte
	for i, n := range sizes {
		f := pcapTestFrame(n, byte(i))
		want = append(want, bytes.Clone(f.Data))
		p.Tee(f)
		// The capture holds no reference: the next owner may scribble
		// on the buffer at once.
		for j := range f.Data {
			f.Data[j] = 0xee
		}
		f.Release()
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	after := time.Now().UnixNano()
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v (%v), want 0600", st.Mode(), err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	recs := parsePcap(t, b)
	if len(recs) != len(sizes) {
		t.Fatalf("%d records, want %d", len(recs), len(sizes))
	}
	last := before
	for i, r := range recs {
		if !bytes.Equal(r.data, want[i]) || r.orig != len(want[i]) {
			t.Errorf("record %d: %d bytes (orig %d) differ from the %d-byte frame", i, len(r.data), r.orig, len(want[i]))
		}
		if r.ts < last || r.ts > after {
			t.Errorf("record %d: timestamp %d outside [%d, %d]", i, r.ts, last, after)
		}
		last = r.ts
	}
	if got := p.Frames.Load(); got != uint64(len(sizes)) {
		t.Errorf("Frames = %d, want %d", got, len(sizes))
	}
	// After Close frames are ignored and Close is harmless.
	f := pcapTestFrame(60, 1)
	p.Tee(f)
	f.Release()
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if b2, _ := os.ReadFile(path); len(b2) != len(b) {
		t.Errorf("file grew from %d to %d bytes after Close", len(b), len(b2))
	}
}

func TestPcapEmptyIsWellFormed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.pcap")
	p, err := CreatePcap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The header is on disk before the first frame.
	b, _ := os.ReadFile(path)
	if len(parsePcap(t, b)) != 0 || len(b) != pcapFileHeaderLen {
		t.Errorf("fresh capture is %d bytes", len(b))
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestPcapCreateFails(t *testing.T) {
	_, err := CreatePcap("/nonexistent/dir/x.pcap", nil)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("CreatePcap on a missing directory: %v", err)
	}
	if !strings.Contains(err.Error(), "/nonexistent/dir/x.pcap") {
		t.Errorf("error %q does not name the path", err)
	}
}

// TestPcapPeriodicFlush: records reach the file without Close, so a capture
// can be read while gopasta runs.
func TestPcapPeriodicFlush(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.pcap")
	p, err := CreatePcap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	f := pcapTestFrame(100, 3)
	p.Tee(f)
	f.Release()
	deadline := time.Now().Add(3 * pcapFlushInterval)
	for {
		b, _ := os.ReadFile(path)
		if len(b) == pcapFileHeaderLen+pcapRecordLen+100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("file is %d bytes %v after a frame", len(b), 3*pcapFlushInterval)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// failWriter accepts the file header, then fails every write.
type failWriter struct {
	mu     sync.Mutex
	writes int
	closed bool
}

var errDiskFull = errors.New("no space left on device")

func (w *failWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	if w.writes == 1 {
		return len(b), nil
	}
	return 0, errDiskFull
}

func (w *failWriter) Close() error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	return nil
}

// TestPcapWriteErrorStopsCapture: a failing write is reported once and
// stops the capture; later frames cost nothing and nothing panics.
func TestPcapWriteErrorStopsCapture(t *testing.T) {
	w := &failWriter{}
	var reports []error
	p, err := NewPcap(w, func(err error) { reports = append(reports, err) })
	if err != nil {
		t.Fatal(err)
	}
	// Enough large frames to overflow the buffer several times.
	for i := range 4 * pcapBufferSize / MaxFrameSize {
		f := pcapTestFrame(MaxFrameSize, byte(i))
		p.Tee(f)
		f.Release()
	}
	if len(reports) != 1 || !errors.Is(reports[0], errDiskFull) {
		t.Fatalf("reports %v, want one wrapping %v", reports, errDiskFull)
	}
	if err := p.Close(); !errors.Is(err, errDiskFull) {
		t.Errorf("Close: %v, want %v", err, errDiskFull)
	}
	if w.writes != 2 || !w.closed {
		t.Errorf("%d writes, closed %v: want the header, one failed write, closed", w.writes, w.closed)
	}
	if len(reports) != 1 {
		t.Errorf("%d reports after Close", len(reports))
	}
}

func TestPcapHeaderWriteFails(t *testing.T) {
	w := &failWriter{writes: 1}
	if _, err := NewPcap(w, nil); !errors.Is(err, errDiskFull) {
		t.Fatalf("NewPcap on a failing writer: %v", err)
	}
}

// TestPcapNilCostsNothing: a nil capture is a valid no-op.
func TestPcapNil(t *testing.T) {
	var p *Pcap
	f := pcapTestFrame(60, 0)
	p.Tee(f)
	f.Release()
	if err := p.Flush(); err != nil {
		t.Error(err)
	}
	if err := p.Close(); err != nil {
		t.Error(err)
	}
}

func TestPcapZeroAllocs(t *testing.T) {
	p, err := CreatePcap(filepath.Join(t.TempDir(), "x.pcap"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	small, large := pcapTestFrame(74, 1), pcapTestFrame(65000, 2)
	defer small.Release()
	defer large.Release()
	// Enough runs to overflow the buffer, so that flushing is measured too.
	if n := testing.AllocsPerRun(100, func() { p.Tee(small); p.Tee(large) }); n != 0 {
		t.Errorf("%v allocations per frame pair", n)
	}
}

// TestPcapWriterBothPaths: frames written by the writer goroutine (Send)
// and directly (SendNow) are both captured, byte for byte, and in the order
// the link saw them, while another goroutine captures too (as the
// dispatcher does with frames from the guest).
func TestPcapWriterBothPaths(t *testing.T) {
	const n = 2000
	path := filepath.Join(t.TempDir(), "x.pcap")
	p, err := CreatePcap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	sink := newSink(1500, 2*n)
	defer sink.Close()
	w := NewWriter(sink, 64)
	w.Tee = p.Tee
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the "dispatcher": frames from the guest, marked 0xff
		defer wg.Done()
		for i := range n {
			f := GetFrame(60)
			f.Data[0] = 0xff
			binary.BigEndian.PutUint32(f.Data[14:], uint32(i))
			p.Tee(f)
			f.Release()
		}
	}()
	for i := range n {
		f := GetFrame(60 + i%1400)
		f.Data[0] = 0x02
		binary.BigEndian.PutUint32(f.Data[14:], uint32(i))
		if i%2 == 0 {
			w.Send(f)
		} else {
			w.SendNow(ctx, f)
		}
	}
	wg.Wait()
	var onLink [][]byte
	for range n {
		onLink = append(onLink, bytes.Clone(sink.ReadFrame()))
	}
	cancel()
	<-done
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	recs := parsePcap(t, b)
	if len(recs) != 2*n {
		t.Fatalf("%d records, want %d", len(recs), 2*n)
	}
	var out, in int
	var last int64
	for i, r := range recs {
		if r.ts < last {
			t.Fatalf("record %d: timestamp goes back %d ns", i, last-r.ts)
		}
		last = r.ts
		seq := binary.BigEndian.Uint32(r.data[14:])
		switch r.data[0] {
		case 0xff:
			if seq != uint32(in) {
				t.Fatalf("incoming record %d has sequence %d", in, seq)
			}
			in++
		case 0x02:
			if !bytes.Equal(r.data, onLink[out]) {
				t.Fatalf("outgoing record %d (sequence %d, %d bytes) is not frame %d as written (%d bytes)",
					out, seq, len(r.data), out, len(onLink[out]))
			}
			out++
		default:
			t.Fatalf("record %d: unknown marker %#x", i, r.data[0])
		}
	}
	if in != n || out != n {
		t.Errorf("%d incoming, %d outgoing records", in, out)
	}
}

func BenchmarkPcapTee(b *testing.B) {
	for _, size := range []int{74, 1514, 65534} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			p, err := CreatePcap(filepath.Join(b.TempDir(), "x.pcap"), nil)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			f := pcapTestFrame(size, 0)
			defer f.Release()
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				p.Tee(f)
			}
		})
	}
}

// TestPcapLimit: the capture stops at the first record that would take the
// file past its cap, the file keeps every whole record before it, and the
// stop is reported once.
func TestPcapLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.pcap")
	var reports []error
	p, err := CreatePcap(path, func(err error) { reports = append(reports, err) })
	if err != nil {
		t.Fatal(err)
	}
	const limit = 4096
	p.SetLimit(limit)
	for i := range 100 {
		f := pcapTestFrame(1000, byte(i))
		p.Tee(f)
		f.Release()
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > limit {
		t.Fatalf("capture of %d bytes over its cap of %d", len(b), limit)
	}
	recs := parsePcap(t, b)
	// 24 + 3 * (16 + 1000) = 3072; a fourth record would make 4088 + ...
	want := (limit - pcapFileHeaderLen) / (pcapRecordLen + 1000)
	if len(recs) != want || p.Frames.Load() != uint64(want) {
		t.Fatalf("%d records (%d counted), want %d", len(recs), p.Frames.Load(), want)
	}
	if len(reports) != 1 || !strings.Contains(reports[0].Error(), "size cap") {
		t.Fatalf("reports %v", reports)
	}
}
