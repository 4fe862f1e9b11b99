package integration

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestLogSize: with --trace, a thousand pings write far more log than
// a --log-size of 16 KiB; the file stays under the cap, starts with a whole
// entry and ends with the newest ones (the last echo's trace lines).
func TestLogSize(t *testing.T) {
	needTool(t, "ping")
	const limit = 16384
	gp := StartGopasta(t, "--trace", "--log-size", "16384")
	out, err := gp.Guest.Try("ping", "-c", "1000", "-i", "0.002", "-W", "2", HostGW4)
	if err != nil || !strings.Contains(out, "1000 received") {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	st, err := os.Stat(gp.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	log := gp.Log()
	if st.Size() > limit || len(log) > limit {
		t.Fatalf("log file is %d bytes, over the %d-byte cap", st.Size(), limit)
	}
	if len(log) < limit/4 {
		t.Fatalf("log file is only %d bytes: did --trace log anything?\n%s", len(log), log)
	}
	entry := regexp.MustCompile(`^[0-9]+\.[0-9]{4}: `)
	if !entry.MatchString(log) {
		t.Fatalf("log does not start with a whole entry: %q", log[:min(80, len(log))])
	}
	// What is kept is the pings' trace; the start-up lines are long gone.
	if !strings.Contains(log, "icmp") {
		t.Fatalf("no ICMP trace lines kept:\n%s", log)
	}
	if strings.Contains(log, "ready after") {
		t.Fatalf("the oldest entries (start-up) were kept:\n%s", log[:min(2000, len(log))])
	}
}
