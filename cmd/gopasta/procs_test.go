package main

import (
	"testing"
	"time"
)

func TestNextProcs(t *testing.T) {
	for _, tc := range []struct {
		cur   int
		cores float64
		want  int
	}{
		{1, 0.2, 1},  // request/response: stay on one P
		{1, 0.84, 1}, // busy, but a core is enough
		{1, 0.93, 1}, // connection per request: one P still beats two
		{1, 0.98, 4}, // a core is not enough: go parallel
		{4, 1.5, 4},  // bulk goes on
		{4, 0.6, 4},  // hysteresis: no flapping around the threshold
		{4, 0.3, 1},  // quiet again
	} {
		if got := nextProcs(tc.cur, 4, tc.cores); got != tc.want {
			t.Errorf("nextProcs(%d, 4, %.2f) = %d, want %d", tc.cur, tc.cores, got, tc.want)
		}
	}
}

func TestNextSample(t *testing.T) {
	for _, tc := range []struct {
		cur   int
		cores float64
		want  time.Duration
	}{
		{1, 0, procsIdleSample},     // idle: wake up rarely
		{1, 0.005, procsIdleSample}, // a timer here and there
		{1, 0.05, procsSample},      // traffic: watch closely
		{4, 0, procsSample},         // parallel: come back to one P soon
	} {
		if got := nextSample(tc.cur, tc.cores); got != tc.want {
			t.Errorf("nextSample(%d, %.3f) = %v, want %v", tc.cur, tc.cores, got, tc.want)
		}
	}
}

// TestCPUTime: the sample source moves when the process works.
func TestCPUTime(t *testing.T) {
	a := cpuTime()
	end := time.Now().Add(30 * time.Millisecond)
	for time.Now().Before(end) {
	}
	if b := cpuTime(); b-a < 10*time.Millisecond {
		t.Fatalf("cpuTime advanced %v over 30 ms of spinning", b-a)
	}
}
