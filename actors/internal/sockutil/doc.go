// Package sockutil holds the host socket plumbing several protocols share:
// socket addresses, datagram sockets and their batch system calls.
package sockutil
