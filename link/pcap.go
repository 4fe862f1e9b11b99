package link

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Packet capture (-p/--pcap), as pasta does it: every frame that crosses
// the guest link, in both directions, goes to a file in the classic libpcap
// format that tcpdump and Wireshark read.
//
// # Theory of operation
//
// The format is a 24-byte file header and, per frame, a 16-byte record
// header followed by the frame's bytes. That is small enough to write by
// hand; a library would bring a whole module for two fixed layouts.
//
// Frames have one owner (frame.go) and the capture is never it: the
// hooks (Writer.Tee after a frame is written, the dispatcher's Tee before a
// read frame is handled) call Pcap.Tee while their caller still owns the
// frame, and Tee copies the bytes into a buffer before it returns. Two
// goroutines capture (the link writer and the dispatcher), so the buffer
// has a mutex; holding it costs a memcpy per frame. The buffer goes to the
// file when the next record would not fit, and from a flusher goroutine
// every pcapFlushInterval, so that a capture of a quiet link is on disk
// within that time while a busy one costs one write(2) per buffer, not two
// per frame. Close flushes what is left, so a daemon that exits on SIGTERM
// or because its namespace went away leaves a complete file.
//
// Timestamps are nanoseconds (the nanosecond variant of the format, which
// libpcap, tcpdump and Wireshark have read for over a decade): at gopasta's
// rates many frames share a microsecond. They are the wall-clock time at
// open plus the monotonic time elapsed since, taken under the mutex, so the
// records of the file never go backwards even if the system clock is set.
//
// A failing write (a full disk, a file on a vanished mount) must not take
// the network down with it: the first error is reported once through the
// onError callback and capture stops; Tee then costs one atomic load.
const (
	pcapMagicNano    = 0xa1b23c4d // nanosecond timestamps
	pcapVersionMajor = 2
	pcapVersionMinor = 4
	// PcapSnapLen is the snapshot length in the file header: libpcap's
	// own maximum, above any frame gopasta carries (MaxFrameSize), so that
	// no frame is cut short.
	PcapSnapLen       = 262144
	pcapLinkEthernet  = 1 // LINKTYPE_ETHERNET
	pcapFileHeaderLen = 24
	pcapRecordLen     = 16

	// pcapBufferSize holds a few maximum-size frames, so that a bulk
	// transfer writes the file in large chunks.
	pcapBufferSize = 256 << 10
	// pcapFlushInterval bounds how stale the file is on a quiet link.
	pcapFlushInterval = time.Second
)

// Pcap writes captured frames to a pcap file. Create it with CreatePcap or
// NewPcap, pass its Tee method to the hooks, and Close it at exit. A nil
// *Pcap is valid and captures nothing.
type Pcap struct {
	mu      sync.Mutex
	w       io.Writer
	buf     []byte    // records not yet written; mu
	start   time.Time // wall clock at open, with its monotonic reading
	startNs int64     // start as Unix nanoseconds
	err     error     // the write error that stopped capture; mu
	size    int64     // bytes of the file, buffered ones included; mu
	limit   int64     // the file's size cap (SetLimit), 0 for none; mu

	off     atomic.Bool // capture stopped: Close, or a write error
	onError func(error)

	stop chan struct{} // closed by Close: the flusher exits
	done chan struct{} // closed by the flusher on exit

	// Frames counts the frames captured.
	Frames atomic.Uint64
}

// CreatePcap creates (or truncates) the file at path, readable by its owner
// only since it holds the guest's traffic, never through a symbolic link
// (the daemon opens its own with more checks, and uses NewPcap), and writes the file header to
// it, so that a path that cannot be written fails here, at start-up, and
// not at the first frame. onError, if not nil, is told once about a write
// error that stops the capture later.
func CreatePcap(path string, onError func(error)) (*Pcap, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	p, err := NewPcap(f, onError)
	if err != nil {
		f.Close()
		return nil, err
	}
	return p, nil
}

// NewPcap writes the file header to w and returns a Pcap that writes
// records to it. If w is an io.Closer, Close closes it.
func NewPcap(w io.Writer, onError func(error)) (*Pcap, error) {
	var h [pcapFileHeaderLen]byte
	le := binary.LittleEndian
	le.PutUint32(h[0:], pcapMagicNano)
	le.PutUint16(h[4:], pcapVersionMajor)
	le.PutUint16(h[6:], pcapVersionMinor)
	// thiszone and sigfigs (8..15) are zero: timestamps are UTC.
	le.PutUint32(h[16:], PcapSnapLen)
	le.PutUint32(h[20:], pcapLinkEthernet)
	if _, err := w.Write(h[:]); err != nil {
		return nil, fmt.Errorf("write pcap header: %w", err)
	}
	now := time.Now()
	p := &Pcap{
		w:       w,
		size:    pcapFileHeaderLen,
		buf:     make([]byte, 0, pcapBufferSize),
		start:   now,
		startNs: now.UnixNano(),
		onError: onError,
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go p.flusher()
	return p, nil
}

// SetLimit caps the file at n bytes (0: no cap): the first frame whose
// record would take it past n stops the capture, and the file keeps every
// whole record before it. Only while capturing can the guest make the
// file grow, by as much as it sends; the cap keeps a long-running capture
// from filling the disk.
func (p *Pcap) SetLimit(n int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.limit = n
	p.mu.Unlock()
}

// Tee records f. It copies what it needs before it returns and keeps no
// reference to f, so it may be called by whoever owns f.
func (p *Pcap) Tee(f *Frame) {
	if p == nil || p.off.Load() {
		return
	}
	p.record(f.Data)
}

// record appends one record for frame b to the buffer, writing the buffer
// out first if the record would not fit.
func (p *Pcap) record(b []byte) {
	incl := len(b)
	if incl > PcapSnapLen {
		incl = PcapSnapLen
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.off.Load() {
		return
	}
	if p.limit > 0 && p.size+pcapRecordLen+int64(incl) > p.limit {
		// Whole records only: the file ends with the last one that
		// fitted, and tcpdump reads it to the end.
		p.flushLocked()
		p.off.Store(true)
		p.buf = nil
		if p.onError != nil {
			p.onError(fmt.Errorf("pcap: size cap of %d bytes reached; capture stopped", p.limit))
		}
		return
	}
	p.size += pcapRecordLen + int64(incl)
	if len(p.buf)+pcapRecordLen+incl > cap(p.buf) {
		if !p.flushLocked() {
			return
		}
	}
	ts := p.startNs + int64(time.Since(p.start))
	n := len(p.buf)
	r := p.buf[n : n+pcapRecordLen]
	le := binary.LittleEndian
	le.PutUint32(r[0:], uint32(ts/1e9))
	le.PutUint32(r[4:], uint32(ts%1e9))
	le.PutUint32(r[8:], uint32(incl))
	le.PutUint32(r[12:], uint32(len(b)))
	p.buf = append(p.buf[:n+pcapRecordLen], b[:incl]...)
	p.Frames.Add(1)
}

// flushLocked writes the buffer out; mu held. On a write error it stops
// capture and reports the error once. It reports whether capture goes on.
func (p *Pcap) flushLocked() bool {
	if len(p.buf) == 0 {
		return true
	}
	_, err := p.w.Write(p.buf)
	p.buf = p.buf[:0]
	if err != nil {
		p.err = err
		p.off.Store(true)
		p.buf = nil // the memory is of no further use
		if p.onError != nil {
			p.onError(fmt.Errorf("pcap: %w; capture stopped", err))
		}
		return false
	}
	return true
}

// Flush writes buffered records to the file.
func (p *Pcap) Flush() error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.flushLocked()
	return p.err
}

// flusher writes the buffer out periodically until Close.
func (p *Pcap) flusher() {
	defer close(p.done)
	t := time.NewTicker(pcapFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			if !p.off.Load() {
				_ = p.Flush()
			}
		}
	}
}

// Close stops the capture, writes what is buffered and closes the file. It
// returns the first write error, if any. Frames passed to Tee afterwards
// are ignored; Close may be called more than once.
func (p *Pcap) Close() error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	select {
	case <-p.stop:
		// Already closed.
		err := p.err
		p.mu.Unlock()
		return err
	default:
	}
	close(p.stop)
	if !p.off.Load() {
		p.flushLocked()
	}
	p.off.Store(true)
	p.buf = nil
	err := p.err
	p.mu.Unlock()
	<-p.done
	if c, ok := p.w.(io.Closer); ok {
		if cerr := c.Close(); err == nil {
			err = cerr
		}
	}
	return err
}
