package actors

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

func TestSynTimeout(t *testing.T) {
	for _, c := range []struct {
		retries, linear int
		want            time.Duration
	}{
		{6, 4, 19 * time.Second},  // Linux's defaults: pasta's handshake timeout
		{6, 0, 127 * time.Second}, // the kernel's own connect timeout before linear timeouts
		{0, 0, time.Second},
		{2, 4, 11 * time.Second},
	} {
		if got := synTimeout(c.retries, c.linear); got != c.want {
			t.Errorf("synTimeout(%d, %d) = %v, want %v", c.retries, c.linear, got, c.want)
		}
	}
}

func TestFDBudgetFor(t *testing.T) {
	if got := FDBudgetFor(256, 20); got != 256-20-FDReserve {
		t.Errorf("256 with 20 open: %d", got)
	}
	if got := FDBudgetFor(40, 20); got != FDsSplice {
		t.Errorf("40 with 20 open: %d, want the floor %d", got, FDsSplice)
	}
	if got := FDBudgetFor(0, 20); got != 0 {
		t.Errorf("unknown limit: %d, want no budget", got)
	}
	var l Limits
	l.SetFDBudget(200)
	if got := l.ConnectLimit(); got != 50 {
		t.Errorf("connect limit for a budget of 200: %d, want a quarter", got)
	}
	l.SetFDBudget(1 << 20)
	if got := l.ConnectLimit(); got != maxConnecting {
		t.Errorf("connect limit for a large budget: %d", got)
	}
}

// TestRateLog: one line per interval, and the next one says how many were
// left out.
func TestRateLog(t *testing.T) {
	var buf bytes.Buffer
	log := logrus.New()
	log.SetOutput(&buf)
	r := RateLog{Every: 100 * time.Millisecond}
	e := logrus.NewEntry(log)
	for i := range 1000 {
		r.Warnf(e, "socket %d failed", i)
	}
	if n := strings.Count(buf.String(), "\n"); n != 1 || !strings.Contains(buf.String(), "socket 0 failed") {
		t.Fatalf("first burst logged %d lines: %q", n, buf.String())
	}
	time.Sleep(120 * time.Millisecond)
	r.Warnf(e, "socket %d failed", 1000)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "socket 1000 failed (suppressed 999 similar messages)") {
		t.Fatalf("after the interval: %q", lines)
	}
}

// TestFDShares: one kind of flow cannot take the whole budget: the others
// keep a quarter of it.
func TestFDShares(t *testing.T) {
	var l Limits
	l.SetFDBudget(8)
	for i := range 6 {
		if !l.TakeFDs(FDGuestTCP, 1) {
			t.Fatalf("TCP flow %d refused within its share", i)
		}
	}
	if l.TakeFDs(FDGuestTCP, 1) {
		t.Fatal("TCP took more than three quarters of the budget")
	}
	if !l.TakeFDs(FDGuestDgram, 1) || !l.TakeFDs(FDInbound, 1) {
		t.Fatal("other kinds refused while a quarter is left")
	}
	if l.TakeFDs(FDNSSplice, 1) {
		t.Fatal("the budget was exceeded")
	}
	if n := l.FDRefused.Load(); n != 2 {
		t.Errorf("refusals %d", n)
	}
	l.GiveFDs(FDGuestTCP, 6)
	l.GiveFDs(FDGuestDgram, 1)
	l.GiveFDs(FDInbound, 1)
	if _, used := l.FDBudget(); used != 0 {
		t.Errorf("used %d after giving everything back", used)
	}
}
