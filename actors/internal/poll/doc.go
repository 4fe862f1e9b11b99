// Package poll turns socket readiness into wake-ups for the flows: one
// edge-triggered epoll per daemon for TCP flow sockets and spliced sockets
// (Poller), and a goroutine per socket for the few others (Waker).
package poll
