package forward

import (
	"net"
	"strings"
	"testing"

	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/conf"
)

// TestForwardReplace: a listener the new rules want as it is stays the
// very same socket (its connections and flows go on), one they don't is
// closed, a new one opened, and a busy port is a problem worded as pasta
// words it while the other rules take effect.
func TestForwardReplace(t *testing.T) {
	cfg := &conf.Config{IPv4Only: true, TCPPorts: []conf.PortSpec{
		mustSpec(t, "-t", "127.0.0.1/64400"), mustSpec(t, "-t", "127.0.0.1/64401")}}
	env := fwdTestEnv(t, cfg)
	flows := testFlows(t, env) // its poller stays until the test ends
	before := actorstest.FDCount(t)
	busy, err := net.Listen("tcp4", "127.0.0.1:64403")
	if err != nil {
		t.Skip("port 64403 busy:", err)
	}
	defer busy.Close()
	fw, err := StartForwarder(env, OptionsFrom(cfg), -1, flows)
	if err != nil {
		t.Fatal(err)
	}
	d := fw.f.dirs[0]
	// The socket behind a port's listener (multiListener is a slice).
	sock := func(k fwdKey) fwdListener {
		if m, ok := d.ls[k].(multiListener); ok && len(m) > 0 {
			return m[0]
		}
		return d.ls[k]
	}
	kept := sock(fwdKey{0, 64400})
	if kept == nil {
		t.Fatalf("listeners %v", d.ls)
	}
	var rules []conf.Rule
	for _, s := range []string{"127.0.0.1/64400", "127.0.0.1/64402", "127.0.0.1/64403"} {
		rules = append(rules, mustSpec(t, "-t", s).Rules()...)
	}
	problems := fw.Replace(Rules{TCPIn: rules})
	if len(problems) != 1 || problems[0] != "Listen failed for HOST TCP port 127.0.0.1/64403: Address already in use" {
		t.Fatalf("problems %q", problems)
	}
	l := hostListening(t)
	if !l.has(64400) || l.has(64401) || !l.has(64402) {
		t.Fatalf("listening %v", ports(l))
	}
	if sock(fwdKey{0, 64400}) != kept {
		t.Fatal("the listener of an unchanged rule was replaced")
	}
	// A different target on the same port is another socket.
	rules[0] = mustSpec(t, "-t", "127.0.0.1/64400:80").Rules()[0]
	if p := fw.Replace(Rules{TCPIn: rules[:1]}); len(p) != 0 {
		t.Fatalf("problems %q", p)
	}
	if sock(fwdKey{0, 64400}) == kept || !hostListening(t).has(64400) || hostListening(t).has(64402) {
		t.Fatalf("remapped port: listening %v", ports(hostListening(t)))
	}
	// Removing every rule closes every listener.
	fw.Replace(Rules{})
	if l := hostListening(t); l.has(64400) || len(d.ls) != 0 {
		t.Fatalf("listening %v after clearing", ports(l))
	}
	fw.Stop()
	busy.Close()
	if n := actorstest.FDCount(t); n > before {
		t.Errorf("%d descriptors leaked", n-before)
	}
	if p := fw.Replace(Rules{TCPIn: rules}); len(p) != 1 || !strings.Contains(p[0], "stopped") {
		t.Errorf("replace after stop: %q", p)
	}
}
