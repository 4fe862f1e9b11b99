package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/flowtrace"
	"github.com/gopasta/gopasta/conf/control"
)

// ctlBackend is what the daemon offers gopasta ctl's observability
// commands (control.Backend): the dispatcher's flow snapshot, the
// counters SIGUSR1 logs, trace subscriptions, the log level and the
// run-time packet capture.
type ctlBackend struct{ d *daemon }

var _ control.Backend = ctlBackend{}

// flowsTimeout bounds the wait for the dispatcher's answer: a client must
// not hang on a daemon whose dispatcher has stopped.
const flowsTimeout = 5 * time.Second

func (b ctlBackend) Flows(ctx context.Context) ([]control.FlowInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, flowsTimeout)
	defer cancel()
	snap, err := b.d.disp.Flows(ctx)
	if err != nil {
		return nil, fmt.Errorf("flow table: %v", err)
	}
	out := make([]control.FlowInfo, len(snap))
	for i, s := range snap {
		out[i] = flowInfo(s)
	}
	return out, nil
}

// flowInfo is a flow as the native protocol carries it.
func flowInfo(s actors.FlowSnapshot) control.FlowInfo {
	proto, _, _ := strings.Cut(s.Key.String(), " ")
	return control.FlowInfo{
		ID: s.ID, Proto: proto, IPProto: s.Key.Proto, Guest: s.Key.Guest, Far: s.Key.Far,
		Inbound: s.Inbound, State: s.State, Age: s.Age.Seconds(),
		GuestBytes: s.GuestBytes, GuestSegs: s.GuestSegs, FarBytes: s.FarBytes, FarSegs: s.FarSegs,
		Retrans: s.Retrans, GuestWindow: s.GuestWnd, OurWindow: s.OurWnd,
		Unacked: s.Unacked, Held: s.Held, Backlog: s.Backlog,
	}
}

func (b ctlBackend) Stats() map[string]uint64 { return b.d.stats() }

func (b ctlBackend) Trace(f flowtrace.Filter) (control.TraceSub, error) {
	return b.d.trace.Subscribe(f, 0), nil
}

// logLevels are the levels log-level takes, as --help names them.
var logLevels = map[string]logrus.Level{
	"trace": logrus.TraceLevel, "debug": logrus.DebugLevel, "info": logrus.InfoLevel,
	"warning": logrus.WarnLevel, "warn": logrus.WarnLevel, "error": logrus.ErrorLevel,
}

func (b ctlBackend) LogLevel() string {
	l := b.d.log.GetLevel()
	if l == logrus.WarnLevel {
		return "warning"
	}
	return l.String()
}

func (b ctlBackend) SetLogLevel(level string) error {
	l, ok := logLevels[strings.ToLower(level)]
	if !ok {
		return fmt.Errorf("unknown log level %q (trace, debug, info, warning, error)", level)
	}
	old := b.d.log.GetLevel()
	if old == l {
		return nil
	}
	// Said at the more verbose of the two levels, so that it shows.
	msg := func() { b.d.log.Log(max(old, l), "log level "+level+" (gopasta ctl), was "+old.String()) }
	if l < old {
		msg()
		b.d.log.SetLevel(l)
	} else {
		b.d.log.SetLevel(l)
		msg()
	}
	return nil
}

func (b ctlBackend) StartPcap(out *os.File, f flowtrace.Filter) error {
	file := out.Name()
	err := b.d.caps.startRT(out, f, func(err error) { b.d.log.Errorf("%s: %v", file, err) })
	if err == nil {
		b.d.log.Infof("Saving packet capture to %s (gopasta ctl)", file)
	}
	return err
}

func (b ctlBackend) StopPcap() (control.PcapStatus, error) {
	st, err := b.d.caps.stopRT()
	if st.File != "" {
		b.d.log.Infof("Packet capture to %s stopped, %d frames (gopasta ctl)", st.File, st.Frames)
	}
	return st, err
}

func (b ctlBackend) Pcap() control.PcapStatus { return b.d.caps.status() }
