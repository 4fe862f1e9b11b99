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

// openProfile opens the profile file if profileEnv is set, as every
// output file (openOutput), at start-up while the daemon still has its
// privileges and its working directory. Failing to is logged and
// otherwise ignored: nil.
func openProfile(log *logging) *os.File {
	path := os.Getenv(profileEnv)
	if path == "" {
		return nil
	}
	f, err := openOutput(path, true)
	if err != nil {
		log.Warnf("%s: %v", profileEnv, err)
		return nil
	}
	return f
}

// startProfile starts CPU profiling into f (from openProfile; nil: none)
// and returns the function that stops it and closes the file.
func startProfile(log *logging, f *os.File) (stop func()) {
	if f == nil {
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		log.Warnf("%s: %v", profileEnv, err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
