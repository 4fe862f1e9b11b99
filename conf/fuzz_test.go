package conf

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// FuzzParseArgs feeds arbitrary argument vectors (words separated by NUL)
// to Parse. Properties: no panic; errors are one line; a successful parse
// yields values in range; and rewriting every option to its canonical
// "--long=value" form (operands after "--") parses to the same Config, which
// exercises bundling, abbreviations and separated arguments against the
// plain form.
func FuzzParseArgs(f *testing.F) {
	for _, s := range []string{
		"--config-net --dns-forward 169.254.1.1 -t none -u none -T none -U none --no-map-gw --quiet --netns /run/user/1000/netns/netns-abc --map-guest-addr 169.254.1.2",
		"--stderr --ns-ifname=tap0 --mtu=65520 --config-net --address=10.0.2.100 --netmask=24 --gateway=10.0.2.2 --dns-forward=10.0.2.3 --tcp-ports=auto --udp-ports=auto 1234",
		"-fdm1500 -46 -a 10.0.0.2/16 -- sh -c x",
		"--fore --map-g 169.254.1.2 -t 127.0.0.1/8080-8080:80-80 -t ::1/8088-8088:80-80",
		"-T 18080 -u 5000-5002:6000-6002 --no -x --mtu",
		"--userns=/proc/1/ns/user --netns=/proc/1/ns/net -D none -S a,b --dns-host ::1",
	} {
		f.Add("pasta\x00" + strings.ReplaceAll(s, " ", "\x00"))
	}
	f.Add("passt\x00--one-off\x00-s\x00/tmp/s\x00-M\x0052:54:00:12:34:56\x00-t\x0022")
	f.Fuzz(func(t *testing.T, in string) {
		words := strings.Split(in, "\x00")
		argv0, args := words[0], words[1:]
		events, operand, syntaxErr := tokenize(optionTable, args)
		for _, ev := range events {
			if ev.opt.key() == "config" {
				return // would read arbitrary files
			}
		}
		c, err := Parse(argv0, args)
		if err != nil {
			if strings.Contains(err.Error(), "\n") && !errors.Is(err, ErrHelp) {
				t.Fatalf("multi-line error %q", err)
			}
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if c.MTU < 0 || c.MTU > maxMTU || c.FlowLimit < 1 || c.UDPTimeout <= 0 || c.ICMPTimeout <= 0 {
			t.Fatalf("out of range: %+v", c)
		}
		if c.Trace && !c.Debug {
			t.Fatal("trace without debug")
		}
		if c.NetNS != "" && c.UserNS == "" && !c.NetNSOnly {
			t.Fatal("--netns without --userns must imply netns-only")
		}
		if syntaxErr != nil {
			t.Fatalf("Parse succeeded despite %v", syntaxErr)
		}
		canon := []string{}
		for _, ev := range events {
			w := "--" + ev.opt.long[0]
			if ev.opt.hasArg {
				w += "=" + ev.arg
			}
			canon = append(canon, w)
		}
		canon = append(canon, "--")
		canon = append(canon, args[operand:]...)
		c2, err := Parse(argv0, canon)
		if err != nil {
			t.Fatalf("canonical form %q fails: %v", canon, err)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("canonical form %q differs:\n%+v\n%+v", canon, c, c2)
		}
	})
}
