package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/conf/control"
)

// tableBackend keeps tables and applies updates as given.
type tableBackend struct {
	mu sync.Mutex
	ts []control.Table
}

func (b *tableBackend) Tables() []control.Table {
	b.mu.Lock()
	defer b.mu.Unlock()
	return copyTables(b.ts)
}

func (b *tableBackend) Apply(u []control.Table) ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, t := range u {
		for i := range b.ts {
			if b.ts[i].PIF == t.PIF {
				b.ts[i] = t
			}
		}
	}
	return nil, nil
}

func ctlServer(t *testing.T, args ...string) (string, *tableBackend) {
	t.Helper()
	c, err := conf.Parse("gopasta", args)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := control.ConfigTables(c, [2]uint16{32768, 60999})
	if err != nil {
		t.Fatal(err)
	}
	b := &tableBackend{ts: ts}
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	srv, err := control.Listen(sock, b, logrus.New())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return sock, b
}

func ctl(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := ctlMain("gopasta", args, &out, &errb)
	return out.String(), errb.String(), code
}

func TestCtlRules(t *testing.T) {
	sock, b := ctlServer(t, "-t", "8080", "-u", "none", "-T", "none", "-U", "none")
	out, _, code := ctl(t, sock)
	if code != 0 || out != "  HOST\n    TCP [*]:8080  =>  8080 \n  SPLICE\n" {
		t.Fatalf("list (%d): %q", code, out)
	}
	if _, e, code := ctl(t, sock, "rules", "add", "-t", "9000-9001:19000-19001", "--udp-ns", "53"); code != 0 {
		t.Fatalf("add: %d %s", code, e)
	}
	if _, e, code := ctl(t, sock, "rules", "delete", "-t", "8080"); code != 0 {
		t.Fatalf("delete: %d %s", code, e)
	}
	out, _, _ = ctl(t, sock, "rules", "list")
	want := "  HOST\n    TCP [*]:9000-9001  =>  19000-19001 \n  SPLICE\n    UDP [*]%lo:53  =>  53 \n"
	if out != want {
		t.Fatalf("after add/delete:\n%s\nwant:\n%s", out, want)
	}
	out, _, _ = ctl(t, sock, "rules", "list", "--json")
	if !strings.Contains(out, `"first": 9000`) || !strings.Contains(out, `"ifname": "lo"`) {
		t.Fatalf("json: %s", out)
	}
	if _, e, code := ctl(t, sock, "rules", "replace", "-t", "127.0.0.1/22"); code != 0 {
		t.Fatalf("replace: %d %s", code, e)
	}
	if ts := b.Tables(); len(ts[0].Rules) != 1 || ts[0].Rules[0].String() != "TCP [127.0.0.1]:22  =>  22 " || len(ts[1].Rules) != 1 {
		t.Fatalf("replace changed %+v", ts)
	}
	if _, e, code := ctl(t, sock, "rules", "clear", "SPLICE"); code != 0 {
		t.Fatalf("clear: %d %s", code, e)
	}
	if ts := b.Tables(); len(ts[1].Rules) != 0 || len(ts[0].Rules) != 1 {
		t.Fatalf("clear changed %+v", ts)
	}
	// Errors: pesto's wording, nothing sent.
	for _, args := range [][]string{
		{"rules", "delete", "-t", "23"},
		{"rules", "add", "-t", "80-70"},
		{"rules", "add", "-x", "1"},
		{"rules", "add", "-t"},
		{"rules", "clear", "TAP"},
		{"nosuch"},
	} {
		if _, e, code := ctl(t, append([]string{sock}, args...)...); code == 0 || e == "" {
			t.Errorf("%v: status %d, %q", args, code, e)
		}
	}
	if ts := b.Tables(); len(ts[0].Rules) != 1 {
		t.Fatalf("a failed command changed the tables: %+v", ts)
	}
	if out, _, code := ctl(t, "--help"); code != 0 || !strings.Contains(out, "  rules      [list [--json]") || !strings.Contains(out, "  flows ") {
		t.Fatalf("help: %d %s", code, out)
	}
	if !isCtl("gopasta", []string{"ctl", "x"}) || isCtl("pasta", []string{"ctl"}) || isCtl("passt", []string{"ctl"}) {
		t.Fatal("isCtl")
	}
}

// fwdRules refuses SPLICE rules gopasta cannot honour, and turns HOST
// rules into the forwarder's.
func TestFwdRules(t *testing.T) {
	c, _ := conf.Parse("gopasta", []string{"-t", "127.0.0.1/80:8080", "-u", "53", "-T", "22", "-U", "none"})
	ts, err := control.ConfigTables(c, [2]uint16{32768, 60999})
	if err != nil {
		t.Fatal(err)
	}
	r, err := fwdRules(c, ts)
	if err != nil || len(r.TCPIn) != 1 || len(r.UDPIn) != 1 || len(r.TCPOut) != 1 || len(r.UDPOut) != 0 {
		t.Fatalf("%+v %v", r, err)
	}
	if in := r.TCPIn[0]; in.Bind.String() != "127.0.0.1" || in.To != 8080 || in.First != 80 {
		t.Fatalf("-t rule %+v", in)
	}
	if out := r.TCPOut[0]; out.Bind.IsValid() || out.Ifname != "" {
		t.Fatalf("-T rule %+v", out)
	}
	bad := ts[1]
	bad.Rules = append([]control.Rule(nil), bad.Rules...)
	bad.Rules[0].Ifname = "eth0"
	if _, err := fwdRules(c, []control.Table{bad}); err == nil {
		t.Fatal("SPLICE rule on eth0 accepted")
	}
}
