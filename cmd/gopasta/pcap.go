package main

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/gopasta/gopasta/link"
)

// openPcap creates the -p/--pcap capture file, as pasta does, during setup:
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
	p, err := link.CreatePcap(path, func(err error) {
		d.log.Errorf("%s: %v", path, err)
	})
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("cannot open pcap file %s: %v", path, err)
	}
	d.pcap = p
	d.log.Infof("Saving packet capture to %s", path)
	return nil
}

// teePcap points the capture hooks of the link writer (frames to the
// guest) and the dispatcher (frames from the guest) at the capture file.
// Without --pcap both stay nil and cost a nil check.
func (d *daemon) teePcap() {
	if d.pcap == nil {
		return
	}
	d.w.Tee = d.pcap.Tee
	d.disp.Tee = d.pcap.Tee
}

// closePcap writes out what the capture holds and closes the file. It runs
// when the daemon returns, after its goroutines have stopped (or the grace
// time is over: the capture tolerates a late frame), so the file holds
// every frame to the last. A write error was reported when it happened.
func (d *daemon) closePcap() {
	if d.pcap == nil {
		return
	}
	if err := d.pcap.Close(); err != nil {
		d.log.Debugf("pcap: %v", err)
	}
	d.log.Debugf("pcap: %d frames captured", d.pcap.Frames.Load())
	d.pcap = nil
}
