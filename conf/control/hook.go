package control

import (
	"context"
	"net"
)

// nativeHandler is called by the control socket's server when a client,
// after the pesto hello and rule tables, sends the byte 0xFF: the rest of
// the connection speaks the native protocol (native.go) instead of
// pesto's. The server closes c when the handler returns.
//
// Declared here for the observability branch; the server's branch
// declares the same hook, and only one declaration survives the merge.
//
//lint:ignore U1000 called by the control socket server (the pesto branch)
var nativeHandler func(ctx context.Context, c net.Conn) error
