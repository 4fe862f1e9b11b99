package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/gopasta/gopasta/conf/control"
)

// "gopasta ctl SOCKET COMMAND [ARG]..." talks to a running daemon's
// control socket (-c/--conf-path). Each COMMAND is an entry of ctlCmds;
// files of this package add theirs from init() with registerCtl, so that
// the commands of different concerns live in different files: the rules
// (here) speak pesto's protocol, the observability commands
// (ctl_observe.go) the native one behind it.

// ctlCmd is one "gopasta ctl SOCKET NAME ..." command. It has run or
// direct.
type ctlCmd struct {
	name  string
	usage string // its arguments, for the usage text
	help  string // what it does (may span lines)
	// run talks the native protocol on conn (past the pesto hello and
	// tables and NativeByte) and writes its results to out.
	run func(ctx context.Context, conn io.ReadWriter, args []string, out io.Writer) error
	// direct does the whole command itself against the socket at sock
	// (the rules speak pesto's protocol) and returns the exit status.
	direct func(sock string, args []string, stdout, stderr io.Writer) int
}

// ctlCmds is the command table, filled by init functions.
var ctlCmds = map[string]*ctlCmd{}

// registerCtl adds a command; a name registered twice is a bug.
func registerCtl(c *ctlCmd) {
	if _, dup := ctlCmds[c.name]; dup {
		panic("ctl command registered twice: " + c.name)
	}
	ctlCmds[c.name] = c
}

// isCtl reports whether the command line is "PROG ctl ...". Under the
// names pasta and passt, "ctl" stays what pasta makes of it (a COMMAND to
// run), so gopasta remains a drop-in for them.
func isCtl(prog string, args []string) bool {
	return !isPastaName(prog) && len(args) > 0 && args[0] == "ctl"
}

// isPastaName: gopasta runs under pasta's or passt's name.
func isPastaName(prog string) bool {
	return strings.HasPrefix(prog, "pasta") || strings.HasPrefix(prog, "passt")
}

// ctlUsage is the text of "gopasta ctl --help".
func ctlUsage(prog string) string {
	s := fmt.Sprintf("Usage: %s ctl SOCKET COMMAND [ARGUMENTS]\n", prog) +
		"Talks to a running gopasta through its control socket (-c/--conf-path SOCKET).\n\nCommands:\n"
	names := make([]string, 0, len(ctlCmds))
	for n := range ctlCmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := ctlCmds[n]
		s += fmt.Sprintf("  %-10s %s\n", n, c.usage)
		for _, l := range strings.Split(c.help, "\n") {
			s += fmt.Sprintf("  %10s   %s\n", "", l)
		}
	}
	return s + "\n" + ctlFilterHelp +
		"\nThe socket also speaks upstream's pesto protocol: pesto(1) works on it as on pasta's.\n"
}

// ctlMain runs "PROG ctl ARGS..." and returns the exit status. Without a
// command after SOCKET it lists the rules.
func ctlMain(prog string, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(stdout, ctlUsage(prog))
		return 0
	}
	if len(args) < 1 {
		fmt.Fprint(stderr, ctlUsage(prog))
		return 2
	}
	sock, rest := args[0], args[1:]
	name := "rules"
	if len(rest) > 0 {
		name, rest = rest[0], rest[1:]
	}
	c := ctlCmds[name]
	if c == nil {
		fmt.Fprintf(stderr, "%s ctl: unknown command %q\n\n%s", prog, name, ctlUsage(prog))
		return 2
	}
	if c.direct != nil {
		return c.direct(sock, rest, stdout, stderr)
	}
	cl, err := control.Dial(sock)
	if err != nil {
		fmt.Fprintf(stderr, "%s ctl: %v\n", prog, err)
		return 1
	}
	conn, err := cl.Native()
	if err != nil {
		fmt.Fprintf(stderr, "%s ctl: %v\n", prog, err)
		return 1
	}
	defer conn.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, func() { conn.Close() })
	if err := c.run(ctx, conn, rest, stdout); err != nil && ctx.Err() == nil {
		fmt.Fprintf(stderr, "%s ctl %s: %v\n", prog, c.name, err)
		return 1
	}
	return 0
}

func init() {
	registerCtl(&ctlCmd{
		name:  "rules",
		usage: "[list [--json] | add|delete|replace -t|-u|-T|-U SPEC... | clear [HOST|SPLICE]...]",
		help: "Show or change the forwarding rules, in pasta's -t/-u/-T/-U grammar (see --help).\n" +
			"add and delete change single rules (pesto -A/-D); replace sets the tables named by\n" +
			"its options (pesto's default); clear empties tables. Without a command: list.",
		direct: ctlRules,
	})
}

// ctlRules is "ctl SOCKET rules ...".
func ctlRules(sock string, args []string, stdout, stderr io.Writer) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "rules: "+format+"\n", a...)
		return 1
	}
	verb := "list"
	if len(args) > 0 {
		verb, args = args[0], args[1:]
	}
	cl, err := control.Dial(sock)
	if err != nil {
		return fail("%v", err)
	}
	defer cl.Close()
	tables := cl.Tables()
	byName := func(name string) *control.Table {
		for i := range tables {
			if tables[i].Name == name {
				return &tables[i]
			}
		}
		return nil
	}
	switch verb {
	case "list":
		if len(args) == 1 && args[0] == "--json" {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(jsonTables(tables)); err != nil {
				return fail("%v", err)
			}
			return 0
		}
		if len(args) != 0 {
			return fail("list takes no arguments but --json")
		}
		fmt.Fprint(stdout, formatTables(tables))
		return 0
	case "clear":
		names := args
		if len(names) == 0 {
			for _, t := range tables {
				names = append(names, t.Name)
			}
		}
		var changed []control.Table
		for _, n := range names {
			t := byName(n)
			if t == nil {
				return fail("unsupported pif name %s", n)
			}
			t.Rules = nil
			changed = append(changed, *t)
		}
		return ctlReplace(cl, changed, stderr)
	case "add", "delete", "replace":
	default:
		return fail("unknown command %q (list, add, delete, replace, clear)", verb)
	}
	if len(args) == 0 || len(args)%2 != 0 {
		return fail("%s needs one or more OPTION SPEC pairs (-t 8080, -u 53, -T 3000, -U none)", verb)
	}
	eph := control.Ephemeral()
	touched := map[string]bool{}
	var order []string
	for i := 0; i < len(args); i += 2 {
		opt, spec := args[i], args[i+1]
		name := ""
		switch opt {
		case "-t", "--tcp-ports", "-u", "--udp-ports":
			name = control.NameHost
		case "-T", "--tcp-ns", "-U", "--udp-ns":
			name = control.NameSplice
		default:
			return fail("unknown option %q (-t, -u, -T or -U)", opt)
		}
		opt = shortPortOption(opt)
		t := byName(name)
		if t == nil {
			return fail("can't use %s: the daemon has no %s table", opt, name)
		}
		if !touched[name] {
			touched[name] = true
			order = append(order, name)
			if verb == "replace" {
				t.Rules = nil
			}
		}
		if err := t.Edit(opt, spec, verb == "delete", eph); err != nil {
			return fail("%v", err)
		}
	}
	var changed []control.Table
	for _, n := range order {
		changed = append(changed, *byName(n))
	}
	return ctlReplace(cl, changed, stderr)
}

func shortPortOption(opt string) string {
	switch opt {
	case "--tcp-ports":
		return "-t"
	case "--udp-ports":
		return "-u"
	case "--tcp-ns":
		return "-T"
	case "--udp-ns":
		return "-U"
	}
	return opt
}

func ctlReplace(cl *control.Client, ts []control.Table, stderr io.Writer) int {
	warnings, err := cl.Replace(ts)
	for _, w := range warnings {
		fmt.Fprintf(stderr, "rules: warning: %s\n", w)
	}
	if err != nil {
		fmt.Fprintf(stderr, "rules: %v\n", err)
		return 1
	}
	if len(warnings) > 0 {
		return 1
	}
	return 0
}

// formatTables lists tables as pesto does.
func formatTables(ts []control.Table) string {
	var b strings.Builder
	for _, t := range ts {
		fmt.Fprintf(&b, "  %s\n", t.Name)
		for _, r := range t.Rules {
			fmt.Fprintf(&b, "    %s\n", r)
		}
	}
	return b.String()
}

type jsonRule struct {
	Proto   string `json:"proto"`
	Addr    string `json:"addr"` // "*": any, both IP versions
	Ifname  string `json:"ifname,omitempty"`
	First   uint16 `json:"first"`
	Last    uint16 `json:"last"`
	To      uint16 `json:"to"`
	Target  string `json:"target,omitempty"`
	Weak    bool   `json:"weak,omitempty"`
	Auto    bool   `json:"auto,omitempty"`
	Display string `json:"text"`
}

type jsonTable struct {
	Name  string     `json:"name"`
	Rules []jsonRule `json:"rules"`
}

func jsonTables(ts []control.Table) []jsonTable {
	out := make([]jsonTable, 0, len(ts))
	for _, t := range ts {
		jt := jsonTable{Name: t.Name, Rules: []jsonRule{}}
		for _, r := range t.Rules {
			jr := jsonRule{Proto: "tcp", Addr: "*", Ifname: r.Ifname, First: r.First, Last: r.Last, To: r.To,
				Weak: r.Flags&control.FlagWeak != 0, Auto: r.Flags&control.FlagScan != 0, Display: r.String()}
			if r.Proto == control.ProtoUDP {
				jr.Proto = "udp"
			}
			if r.Flags&control.FlagDualStack == 0 && r.Addr.IsValid() {
				jr.Addr = r.Addr.String()
			}
			if r.Target.IsValid() && !r.Target.IsUnspecified() {
				jr.Target = r.Target.String()
			}
			jt.Rules = append(jt.Rules, jr)
		}
		out = append(out, jt)
	}
	return out
}

// ctlEntry is main's door to ctl: PROG ctl ...
func ctlEntry(prog string) int {
	return ctlMain(prog, os.Args[2:], os.Stdout, os.Stderr)
}
