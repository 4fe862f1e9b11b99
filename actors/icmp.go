package actors

import "github.com/gopasta/gopasta/link"

// StartICMP is called by the dispatcher for an ICMP or ICMPv6 echo request
// from the guest that matches no flow; see StartTCP for the contract.
func StartICMP(env *Env, k Key, f *link.Frame) *Handle {
	f.Release()
	return nil
}
