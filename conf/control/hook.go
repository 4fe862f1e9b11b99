package control

import (
	"context"
	"net"
)

// nativeHandler is called by the control socket's server (server.go) when
// a client, after the pesto hello and rule tables, sends NativeByte: the
// rest of the connection speaks the native protocol (native.go) instead
// of pesto's. It is set from init by native.go; while it is nil such
// clients get an error line. The handler has the connection from the byte
// after NativeByte on, with no deadline; the server closes it when the
// handler returns, and when the server is closed (the daemon exits),
// which ends the handler's reads. ctx is the one Serve was given.
var nativeHandler func(ctx context.Context, c net.Conn) error
