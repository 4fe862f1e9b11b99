package conf

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Theory of operation
//
// The TOML file is flat: one key per command-line option, named after its
// long option ("mtu = 1500", "tcp-ports = ["8080"]"), plus "target-pid"
// and "command" for the operands (the key "pid" is --pid, the PID file).
// Values are turned into the option's argument text and go through the very
// same apply functions as the command line, in file order; only the
// reporting differs: "config.toml:3: key "mtu": 70000 is out of range
// (0..65520)". BurntSushi/toml keeps key positions private, so the line of
// a key is recovered on the error path by decoding the file once more into
// a one-field struct whose field type fails on purpose: the library then
// reports that key's position.

// Extra TOML keys that are not options.
const (
	keyTargetPID = "target-pid" // the PID operand
	keyCommand   = "command"    // the COMMAND [ARG]... operands
	keyControl   = "control"    // alias of conf-path
)

// optionsByKey maps TOML keys to options.
var optionsByKey = func() map[string]*option {
	m := map[string]*option{}
	for _, o := range optionTable {
		m[o.key()] = o
	}
	// "control" names the control socket as the issue tracker and the
	// systemd example do; it is the same setting as "conf-path".
	m[keyControl] = m["conf-path"]
	return m
}()

// TOMLKeys lists every key a configuration file may contain, sorted.
func TOMLKeys() []string {
	keys := []string{keyTargetPID, keyCommand, keyControl}
	for _, o := range optionTable {
		if o.toml != tomlNone {
			keys = append(keys, o.key())
		}
	}
	sort.Strings(keys)
	return keys
}

// LoadFile reads a configuration file on top of the defaults of mode,
// without any command line. Parse uses the same code for --config.
func LoadFile(mode Mode, path string) (*Config, error) {
	c := Defaults(mode)
	p := &parser{c: c}
	if _, err := loadFile(p, path); err != nil {
		return nil, oneLine(err)
	}
	c.ConfigFile = path
	if err := finish(c); err != nil {
		return nil, oneLine(fmt.Errorf("%s: %w", path, err))
	}
	return c, nil
}

// ReadFile reads configuration files. A sandboxed daemon, which has no
// filesystem of its own once set up, points it at a reader that goes
// through a descriptor of the host's mount tree for SIGHUP's reload
// (cmd/gopasta/sandbox.go).
var ReadFile = os.ReadFile

func loadFile(p *parser, path string) (map[string]bool, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("can't read configuration file: %w", err)
	}
	return applyTOML(p, path, data)
}

// applyTOML applies the keys of data (named name in messages) to p.c and
// returns the set of keys seen.
func applyTOML(p *parser, name string, data []byte) (map[string]bool, error) {
	var raw map[string]any
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s:%d: %s", name, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	c := p.c
	if v, ok := raw["mode"].(string); ok && !p.modeSet {
		if m, err := ParseMode(v); err == nil {
			c.Mode = m // the mode comes first (an invalid one is reported below)
		}
	}
	if v, ok := raw["vhost-user"].(bool); ok && v && c.Mode == ModePasst {
		c.VhostUser = true // see Parse: the mode comes first
	}
	seen := map[string]bool{}
	for _, k := range md.Keys() {
		if len(k) != 1 {
			continue // inside a table: the table's own key is reported
		}
		key := k[0]
		seen[key] = true
		if err := applyKey(p, key, raw[key]); err != nil {
			line := keyLine(data, key)
			loc := name
			if line > 0 {
				loc = fmt.Sprintf("%s:%d", name, line)
			}
			return nil, fmt.Errorf("%s: %w", loc, err)
		}
	}
	return seen, nil
}

// peekFileMode returns the "mode" key of a configuration file, if it has a
// valid one; the file's errors are reported when it is loaded for real.
func peekFileMode(path string) (Mode, bool) {
	data, err := ReadFile(path)
	if err != nil {
		return ModePasta, false
	}
	var v struct {
		Mode string `toml:"mode"`
	}
	if _, err := toml.Decode(string(data), &v); err != nil || v.Mode == "" {
		return ModePasta, false
	}
	m, err := ParseMode(v.Mode)
	return m, err == nil
}

// tomlError is an error about one key's value.
func keyErr(key string, format string, a ...any) error {
	return fmt.Errorf("key %q: "+format, append([]any{key}, a...)...)
}

func applyKey(p *parser, key string, v any) error {
	c := p.c
	switch key {
	case keyTargetPID:
		if c.Mode != ModePasta {
			return fmt.Errorf("key %q is for pasta mode only", key)
		}
		n, ok := v.(int64)
		if !ok || n <= 0 || n > 1<<31-1 {
			return keyErr(key, "expected a process ID (positive integer), got %s", describe(v))
		}
		c.TargetPID = int(n)
		return nil
	case keyCommand:
		if c.Mode != ModePasta {
			return fmt.Errorf("key %q is for pasta mode only", key)
		}
		l, ok := stringList(v)
		if !ok || len(l) == 0 {
			return keyErr(key, "expected a non-empty array of strings, got %s", describe(v))
		}
		c.Command = l
		return nil
	}
	o := optionsByKey[key]
	if o == nil || o.toml == tomlNone {
		if o != nil {
			return fmt.Errorf("key %q: --%s is a command-line action, not a setting", key, key)
		}
		msg := fmt.Sprintf("unknown key %q", key)
		if s := suggest(key); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		return errors.New(msg + "; see config.example.toml for the keys")
	}
	if err := modeError(o, fmt.Sprintf("key %q", key), c); err != nil {
		return err
	}
	name := "--" + key
	run := func(arg string) error {
		if err := o.apply(p, name, arg); err != nil {
			var pe *PortSpecError
			if errors.As(err, &pe) {
				return keyErr(key, "%s in '%s'", pe.Msg, pe.Raw)
			}
			return keyErr(key, "%v", err)
		}
		return nil
	}
	switch o.toml {
	case tomlBool:
		b, ok := v.(bool)
		if !ok {
			return keyErr(key, "expected true or false, got %s", describe(v))
		}
		if b {
			return run("")
		}
		return nil // false leaves the default
	case tomlString:
		s, ok := v.(string)
		if !ok {
			return keyErr(key, "expected a string, got %s", describe(v))
		}
		return run(s)
	case tomlInt:
		switch x := v.(type) {
		case int64:
			if x < 0 {
				return keyErr(key, "%d is out of range (negative)", x)
			}
			return run(strconv.FormatInt(x, 10))
		case string:
			return run(x)
		}
		return keyErr(key, "expected an integer, got %s", describe(v))
	case tomlList:
		if s, ok := v.(string); ok {
			return run(s)
		}
		l, ok := stringList(v)
		if !ok {
			return keyErr(key, "expected a string or an array of strings, got %s", describe(v))
		}
		for _, s := range l {
			if err := run(s); err != nil {
				return err
			}
		}
		return nil
	}
	return keyErr(key, "unsupported")
}

func stringList(v any) ([]string, bool) {
	a, ok := v.([]any)
	if !ok {
		return nil, false
	}
	out := make([]string, 0, len(a))
	for _, e := range a {
		s, ok := e.(string)
		if !ok {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

// describe names a TOML value's type for messages.
func describe(v any) string {
	switch x := v.(type) {
	case bool:
		return fmt.Sprintf("boolean %v", x)
	case int64:
		return fmt.Sprintf("integer %d", x)
	case float64:
		return fmt.Sprintf("float %v", x)
	case string:
		return fmt.Sprintf("string %q", x)
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("%T", v)
}

// lineProbe fails on purpose so that the decoder reports a key's position.
type lineProbe struct{}

var errLineProbe = errors.New("line probe")

// UnmarshalTOML implements toml.Unmarshaler.
func (lineProbe) UnmarshalTOML(any) error { return errLineProbe }

// keyLine returns the line of top-level key in data, 0 if unknown.
func keyLine(data []byte, key string) int {
	if strings.ContainsAny(key, "\"\\`,") {
		return 0
	}
	t := reflect.StructOf([]reflect.StructField{{
		Name: "K",
		Type: reflect.TypeOf(lineProbe{}),
		Tag:  reflect.StructTag(`toml:"` + key + `"`),
	}})
	_, err := toml.Decode(string(data), reflect.New(t).Interface())
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return pe.Position.Line
	}
	return 0
}

// suggest returns the known key closest to an unknown one, if close.
func suggest(key string) string {
	best, bestD := "", 3
	for _, k := range TOMLKeys() {
		if d := editDistance(key, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
