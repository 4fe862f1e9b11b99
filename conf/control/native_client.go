package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
)

// NativeClient speaks the native protocol on a connection that is already
// past the pesto hello and tables and the 0xFF byte. It is not safe for
// concurrent use.
type NativeClient struct {
	w io.Writer
	r *bufio.Reader
}

// NewNativeClient returns a client on rw.
func NewNativeClient(rw io.ReadWriter) *NativeClient {
	return &NativeClient{w: rw, r: bufio.NewReaderSize(rw, 64<<10)}
}

// Do sends req and returns the answer; an answer with an error is returned
// as an error.
func (c *NativeClient) Do(req Request) (Response, error) {
	var resp Response
	if err := encodeLine(c.w, req); err != nil {
		return resp, err
	}
	return c.answer()
}

// answer reads one answer; an answer with an error is returned as an
// error.
func (c *NativeClient) answer() (Response, error) {
	var resp Response
	if err := c.read(&resp); err != nil {
		return resp, err
	}
	if !resp.OK {
		if resp.Error == "" {
			resp.Error = "request failed"
		}
		return resp, errors.New(resp.Error)
	}
	return resp, nil
}

// read reads one answer line into v.
func (c *NativeClient) read(v any) error {
	var line []byte
	for {
		part, err := c.r.ReadSlice('\n')
		line = append(line, part...)
		if len(line) > MaxResponse {
			return fmt.Errorf("answer longer than %d bytes", MaxResponse)
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) {
			if len(line) == 0 {
				return io.ErrUnexpectedEOF
			}
			return errors.New("answer cut short")
		}
		return err
	}
	if err := json.Unmarshal(line, v); err != nil {
		return fmt.Errorf("bad answer: %v", err)
	}
	return nil
}

// Flows returns the flows filter selects.
func (c *NativeClient) Flows(filter string) ([]FlowInfo, error) {
	resp, err := c.Do(Request{Cmd: "flows", Filter: filter})
	return resp.Flows, err
}

// Stats returns every counter.
func (c *NativeClient) Stats() (map[string]uint64, error) {
	resp, err := c.Do(Request{Cmd: "stats"})
	return resp.Stats, err
}

// LogLevel sets the daemon's log level, unless level is "", and returns
// the level now.
func (c *NativeClient) LogLevel(level string) (string, error) {
	resp, err := c.Do(Request{Cmd: "log-level", Level: level})
	return resp.Level, err
}

// Pcap stops the run-time capture (stop), or only asks about it.
func (c *NativeClient) Pcap(stop bool) (PcapStatus, error) {
	return c.pcap(Request{Cmd: "pcap", Stop: stop}, nil)
}

// StartPcap starts a capture of what filter selects to out, which the
// caller opened for writing (a regular file or a FIFO) and named with an
// absolute path: its descriptor goes to the daemon with the request, which
// needs a connection over a UNIX socket. The caller still closes out; the
// daemon has its own copy.
func (c *NativeClient) StartPcap(out *os.File, filter string) (PcapStatus, error) {
	return c.pcap(Request{Cmd: "pcap", File: out.Name(), Filter: filter}, out)
}

func (c *NativeClient) pcap(req Request, out *os.File) (PcapStatus, error) {
	var resp Response
	var err error
	if out == nil {
		resp, err = c.Do(req)
	} else {
		resp, err = c.doWithFile(req, out)
	}
	if resp.Pcap == nil {
		return PcapStatus{}, err
	}
	return *resp.Pcap, err
}

// doWithFile is Do with out's descriptor sent along.
func (c *NativeClient) doWithFile(req Request, out *os.File) (Response, error) {
	var resp Response
	uc, ok := c.w.(*net.UnixConn)
	if !ok {
		return resp, errors.New("sending a file needs a UNIX socket connection")
	}
	line, err := json.Marshal(req)
	if err != nil {
		return resp, err
	}
	if err := sendWithFile(uc, append(line, '\n'), out); err != nil {
		return resp, err
	}
	return c.answer()
}

// Trace starts a trace of what filter selects and calls each for every
// line until each returns an error (returned), the daemon ends the stream
// (its reason is returned with io.EOF), or the connection fails. started
// is called once with the filter as the daemon understood it.
func (c *NativeClient) Trace(filter string, started func(filter string), each func(line string) error) (string, error) {
	resp, err := c.Do(Request{Cmd: "trace", Filter: filter})
	if err != nil {
		return "", err
	}
	if started != nil && resp.Trace != nil {
		started(*resp.Trace)
	}
	for {
		var m TraceMsg
		if err := c.read(&m); err != nil {
			return "", err
		}
		if m.End != "" {
			return m.End, io.EOF
		}
		if err := each(m.Line); err != nil {
			return "", err
		}
	}
}
