//go:build !cgo

package nsenter

import "os"

// EnvVar is the variable that asks the constructor to join a user namespace.
const EnvVar = "GOPASTA_USERNS"

// Supported is false without cgo: joining a user namespace needs the C
// constructor.
const Supported = false

// Joined is always false without cgo.
func Joined() bool { return false }

// Clean removes EnvVar from the environment.
func Clean() { os.Unsetenv(EnvVar) }
