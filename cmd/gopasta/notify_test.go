package main

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// notifyReady sends systemd's readiness message, naming the daemon as the
// main process, to a path or an abstract socket; without NOTIFY_SOCKET it
// does nothing.
func TestNotifyReady(t *testing.T) {
	for _, name := range []string{filepath.Join(t.TempDir(), "notify"), "@gopasta-test-notify-" + time.Now().Format("150405.000000")} {
		addr := name
		if addr[0] == '@' {
			addr = "\x00" + addr[1:]
		}
		l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv(notifyEnv, name)
		if err := notifyReady(4242); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 256)
		_ = l.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := l.Read(buf)
		l.Close()
		if err != nil || string(buf[:n]) != "READY=1\nMAINPID=4242\n" {
			t.Fatalf("%s: got %q, %v", name, buf[:n], err)
		}
	}
	t.Setenv(notifyEnv, "")
	if err := notifyReady(1); err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v", err)
	}
	if got := cleanEnv([]string{"A=1", notifyEnv + "=/run/x"}); len(got) != 1 {
		t.Fatalf("NOTIFY_SOCKET passed to the daemon: %v", got)
	}
}
