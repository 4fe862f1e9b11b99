package link

// Theory of operation: passt mode.
//
// QEMU (>= 7.2, `-netdev stream,addr.type=unix`) connects to a UNIX stream
// socket and both directions carry Ethernet frames, each preceded by its
// length as a 4-byte big-endian integer. There is no FCS and no padding.
//
// Receive. A stream has no message boundaries, so one read(2) may return
// many frames, a fraction of one, or both. QemuDevice reads as much as the
// kernel has (up to a 4 MiB linear buffer) with a single syscall and then
// cuts complete frames out of the buffer, copying each one into the caller's
// pooled Frame. Copying is deliberate: the Device contract hands the caller
// frames from its own pools, and a memcpy of a 64 KiB frame costs less than
// the extra syscall it would take to read the length first and the frame
// second straight into the right buffer. The tail of the buffer that is not
// yet a complete frame stays where it is; only when the reader has to go
// back to the kernel (no complete frame left) is that tail moved to the front,
// so at most one partial frame (< 64 KiB) is ever moved per read, and a
// stream trickling in one byte at a time costs no quadratic copying.
//
// A length below an Ethernet header (14) or above the largest frame (65535)
// cannot be a frame, but its bytes are still part of the stream: they are
// skipped, possibly across several reads, and counted, so the stream stays
// in step. The reader only blocks (in the Go runtime's poller, so that Close
// wakes it) when no complete frame is buffered.
//
// Transmit. WriteBatch turns a batch into one sendmsg(2): per frame one
// 4-byte iovec for the length, taken from a scratch area the device owns,
// and one iovec for the frame itself, so nothing is copied or allocated. A
// stream socket may accept only part of it; the iovec array is then advanced
// to the exact byte where the kernel stopped and the rest is sent once the
// socket is writable again. A frame is therefore never cut short and
// followed by another frame, which would desynchronise QEMU for good.
// Blocking the one writer goroutine while the guest does not read is the
// back-pressure the Writer is designed around.

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/internal/nbsys"
)

const (
	// QemuMTU is the MTU passt advertises to a VM by default: the largest
	// IP packet a 65535-byte frame carries, rounded down to a multiple of 8.
	QemuMTU = 65520

	// QemuMaxFrame is the largest frame the stream framing carries
	// (ETH_MAX_MTU in passt); longer frames are skipped both ways.
	QemuMaxFrame = 65535

	// qemuMinFrame is the shortest acceptable frame: an Ethernet header.
	qemuMinFrame = 14

	// qemuRxBufSize is the receive buffer: one read(2) takes up to this much.
	// It must hold at least one maximal frame with its length prefix.
	qemuRxBufSize = 4 << 20

	// qemuMaxIov bounds one sendmsg's iovec array (IOV_MAX is 1024 on
	// Linux); two iovecs per frame.
	qemuMaxIov = 1024

	// qemuSockBuf is the socket buffer size asked for. passt asks for
	// INT_MAX/2 and gets net.core.[rw]mem_max (~200 KiB by default); we
	// force 4 MiB when allowed (CAP_NET_ADMIN), enough for bursts of 64 KiB
	// frames without the bufferbloat of an unbounded queue towards a slow
	// guest, and fall back to the clamped request otherwise.
	qemuSockBuf = 4 << 20
)

// QemuStats counts what a QemuDevice did. All fields are safe to read at any
// time.
type QemuStats struct {
	// RxFrames and RxBytes count frames delivered by ReadBatch.
	RxFrames, RxBytes atomic.Uint64
	// RxBadLength counts length prefixes outside [14, 65535]; their bytes
	// (RxSkippedBytes, prefix included) were skipped.
	RxBadLength, RxSkippedBytes atomic.Uint64
	// RxTooBig counts valid frames dropped because the caller's buffer was
	// smaller than the frame (a caller bug; the contract is MaxFrameSize).
	RxTooBig atomic.Uint64
	// RxTruncated counts bytes of an incomplete frame lost when the peer
	// went away in the middle of it.
	RxTruncated atomic.Uint64
	// Reads counts read(2) calls that returned data.
	Reads atomic.Uint64

	// TxFrames and TxBytes count frames written whole by WriteBatch.
	TxFrames, TxBytes atomic.Uint64
	// TxSkipped counts frames WriteBatch refused to send (shorter than an
	// Ethernet header or longer than QemuMaxFrame).
	TxSkipped atomic.Uint64
	// TxShortWrites counts sendmsg calls that sent less than asked; the rest
	// was completed afterwards.
	TxShortWrites atomic.Uint64
	// Sendmsgs counts sendmsg calls that sent something.
	Sendmsgs atomic.Uint64
}

// QemuDevice is a link.Device over a connected UNIX stream socket speaking
// QEMU's stream netdev framing (4-byte big-endian length + Ethernet frame).
// Create it with NewQemuDevice, QemuDeviceFromFD or QemuListener.Accept.
//
// As with every Device, ReadBatch must be called from one goroutine and
// WriteBatch from one (possibly different) goroutine. When the peer
// disconnects, both return ErrClosed; the device should then be closed.
type QemuDevice struct {
	conn *net.UnixConn
	rc   syscall.RawConn
	mtu  int
	pid  int

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	// Stats counts frames, bytes and anomalies.
	Stats QemuStats

	// Receive state: touched by the ReadBatch goroutine only.
	rx     qemuRx
	fillFn func([]byte) (int, error) // bound once: no allocation per read
	readFn func(fd uintptr) bool
	rbuf   []byte
	rn     int
	rerr   error
	rxEOF  bool

	// Transmit state: touched by the WriteBatch goroutine only.
	hdr     [qemuMaxIov / 2][4]byte // length prefixes, one per frame
	iov     [qemuMaxIov]unix.Iovec
	msg     unix.Msghdr
	iovLo   int                   // first iovec not yet completely sent
	iovHi   int                   // end of the iovecs of this sendmsg
	writeFn func(fd uintptr) bool // bound once: no allocation per write
	werr    error
}

// NewQemuDevice returns a device for conn, a connected UNIX stream socket.
// The device takes ownership of conn: Close closes it.
func NewQemuDevice(conn *net.UnixConn) (*QemuDevice, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qemu socket: %w", err)
	}
	d := &QemuDevice{conn: conn, rc: rc, mtu: QemuMTU, pid: -1}
	d.fillFn = d.fill
	d.readFn = d.doRead
	d.writeFn = d.doWrite
	_ = rc.Control(func(fd uintptr) {
		// Large socket buffers, as passt does: a VM moves bursts of 64 KiB
		// frames, and the default ~200 KiB would make the writer wait for
		// QEMU every few frames. FORCE works when we have CAP_NET_ADMIN.
		for _, o := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], qemuSockBuf) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], qemuSockBuf)
			}
		}
		if uc, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			d.pid = int(uc.Pid)
		}
	})
	return d, nil
}

// QemuDeviceFromFD returns a device for fd, an already connected UNIX stream
// socket inherited from the parent (passt's -F/--fd). The device takes
// ownership of fd (it is closed, the device works on a duplicate). There is
// no listener behind such a device: when the peer leaves it is gone for good.
func QemuDeviceFromFD(fd int) (*QemuDevice, error) {
	uc, err := InheritedUnixStream(fd, "qemu-fd")
	if err != nil {
		return nil, err
	}
	return NewQemuDevice(uc)
}

// InheritedUnixStream takes over fd, a connected UNIX stream socket
// inherited from the parent (-F/--fd), as a *net.UnixConn named name. fd
// stays the caller's if it is not a stream socket; past that check it is
// closed whatever the outcome (the conn works on a duplicate).
func InheritedUnixStream(fd int, name string) (*net.UnixConn, error) {
	st, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("fd %d: not a socket: %w", fd, err)
	}
	if st != unix.SOCK_STREAM {
		return nil, fmt.Errorf("fd %d: not a stream socket", fd)
	}
	f := os.NewFile(uintptr(fd), name)
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("fd %d: %w", fd, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("fd %d: not a UNIX domain socket", fd)
	}
	return uc, nil
}

// SetMTU sets the MTU that MTU reports (default QemuMTU). Call it before the
// device is in use. It does not limit what is carried: any frame up to
// QemuMaxFrame passes.
func (d *QemuDevice) SetMTU(mtu int) { d.mtu = mtu }

// MTU implements Device.
func (d *QemuDevice) MTU() int { return d.mtu }

// PeerPID is the process ID of the connected peer (SO_PEERCRED) for log
// lines, or -1 if unknown.
func (d *QemuDevice) PeerPID() int { return d.pid }

// PeerGone reports whether the peer has closed its end (or the connection
// failed), without consuming anything: frames it sent before leaving may
// still be waiting to be read.
func (d *QemuDevice) PeerGone() bool {
	if d.closed.Load() {
		return true
	}
	gone := false
	err := d.rc.Control(func(fd uintptr) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		if n, err := unix.Poll(pfd, 0); err == nil && n > 0 {
			gone = pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
		}
	})
	return gone || err != nil
}

// Close implements Device. It wakes a ReadBatch or WriteBatch blocked in the
// poller; both return ErrClosed from then on. Closing twice is harmless.
func (d *QemuDevice) Close() error {
	d.closeOnce.Do(func() {
		d.closed.Store(true)
		d.closeErr = d.conn.Close()
	})
	return d.closeErr
}

// ReadBatch implements Device. It copies up to len(frames) complete frames
// into the caller's frames (each needs a buffer of at least QemuMaxFrame
// bytes, as MaxFrameSize guarantees) and blocks only if no complete frame is
// buffered. It returns ErrClosed after Close or once the peer has gone;
// frames buffered completely before the peer left are delivered first, a
// frame the peer left in the middle of is discarded.
func (d *QemuDevice) ReadBatch(frames []*Frame) (int, error) {
	if d.closed.Load() || d.rxEOF {
		return 0, ErrClosed
	}
	if len(frames) == 0 {
		return 0, nil
	}
	if d.rx.buf == nil {
		// Allocated on first use, so that a refused or idle connection
		// does not cost 4 MiB.
		d.rx.buf = make([]byte, qemuRxBufSize)
		d.rx.stats = &d.Stats
	}
	n, err := d.rx.read(frames, d.fillFn)
	if err != nil {
		// EOF, a connection error (ECONNRESET...) or Close: the peer is
		// gone either way.
		d.rxEOF = true
		return 0, ErrClosed
	}
	return n, nil
}

// fill is the receive source: one read(2) into p, waiting in the poller
// while there is nothing to read.
func (d *QemuDevice) fill(p []byte) (int, error) {
	d.rbuf, d.rn, d.rerr = p, 0, nil
	if err := d.rc.Read(d.readFn); err != nil {
		return 0, err // the poller only fails when the socket was closed
	}
	d.rbuf = nil
	return d.rn, d.rerr
}

// doRead is the poller callback: one read(2). It returns false on EAGAIN so
// that the poller waits for data.
func (d *QemuDevice) doRead(fd uintptr) bool {
	for {
		n, err := nbsys.Read(int(fd), d.rbuf)
		switch err {
		case 0:
			d.rn = n
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			d.rerr = err
			return true
		}
	}
}

// WriteBatch implements Device: every acceptable frame is sent whole and in
// order, in as few sendmsg calls as IOV_MAX allows, blocking in the poller
// while the socket is full. Frames shorter than an Ethernet header or longer
// than QemuMaxFrame are skipped and counted. The frames stay the caller's;
// the device keeps no reference to them after it returns. It returns
// ErrClosed after Close or when the peer has gone.
func (d *QemuDevice) WriteBatch(frames []*Frame) error {
	if d.closed.Load() {
		return ErrClosed
	}
	for i := 0; i < len(frames); {
		n := 0
		var bytes uint64
		for ; i < len(frames) && n < qemuMaxIov; i++ {
			p := frames[i].Data
			if len(p) < qemuMinFrame || len(p) > QemuMaxFrame {
				d.Stats.TxSkipped.Add(1)
				continue
			}
			h := &d.hdr[n/2]
			binary.BigEndian.PutUint32(h[:], uint32(len(p)))
			d.iov[n].Base = &h[0]
			d.iov[n].SetLen(4)
			d.iov[n+1].Base = &p[0]
			d.iov[n+1].SetLen(len(p))
			n += 2
			bytes += uint64(len(p))
		}
		if n == 0 {
			continue
		}
		d.iovLo, d.iovHi, d.werr = 0, n, nil
		perr := d.rc.Write(d.writeFn)
		// Drop the references to the caller's buffers.
		for j := range n {
			d.iov[j].Base = nil
		}
		if perr != nil || d.werr != nil {
			// Closed, or the peer went away, or a failure that may
			// have left a frame half sent: in every case the stream
			// cannot carry another frame. Close it so the reader
			// learns too.
			d.Close()
			return ErrClosed
		}
		d.Stats.TxFrames.Add(uint64(n / 2))
		d.Stats.TxBytes.Add(bytes)
	}
	return nil
}

// doWrite is the poller callback: sendmsg what is left of the iovec array,
// advance it past what the kernel took, and return false (wait for
// writability) while anything is left.
func (d *QemuDevice) doWrite(fd uintptr) bool {
	for d.iovLo < d.iovHi {
		d.msg.Iov = &d.iov[d.iovLo]
		d.msg.SetIovlen(d.iovHi - d.iovLo)
		r, e := nbsys.Sendmsg(int(fd), &d.msg, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
		switch e {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			d.werr = e
			return true
		}
		d.Stats.Sendmsgs.Add(1)
		sent := uint64(r)
		for sent > 0 {
			v := &d.iov[d.iovLo]
			if sent < v.Len {
				// The kernel stopped inside this iovec: resume at
				// the exact byte, so the frame is completed before
				// any other byte is sent.
				v.Base = (*byte)(unsafe.Add(unsafe.Pointer(v.Base), sent))
				v.Len -= sent
				break
			}
			sent -= v.Len
			d.iovLo++
		}
		if d.iovLo < d.iovHi {
			d.Stats.TxShortWrites.Add(1)
		}
	}
	return true
}

// qemuRx is the receive buffer and the framing state machine, apart from
// the socket so that tests can feed it arbitrary splits of a stream.
//
// buf[r:w] is data read but not yet consumed. skip is the number of bytes
// still to discard from a frame with a bad length.
type qemuRx struct {
	buf   []byte
	r, w  int
	skip  uint64
	stats *QemuStats
}

// cut copies complete frames from the buffer into frames, consuming their
// bytes (and skipping bad ones), and returns how many it delivered. It stops
// at the first incomplete frame.
func (x *qemuRx) cut(frames []*Frame) int {
	n := 0
	for n < len(frames) {
		if x.skip > 0 {
			k := uint64(x.w - x.r)
			if k > x.skip {
				k = x.skip
			}
			x.r += int(k)
			x.skip -= k
			if x.skip > 0 {
				break
			}
		}
		avail := x.w - x.r
		if avail < 4 {
			break
		}
		l := binary.BigEndian.Uint32(x.buf[x.r:])
		if l < qemuMinFrame || l > QemuMaxFrame {
			// Not a frame, but its bytes are part of the stream:
			// skip them, across reads if need be.
			x.stats.RxBadLength.Add(1)
			x.stats.RxSkippedBytes.Add(4 + uint64(l))
			x.r += 4
			x.skip = uint64(l)
			continue
		}
		if avail < 4+int(l) {
			break
		}
		p := x.buf[x.r+4 : x.r+4+int(l)]
		x.r += 4 + int(l)
		f := frames[n]
		if cap(f.Data) < len(p) {
			x.stats.RxTooBig.Add(1)
			continue
		}
		f.Data = f.Data[:copy(f.Data[:len(p)], p)]
		x.stats.RxFrames.Add(1)
		x.stats.RxBytes.Add(uint64(len(p)))
		n++
	}
	if x.r == x.w {
		x.r, x.w = 0, 0
	}
	return n
}

// read returns the next complete frames, calling fill for more bytes (one
// read(2) in a QemuDevice) only while no complete frame is buffered. fill
// returning 0 bytes means end of stream (io.EOF is returned then); an
// incomplete frame left in the buffer at the end is counted as truncated.
func (x *qemuRx) read(frames []*Frame, fill func([]byte) (int, error)) (int, error) {
	for {
		if n := x.cut(frames); n > 0 {
			return n, nil
		}
		x.compact()
		// After compact the free space is at least len(buf) minus one
		// partial frame (< 4+QemuMaxFrame bytes), never empty.
		m, err := fill(x.buf[x.w:])
		if err == nil && m == 0 {
			err = io.EOF
		}
		if err != nil {
			x.stats.RxTruncated.Add(uint64(x.w - x.r))
			x.r, x.w = 0, 0
			return 0, err
		}
		x.stats.Reads.Add(1)
		x.w += m
	}
}

// compact makes room for the next read by moving the unconsumed tail (less
// than one frame, since cut found no complete frame) to the front.
func (x *qemuRx) compact() {
	if x.r == 0 {
		return
	}
	x.w = copy(x.buf, x.buf[x.r:x.w])
	x.r = 0
}
