package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"github.com/gopasta/gopasta/actors/flowtrace"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/conf/control"
	"github.com/gopasta/gopasta/link"
	"github.com/gopasta/gopasta/link/wire"
)

// defaultPcapSize caps the capture file when --pcap-size is not given:
// pasta has no cap, and a capture left running fills the disk.
const defaultPcapSize = 1 << 30

// openPcap creates the -p/--pcap capture file, as pasta does, during setup
// and as every output file (outfile.go), capped at --pcap-size:
// before readiness and before the daemon leaves its working directory, so
// that a relative path is the user's and a path that cannot be created is
// a start-up error (exit status 1, one line), not a silent empty capture.
// A write error later only stops the capture: it is logged once, and the
// network goes on.
func (d *daemon) openPcap() error {
	path := d.cfg.Pcap
	if path == "" {
		return nil
	}
	f, err := openOutput(path, true)
	if err == nil {
		var p *link.Pcap
		if p, err = link.NewPcap(f, func(err error) { d.log.Errorf("%s: %v", path, err) }); err != nil {
			f.Close()
		} else {
			d.pcap = p
		}
	}
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("cannot open pcap file %s: %v", path, err)
	}
	d.pcap.SetLimit(pcapLimit(d.cfg))
	d.log.Infof("Saving packet capture to %s", path)
	return nil
}

// pcapLimit is the cap of a capture file: --pcap-size, or the default.
func pcapLimit(cfg *conf.Config) int64 {
	if cfg.PcapSize > 0 {
		return cfg.PcapSize
	}
	return defaultPcapSize
}

// teePcap points the capture hooks of the link writer (frames to the
// guest) and the dispatcher (frames from the guest) at the captures: the
// --pcap file, and the one `gopasta ctl pcap` may start and stop at run
// time. The hooks are set once, before the writer and the dispatcher run;
// what they capture to changes behind an atomic pointer, so a frame with
// no run-time capture costs a call and one atomic load more than without.
func (d *daemon) teePcap() {
	d.caps.start = d.pcap
	d.caps.limit = pcapLimit(d.cfg)
	d.w.Tee = d.caps.tee
	d.w.Capturing = d.caps.capturing
	d.disp.Tee = d.caps.tee
	d.disp.Capturing = d.caps.capturing
}

// captures are the daemon's packet captures.
type captures struct {
	start *link.Pcap // --pcap: every frame, for the daemon's life
	limit int64      // --pcap-size, for the run-time captures too
	mu    sync.Mutex // serialises starting and stopping rt
	rt    atomic.Pointer[capture]
}

// capture is a run-time capture: a file and the flows it keeps.
type capture struct {
	p      *link.Pcap
	file   string
	filter flowtrace.Filter
}

// tee records f in each capture that wants it. It runs on the writer and
// the dispatcher goroutines while they own f.
func (c *captures) tee(f *link.Frame) {
	if c.start != nil {
		c.start.Tee(f)
	}
	if r := c.rt.Load(); r != nil {
		r.tee(f)
	}
}

// capturing reports whether any capture runs, so that the writer lends no
// guest buffers meanwhile (a lent frame's payload is not ours to record),
// and the dispatcher copies in the payloads left in guest memory.
func (c *captures) capturing() bool {
	return c.start != nil || c.rt.Load() != nil
}

func (r *capture) tee(f *link.Frame) {
	if !r.filter.IsZero() {
		var p wire.Parsed
		if wire.ParseFrame(f.Data, &p) != nil {
			return
		}
		if !r.filter.Match(p.Proto, netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort), 0) {
			return
		}
	}
	r.p.Tee(f)
}

// startRT starts a run-time capture to out, which gopasta ctl opened (as
// every output file, outfile.go) and sent over the control socket, of the
// frames of the flows f selects (by protocol, address, port: a frame has
// no flow id), capped as --pcap is. One at a time. It owns out.
func (c *captures) startRT(out *os.File, f flowtrace.Filter, onError func(error)) error {
	if f.ID != 0 {
		out.Close()
		return errors.New("pcap: a capture selects by protocol, address and port, not by flow id")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.rt.Load(); r != nil {
		out.Close()
		return fmt.Errorf("pcap: already capturing to %s (stop it first)", r.file)
	}
	p, err := link.NewPcap(out, onError)
	if err != nil {
		out.Close()
		return fmt.Errorf("cannot write pcap file %s: %v", out.Name(), err)
	}
	p.SetLimit(c.limit)
	c.rt.Store(&capture{p: p, file: out.Name(), filter: f})
	return nil
}

// stopRT stops the run-time capture and closes its file: complete once
// stopRT returns (a frame being recorded as it stops may be the last).
func (c *captures) stopRT() (control.PcapStatus, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.rt.Swap(nil)
	if r == nil {
		return control.PcapStatus{}, errors.New("pcap: no capture running")
	}
	err := r.p.Close()
	st := control.PcapStatus{File: r.file, Filter: r.filter.String(), Frames: r.p.Frames.Load()}
	if err != nil {
		return st, fmt.Errorf("pcap %s: %v", r.file, err)
	}
	return st, nil
}

// status describes the run-time capture.
func (c *captures) status() control.PcapStatus {
	r := c.rt.Load()
	if r == nil {
		return control.PcapStatus{}
	}
	return control.PcapStatus{Active: true, File: r.file, Filter: r.filter.String(), Frames: r.p.Frames.Load()}
}

// closePcap writes out what the capture holds and closes the file. It runs
// when the daemon returns, after its goroutines have stopped (or the grace
// time is over: the capture tolerates a late frame), so the file holds
// every frame to the last. A write error was reported when it happened.
func (d *daemon) closePcap() {
	if d.caps.rt.Load() != nil {
		_, _ = d.caps.stopRT()
	}
	if d.pcap == nil {
		return
	}
	if err := d.pcap.Close(); err != nil {
		d.log.Debugf("pcap: %v", err)
	}
	d.log.Debugf("pcap: %d frames captured", d.pcap.Frames.Load())
	d.pcap = nil
}
