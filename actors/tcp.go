package actors

import "github.com/gopasta/gopasta/link"

// StartTCP is called by the dispatcher for a TCP frame from the guest that
// matches no flow. It starts an actor and returns its Handle (the dispatcher
// puts it into the flow table; f is already consumed by the actor), or
// returns nil after consuming f itself (answered with RST, or dropped).
func StartTCP(env *Env, k Key, f *link.Frame) *Handle {
	f.Release()
	return nil
}
