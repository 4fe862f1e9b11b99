// Package tcp carries the guest's TCP connections, one actor goroutine
// per connection, each mirrored by an ordinary host socket and translated
// as passt's tcp.c does: the host kernel runs TCP towards the far end, the
// guest's kernel towards the guest, and the actor keeps the two sequence
// spaces in step (the theory of operation is in tcp.go; guest -> host in
// rcv.go, and straight from guest memory in ext.go, host -> guest in
// snd.go, the socket and its readiness in sock.go, running a flow on
// another goroutine in inline.go).
package tcp
