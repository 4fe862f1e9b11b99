package main

// TEMPORARY: replaced at merge by the control branch's server for
// -c/--conf-path (pesto's protocol, with the native protocol behind its
// 0xFF hook). Until then -c opens a socket that serves only the native
// protocol: it sends a pesto hello with no rule tables, so that the
// observability commands and their tests run the same way before and
// after the merge, and closes any client that does not switch to native.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/conf/control"
)

// listenControlTmp opens the control socket at path (mode 0600) and
// serves it until the daemon's context ends.
func (d *daemon) listenControlTmp(path string) error {
	_ = os.Remove(path)
	old := unix.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return fmt.Errorf("control socket %s: %v", path, err)
	}
	ln.SetUnlinkOnClose(true)
	d.stops = append(d.stops, func() { ln.Close() })
	go func() {
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			go d.serveControlTmp(c)
		}
	}()
	return nil
}

func (d *daemon) serveControlTmp(c *net.UnixConn) {
	defer c.Close()
	if err := peerIsUs(c); err != nil {
		d.log.Warnf("control socket: %v", err)
		return
	}
	var hello [21]byte
	copy(hello[:8], "basil:s\x00")
	binary.BigEndian.PutUint32(hello[8:], 2)
	binary.BigEndian.PutUint32(hello[12:], 128)
	binary.BigEndian.PutUint32(hello[16:], unix.IFNAMSIZ)
	// hello[20] = 0: no tables.
	if _, err := c.Write(hello[:]); err != nil {
		return
	}
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil || b[0] != control.NativeByte {
		return
	}
	if err := control.ServeNative(d.ctx, c, ctlBackend{d}); err != nil {
		d.log.Debugf("control client: %v", err)
	}
}

// peerIsUs refuses a client of another uid.
func peerIsUs(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return err
	}
	if cerr != nil {
		return cerr
	}
	if int(cred.Uid) != os.Geteuid() {
		return errors.New("refused a client of another user")
	}
	return nil
}
