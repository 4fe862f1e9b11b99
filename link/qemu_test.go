package link

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// --- helpers -------------------------------------------------------------

// testFrame returns a frame of size bytes whose content depends on seq, with
// seq in the first 4 bytes so that reordering is visible.
func testFrame(seq, size int) []byte {
	p := make([]byte, size)
	for i := range p {
		p[i] = byte(i*7 + seq*13)
	}
	if size >= 4 {
		binary.BigEndian.PutUint32(p, uint32(seq))
	}
	return p
}

// encode frames the way QEMU does.
func encode(frames ...[]byte) []byte {
	var b []byte
	for _, f := range frames {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

// badRecord is a length prefix outside [14, 65535] followed by that many
// bytes: valid stream content that is not a frame.
func badRecord(l int) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(l))
	return append(b, bytes.Repeat([]byte{0xee}, l)...)
}

// refParse is the reference parser: the frames a correct reader delivers
// from stream, plus how many bytes are left incomplete at its end.
func refParse(stream []byte) (frames [][]byte, tail int) {
	for len(stream) >= 4 {
		l := uint64(binary.BigEndian.Uint32(stream))
		if uint64(len(stream)) < 4+l {
			break
		}
		if l >= 14 && l <= 65535 {
			frames = append(frames, stream[4:4+l])
		}
		stream = stream[4+l:]
	}
	return frames, len(stream)
}

func newFrames(n int) []*Frame {
	fs := make([]*Frame, n)
	for i := range fs {
		fs[i] = GetFrame(MaxFrameSize)
	}
	return fs
}

// resetFrames gives the frames their full buffers back, as a caller of
// ReadBatch does between calls.
func resetFrames(fs []*Frame) {
	for _, f := range fs {
		f.Data = f.Data[:cap(f.Data)]
	}
}

// chunkSource feeds a qemuRx from a list of chunks, splitting a chunk if the
// buffer has less room, and reports end of stream after the last one.
type chunkSource struct {
	chunks [][]byte
	calls  int
}

func (s *chunkSource) fill(p []byte) (int, error) {
	s.calls++
	for len(s.chunks) > 0 && len(s.chunks[0]) == 0 {
		s.chunks = s.chunks[1:]
	}
	if len(s.chunks) == 0 {
		return 0, nil
	}
	n := copy(p, s.chunks[0])
	s.chunks[0] = s.chunks[0][n:]
	return n, nil
}

// runCore reads everything from chunks through qemuRx.read, batch frames at
// a time, with a receive buffer of bufSize bytes.
func runCore(t testing.TB, chunks [][]byte, batch, bufSize int) ([][]byte, *QemuStats) {
	st := &QemuStats{}
	x := &qemuRx{buf: make([]byte, bufSize), stats: st}
	src := &chunkSource{chunks: chunks}
	fs := newFrames(batch)
	defer ReleaseAll(fs)
	var got [][]byte
	for {
		resetFrames(fs)
		n, err := x.read(fs, src.fill)
		if err != nil {
			if err != io.EOF {
				t.Fatalf("read: %v", err)
			}
			return got, st
		}
		if n == 0 || n > batch {
			t.Fatalf("read returned %d frames without error", n)
		}
		for _, f := range fs[:n] {
			got = append(got, append([]byte(nil), f.Data...))
		}
	}
}

func sameFrames(t testing.TB, what string, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d frames, want %d", what, len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("%s: frame %d differs: len %d crc %08x, want len %d crc %08x", what, i,
				len(got[i]), crc32.ChecksumIEEE(got[i]), len(want[i]), crc32.ChecksumIEEE(want[i]))
		}
	}
}

// socketPair returns a QemuDevice on one end of a UNIX stream socketpair and
// the raw other end for the test to play QEMU.
func socketPair(t testing.TB) (*QemuDevice, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	d, err := QemuDeviceFromFD(fds[0])
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[1]), "peer")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(); c.Close() })
	if _, ok := t.(*testing.T); ok {
		// Watchdog: a desynchronised stream must fail the test, not hang
		// it. Close makes any blocked ReadBatch or WriteBatch fail.
		w := time.AfterFunc(20*time.Second, func() { d.Close(); c.Close() })
		t.Cleanup(func() { w.Stop() })
	}
	return d, c.(*net.UnixConn)
}

// readAll reads frames from d until it has want of them or fails.
func readAll(t testing.TB, d Device, want int) [][]byte {
	t.Helper()
	fs := newFrames(BatchSize)
	defer ReleaseAll(fs)
	var got [][]byte
	for len(got) < want {
		resetFrames(fs)
		n, err := d.ReadBatch(fs)
		if err != nil {
			t.Fatalf("ReadBatch after %d frames: %v", len(got), err)
		}
		for _, f := range fs[:n] {
			got = append(got, append([]byte(nil), f.Data...))
		}
	}
	return got
}

// mixedStream is a stream of good frames of awkward sizes with bad records
// in between; it returns the stream and the good frames.
func mixedStream(big bool) ([]byte, [][]byte) {
	sizes := []int{14, 60, 15, 1514, 100, 14, 42, 333}
	bad := []int{0, 13, 1, 0}
	if big {
		sizes = append(sizes, 65535, 9000, 65534)
		bad = append(bad, 65536, 200000)
	}
	var stream []byte
	var good [][]byte
	for i, s := range sizes {
		f := testFrame(i, s)
		good = append(good, f)
		stream = append(stream, encode(f)...)
		if i < len(bad) {
			stream = append(stream, badRecord(bad[i])...)
		}
	}
	return stream, good
}

// --- framing core: exact splits -------------------------------------------

func TestQemuRxOneByteAtATime(t *testing.T) {
	stream, want := mixedStream(true)
	for _, batch := range []int{1, 3, 64} {
		chunks := make([][]byte, len(stream))
		for i := range stream {
			chunks[i] = stream[i : i+1]
		}
		got, st := runCore(t, chunks, batch, qemuRxBufSize)
		sameFrames(t, "byte at a time", got, want)
		if st.RxBadLength.Load() != 6 || st.RxTruncated.Load() != 0 {
			t.Fatalf("bad=%d truncated=%d", st.RxBadLength.Load(), st.RxTruncated.Load())
		}
	}
}

func TestQemuRxEveryTwoWaySplit(t *testing.T) {
	stream, want := mixedStream(false)
	for cut := 0; cut <= len(stream); cut++ {
		got, st := runCore(t, [][]byte{stream[:cut], stream[cut:]}, 2, 4+QemuMaxFrame+64)
		sameFrames(t, "split", got, want)
		if st.RxBadLength.Load() != 4 {
			t.Fatalf("cut %d: bad lengths %d, want 4", cut, st.RxBadLength.Load())
		}
	}
}

// TestQemuRxSmallBuffer uses a buffer that holds little more than one
// maximal frame, so compaction and the buffer's end are exercised.
func TestQemuRxSmallBuffer(t *testing.T) {
	stream, want := mixedStream(true)
	for _, chunk := range []int{1000, 4096, 65539, 70000} {
		var chunks [][]byte
		for s := stream; len(s) > 0; {
			n := min(chunk, len(s))
			chunks = append(chunks, s[:n])
			s = s[n:]
		}
		got, _ := runCore(t, chunks, 4, 4+QemuMaxFrame+100)
		sameFrames(t, "small buffer", got, want)
	}
}

func TestQemuRxSkippedBytesCounted(t *testing.T) {
	stream, _ := mixedStream(true)
	_, st := runCore(t, [][]byte{stream}, 64, qemuRxBufSize)
	want := uint64(0)
	for _, l := range []int{0, 13, 1, 0, 65536, 200000} {
		want += 4 + uint64(l)
	}
	if st.RxSkippedBytes.Load() != want {
		t.Fatalf("skipped %d bytes, want %d", st.RxSkippedBytes.Load(), want)
	}
}

func TestQemuRxTruncatedAtEOF(t *testing.T) {
	a, b := testFrame(1, 100), testFrame(2, 200)
	stream := encode(a, b)
	stream = stream[:len(stream)-50]
	got, st := runCore(t, [][]byte{stream}, 64, qemuRxBufSize)
	sameFrames(t, "truncated", got, [][]byte{a})
	if st.RxTruncated.Load() != 4+150 {
		t.Fatalf("truncated %d, want 154", st.RxTruncated.Load())
	}
}

// --- QemuDevice over real sockets ------------------------------------------

func TestQemuReadSocketByteAtATime(t *testing.T) {
	d, peer := socketPair(t)
	stream, want := mixedStream(false)
	go func() {
		for i := range stream {
			if _, err := peer.Write(stream[i : i+1]); err != nil {
				return
			}
			if i%7 == 0 {
				time.Sleep(10 * time.Microsecond)
			}
		}
	}()
	sameFrames(t, "socket byte at a time", readAll(t, d, len(want)), want)
}

func TestQemuReadSeveralFramesPerRead(t *testing.T) {
	d, peer := socketPair(t)
	var want [][]byte
	for i := range 50 {
		want = append(want, testFrame(i, 60+i*31))
	}
	if _, err := peer.Write(encode(want...)); err != nil {
		t.Fatal(err)
	}
	fs := newFrames(8)
	defer ReleaseAll(fs)
	var got [][]byte
	for len(got) < len(want) {
		resetFrames(fs)
		n, err := d.ReadBatch(fs)
		if err != nil {
			t.Fatal(err)
		}
		if n != min(8, len(want)-len(got)) {
			t.Fatalf("ReadBatch returned %d frames with %d buffered", n, len(want)-len(got))
		}
		for _, f := range fs[:n] {
			got = append(got, append([]byte(nil), f.Data...))
		}
	}
	sameFrames(t, "several per read", got, want)
	if r := d.Stats.Reads.Load(); r != 1 {
		t.Fatalf("%d reads for one write of 50 frames, want 1", r)
	}
	if d.Stats.RxFrames.Load() != 50 {
		t.Fatalf("RxFrames %d", d.Stats.RxFrames.Load())
	}
}

func TestQemuReadBadLengthsInSync(t *testing.T) {
	d, peer := socketPair(t)
	stream, want := mixedStream(true)
	go peer.Write(stream)
	sameFrames(t, "bad lengths", readAll(t, d, len(want)), want)
	if d.Stats.RxBadLength.Load() != 6 {
		t.Fatalf("RxBadLength %d, want 6", d.Stats.RxBadLength.Load())
	}
}

func TestQemuDisconnectMidFrame(t *testing.T) {
	d, peer := socketPair(t)
	a, b, c := testFrame(1, 1514), testFrame(2, 60), testFrame(3, 3000)
	stream := encode(a, b, c)
	if _, err := peer.Write(stream[:len(stream)-1000]); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	got := readAll(t, d, 2)
	sameFrames(t, "before disconnect", got, [][]byte{a, b})
	fs := newFrames(4)
	defer ReleaseAll(fs)
	for range 2 {
		n, err := d.ReadBatch(fs)
		if n != 0 || err != ErrClosed {
			t.Fatalf("after disconnect: %d, %v; want 0, ErrClosed", n, err)
		}
	}
	if tr := d.Stats.RxTruncated.Load(); tr != 4+2000 {
		t.Fatalf("RxTruncated %d, want 2004", tr)
	}
	if err := d.WriteBatch([]*Frame{{Data: testFrame(9, 100)}}); err != ErrClosed {
		t.Fatalf("WriteBatch to a gone peer: %v, want ErrClosed", err)
	}
}

func TestQemuCloseUnblocksRead(t *testing.T) {
	d, _ := socketPair(t)
	errc := make(chan error, 1)
	go func() {
		fs := newFrames(4)
		defer ReleaseAll(fs)
		_, err := d.ReadBatch(fs)
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	d.Close()
	select {
	case err := <-errc:
		if err != ErrClosed {
			t.Fatalf("ReadBatch after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock ReadBatch")
	}
}

func TestQemuCloseUnblocksWrite(t *testing.T) {
	d, _ := socketPair(t) // the peer never reads: the socket fills up
	errc := make(chan error, 1)
	go func() {
		f := &Frame{Data: testFrame(0, QemuMaxFrame)}
		batch := []*Frame{f, f, f, f, f, f, f, f}
		for {
			if err := d.WriteBatch(batch); err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	d.Close()
	select {
	case err := <-errc:
		if err != ErrClosed {
			t.Fatalf("WriteBatch after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock WriteBatch")
	}
}

// TestQemuWriteShortWrites makes sendmsg take a little at a time (tiny send
// buffer, slow reader reading in small pieces) and checks that every frame
// arrives whole and in order.
func TestQemuWriteShortWrites(t *testing.T) {
	d, peer := socketPair(t)
	d.rc.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
	})
	var want [][]byte
	sizes := []int{14, 65535, 60, 1514, 9000, 65535, 100, 32768}
	for i := range 300 {
		want = append(want, testFrame(i, sizes[i%len(sizes)]+i%5))
	}
	for i := range want {
		if len(want[i]) > QemuMaxFrame {
			want[i] = want[i][:QemuMaxFrame]
		}
	}
	werr := make(chan error, 1)
	go func() {
		var batch []*Frame
		for i, p := range want {
			batch = append(batch, &Frame{Data: p})
			if len(batch) == 37 || i == len(want)-1 {
				if err := d.WriteBatch(batch); err != nil {
					werr <- err
					return
				}
				batch = batch[:0]
			}
		}
		werr <- nil
	}()
	var stream []byte
	total := len(encode(want...))
	buf := make([]byte, 3000)
	for i := 0; len(stream) < total; i++ {
		peer.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := peer.Read(buf[:1+i%len(buf)])
		if err != nil {
			t.Fatalf("peer read after %d of %d bytes: %v", len(stream), total, err)
		}
		stream = append(stream, buf[:n]...)
		if i%50 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	got, tail := refParse(stream)
	if tail != 0 {
		t.Fatalf("%d stray bytes at the end", tail)
	}
	sameFrames(t, "short writes", got, want)
	if d.Stats.TxShortWrites.Load() == 0 {
		t.Fatal("no short write happened: the test did not test anything")
	}
	if d.Stats.TxFrames.Load() != uint64(len(want)) {
		t.Fatalf("TxFrames %d, want %d", d.Stats.TxFrames.Load(), len(want))
	}
	t.Logf("%d short writes, %d sendmsg", d.Stats.TxShortWrites.Load(), d.Stats.Sendmsgs.Load())
}

func TestQemuWriteSkipsBadFrames(t *testing.T) {
	d, peer := socketPair(t)
	a, b := testFrame(1, 60), testFrame(2, 65535)
	batch := []*Frame{{Data: testFrame(0, 13)}, {Data: a}, {Data: make([]byte, 65536)}, {Data: nil}, {Data: b}}
	if err := d.WriteBatch(batch); err != nil {
		t.Fatal(err)
	}
	want := encode(a, b)
	got := make([]byte, len(want))
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("stream differs")
	}
	if d.Stats.TxSkipped.Load() != 3 || d.Stats.TxFrames.Load() != 2 {
		t.Fatalf("skipped %d sent %d", d.Stats.TxSkipped.Load(), d.Stats.TxFrames.Load())
	}
}

// TestQemuWriteManyFrames sends more frames than one sendmsg's iovec array
// holds.
func TestQemuWriteManyFrames(t *testing.T) {
	d, peer := socketPair(t)
	var want [][]byte
	var batch []*Frame
	for i := range 1500 {
		p := testFrame(i, 14+i%200)
		want = append(want, p)
		batch = append(batch, &Frame{Data: p})
	}
	total := len(encode(want...))
	go d.WriteBatch(batch)
	stream := make([]byte, total)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(peer, stream); err != nil {
		t.Fatal(err)
	}
	got, _ := refParse(stream)
	sameFrames(t, "many frames", got, want)
}

func TestQemuDeviceFromFDRejectsNonSocket(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "x")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := QemuDeviceFromFD(int(f.Fd())); err == nil {
		t.Fatal("a regular file was accepted as a QEMU socket")
	}
}

// --- listener -------------------------------------------------------------

func TestQemuListenStaleAndLive(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "q.sock")

	// A socket file left behind by a process that is gone.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatal("stale socket not left behind")
	}
	l, err := ListenQemu(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	// Now it is live: a second listener must not steal it.
	if l2, err := ListenQemu(path); err == nil {
		l2.Close()
		t.Fatal("live socket path taken over")
	}
	l.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("Close left the socket file behind")
	}

	// A regular file is never removed.
	reg := filepath.Join(dir, "file")
	os.WriteFile(reg, []byte("keep"), 0o600)
	if l, err := ListenQemu(reg); err == nil {
		l.Close()
		t.Fatal("listened on top of a regular file")
	}
	if b, _ := os.ReadFile(reg); string(b) != "keep" {
		t.Fatal("regular file was touched")
	}
}

func TestQemuDefaultSocketPath(t *testing.T) {
	p, err := DefaultQemuSocketPath()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(p, "/tmp/gopasta_") || !strings.HasSuffix(p, ".socket") {
		t.Fatalf("default path %q", p)
	}
	if free, err := qemuPathFree(p); !free {
		t.Fatalf("default path %s is not free: %v", p, err)
	}
}

func TestQemuCommandHint(t *testing.T) {
	want := "-netdev stream,id=s,server=off,addr.type=unix,addr.path=/tmp/x.sock -device virtio-net-pci,netdev=s"
	if got := QemuCommandHint("/tmp/x.sock"); got != want {
		t.Fatalf("hint %q", got)
	}
}

func TestQemuAcceptContext(t *testing.T) {
	l, err := ListenQemu(filepath.Join(t.TempDir(), "q.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := l.Accept(ctx); err != context.DeadlineExceeded {
		t.Fatalf("Accept with an expiring context: %v", err)
	}
	// The listener still works afterwards.
	go net.Dial("unix", l.Path())
	d, err := l.Accept(context.Background())
	if err != nil {
		t.Fatalf("Accept after a cancelled one: %v", err)
	}
	if d.PeerPID() != os.Getpid() {
		t.Errorf("PeerPID %d, want %d", d.PeerPID(), os.Getpid())
	}
	d.Close()
	l.Close()
	if _, err := l.Accept(context.Background()); err != ErrClosed {
		t.Fatalf("Accept after Close: %v", err)
	}
}

// --- reconnecting device -----------------------------------------------------

// qemuClient plays QEMU against a listening socket.
type qemuClient struct {
	t *testing.T
	c *net.UnixConn
}

func dialQemu(t *testing.T, path string) *qemuClient {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &qemuClient{t: t, c: c}
}

func (q *qemuClient) send(frames ...[]byte) {
	q.t.Helper()
	if _, err := q.c.Write(encode(frames...)); err != nil {
		q.t.Fatal(err)
	}
}

func (q *qemuClient) recv() []byte {
	q.t.Helper()
	q.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var h [4]byte
	if _, err := io.ReadFull(q.c, h[:]); err != nil {
		q.t.Fatal(err)
	}
	p := make([]byte, binary.BigEndian.Uint32(h[:]))
	if _, err := io.ReadFull(q.c, p); err != nil {
		q.t.Fatal(err)
	}
	return p
}

// refused reports whether the server closed the connection at once.
func (q *qemuClient) refused() bool {
	q.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	_, err := q.c.Read(b[:])
	return err == io.EOF
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

type reconnectRig struct {
	r                     *ReconnectingDevice
	connects, disconnects atomic.Int32
	refusedPIDs           chan int
}

func newReconnectRig(t *testing.T, oneOff bool) *reconnectRig {
	l, err := ListenQemu(filepath.Join(t.TempDir(), "q.sock"))
	if err != nil {
		t.Fatal(err)
	}
	g := &reconnectRig{refusedPIDs: make(chan int, 10)}
	g.r = NewReconnectingDevice(l, ReconnectConfig{
		OneOff:       oneOff,
		OnConnect:    func(*QemuDevice) { g.connects.Add(1) },
		OnDisconnect: func(*QemuDevice) { g.disconnects.Add(1) },
		OnRefused:    func(pid int) { g.refusedPIDs <- pid },
	})
	t.Cleanup(func() { g.r.Close() })
	return g
}

// readOne reads frames from the device in the background so a test can wait
// with a timeout.
func readOne(d Device) chan []byte {
	ch := make(chan []byte, 1)
	go func() {
		fs := newFrames(1)
		defer ReleaseAll(fs)
		n, err := d.ReadBatch(fs)
		if err != nil || n != 1 {
			close(ch)
			return
		}
		ch <- append([]byte(nil), fs[0].Data...)
	}()
	return ch
}

func expectFrame(t *testing.T, ch chan []byte, want []byte) {
	t.Helper()
	select {
	case got, ok := <-ch:
		if !ok {
			t.Fatal("ReadBatch failed")
		}
		if !bytes.Equal(got, want) {
			t.Fatal("wrong frame")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no frame")
	}
}

func TestReconnectingDevice(t *testing.T) {
	g := newReconnectRig(t, false)
	r := g.r

	// Nobody connected: writes are dropped and counted, not blocked.
	if err := r.WriteBatch([]*Frame{{Data: testFrame(0, 60)}}); err != nil {
		t.Fatal(err)
	}
	if r.TxDropped.Load() != 1 {
		t.Fatalf("TxDropped %d", r.TxDropped.Load())
	}

	ch := readOne(r) // blocks until a client is there
	c1 := dialQemu(t, r.Path())
	f1 := testFrame(1, 100)
	c1.send(f1)
	expectFrame(t, ch, f1)
	if g.connects.Load() != 1 {
		t.Fatalf("OnConnect ran %d times", g.connects.Load())
	}

	// A second client while the first is connected is turned away.
	c2 := dialQemu(t, r.Path())
	if !c2.refused() {
		t.Fatal("second client not refused")
	}
	select {
	case pid := <-g.refusedPIDs:
		if pid != os.Getpid() {
			t.Errorf("refused pid %d", pid)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnRefused not called")
	}

	// The first client still works both ways.
	out := testFrame(2, 1514)
	if err := r.WriteBatch([]*Frame{{Data: out}}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c1.recv(), out) {
		t.Fatal("client 1 got a wrong frame")
	}
	ch = readOne(r)
	f3 := testFrame(3, 60)
	c1.send(f3)
	expectFrame(t, ch, f3)

	// Client 1 leaves in the middle of a frame; the reader retires it.
	ch = readOne(r)
	c1.c.Write(encode(testFrame(4, 500))[:300])
	c1.c.Close()
	waitFor(t, "disconnect", func() bool { return g.disconnects.Load() == 1 })
	if r.Current() != nil {
		t.Fatal("a gone client is still current")
	}
	dropped := r.TxDropped.Load()
	r.WriteBatch([]*Frame{{Data: out}, {Data: out}})
	if r.TxDropped.Load() != dropped+2 {
		t.Fatal("frames without a client not counted as dropped")
	}

	// Client 3 takes over; the reader, still in ReadBatch, now serves it
	// and never saw a byte of client 1's half frame.
	c3 := dialQemu(t, r.Path())
	f5 := testFrame(5, 200)
	c3.send(f5)
	expectFrame(t, ch, f5)
	if g.connects.Load() != 2 {
		t.Fatalf("OnConnect ran %d times, want 2", g.connects.Load())
	}
	if err := r.WriteBatch([]*Frame{{Data: out}}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c3.recv(), out) {
		t.Fatal("client 3 got a wrong frame")
	}

	// Close ends everything: the blocked reader, the client, the socket.
	ch = readOne(r)
	path := r.Path()
	r.Close()
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("frame after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock ReadBatch")
	}
	if !c3.refused() {
		t.Fatal("client not disconnected by Close")
	}
	if err := r.WriteBatch([]*Frame{{Data: out}}); err != ErrClosed {
		t.Fatalf("WriteBatch after Close: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("socket file left behind")
	}
	if r.Connects.Load() != 2 || r.Refused.Load() != 1 {
		t.Fatalf("Connects %d Refused %d", r.Connects.Load(), r.Refused.Load())
	}
}

func TestReconnectingDeviceWriterSeesGoneClient(t *testing.T) {
	g := newReconnectRig(t, false)
	r := g.r
	ch := readOne(r)
	c1 := dialQemu(t, r.Path())
	f := testFrame(1, 60)
	c1.send(f)
	expectFrame(t, ch, f)
	// No reader running now: only the writer can notice the client is gone.
	c1.c.Close()
	big := &Frame{Data: testFrame(2, QemuMaxFrame)}
	var err error
	for range 1000 {
		if err = r.WriteBatch([]*Frame{big}); err != nil || r.Current() == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("WriteBatch to a gone client: %v, want nil (dropped)", err)
	}
	if r.Current() != nil {
		t.Fatal("writer kept writing to a gone client")
	}
	// The reader then retires it and a new client is served.
	ch = readOne(r)
	waitFor(t, "disconnect", func() bool { return g.disconnects.Load() == 1 })
	c2 := dialQemu(t, r.Path())
	c2.send(f)
	expectFrame(t, ch, f)
}

func TestReconnectingDeviceOneOff(t *testing.T) {
	g := newReconnectRig(t, true)
	r := g.r
	ch := readOne(r)
	c1 := dialQemu(t, r.Path())
	f := testFrame(1, 60)
	c1.send(f)
	expectFrame(t, ch, f)
	path := r.Path()
	errc := make(chan error, 1)
	go func() {
		fs := newFrames(1)
		defer ReleaseAll(fs)
		_, err := r.ReadBatch(fs)
		errc <- err
	}()
	c1.c.Close()
	select {
	case err := <-errc:
		if err != ErrClosed {
			t.Fatalf("one-off after the client left: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("one-off device did not end")
	}
	if err := r.WriteBatch([]*Frame{{Data: f}}); err != ErrClosed {
		t.Fatalf("WriteBatch after one-off end: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("socket file left behind")
	}
	if _, err := net.Dial("unix", path); err == nil {
		t.Fatal("a new client could connect after one-off ended")
	}
}

// TestReconnectingDeviceConcurrent runs a reader and a writer against a
// sequence of clients that come and go, for the race detector.
func TestReconnectingDeviceConcurrent(t *testing.T) {
	g := newReconnectRig(t, false)
	r := g.r
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var read atomic.Int64
	wg.Add(2)
	go func() {
		defer wg.Done()
		fs := newFrames(BatchSize)
		defer ReleaseAll(fs)
		for {
			resetFrames(fs)
			n, err := r.ReadBatch(fs)
			if err != nil {
				return
			}
			read.Add(int64(n))
		}
	}()
	go func() {
		defer wg.Done()
		f := &Frame{Data: testFrame(0, 1514)}
		batch := []*Frame{f, f, f, f}
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := r.WriteBatch(batch); err != nil {
				select {
				case <-stop:
					// The test closed the device between the check
					// above and this write: a closed link is the
					// right answer then.
				default:
					t.Errorf("WriteBatch: %v", err)
				}
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	sent := 0
	for i := range 10 {
		c := dialQemu(t, r.Path())
		for j := range 20 {
			c.send(testFrame(i*100+j, 60+j))
			sent++
		}
		go io.Copy(io.Discard, c.c)
		want := int64(sent)
		waitFor(t, "frames of client", func() bool { return read.Load() == want })
		c.c.Close()
		waitFor(t, "disconnect", func() bool { return g.disconnects.Load() == int32(i+1) })
	}
	close(stop)
	r.Close()
	wg.Wait()
}

// --- fuzzing ----------------------------------------------------------------

// FuzzQemuStream feeds an arbitrary byte stream, split into arbitrary chunks
// (sizes taken from splits), through the framing core with an arbitrary
// batch size and a small receive buffer: it must never panic, deliver exactly
// the frames the reference parser finds, and count the incomplete tail.
func FuzzQemuStream(f *testing.F) {
	stream, _ := mixedStream(false)
	f.Add(stream, []byte{1}, uint8(1))
	f.Add(stream, []byte{7, 200, 3}, uint8(5))
	f.Add(encode(testFrame(1, 14), testFrame(2, 15))[:30], []byte{0}, uint8(64))
	f.Add([]byte{0, 0, 0, 13, 1, 2, 3}, []byte{2}, uint8(2))
	f.Add([]byte{0, 1, 0, 0, 0xff, 0xff}, []byte{}, uint8(0))
	f.Add(append(encode(testFrame(3, 65535)), 0, 0), []byte{255, 255, 1}, uint8(3))
	f.Fuzz(func(t *testing.T, stream, splits []byte, batch uint8) {
		var chunks [][]byte
		for i, s := 0, stream; len(s) > 0; i++ {
			n := len(s)
			if len(splits) > 0 {
				n = min(n, 1+int(splits[i%len(splits)])*int(splits[i%len(splits)])%70000)
			}
			chunks = append(chunks, s[:n])
			s = s[n:]
		}
		b := 1 + int(batch)%64
		got, st := runCore(t, chunks, b, 4+QemuMaxFrame+1)
		want, tail := refParse(stream)
		sameFrames(t, "fuzz", got, want)
		if int(st.RxFrames.Load()) != len(want) {
			t.Fatalf("RxFrames %d, want %d", st.RxFrames.Load(), len(want))
		}
		// A tail inside a bad record was already counted as skipped.
		if tr := st.RxTruncated.Load(); tr > uint64(tail) {
			t.Fatalf("RxTruncated %d with a %d-byte tail", tr, tail)
		}
	})
}

// --- benchmarks --------------------------------------------------------------

func benchWrite(b *testing.B, size int) {
	d, peer := socketPair(b)
	go io.Copy(io.Discard, peer)
	p := testFrame(0, size)
	batch := make([]*Frame, BatchSize)
	for i := range batch {
		batch[i] = &Frame{Data: p}
	}
	b.SetBytes(int64(BatchSize * (size + 4)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := d.WriteBatch(batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(d.Stats.Sendmsgs.Load())/float64(b.N), "sendmsg/op")
}

// BenchmarkQemuWriteBatch measures one WriteBatch of 64 frames into a
// socketpair drained by another goroutine. It must not allocate.
func BenchmarkQemuWriteBatch(b *testing.B) {
	b.Run("1514", func(b *testing.B) { benchWrite(b, 1514) })
	b.Run("65535", func(b *testing.B) { benchWrite(b, 65535) })
}

func benchRead(b *testing.B, size int) {
	d, peer := socketPair(b)
	var frames [][]byte
	for i := range 256 {
		frames = append(frames, testFrame(i, size))
	}
	chunk := encode(frames...)
	go func() {
		for {
			if _, err := peer.Write(chunk); err != nil {
				return
			}
		}
	}()
	fs := newFrames(BatchSize)
	defer ReleaseAll(fs)
	b.SetBytes(int64(BatchSize * (size + 4)))
	b.ReportAllocs()
	// Warm up: the receive buffer is allocated on the first call.
	if _, err := d.ReadBatch(fs); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		for got := 0; got < BatchSize; {
			resetFrames(fs[got:])
			n, err := d.ReadBatch(fs[got:])
			if err != nil {
				b.Fatal(err)
			}
			got += n
		}
	}
	b.ReportMetric(float64(d.Stats.Reads.Load())/float64(b.N), "read/op")
}

// BenchmarkQemuReadBatch measures reading 64 frames from a socketpair fed by
// another goroutine. It must not allocate.
func BenchmarkQemuReadBatch(b *testing.B) {
	b.Run("1514", func(b *testing.B) { benchRead(b, 1514) })
	b.Run("65535", func(b *testing.B) { benchRead(b, 65535) })
}

// TestQemuZeroAllocs pins the zero-allocation property outside benchmarks.
func TestQemuZeroAllocs(t *testing.T) {
	d, peer := socketPair(t)
	go io.Copy(io.Discard, peer)
	p := testFrame(0, 1514)
	batch := []*Frame{{Data: p}, {Data: p}, {Data: p}}
	if a := testing.AllocsPerRun(100, func() { d.WriteBatch(batch) }); a != 0 {
		t.Errorf("WriteBatch: %v allocs per call", a)
	}
	d2, peer2 := socketPair(t)
	chunk := encode(p, p, p, p)
	go func() {
		for {
			if _, err := peer2.Write(chunk); err != nil {
				return
			}
		}
	}()
	fs := newFrames(4)
	defer ReleaseAll(fs)
	d2.ReadBatch(fs)
	if a := testing.AllocsPerRun(100, func() { resetFrames(fs); d2.ReadBatch(fs) }); a != 0 {
		t.Errorf("ReadBatch: %v allocs per call", a)
	}
}

// --- interoperability -------------------------------------------------------

// TestQemuFrameProbe runs the VM-less smoke test client
// (../shared/vm/frame-probe.py, an independent implementation of QEMU's
// framing in Python) against a ReconnectingDevice and plays the part of the
// dispatcher by hand: it must see the probe's DHCPDISCOVER and ARP request
// intact, and the probe must accept the hand-made offer and ARP reply.
func TestQemuFrameProbe(t *testing.T) {
	const probe = "/work/shared/vm/frame-probe.py"
	py, err := exec.LookPath("python3")
	if _, serr := os.Stat(probe); err != nil || serr != nil {
		t.Skip("python3 or frame-probe.py not available")
	}
	g := newReconnectRig(t, true)
	r := g.r
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, probe, r.Path())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })

	probeMAC := []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x57}
	ourMAC := []byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}
	fs := newFrames(1)
	defer ReleaseAll(fs)
	next := func() []byte {
		t.Helper()
		resetFrames(fs)
		if n, err := r.ReadBatch(fs); n != 1 || err != nil {
			t.Fatalf("ReadBatch: %d, %v; probe said:\n%s", n, err, out.String())
		}
		return fs[0].Data
	}

	// DHCPDISCOVER: broadcast, IPv4, UDP 68 -> 67, BOOTP op 1.
	d := next()
	if !bytes.Equal(d[0:6], Broadcast[:]) || !bytes.Equal(d[6:12], probeMAC) ||
		binary.BigEndian.Uint16(d[12:]) != 0x0800 || d[23] != 17 ||
		binary.BigEndian.Uint16(d[34:]) != 68 || binary.BigEndian.Uint16(d[36:]) != 67 ||
		int(binary.BigEndian.Uint16(d[16:]))+14 != len(d) || d[42] != 1 {
		t.Fatalf("not the probe's DHCPDISCOVER: % x", d[:min(len(d), 64)])
	}
	xid := binary.BigEndian.Uint32(d[46:])

	// DHCPOFFER: yiaddr 10.0.2.15, router 10.0.2.2. Only what the probe
	// reads must be right.
	bootp := make([]byte, 240)
	bootp[0], bootp[1], bootp[2] = 2, 1, 6
	binary.BigEndian.PutUint32(bootp[4:], xid)
	copy(bootp[16:], []byte{10, 0, 2, 15})
	copy(bootp[28:], probeMAC)
	copy(bootp[236:], []byte{0x63, 0x82, 0x53, 0x63})
	bootp = append(bootp, 53, 1, 2, 3, 4, 10, 0, 2, 2, 255)
	udp := binary.BigEndian.AppendUint16(nil, 67)
	udp = binary.BigEndian.AppendUint16(udp, 68)
	udp = binary.BigEndian.AppendUint16(udp, uint16(8+len(bootp)))
	udp = append(binary.BigEndian.AppendUint16(udp, 0), bootp...)
	ip := []byte{0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 2, 2, 10, 0, 2, 15}
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	offer := append(append(append(append([]byte{}, probeMAC...), ourMAC...), 0x08, 0x00), append(ip, udp...)...)
	if err := r.WriteBatch([]*Frame{{Data: offer}}); err != nil {
		t.Fatal(err)
	}

	// ARP request for the router, answered.
	a := next()
	if binary.BigEndian.Uint16(a[12:]) != 0x0806 || binary.BigEndian.Uint16(a[20:]) != 1 ||
		!bytes.Equal(a[38:42], []byte{10, 0, 2, 2}) {
		t.Fatalf("not the probe's ARP request: % x", a)
	}
	reply := append(append(append([]byte{}, probeMAC...), ourMAC...), 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2)
	reply = append(append(append(reply, ourMAC...), 10, 0, 2, 2), append(probeMAC, 10, 0, 2, 15)...)
	if err := r.WriteBatch([]*Frame{{Data: reply}}); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("frame-probe failed: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "RESULT PASS") {
		t.Fatalf("frame-probe:\n%s", out.String())
	}
	// The probe has gone: the one-off device ends.
	resetFrames(fs)
	if _, err := r.ReadBatch(fs); err != ErrClosed {
		t.Fatalf("after the probe left: %v", err)
	}
}

// TestReconnectingDeviceQuickReconnect: a client that connects after the
// previous one hung up, before the reader noticed, is served, not refused.
func TestReconnectingDeviceQuickReconnect(t *testing.T) {
	g := newReconnectRig(t, false)
	r := g.r
	ch := readOne(r)
	c1 := dialQemu(t, r.Path())
	f1, f2 := testFrame(1, 60), testFrame(2, 70)
	c1.send(f1)
	expectFrame(t, ch, f1)
	// No ReadBatch is running: nobody retires client 1 yet.
	c1.c.Close()
	c2 := dialQemu(t, r.Path())
	c2.send(f2)
	waitFor(t, "client 2 pending", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.pending != nil
	})
	expectFrame(t, readOne(r), f2)
	if g.disconnects.Load() != 1 || g.connects.Load() != 2 || r.Refused.Load() != 0 {
		t.Fatalf("disconnects %d connects %d refused %d", g.disconnects.Load(), g.connects.Load(), r.Refused.Load())
	}
}

// TestQemuDefaultSkipsForeign: the default socket search goes past what it
// cannot reuse: a stale socket of another user (in a sticky directory, as
// /tmp is, removing it would fail for anyone but its owner, and even root
// must not take it) and a regular file, both left untouched.
func TestQemuDefaultSkipsForeign(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to leave a socket of another user")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o1777); err != nil {
		t.Fatal(err)
	}
	pattern := filepath.Join(dir, "gp_%d.socket")
	foreign := fmt.Sprintf(pattern, 1)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: foreign, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if err := os.Lchown(foreign, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fmt.Sprintf(pattern, 2), []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := defaultSocketPath(pattern, 4)
	if err != nil || p != fmt.Sprintf(pattern, 3) {
		t.Fatalf("default path %q, %v; want the third", p, err)
	}
	l, err := listenFirst(pattern, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Path() != fmt.Sprintf(pattern, 3) {
		t.Fatalf("listening on %s, want the third", l.Path())
	}
	fi, err := os.Lstat(foreign)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Sys().(*syscall.Stat_t).Uid != 65534 {
		t.Fatalf("the other user's socket was touched: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(fmt.Sprintf(pattern, 2)); string(b) != "keep" {
		t.Fatal("regular file touched")
	}
	// All taken: an error, not a path.
	if _, err := listenFirst(pattern, 2); err == nil {
		t.Fatal("listened with every path taken")
	}
}
