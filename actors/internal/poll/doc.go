// Package poll turns socket readiness into wake-ups for the flows: an
// edge-triggered epoll instance with one harvesting goroutine (Poller),
// which a daemon's TCP flows and spliced sockets share, and its ICMP echo
// sockets another. UDP bindings need none: each has a receiver goroutine
// of its own, which waits in the runtime's poller.
package poll
