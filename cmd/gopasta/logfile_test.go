package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The log file never grows past the cap, always starts with a whole
// entry, and holds the newest entries, in order and without a gap: the
// lines it holds are exactly the last ones written.
func TestCappedLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	const limit = 4096
	l, err := openCappedLog(path, limit)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var all []string
	for i := range 2000 {
		line := fmt.Sprintf("%d: entry %s\n", i, strings.Repeat("x", i%97))
		all = append(all, line)
		if n, err := l.Write([]byte(line)); err != nil || n != len(line) {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > limit {
			t.Fatalf("after entry %d the file is %d bytes, over %d", i, st.Size(), limit)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.SplitAfter(string(b), "\n")
	got = got[:len(got)-1] // after the last newline
	if len(got) < 20 {
		t.Fatalf("only %d entries kept", len(got))
	}
	want := all[len(all)-len(got):]
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("kept entry %d is %q, want %q", i, got[i], want[i])
		}
	}
	if len(b) < limit/2 {
		t.Fatalf("kept only %d bytes of a %d-byte cap", len(b), limit)
	}
}

// A file left over a larger cap is cut at once to its newest entries; an
// entry longer than the cap is cut to it.
func TestCappedLogExistingAndLong(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	var old bytes.Buffer
	for i := range 1000 {
		fmt.Fprintf(&old, "old %d\n", i)
	}
	if err := os.WriteFile(path, old.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := openCappedLog(path, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	b, _ := os.ReadFile(path)
	if len(b) > 4096 || !bytes.HasPrefix(b, []byte("old ")) || !bytes.HasSuffix(b, []byte("old 999\n")) {
		t.Fatalf("existing file: %d bytes, starts %q, ends %q", len(b), b[:min(10, len(b))], b[max(0, len(b)-10):])
	}
	long := bytes.Repeat([]byte("y"), 10000)
	if n, err := l.Write(long); err != nil || n != len(long) {
		t.Fatalf("long write: %d, %v", n, err)
	}
	b, _ = os.ReadFile(path)
	if len(b) != 4096 || b[0] != 'y' {
		t.Fatalf("after a long entry: %d bytes, first %q", len(b), b[0])
	}
	if _, err := l.Write([]byte("next\n")); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	if len(b) > 4096 || !bytes.HasSuffix(b, []byte("next\n")) {
		t.Fatalf("after the next entry: %d bytes, ends %q", len(b), b[max(0, len(b)-10):])
	}
}

// -l may name something that is not a regular file (a FIFO, /dev/stderr):
// it is written to as it is, without a cap, rather than refused.
func TestCappedLogNotAFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skip(err)
	}
	l, err := openCappedLog(path, 4096)
	if err != nil {
		t.Fatalf("a FIFO as log file: %v", err)
	}
	defer l.Close()
	line := []byte("0.0001: hello\n")
	if n, err := l.Write(line); err != nil || n != len(line) {
		t.Fatalf("write: %d, %v", n, err)
	}
	buf := make([]byte, 64)
	n, err := l.f.Read(buf) // opened read-write: the same FIFO reads it back
	if err != nil || string(buf[:n]) != string(line) {
		t.Fatalf("read back %q, %v", buf[:n], err)
	}
}
