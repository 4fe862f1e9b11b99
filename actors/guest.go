package actors

// What frames a flow builds for the guest have in common.

// DefaultTTL is the TTL / hop limit of packets gopasta makes for the guest.
const DefaultTTL = 64

// LinkMTU is the IP MTU of the link to the guest.
func LinkMTU(env *Env) int {
	if env.Conf != nil && env.Conf.MTU > 0 {
		return env.Conf.MTU
	}
	return 65520
}
