package main

// TEMPORARY: replaced at merge by control.Dial(path) and its Native(),
// which the control branch provides. Until then this is the least that
// reaches the native protocol: connect, check the pesto hello, skip the
// rule tables, and write the 0xFF byte.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/gopasta/gopasta/conf/control"
)

// Sizes of pesto's messages (protocol version 2).
const (
	tmpHelloLen   = 8 + 4 + 4 + 4 // magic, version, pif name size, IFNAMSIZ
	tmpPifInfoLen = 128 + 4 + 4   // name, capabilities, rule count
	tmpRuleLen    = 16 + 16 + 16 + 2 + 2 + 2 + 1 + 1
	tmpMaxRules   = 255
)

// dialNative connects to the control socket at path and switches the
// connection to the native protocol.
func dialNative(path string) (net.Conn, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := skipPesto(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if _, err := c.Write([]byte{control.NativeByte}); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// skipPesto reads the hello and the rule tables.
func skipPesto(r io.Reader) error {
	var h [tmpHelloLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return fmt.Errorf("no hello from the daemon: %v", err)
	}
	if !bytes.Equal(h[:8], []byte("basil:s\x00")) {
		return errors.New("not a gopasta or pasta control socket")
	}
	for range 256 {
		var pif [1]byte
		if _, err := io.ReadFull(r, pif[:]); err != nil {
			return err
		}
		if pif[0] == 0 {
			return nil
		}
		var info [tmpPifInfoLen]byte
		if _, err := io.ReadFull(r, info[:]); err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(info[tmpPifInfoLen-4:])
		if n > tmpMaxRules {
			return fmt.Errorf("%d rules in a table", n)
		}
		if _, err := io.CopyN(io.Discard, r, int64(n)*tmpRuleLen); err != nil {
			return err
		}
	}
	return errors.New("too many tables")
}
