package main

import (
	"os"
	"runtime/pprof"

	"github.com/sirupsen/logrus"
)

// profileEnv names a file for a CPU profile of the daemon's whole life,
// for developers: GOPASTA_CPUPROFILE=/tmp/gp.prof gopasta ...; then
// `go tool pprof gopasta /tmp/gp.prof`. It is an environment variable, not
// an option, so that it reaches the daemon through podman or any other
// caller unchanged and no pasta command line is affected. The profile is
// written when the daemon exits normally (SIGTERM, namespace gone).
const profileEnv = "GOPASTA_CPUPROFILE"

// startProfile starts the CPU profile if asked for and returns the
// function that stops and writes it.
func startProfile(log logrus.FieldLogger) (stop func()) {
	path := os.Getenv(profileEnv)
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		log.Warnf("%s: %v", profileEnv, err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		log.Warnf("%s: %v", profileEnv, err)
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
