package conf

import (
	"errors"
	"strings"
)

// Theory of operation
//
// pasta parses its command line with glibc's getopt_long() and an optstring
// starting with '+': options may be bundled (-fd), short options take their
// argument attached (-m1500) or as the next word (-m 1500), long options take
// it after '=' or as the next word, any unique prefix of a long option works
// (--for == --foreground), and parsing stops at "--" or at the first word that
// is not an option (the PID or the command). Callers depend on the exact
// diagnostics: podman retries without --map-guest-addr when the output
// contains "unrecognized option '--map-guest-addr". A flag library would get
// the details wrong, so this file is a small, literal re-implementation of
// that behaviour; the messages are glibc's wording without the "prog: "
// prefix, which the caller adds.

// optEvent is one option occurrence found on the command line.
type optEvent struct {
	opt *option
	// name is how the option is called in messages: "-m" for a short
	// option, "--mtu" (canonical long name, even for an abbreviation) for
	// a long one.
	name string
	arg  string
}

// errGetopt marks a command-line syntax error (unknown option, missing
// argument) as opposed to a bad value.
var errGetopt = errors.New("getopt")

// getoptError is a syntax error with glibc's wording.
type getoptError struct{ msg string }

func (e *getoptError) Error() string { return e.msg }
func (e *getoptError) Unwrap() error { return errGetopt }

// tokenize walks args the way getopt_long with a '+' optstring does. It
// returns the option occurrences in order, the index of the first operand
// (len(args) if none) and the first syntax error, if any. Events before the
// error are still returned so that the caller can honour an earlier --help
// or --version, as pasta (which acts on options as it meets them) does.
func tokenize(table []*option, args []string) (events []optEvent, operand int, err error) {
	i := 0
	for i < len(args) {
		a := args[i]
		if a == "--" {
			return events, i + 1, nil
		}
		if len(a) < 2 || a[0] != '-' {
			// "+" in the optstring: the first non-option ends parsing.
			return events, i, nil
		}
		i++
		if strings.HasPrefix(a, "--") {
			ev, consumed, err := longOption(table, a[2:], args[i:])
			if err != nil {
				return events, i, err
			}
			i += consumed
			events = append(events, ev)
			continue
		}
		// A bundle of short options: -fd, -fm1500, -m 1500.
		for j := 1; j < len(a); j++ {
			c := a[j]
			o := findShort(table, c)
			if o == nil {
				return events, i, &getoptError{"invalid option -- '" + string(c) + "'"}
			}
			ev := optEvent{opt: o, name: "-" + string(c)}
			if o.hasArg {
				if j+1 < len(a) {
					ev.arg = a[j+1:]
				} else if i < len(args) {
					ev.arg = args[i]
					i++
				} else {
					return events, i, &getoptError{"option requires an argument -- '" + string(c) + "'"}
				}
				events = append(events, ev)
				break
			}
			events = append(events, ev)
		}
	}
	return events, i, nil
}

func findShort(table []*option, c byte) *option {
	if c == 0 {
		return nil
	}
	for _, o := range table {
		if o.short == c {
			return o
		}
	}
	return nil
}

// longOption resolves "name[=value]" (the word without its leading "--").
// rest are the words after it, for a separated argument.
func longOption(table []*option, word string, rest []string) (optEvent, int, error) {
	name, value, hasValue := strings.Cut(word, "=")
	o, canon, err := matchLong(table, name, word)
	if err != nil {
		return optEvent{}, 0, err
	}
	ev := optEvent{opt: o, name: "--" + canon}
	if !o.hasArg {
		if hasValue {
			return optEvent{}, 0, &getoptError{"option '--" + canon + "' doesn't allow an argument"}
		}
		return ev, 0, nil
	}
	if hasValue {
		ev.arg = value
		return ev, 0, nil
	}
	if len(rest) == 0 {
		return optEvent{}, 0, &getoptError{"option '--" + canon + "' requires an argument"}
	}
	ev.arg = rest[0]
	return ev, 1, nil
}

// matchLong finds the long option called name: an exact match wins,
// otherwise a prefix must select a single option. Several names of the same
// option (--socket, --socket-path) are not ambiguous, just as glibc accepts
// prefixes matching entries with identical has_arg/flag/val.
func matchLong(table []*option, name, word string) (*option, string, error) {
	if name == "" {
		return nil, "", &getoptError{"unrecognized option '--" + word + "'"}
	}
	for _, o := range table {
		for _, l := range o.long {
			if l == name {
				return o, l, nil
			}
		}
	}
	var found *option
	var canon string
	ambiguous := false
	var possible []string
	for _, o := range table {
		for _, l := range o.long {
			if !strings.HasPrefix(l, name) {
				continue
			}
			possible = append(possible, "'--"+l+"'")
			if found == nil {
				found, canon = o, l
			} else if found != o {
				ambiguous = true
			}
		}
	}
	if found == nil {
		return nil, "", &getoptError{"unrecognized option '--" + word + "'"}
	}
	if ambiguous {
		return nil, "", &getoptError{"option '--" + word + "' is ambiguous; possibilities: " + strings.Join(possible, " ")}
	}
	return found, canon, nil
}
