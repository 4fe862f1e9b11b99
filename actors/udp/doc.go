// Package udp carries the guest's UDP datagrams: a binding (one host
// socket per guest address and port, or per -u listener) with its flows,
// run by one actor goroutine that sends batches with sendmmsg and a
// receiver that paces host datagrams to the guest (theory of operation in
// udp.go and rx.go).
package udp
