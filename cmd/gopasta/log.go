package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/conf"
)

// formatter prints pasta-style lines: seconds since start, then the message
// and any fields, "0.0123: message key=value".
type formatter struct{ start time.Time }

func (f *formatter) Format(e *logrus.Entry) ([]byte, error) {
	b := e.Buffer
	if b == nil {
		b = &bytes.Buffer{}
	}
	fmt.Fprintf(b, "%.4f: ", e.Time.Sub(f.start).Seconds())
	switch e.Level {
	case logrus.WarnLevel:
		b.WriteString("WARNING: ")
	case logrus.ErrorLevel, logrus.FatalLevel, logrus.PanicLevel:
		b.WriteString("ERROR: ")
	}
	b.WriteString(e.Message)
	if len(e.Data) > 0 {
		keys := make([]string, 0, len(e.Data))
		for k := range e.Data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(b, " %s=%v", k, e.Data[k])
		}
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}

// logSink is the logger's output, switched at readiness: before it, stderr
// (the front relays it) and the -l file; after it, the file only in the
// background, since stderr is /dev/null by then.
type logSink struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _ = s.w.Write(p) // a full disk must not stop the daemon
	return len(p), nil
}

func (s *logSink) set(w io.Writer) {
	s.mu.Lock()
	s.w = w
	s.mu.Unlock()
}

// logging is the daemon's logger and where it writes.
type logging struct {
	*logrus.Logger
	sink *logSink
	file *cappedLog // -l, nil if none
}

func newLogging(cfg *conf.Config, start time.Time) (*logging, error) {
	l := &logging{Logger: logrus.New(), sink: &logSink{w: os.Stderr}}
	l.Out = l.sink
	l.Formatter = &formatter{start: start}
	l.Level = logLevel(cfg)
	if cfg.LogFile != "" {
		f, err := openCappedLog(cfg.LogFile, cfg.LogSize)
		if err != nil {
			return l, fmt.Errorf("log file: %v", err)
		}
		l.file = f
		l.sink.set(io.MultiWriter(os.Stderr, f))
	}
	return l, nil
}

// afterReady moves logging to its place for the daemon's life: the -l file
// if any; otherwise stderr in the foreground and nowhere in the background.
func (l *logging) afterReady(foreground bool) {
	switch {
	case l.file != nil:
		l.sink.set(l.file)
	case foreground:
		l.sink.set(os.Stderr)
	default:
		l.sink.set(io.Discard)
	}
}
