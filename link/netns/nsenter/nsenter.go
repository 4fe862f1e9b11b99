//go:build cgo

// Package nsenter joins a user namespace before the Go runtime starts. Import
// it for its side effect, in the main package only:
//
//	import _ "github.com/gopasta/gopasta/link/netns/nsenter"
//
// # Why cgo
//
// pasta attaches to a container by PID: it joins the container's user
// namespace and then its network namespace. The kernel refuses
// setns(CLONE_NEWUSER) to a process with more than one thread, and the Go
// runtime has started several threads (sysmon, GC workers) before main or
// any init function runs. Re-executing does not help on its own, because the
// new process is a Go program too.
//
// runc has the same problem for every container it starts and solves it the
// same way (libcontainer/nsenter): a C function marked
// __attribute__((constructor)) runs when the dynamic loader initialises the
// program, before the Go runtime exists, while the process is still single
// threaded. Ours is much smaller than runc's: if the environment variable
// GOPASTA_USERNS names a user namespace file (and GOPASTA_STAGE is
// "daemon"), it opens it and calls setns;
// on failure it prints one line and exits 1. The front process sets that
// variable only for the daemon child it starts, so the constructor is inert
// in every other run of the binary.
//
// Joining the user namespace gives the daemon the capabilities it needs in
// the container's network namespace while it stays in the host's network
// namespace, where its host sockets must live.
package nsenter

// extern int gopasta_userns_joined;
// extern int gopasta_isolated;
import "C"

import (
	"os"
	"syscall"
)

// EnvVar is the variable that asks the constructor to join a user namespace.
const EnvVar = "GOPASTA_USERNS"

// IsolateEnv asks the constructor to unshare the mount, IPC and UTS
// namespaces after joining the user namespace (package sandbox uses the
// mount namespace for pivot_root). The front sets it only where it cannot
// create them itself with the daemon (clone flags), that is when the
// daemon joins a user namespace.
const IsolateEnv = "GOPASTA_ISOLATE"

// IsolateEnv's values: the constructor unshares (IsolateUnshare), or the
// front created the namespaces with the daemon (IsolateClone: nothing to
// do but to know).
const (
	IsolateUnshare = "unshare"
	IsolateClone   = "clone"
)

// Isolated reports what the constructor did for IsolateEnv: asked, and
// the unshare error if it failed.
func Isolated() (asked bool, err error) {
	switch v := int(C.gopasta_isolated); {
	case v == 0:
		return false, nil
	case v < 0:
		return true, syscall.Errno(-v)
	}
	return true, nil
}

// Supported reports whether this binary can join a user namespace at all.
const Supported = true

// Joined reports whether the constructor joined the namespace named by
// EnvVar in this process.
func Joined() bool { return C.gopasta_userns_joined != 0 }

// Clean removes EnvVar and IsolateEnv from the environment, so that
// programs this process starts do not act on them again.
func Clean() { os.Unsetenv(EnvVar); os.Unsetenv(IsolateEnv) }
