package main

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// systemd readiness (Type=notify)
//
// systemd starts the service with NOTIFY_SOCKET naming a datagram socket
// (a path, or "@name" in the abstract namespace) and waits for "READY=1"
// from the main process. The main process is the front (the PID systemd
// started); the daemon is its child. So the front reports, once the
// daemon has said "ok", with MAINPID naming the daemon: systemd then
// follows the daemon whether or not the front stays (-f) or exits. The
// protocol is one sendmsg of "KEY=VALUE" lines: a few lines here rather
// than a library.

const notifyEnv = "NOTIFY_SOCKET"

// sdNotify sends state to systemd's notification socket; without
// NOTIFY_SOCKET it does nothing.
func sdNotify(state string) error {
	path := os.Getenv(notifyEnv)
	if path == "" {
		return nil
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %v", err)
	}
	return nil
}

// notifyReady tells systemd the daemon (pid) is ready.
func notifyReady(pid int) error {
	return sdNotify(fmt.Sprintf("READY=1\nMAINPID=%d\n", pid))
}
