package control

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Client is a connection to a control socket that has read the server's
// hello and tables, as pesto does before anything else.
type Client struct {
	conn   *net.UnixConn
	tables []Table
	used   bool
}

// dialTimeout bounds connecting and reading the tables.
const dialTimeout = 10 * time.Second

// maxReply bounds the status lines a server sends after an update.
const maxReply = 64 << 10

// Dial connects to the control socket at path and reads the hello and the
// forwarding tables.
func Dial(path string) (*Client, error) {
	c, err := net.DialTimeout("unix", path, dialTimeout)
	if err != nil {
		return nil, fmt.Errorf("failed to connect to %s: %w", path, err)
	}
	uc := c.(*net.UnixConn)
	_ = uc.SetDeadline(time.Now().Add(dialTimeout))
	// Unbuffered reads up to the end of the tables: after Native() the
	// stream belongs to the caller, and nothing may have been read ahead.
	if _, err := ReadHello(uc); err != nil {
		uc.Close()
		return nil, err
	}
	ts, err := ReadTables(uc)
	if err != nil {
		uc.Close()
		return nil, err
	}
	_ = uc.SetDeadline(time.Time{})
	return &Client{conn: uc, tables: ts}, nil
}

// Tables returns the server's forwarding tables as read at Dial.
func (c *Client) Tables() []Table {
	out := make([]Table, len(c.tables))
	for i, t := range c.tables {
		out[i] = t
		out[i].Rules = append([]Rule(nil), t.Rules...)
	}
	return out
}

// Table returns a copy of the table named name ("HOST", "SPLICE").
func (c *Client) Table(name string) (Table, bool) {
	for _, t := range c.Tables() {
		if t.Name == name {
			return t, true
		}
	}
	return Table{}, false
}

// Replace sends new contents for the given tables (the others keep
// theirs) and waits for the server's verdict. err is the server's refusal
// (nothing changed); warnings are rules in force that could not be fully
// honoured (a port already bound). The connection is done afterwards.
func (c *Client) Replace(ts []Table) (warnings []string, err error) {
	if c.used {
		return nil, errors.New("control client: connection already used")
	}
	c.used = true
	defer c.conn.Close()
	_ = c.conn.SetDeadline(time.Now().Add(sessionTimeout + time.Second))
	if _, err := c.conn.Write(AppendUpdate(nil, ts)); err != nil {
		return nil, fmt.Errorf("error writing to control socket: %w", err)
	}
	sc := bufio.NewScanner(io.LimitReader(c.conn, maxReply))
	ok := false
	var errs []string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "ok":
			ok = true
		case strings.HasPrefix(line, "warning: "):
			warnings = append(warnings, strings.TrimPrefix(line, "warning: "))
		case strings.HasPrefix(line, "error: "):
			errs = append(errs, strings.TrimPrefix(line, "error: "))
		}
	}
	switch {
	case len(errs) > 0:
		return warnings, errors.New(strings.Join(errs, "; "))
	case !ok:
		return warnings, errors.New("the server closed the connection without confirming the update (an upstream pasta applies it without a word)")
	}
	return warnings, nil
}

// Native asks for gopasta's native protocol and hands over the connection,
// which the caller then owns and closes.
func (c *Client) Native() (net.Conn, error) {
	if c.used {
		return nil, errors.New("control client: connection already used")
	}
	c.used = true
	if _, err := c.conn.Write([]byte{NativeByte}); err != nil {
		c.conn.Close()
		return nil, fmt.Errorf("error writing to control socket: %w", err)
	}
	return c.conn, nil
}

// Close hangs up without changing anything.
func (c *Client) Close() error {
	c.used = true
	return c.conn.Close()
}
