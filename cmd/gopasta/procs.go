package main

import (
	"context"
	"os"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/actors/forward"
	"github.com/gopasta/gopasta/actors/tcp"
)

// Adaptive GOMAXPROCS, theory of operation.
//
// gopasta's data path is a chain of goroutines (link reader, dispatcher,
// actors, receivers, writer). With more than one P, every hand-over along
// the chain also wakes an idle P's thread, which spins looking for work,
// finds none (the readied goroutine sits in the current P's runnext) and
// sleeps again: futex, nanosleep and epoll calls, and on a VM an
// inter-processor interrupt, per hop. For request/response traffic that is
// most of the daemon's CPU time, and with one P the same traffic runs at a
// higher rate for less CPU per transaction. Bulk transfers are the
// opposite case: they keep more than a core busy and gain from a second P.
//
// So the daemon runs with one P while it needs less than a core, and with
// all of them while it needs more: adaptProcs samples the process's CPU
// time (all threads, user and system) and switches with hysteresis. A
// switch stops the world for microseconds and happens at most once per
// sample. An explicit GOMAXPROCS in the environment turns this off.
//
// An idle daemon samples less often (procsIdleSample): every sample is a
// wake-up of an otherwise sleeping process, and idle containers are many.
// Load that starts from idle is noticed within that longer interval.
const (
	procsSample     = 500 * time.Millisecond
	procsIdleSample = 2 * time.Second
	procsIdle       = 0.01 // cores used at GOMAXPROCS=1 that count as idle
	procsUp         = 0.95 // cores used at GOMAXPROCS=1 to go parallel
	procsDown       = 0.45 // cores used in parallel to go back to one P
)

// adaptProcs runs the policy until ctx is done.
func adaptProcs(ctx context.Context) {
	max := runtime.GOMAXPROCS(0)
	if os.Getenv("GOMAXPROCS") != "" || max < 2 {
		tcp.SetSerial(max == 1)
		return
	}
	cur := 1
	runtime.GOMAXPROCS(cur)
	tcp.SetSerial(true)
	t := time.NewTimer(forward.UntilBoundary(procsSample))
	defer t.Stop()
	last, lastAt := cpuTime(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c := cpuTime()
			cores := float64(c-last) / float64(now.Sub(lastAt))
			last, lastAt = c, now
			if n := nextProcs(cur, max, cores); n != cur {
				cur = n
				runtime.GOMAXPROCS(cur)
				tcp.SetSerial(cur == 1)
			}
			t.Reset(forward.UntilBoundary(nextSample(cur, cores)))
		}
	}
}

// nextSample is how long to wait for the next sample after one in which
// the process used cores CPUs' worth of time at cur.
func nextSample(cur int, cores float64) time.Duration {
	if cur == 1 && cores < procsIdle {
		return procsIdleSample
	}
	return procsSample
}

// nextProcs is the policy: the GOMAXPROCS to use after a sample in which
// the process used cores CPUs' worth of time at cur.
func nextProcs(cur, max int, cores float64) int {
	switch {
	case cur == 1 && cores > procsUp:
		return max
	case cur > 1 && cores < procsDown:
		return 1
	}
	return cur
}

// cpuTime is the process's user and system CPU time.
//
// getrusage(2) cannot block, so it goes in as a raw system call: through
// syscall.Syscall it would wake the runtime's sysmon thread, which then
// polls every 20 µs for a while, in a daemon that samples because it may be
// idle.
func cpuTime() time.Duration {
	var ru unix.Rusage
	if _, _, e := unix.RawSyscall(unix.SYS_GETRUSAGE, unix.RUSAGE_SELF, uintptr(unsafe.Pointer(&ru)), 0); e != 0 {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
