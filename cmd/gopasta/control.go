package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/actors/forward"
	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/conf/control"
)

// rulesBackend is the daemon's forwarding rules as the control socket and
// SIGHUP change them: pasta's tables (control.Table), which are what pesto
// lists, and the forwarder that puts them in force.
type rulesBackend struct {
	mu     sync.Mutex
	tables []control.Table
	fw     *forward.Forwarding
	cfg    *conf.Config
	log    logrus.FieldLogger
}

// start puts the backend in charge of fw, with the tables of the
// configuration it was made with.
func (b *rulesBackend) start(fw *forward.Forwarding) error {
	ts, err := control.ConfigTables(b.cfg, control.Ephemeral())
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tables, b.fw = ts, fw
	return nil
}

// ready says whether start succeeded: the rules can be changed.
func (b *rulesBackend) ready() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.fw != nil
}

// Tables implements control.RulesBackend.
func (b *rulesBackend) Tables() []control.Table {
	b.mu.Lock()
	defer b.mu.Unlock()
	return copyTables(b.tables)
}

func copyTables(ts []control.Table) []control.Table {
	out := make([]control.Table, len(ts))
	for i, t := range ts {
		out[i] = t
		out[i].Rules = append([]control.Rule(nil), t.Rules...)
	}
	return out
}

// Apply implements control.RulesBackend: the tables given replace ours, and
// the forwarder opens and closes listeners to match.
func (b *rulesBackend) Apply(update []control.Table) ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fw == nil {
		return nil, fmt.Errorf("forwarding rules cannot be changed in this daemon")
	}
	next := copyTables(b.tables)
	for _, u := range update {
		found := false
		for i := range next {
			if next[i].PIF == u.PIF {
				next[i].Rules = append([]control.Rule(nil), u.Rules...)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("no table %d", u.PIF)
		}
	}
	rules, err := fwdRules(b.cfg, next)
	if err != nil {
		return nil, err
	}
	for _, u := range update {
		b.log.Infof("New forwarding rules for %s:", u.Name)
		for _, r := range u.Rules {
			b.log.Infof("    %s", r)
		}
	}
	problems := b.fw.Replace(rules)
	for _, p := range problems {
		b.log.Warn(p)
	}
	if len(problems) > 0 {
		b.log.Error("Error switching to new forwarding rules")
	}
	b.tables = next
	return problems, nil
}

// fwdRules turns tables into the forwarder's rules. HOST rules are -t and
// -u as they are; SPLICE rules (-T, -U) listen on the namespace's loopback
// and go to the host's, which is all gopasta does for them: any other
// listening address, interface or a target address is refused.
func fwdRules(cfg *conf.Config, ts []control.Table) (forward.Rules, error) {
	var out forward.Rules
	for _, t := range ts {
		for _, r := range t.Rules {
			cr := conf.Rule{
				PortRange: conf.PortRange{First: r.First, Last: r.Last, To: r.To},
				Ifname:    r.Ifname,
				Weak:      r.Flags&control.FlagWeak != 0,
				Scan:      r.Flags&control.FlagScan != 0,
				Raw:       r.String(),
			}
			if r.Target.IsValid() && !r.Target.IsUnspecified() {
				cr.ToAddr = r.Target
			}
			if r.Flags&control.FlagDualStack == 0 {
				cr.Bind = r.Addr
				// An unspecified address of the only IP version in use
				// is what the command line gives as no address.
				if r.Addr.IsUnspecified() && ((cfg.IPv4Only && r.Addr.Is4()) || (cfg.IPv6Only && r.Addr.Is6())) {
					cr.Bind = netip.Addr{}
				}
			}
			var list *[]conf.Rule
			switch {
			case t.PIF == control.PIFHost && r.Proto == control.ProtoTCP:
				cr.Option, list = "-t", &out.TCPIn
			case t.PIF == control.PIFHost:
				cr.Option, list = "-u", &out.UDPIn
			case t.PIF == control.PIFSplice:
				if cr.ToAddr.IsValid() {
					return out, fmt.Errorf("rule %s: gopasta forwards SPLICE rules to the host's loopback only, not to a target address", r)
				}
				if (cr.Bind.IsValid() && !cr.Bind.IsLoopback()) || (r.Ifname != "" && r.Ifname != "lo") {
					return out, fmt.Errorf("rule %s: SPLICE rules listen on the namespace's loopback only", r)
				}
				// The listeners bind the loopback address anyway.
				cr.Ifname = ""
				cr.Option, list = "-T", &out.TCPOut
				if r.Proto == control.ProtoUDP {
					cr.Option, list = "-U", &out.UDPOut
				}
			default:
				return out, fmt.Errorf("no forwarding from table %s", t.Name)
			}
			*list = append(*list, cr)
		}
	}
	return out, nil
}

// startControl opens the -c socket. The server runs from run().
func (d *daemon) startControl() error {
	if d.cfg.ConfPath == "" {
		return nil
	}
	srv, err := control.Listen(d.cfg.ConfPath, d.rules, d.log.Logger)
	if err != nil {
		return err
	}
	d.ctl = srv // closed by teardown, before the forwarder stops
	d.log.Infof("Configuration socket: %s", d.cfg.ConfPath)
	return nil
}

// configDir is the directory a relative --config is found from: the
// daemon leaves its working directory once ready (detachStdio).
var configDir, _ = os.Getwd()

// reload is SIGHUP: the --config file (with the command line over it, as
// at start) is read again, and changed forwarding rules and log level are
// applied through the same code as the control socket. A file that does
// not load changes nothing.
func (d *daemon) reload() {
	file := d.cfg.ConfigFile
	if !filepath.IsAbs(file) {
		file = filepath.Join(configDir, file)
	}
	args := append([]string(nil), os.Args[1:]...)
	for i, a := range args {
		// The file as named at start; a relative name means what it did
		// then. Both spellings of the option are replaced.
		if a == "--config" && i+1 < len(args) && args[i+1] == d.cfg.ConfigFile {
			args[i+1] = file
		} else if a == "--config="+d.cfg.ConfigFile {
			args[i] = "--config=" + file
		}
	}
	cfg, err := conf.Parse(os.Args[0], args)
	if err != nil {
		d.log.Errorf("SIGHUP: %v; running configuration kept", err)
		return
	}
	ts, err := control.ConfigTables(cfg, control.Ephemeral())
	if err == nil {
		_, err = fwdRules(d.cfg, ts)
	}
	if err != nil {
		d.log.Errorf("SIGHUP: %s: %v; running configuration kept", d.cfg.ConfigFile, err)
		return
	}
	d.log.Infof("SIGHUP: reloaded %s", d.cfg.ConfigFile)
	level := logLevel(cfg)
	if level != d.log.GetLevel() {
		d.log.Infof("log level %s (was %s)", level, d.log.GetLevel())
		d.log.SetLevel(level)
	}
	var changed []control.Table
	old := d.rules.Tables()
	for _, t := range ts {
		for _, o := range old {
			if o.PIF != t.PIF {
				continue
			}
			added, removed := diffRules(o.Rules, t.Rules)
			for _, r := range removed {
				d.log.Infof("%s: rule removed: %s", t.Name, r)
			}
			for _, r := range added {
				d.log.Infof("%s: rule added: %s", t.Name, r)
			}
			if len(added)+len(removed) > 0 {
				changed = append(changed, t)
			}
		}
	}
	if len(changed) == 0 {
		d.log.Infof("SIGHUP: forwarding rules unchanged")
		return
	}
	if _, err := d.rules.Apply(changed); err != nil {
		d.log.Errorf("SIGHUP: %v; running rules kept", err)
	}
}

// diffRules lists the rules of b not in a (added) and of a not in b.
func diffRules(a, b []control.Rule) (added, removed []control.Rule) {
	in := func(l []control.Rule, r control.Rule) bool {
		for _, x := range l {
			if x.Bytes() == r.Bytes() {
				return true
			}
		}
		return false
	}
	for _, r := range b {
		if !in(a, r) {
			added = append(added, r)
		}
	}
	for _, r := range a {
		if !in(b, r) {
			removed = append(removed, r)
		}
	}
	return added, removed
}

func logLevel(cfg *conf.Config) logrus.Level {
	switch {
	case cfg.Trace:
		return logrus.TraceLevel
	case cfg.Debug:
		return logrus.DebugLevel
	case cfg.Quiet:
		return logrus.WarnLevel
	}
	return logrus.InfoLevel
}
