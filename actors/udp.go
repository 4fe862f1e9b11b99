package actors

import "github.com/gopasta/gopasta/link"

// StartUDP is called by the dispatcher for a UDP datagram from the guest
// that matches no flow; see StartTCP for the contract.
func StartUDP(env *Env, k Key, f *link.Frame) *Handle {
	f.Release()
	return nil
}
