// Package forward opens the listeners of -t/-u/-T/-U: the host's ports
// that lead into the namespace (through the tap, or the loopback splice)
// and the namespace's that lead to the host, keeps the "auto" rules in
// step with what is bound on the other side, and replaces rules at run
// time (theory of operation in forward.go, scan.go, ns.go).
package forward
