// Package splice connects a host loopback client to a service in the
// namespace (and back) without the tap: TCP with splice(2) through pipes,
// UDP datagram by datagram (tcp.go, udp.go). It is pasta mode only.
package splice
