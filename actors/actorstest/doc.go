// Package actorstest is the flows' test harness: an actors.Env wired to an
// in-memory link with a real Writer, one address plan for every protocol's
// tests, and helpers that play the guest (frames in, parsed frames out) and
// the host (servers on loopback, private network namespaces).
package actorstest
