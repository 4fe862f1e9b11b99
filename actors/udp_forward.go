package actors

// StartUDPForwarders is StartTCPForwarders for the -u specifications.
func StartUDPForwarders(env *Env) (stop func(), err error) {
	return func() {}, nil
}
