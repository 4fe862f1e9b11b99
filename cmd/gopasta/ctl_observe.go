package main

// gopasta ctl's commands for looking inside a running daemon: flows,
// stats, trace, log-level and pcap. They speak the native protocol
// (conf/control/native.go) on the control socket.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gopasta/gopasta/actors/flowtrace"
	"github.com/gopasta/gopasta/conf/control"
)

func init() {
	registerCtl(&ctlCmd{name: "flows", usage: "[--json] [FILTER]", run: ctlFlows,
		help: "live flows: endpoints, state, age, bytes/segments each way, retransmissions, windows, queues"})
	registerCtl(&ctlCmd{name: "stats", usage: "[--json] [--watch [SECONDS]] [--count N]", run: ctlStats,
		help: "every counter; --watch: those that move, with rates per second"})
	registerCtl(&ctlCmd{name: "trace", usage: "[FILTER]", run: ctlTrace,
		help: "stream the story of the flows FILTER selects (Ctrl-C ends it)"})
	registerCtl(&ctlCmd{name: "log-level", usage: "[trace|debug|info|warning|error]", run: ctlLogLevel,
		help: "show or set the daemon's log level"})
	registerCtl(&ctlCmd{name: "pcap", usage: "[FILE [FILTER] | stop]", run: ctlPcap,
		help: "capture the frames of the flows FILTER selects to FILE; stop; or show the capture.\n" +
			"ctl creates FILE (0600, never through a symbolic link) and hands it to the daemon\n" +
			"over the socket: the sandboxed daemon opens no path itself. --pcap-size caps it."})
}

// FilterHelp explains FILTER in the usage text.
const ctlFilterHelp = `FILTER: words in any order, optionally joined by "and": tcp, udp, icmp,
icmpv6; host ADDR (or ADDR); port N; ADDR:PORT ([ADDR6]:PORT); id N (the
flow's id in "flows"). An empty FILTER selects every flow.
`

// flagArgs takes the flags in names (each taking a value if its entry is
// true) from args, wherever they are, and returns them with the rest.
func flagArgs(args []string, names map[string]bool) (map[string]string, []string, error) {
	flags := map[string]string{}
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			rest = append(rest, a)
			continue
		}
		name, val, hasVal := strings.Cut(a[2:], "=")
		takes, ok := names[name]
		if !ok {
			return nil, nil, fmt.Errorf("unknown option %s", a)
		}
		if takes && !hasVal && i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
			if _, err := strconv.ParseFloat(args[i+1], 64); err == nil || name != "watch" {
				i++
				val = args[i]
			}
		}
		flags[name] = val
	}
	return flags, rest, nil
}

func ctlFlows(ctx context.Context, conn io.ReadWriter, args []string, out io.Writer) error {
	flags, rest, err := flagArgs(args, map[string]bool{"json": false})
	if err != nil {
		return err
	}
	flows, err := control.NewNativeClient(conn).Flows(strings.Join(rest, " "))
	if err != nil {
		return err
	}
	if _, ok := flags["json"]; ok {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(flows)
	}
	writeFlows(out, flows)
	return nil
}

// writeFlows prints the flow table. Byte and segment counts read
// "bytes/segments"; GUEST>FAR is what the guest sent, FAR>GUEST what it
// was sent; WND the guest's window and ours; UNACKED what the guest has
// not acknowledged yet; HELD what the guest sent that waits for a full
// socket; INBOX frames waiting for the flow's actor.
func writeFlows(out io.Writer, flows []control.FlowInfo) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPROTO\tDIR\tGUEST\tFAR\tSTATE\tAGE\tGUEST>FAR\tFAR>GUEST\tRETX\tWND GUEST/OURS\tUNACKED\tHELD\tINBOX")
	for _, f := range flows {
		dir := "out"
		if f.Inbound {
			dir = "in"
		}
		wnd, unacked, held, retx := "-", "-", "-", "-"
		if f.IPProto == 6 {
			wnd = fmt.Sprintf("%d/%d", f.GuestWindow, f.OurWindow)
			unacked, held, retx = strconv.FormatUint(uint64(f.Unacked), 10), strconv.FormatInt(f.Held, 10), strconv.FormatUint(f.Retrans, 10)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%d/%d\t%s\t%s\t%s\t%s\t%d\n",
			f.ID, f.Proto, dir, f.Guest, f.Far, f.State, age(f.Age),
			f.GuestBytes, f.GuestSegs, f.FarBytes, f.FarSegs, retx, wnd, unacked, held, f.Backlog)
	}
	tw.Flush()
	if len(flows) == 0 {
		fmt.Fprintln(out, "(no flows)")
	}
}

// age prints seconds as a short duration.
func age(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func ctlStats(ctx context.Context, conn io.ReadWriter, args []string, out io.Writer) error {
	flags, rest, err := flagArgs(args, map[string]bool{"json": false, "watch": true, "count": true})
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return fmt.Errorf("unexpected %q", rest[0])
	}
	_, js := flags["json"]
	cl := control.NewNativeClient(conn)
	w, watch := flags["watch"]
	if !watch {
		st, err := cl.Stats()
		if err != nil {
			return err
		}
		if js {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		}
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		for _, k := range sortedKeys(st) {
			fmt.Fprintf(tw, "%s\t%d\n", k, st[k])
		}
		return tw.Flush()
	}
	every := time.Second
	if w != "" {
		s, err := strconv.ParseFloat(w, 64)
		if err != nil || s < 0.1 || s > 3600 {
			return fmt.Errorf("--watch %q: seconds between 0.1 and 3600", w)
		}
		every = time.Duration(s * float64(time.Second))
	}
	count := -1
	if c, ok := flags["count"]; ok {
		if count, err = strconv.Atoi(c); err != nil || count < 1 {
			return fmt.Errorf("--count %q: a positive number", c)
		}
	}
	return watchStats(ctx, cl, every, count, js, out)
}

// watchStats prints, every interval, the counters that moved and their
// rates per second (count times, or until ctx ends if count < 0).
func watchStats(ctx context.Context, cl *control.NativeClient, every time.Duration, count int, js bool, out io.Writer) error {
	prev, err := cl.Stats()
	if err != nil {
		return err
	}
	last := time.Now()
	t := time.NewTicker(every)
	defer t.Stop()
	for n := 0; count < 0 || n < count; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		st, err := cl.Stats()
		if err != nil {
			return err
		}
		now := time.Now()
		secs := now.Sub(last).Seconds()
		rates := map[string]float64{}
		for k, v := range st {
			if p, ok := prev[k]; ok && v != p {
				rates[k] = (float64(v) - float64(p)) / secs
			}
		}
		if js {
			b, err := json.Marshal(struct {
				Time  time.Time          `json:"time"`
				Stats map[string]uint64  `json:"stats"`
				Rates map[string]float64 `json:"rates_per_s"`
			}{now.UTC(), st, rates})
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "%s\n", b)
		} else {
			fmt.Fprintf(out, "%s, over %.1fs:\n", now.Format("15:04:05"), secs)
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
			for _, k := range sortedKeys(rates) {
				fmt.Fprintf(tw, "  %s\t%d\t%+.1f/s\t\n", k, st[k], rates[k])
			}
			if len(rates) == 0 {
				fmt.Fprintln(tw, "  (nothing moved)\t")
			}
			tw.Flush()
		}
		prev, last = st, now
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	k := make([]string, 0, len(m))
	for n := range m {
		k = append(k, n)
	}
	sort.Strings(k)
	return k
}

// errTraceEnded is a trace the daemon ended (the client fell behind, or
// the daemon is going away).
var errTraceEnded = errors.New("trace ended by the daemon")

func ctlTrace(ctx context.Context, conn io.ReadWriter, args []string, out io.Writer) error {
	for _, a := range args {
		if strings.HasPrefix(a, "--") {
			return fmt.Errorf("unknown option %s", a)
		}
	}
	why, err := control.NewNativeClient(conn).Trace(strings.Join(args, " "), func(f string) {
		if f == "" {
			f = "every flow"
		}
		fmt.Fprintf(os.Stderr, "tracing %s; Ctrl-C to stop\n", f)
	}, func(line string) error {
		_, err := fmt.Fprintln(out, line)
		return err
	})
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %s", errTraceEnded, why)
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func ctlLogLevel(ctx context.Context, conn io.ReadWriter, args []string, out io.Writer) error {
	if len(args) > 1 {
		return errors.New("one level at most")
	}
	level := ""
	if len(args) == 1 {
		level = args[0]
	}
	l, err := control.NewNativeClient(conn).LogLevel(level)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "log level: %s\n", l)
	return nil
}

func ctlPcap(ctx context.Context, conn io.ReadWriter, args []string, out io.Writer) error {
	cl := control.NewNativeClient(conn)
	var st control.PcapStatus
	var err error
	switch {
	case len(args) == 0:
		st, err = cl.Pcap(false)
	case args[0] == "stop" && len(args) == 1:
		st, err = cl.Pcap(true)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "capture to %s stopped: %d frames\n", st.File, st.Frames)
		return nil
	default:
		st, err = ctlPcapStart(cl, args[0], strings.Join(args[1:], " "))
	}
	if err != nil {
		return err
	}
	if !st.Active {
		fmt.Fprintln(out, "no capture running")
		return nil
	}
	what := st.Filter
	if what == "" {
		what = "every frame"
	}
	fmt.Fprintf(out, "capturing %s to %s: %d frames so far\n", what, st.File, st.Frames)
	return nil
}

// ctlPcapStart opens the capture file, as the user running ctl and as the
// daemon opens its own output files (openOutput), and sends it over: the
// daemon opens no path at run time. A filter the daemon would refuse
// creates no file.
func ctlPcapStart(cl *control.NativeClient, path, filter string) (control.PcapStatus, error) {
	if _, err := flowtrace.ParseFilter(filter); err != nil {
		return control.PcapStatus{}, err
	}
	file, err := filepath.Abs(path)
	if err != nil {
		return control.PcapStatus{}, err
	}
	f, err := openOutput(file, true)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return control.PcapStatus{}, fmt.Errorf("cannot open pcap file %s: %v", file, err)
	}
	defer f.Close() // the daemon holds its own copy
	return cl.StartPcap(f, filter)
}
