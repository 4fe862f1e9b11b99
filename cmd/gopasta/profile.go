package main

import (
	"os"
	"runtime/pprof"
)

// profileEnv names a file the daemon writes a CPU profile to (pprof
// format), from readiness until it exits. It is for developers measuring
// the data path ("go tool pprof gopasta FILE"), not an option: pasta has
// no such thing, and podman never sets it. The path should be absolute,
// since the daemon leaves its working directory.
const profileEnv = "GOPASTA_CPUPROFILE"

// startProfile starts CPU profiling if profileEnv is set and returns the
// function that stops it and writes the file. Failing to profile is logged
// and otherwise ignored.
func startProfile(log *logging) (stop func()) {
	path := os.Getenv(profileEnv)
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		log.Warnf("%s: %v", profileEnv, err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
