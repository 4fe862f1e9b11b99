package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sort"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors/flowtrace"
)

// The native protocol: `gopasta ctl SOCKET COMMAND` for people.
//
// After the pesto hello and tables, a client that writes the byte 0xFF
// (NativeByte) leaves pesto's protocol for this one. Each request is one
// JSON object on one line, at most MaxRequest bytes with its newline:
//
//	{"cmd":"flows","filter":"tcp port 80"}
//	{"cmd":"stats"}
//	{"cmd":"log-level"}                      the level now
//	{"cmd":"log-level","level":"debug"}      set it
//	{"cmd":"pcap"}                           the capture now
//	{"cmd":"pcap","file":"/abs/f.pcap","filter":"udp"}   start one (+ fd)
//	{"cmd":"pcap","stop":true}               stop it
//	{"cmd":"trace","filter":"id 17"}         stream
//
// Each answer is one JSON line, a Response: "ok" and the command's field,
// or "error". A request that is not valid (too long, not JSON, unknown
// fields or command, a bad filter) gets an error answer and the
// connection is closed; a command that fails (no such level, a capture
// file that cannot be created) gets an error answer and the connection
// stays. Requests may follow each other on one connection until a trace:
// after its first answer the connection carries only the trace, one
// {"line": ...} object per line, until the client closes it. A client
// that does not read its trace fast enough is dropped: the server sends
// {"end": reason} if it can and closes, and the daemon goes on as if the
// client had never been there.
//
// A pcap request that starts a capture carries the file: the client opens
// it and sends its descriptor with the request line (SCM_RIGHTS, see
// fdpass.go); "file" is only its name, for people. The daemon never opens
// a path at run time. Such a request without a descriptor gets an error
// answer; descriptors sent with any other request are closed.

// NativeByte is what a client sends after the pesto tables to speak the
// native protocol.
const NativeByte = 0xFF

// Limits of the native protocol.
const (
	// MaxRequest bounds a request line.
	MaxRequest = 4096
	// MaxResponse bounds an answer line the client accepts: a table of
	// every flow a daemon may hold (65536) fits.
	MaxResponse = 64 << 20
	// traceWriteTimeout is how long the server waits on a client that
	// does not read its trace before dropping it.
	traceWriteTimeout = 2 * time.Second
)

// Request is one request of the native protocol.
type Request struct {
	Cmd    string `json:"cmd"`
	Filter string `json:"filter,omitempty"`
	Level  string `json:"level,omitempty"`
	File   string `json:"file,omitempty"`
	Stop   bool   `json:"stop,omitempty"`
}

// Response is one answer. Exactly one of the command fields is set when
// OK; Error says why not.
type Response struct {
	OK    bool              `json:"ok"`
	Error string            `json:"error,omitempty"`
	Flows []FlowInfo        `json:"flows,omitempty"`
	Stats map[string]uint64 `json:"stats,omitempty"`
	Level string            `json:"level,omitempty"`
	Pcap  *PcapStatus       `json:"pcap,omitempty"`
	// Trace is set in the answer that starts a trace: the filter as the
	// daemon understood it ("" for every flow).
	Trace *string `json:"trace,omitempty"`
}

// TraceMsg is one message of a trace stream: a line, or the end.
type TraceMsg struct {
	Line string `json:"line,omitempty"`
	End  string `json:"end,omitempty"`
}

// FlowInfo is one flow in a `flows` answer. "Guest" counts go from the
// guest to the far end, "Far" counts the other way; windows are in bytes.
type FlowInfo struct {
	ID          uint64         `json:"id"`
	Proto       string         `json:"proto"`
	IPProto     uint8          `json:"ip_proto"`
	Guest       netip.AddrPort `json:"guest"`
	Far         netip.AddrPort `json:"far"`
	Inbound     bool           `json:"inbound"`
	State       string         `json:"state"`
	Age         float64        `json:"age_s"`
	GuestBytes  uint64         `json:"guest_bytes"`
	GuestSegs   uint64         `json:"guest_segs"`
	FarBytes    uint64         `json:"far_bytes"`
	FarSegs     uint64         `json:"far_segs"`
	Retrans     uint64         `json:"retrans"`
	GuestWindow uint32         `json:"guest_window"`
	OurWindow   uint32         `json:"our_window"`
	Unacked     uint32         `json:"unacked"`
	Held        int64          `json:"held"`
	Backlog     int            `json:"backlog"`
}

// PcapStatus describes the run-time capture.
type PcapStatus struct {
	Active bool   `json:"active"`
	File   string `json:"file,omitempty"`
	Filter string `json:"filter,omitempty"`
	Frames uint64 `json:"frames"`
}

// TraceSub is a subscription to trace lines (flowtrace.Sub is one).
type TraceSub interface {
	Lines() <-chan string
	Dropped() <-chan struct{}
	Close()
}

// Backend is what the daemon offers the native protocol.
type Backend interface {
	// Flows returns every flow (the dispatcher's snapshot).
	Flows(ctx context.Context) ([]FlowInfo, error)
	// Stats returns every counter by name (what SIGUSR1 logs).
	Stats() map[string]uint64
	// Trace subscribes to the lines of the flows f selects.
	Trace(f flowtrace.Filter) (TraceSub, error)
	// LogLevel is the daemon's log level; SetLogLevel changes it.
	LogLevel() string
	SetLogLevel(level string) error
	// StartPcap starts capturing the frames f selects to out, a regular
	// file or a FIFO open for writing that the client sent, named
	// out.Name() (the client's absolute path). It owns out from then on,
	// also when it fails. StopPcap stops it; Pcap describes it.
	StartPcap(out *os.File, f flowtrace.Filter) error
	StopPcap() (PcapStatus, error)
	Pcap() PcapStatus
}

// backend is the daemon's, for nativeHandler.
var backend atomic.Pointer[Backend]

// SetNativeBackend makes b answer the native clients of the control
// socket.
func SetNativeBackend(b Backend) {
	if b == nil {
		backend.Store(nil)
		return
	}
	backend.Store(&b)
}

func init() {
	nativeHandler = func(ctx context.Context, c net.Conn) error {
		b := backend.Load()
		if b == nil {
			return errors.New("no native backend")
		}
		return ServeNative(ctx, c, *b)
	}
}

// errBadRequest marks a request that closes the connection.
type errBadRequest struct{ error }

// ServeNative speaks the native protocol on conn (after the 0xFF byte)
// until the client closes it, sends a bad request, or ctx ends. It returns
// nil when the client closed the connection, else why it stopped. The
// caller closes conn afterwards, which also ends the goroutine a trace
// leaves reading it.
func ServeNative(ctx context.Context, conn net.Conn, b Backend) error {
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	var in io.Reader = conn
	var fds *fdReader
	if uc, ok := conn.(*net.UnixConn); ok {
		fds = newFDReader(uc)
		defer fds.closeAll()
		in = fds
	}
	r := bufio.NewReaderSize(in, MaxRequest)
	var off int64 // of the next request line in the stream
	for {
		req, n, err := readRequest(r)
		start := off
		off += int64(n)
		fd := -1
		if fds != nil {
			fd = fds.take(start, off)
		}
		if fd >= 0 && (err != nil || req.Cmd != "pcap" || req.File == "") {
			unix.Close(fd) // this request takes none
			fd = -1
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			var bad errBadRequest
			if errors.As(err, &bad) {
				_ = writeJSON(conn, Response{Error: bad.Error()})
			}
			return err
		}
		if req.Cmd == "trace" {
			return serveTrace(ctx, conn, r, b, req)
		}
		resp, err := handle(ctx, b, req, fd)
		if err != nil {
			var bad errBadRequest
			if errors.As(err, &bad) {
				_ = writeJSON(conn, Response{Error: bad.Error()})
				return err
			}
			resp = Response{Error: err.Error()}
		}
		if err := writeJSON(conn, resp); err != nil {
			return err
		}
	}
}

// readRequest reads and checks one request line, and says how many bytes
// of the stream it took.
func readRequest(r *bufio.Reader) (Request, int, error) {
	line, err := r.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return Request{}, len(line), errBadRequest{fmt.Errorf("request longer than %d bytes", MaxRequest)}
	case errors.Is(err, io.EOF) && len(line) > 0:
		return Request{}, len(line), errBadRequest{errors.New("request not terminated by a newline")}
	case err != nil:
		return Request{}, len(line), err
	}
	req, err := ParseRequest(line)
	return req, len(line), err
}

// ParseRequest decodes and checks one request line.
func ParseRequest(line []byte) (Request, error) {
	var req Request
	if len(line) > MaxRequest {
		return req, errBadRequest{fmt.Errorf("request longer than %d bytes", MaxRequest)}
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, errBadRequest{fmt.Errorf("bad request: %v", err)}
	}
	if dec.More() {
		return req, errBadRequest{errors.New("bad request: one object per line")}
	}
	switch req.Cmd {
	case "flows", "trace":
		if _, err := flowtrace.ParseFilter(req.Filter); err != nil {
			return req, errBadRequest{err}
		}
		if req.Level != "" || req.File != "" || req.Stop {
			return req, errBadRequest{fmt.Errorf("%s takes a filter only", req.Cmd)}
		}
	case "stats":
		if req != (Request{Cmd: "stats"}) {
			return req, errBadRequest{errors.New("stats takes no argument")}
		}
	case "log-level":
		if req.Filter != "" || req.File != "" || req.Stop {
			return req, errBadRequest{errors.New("log-level takes a level only")}
		}
	case "pcap":
		if req.Level != "" || req.Stop && (req.File != "" || req.Filter != "") {
			return req, errBadRequest{errors.New("pcap takes a file and a filter, or stop")}
		}
		if req.File == "" && req.Filter != "" {
			return req, errBadRequest{errors.New("pcap: a filter needs a file")}
		}
		if _, err := flowtrace.ParseFilter(req.Filter); err != nil {
			return req, errBadRequest{err}
		}
	case "":
		return req, errBadRequest{errors.New("bad request: no cmd")}
	default:
		return req, errBadRequest{fmt.Errorf("unknown command %q", req.Cmd)}
	}
	return req, nil
}

// handle answers one request other than trace. fd is the descriptor sent
// with it, -1 if none; handle owns it.
func handle(ctx context.Context, b Backend, req Request, fd int) (Response, error) {
	switch req.Cmd {
	case "flows":
		f, _ := flowtrace.ParseFilter(req.Filter) // checked by ParseRequest
		all, err := b.Flows(ctx)
		if err != nil {
			return Response{}, err
		}
		flows := make([]FlowInfo, 0, len(all))
		for _, fl := range all {
			if f.Match(fl.IPProto, fl.Guest, fl.Far, fl.ID) {
				flows = append(flows, fl)
			}
		}
		sort.Slice(flows, func(i, j int) bool { return flows[i].ID < flows[j].ID })
		// An empty table is [] in JSON, not absent.
		if flows == nil {
			flows = []FlowInfo{}
		}
		return Response{OK: true, Flows: flows}, nil
	case "stats":
		return Response{OK: true, Stats: b.Stats()}, nil
	case "log-level":
		if req.Level != "" {
			if err := b.SetLogLevel(req.Level); err != nil {
				return Response{}, err
			}
		}
		return Response{OK: true, Level: b.LogLevel()}, nil
	case "pcap":
		switch {
		case req.Stop:
			st, err := b.StopPcap()
			if err != nil {
				return Response{}, err
			}
			return Response{OK: true, Pcap: &st}, nil
		case req.File != "":
			if fd < 0 {
				return Response{}, fmt.Errorf("pcap %s: the request carries no file descriptor: the daemon opens no path at run time, and this client did not send the open file (a gopasta ctl older than the daemon?)", req.File)
			}
			out, err := outputFile(fd, req.File)
			if err != nil {
				return Response{}, err
			}
			f, _ := flowtrace.ParseFilter(req.Filter)
			if err := b.StartPcap(out, f); err != nil {
				return Response{}, err
			}
		}
		st := b.Pcap()
		return Response{OK: true, Pcap: &st}, nil
	}
	return Response{}, errBadRequest{fmt.Errorf("unknown command %q", req.Cmd)}
}

// serveTrace streams the trace until the client goes, falls behind, or ctx
// ends.
func serveTrace(ctx context.Context, conn net.Conn, r *bufio.Reader, b Backend, req Request) error {
	f, _ := flowtrace.ParseFilter(req.Filter)
	sub, err := b.Trace(f)
	if err != nil {
		_ = writeJSON(conn, Response{Error: err.Error()})
		return err
	}
	defer sub.Close()
	desc := f.String()
	if err := writeJSON(conn, Response{OK: true, Trace: &desc}); err != nil {
		return err
	}
	// The client says nothing more; its end of the connection closing is
	// how it detaches.
	gone := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, r)
		close(gone)
	}()
	w := bufio.NewWriterSize(conn, 32<<10)
	lines := sub.Lines()
	for {
		select {
		case l := <-lines:
			_ = conn.SetWriteDeadline(time.Now().Add(traceWriteTimeout))
			if err := encodeLine(w, TraceMsg{Line: l}); err != nil {
				return err
			}
			if len(lines) == 0 {
				if err := w.Flush(); err != nil {
					return fmt.Errorf("trace client not reading: %w", err)
				}
			}
		case <-sub.Dropped():
			_ = conn.SetWriteDeadline(time.Now().Add(traceWriteTimeout / 4))
			_ = encodeLine(w, TraceMsg{End: "dropped: the client did not keep up with the trace"})
			_ = w.Flush()
			return errors.New("trace client dropped: it did not keep up")
		case <-gone:
			return nil
		case <-ctx.Done():
			_ = conn.SetWriteDeadline(time.Now().Add(traceWriteTimeout / 4))
			_ = encodeLine(w, TraceMsg{End: "the daemon is shutting down"})
			_ = w.Flush()
			return ctx.Err()
		}
	}
}

func encodeLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func writeJSON(w io.Writer, v any) error { return encodeLine(w, v) }
