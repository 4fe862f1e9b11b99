package main

// MINIMAL STAND-IN, to be replaced at merge by the control branch's
// ctl.go (which owns `gopasta ctl`, its command table and the pesto
// commands). It holds only what the observability commands
// (ctl_observe.go) need to build and run: the table they register into
// and the entry point.

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// ctlCmd is one `gopasta ctl SOCKET NAME ...` command.
type ctlCmd struct {
	name  string
	usage string // arguments, for the usage text
	help  string // one line
	// run talks to the daemon on conn (past the pesto hello and tables
	// and the native protocol's 0xFF) and writes to out.
	run func(ctx context.Context, conn io.ReadWriter, args []string, out io.Writer) error
}

// ctlCmds is the command table, filled by init functions.
var ctlCmds = map[string]*ctlCmd{}

func registerCtl(c *ctlCmd) { ctlCmds[c.name] = c }

// ctlUsage is the text of `gopasta ctl` without arguments.
func ctlUsage() string {
	s := "Usage: gopasta ctl SOCKET COMMAND [ARGUMENTS]\n" +
		"Talks to a running gopasta through its control socket (-c/--conf-path SOCKET).\n\nCommands:\n"
	names := make([]string, 0, len(ctlCmds))
	for n := range ctlCmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := ctlCmds[n]
		s += fmt.Sprintf("  %-10s %s\n  %10s   %s\n", n, c.usage, "", c.help)
	}
	return s + "\n" + ctlFilterHelp
}

// ctlMain runs `gopasta ctl ARGS`.
func ctlMain(args []string) int {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Print(ctlUsage())
		return 0
	}
	if len(args) < 2 {
		fmt.Fprint(os.Stderr, ctlUsage())
		return 1
	}
	c, ok := ctlCmds[args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "gopasta ctl: unknown command %q\n\n%s", args[1], ctlUsage())
		return 1
	}
	conn, err := dialNative(args[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "gopasta ctl: %v\n", err)
		return 1
	}
	defer conn.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, func() { conn.Close() })
	if err := c.run(ctx, conn, args[2:], os.Stdout); err != nil && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "gopasta ctl %s: %v\n", c.name, err)
		return 1
	}
	return 0
}
