package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOutputFilesSafe: the log, pid and pcap files a daemon creates are
// 0600, and the capture stops growing at --pcap-size, leaving a
// well-formed file.
func TestOutputFilesSafe(t *testing.T) {
	pcap := filepath.Join(t.TempDir(), "cap.pcap")
	const limit = 8192
	gp := StartGopasta(t, "-p", pcap, "--pcap-size", "8192")
	for _, p := range []string{gp.LogFile, gp.PIDFile, pcap} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", filepath.Base(p), st.Mode().Perm())
		}
	}
	// 1000-byte pings, each 1042-byte frame captured both ways: the cap
	// is passed within a few.
	gp.Guest.Try("ping", "-c", "20", "-i", "0.01", "-s", "1000", "-W", "1", HostGW4)
	if !Eventually(3*time.Second, func() bool { return strings.Contains(gp.Log(), "size cap of 8192 bytes reached") }) {
		t.Fatalf("no word of the cap in the log:\n%s", tail(gp.Log(), 3000))
	}
	st, _ := os.Stat(pcap)
	if st.Size() > limit {
		t.Fatalf("capture of %d bytes over --pcap-size %d", st.Size(), limit)
	}
	gp.Guest.Try("ping", "-c", "5", "-i", "0.01", "-s", "1000", "-W", "1", HostGW4)
	gp.Kill()
	st2, _ := os.Stat(pcap)
	if st2.Size() != st.Size() {
		t.Fatalf("capture grew past its cap: %d, then %d bytes", st.Size(), st2.Size())
	}
	if n := len(readPcap(t, pcap)); n == 0 {
		t.Fatal("empty capture")
	}
}

// TestOutputFilesNoSymlinks: a symbolic link planted at the pid, log or
// pcap path is not followed: the daemon refuses to start, and the file the
// link points at is unchanged.
func TestOutputFilesNoSymlinks(t *testing.T) {
	h := HostNetns(t)
	g := NewNetns(t, "g")
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, opt := range []string{"-P", "-l", "-p"} {
		link := filepath.Join(dir, "link"+opt)
		if err := os.Symlink(victim, link); err != nil {
			t.Fatal(err)
		}
		args := []string{gopastaBin, "--netns", g.Path(), "--config-net", opt, link}
		if opt != "-P" {
			args = append(args, "-P", filepath.Join(dir, "pid"+opt))
		}
		out, err := h.Try(args...)
		if err == nil {
			pid, _ := os.ReadFile(filepath.Join(dir, "pid"+opt))
			h.Try("sh", "-c", "kill "+strings.TrimSpace(string(pid)))
			t.Errorf("%s through a symbolic link: daemon started\n%s", opt, out)
		} else if !strings.Contains(out, "symbolic link") {
			t.Errorf("%s: error does not say why: %s", opt, out)
		}
		if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
			t.Fatalf("%s: the link's target changed: %q", opt, b)
		}
	}
}

// TestProfileFileSafe: the developer's CPU profile (GOPASTA_CPUPROFILE) is
// created 0600 at start-up, and a symbolic link at its path is not
// followed (the daemon runs on without a profile).
func TestProfileFileSafe(t *testing.T) {
	dir := t.TempDir()
	prof := filepath.Join(dir, "cpu.pprof")
	t.Setenv("GOPASTA_CPUPROFILE", prof)
	gp := StartGopasta(t)
	st, err := os.Stat(prof)
	if err != nil {
		t.Fatalf("profile not created at start-up: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("profile mode %v, want 0600", st.Mode().Perm())
	}
	gp.Kill()

	victim := filepath.Join(dir, "victim")
	os.WriteFile(victim, []byte("precious\n"), 0o644)
	link := filepath.Join(dir, "link.pprof")
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	t.Setenv("GOPASTA_CPUPROFILE", link)
	gp = StartGopasta(t)
	gp.Kill()
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Fatalf("the link's target changed: %d bytes", len(b))
	}
	if !strings.Contains(gp.Log(), "symbolic link") {
		t.Errorf("no warning about the link:\n%s", tail(gp.Log(), 2000))
	}
}
