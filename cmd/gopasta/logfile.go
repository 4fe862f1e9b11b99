package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

// defaultLogSize is pasta's cap on the log file when --log-size is not
// given.
const defaultLogSize = 1 << 20

// cappedLog is the -l file, kept under a size cap as pasta keeps it: when
// an entry would take the file over the cap, the oldest entries are dropped
// from its beginning to make room, so the file always holds the newest
// ones. A daemon that runs for weeks with --trace must not fill the disk,
// and what is wanted when something goes wrong is the latest lines.
//
// Room is made by half the cap at a time (the newest half is moved to the
// start of the file, from the first line boundary on), so that a full log
// is rewritten once per half a cap of new entries, not at every line. The
// logger's sink serializes writes, so cappedLog has no lock of its own.
//
// A log "file" that is not a regular file (-l /dev/stderr, a FIFO) cannot
// be cut: it is written to as it is, uncapped.
type cappedLog struct {
	f     *os.File
	size  int64  // bytes in the file
	limit int64  // 0: not a regular file, no cap
	buf   []byte // the kept half, reused
}

// openCappedLog opens (creating it if need be) the log file at path,
// appending to what it holds, under a cap of limit bytes (0: the default).
// It opens it as every output file (openOutput): never through a symbolic
// link, and a regular file only if it is the daemon's own with one link,
// since making room rewrites it in place.
func openCappedLog(path string, limit int64) (*cappedLog, error) {
	if limit <= 0 {
		limit = defaultLogSize
	}
	f, err := openOutputRW(path)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return &cappedLog{f: f}, nil
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, err
	}
	l := &cappedLog{f: f, size: size, limit: limit}
	if size > limit {
		// Left by an earlier run with a larger cap.
		if err := l.makeRoom(0); err != nil {
			f.Close()
			return nil, err
		}
	}
	return l, nil
}

// Write appends p, dropping the oldest entries first if p would not fit.
// An entry longer than the cap is cut to it.
func (l *cappedLog) Write(p []byte) (int, error) {
	if l.limit == 0 {
		return l.f.Write(p)
	}
	n := len(p)
	if int64(len(p)) > l.limit {
		p = p[:l.limit]
	}
	if l.size+int64(len(p)) > l.limit {
		if err := l.makeRoom(int64(len(p))); err != nil {
			return 0, err
		}
	}
	w, err := l.f.Write(p)
	l.size += int64(w)
	if err != nil {
		return w, err
	}
	return n, nil
}

// makeRoom keeps the newest entries that fit in half the cap (and leave
// need bytes free), starting at a line boundary, at the start of the file.
func (l *cappedLog) makeRoom(need int64) error {
	keep := min(l.limit/2, l.limit-need, l.size) // need <= limit: Write cuts entries to it
	if int64(cap(l.buf)) < keep {
		l.buf = make([]byte, keep)
	}
	b := l.buf[:keep]
	if _, err := l.f.ReadAt(b, l.size-keep); err != nil && err != io.EOF {
		return fmt.Errorf("log file: %w", err)
	}
	if l.size > keep {
		// Drop the partial line at the front (all of b if it holds no
		// line end): the file starts with a whole entry.
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		} else {
			b = b[:0]
		}
	}
	if _, err := l.f.WriteAt(b, 0); err != nil {
		return fmt.Errorf("log file: %w", err)
	}
	if err := l.f.Truncate(int64(len(b))); err != nil {
		return fmt.Errorf("log file: %w", err)
	}
	if _, err := l.f.Seek(int64(len(b)), io.SeekStart); err != nil {
		return fmt.Errorf("log file: %w", err)
	}
	l.size = int64(len(b))
	return nil
}

// Close closes the file.
func (l *cappedLog) Close() error { return l.f.Close() }
