//go:build !cgo

package nsenter

import "os"

// EnvVar is the variable that asks the constructor to join a user namespace.
const EnvVar = "GOPASTA_USERNS"

// Supported is false without cgo: joining a user namespace needs the C
// constructor.
const Supported = false

// IsolateEnv: see the cgo build.
const IsolateEnv = "GOPASTA_ISOLATE"

// IsolateEnv's values: the constructor unshares (IsolateUnshare), or the
// front created the namespaces with the daemon (IsolateClone: nothing to
// do but to know).
const (
	IsolateUnshare = "unshare"
	IsolateClone   = "clone"
)

// Isolated is always false without cgo: the front refuses what needs it.
func Isolated() (asked bool, err error) { return false, nil }

// Joined is always false without cgo.
func Joined() bool { return false }

// Clean removes EnvVar from the environment.
func Clean() { os.Unsetenv(EnvVar); os.Unsetenv(IsolateEnv) }
