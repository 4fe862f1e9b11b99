package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpenOutputRefusesSymlink: a symbolic link planted at an output path
// is not followed, whatever it points at, and its target is untouched.
func TestOpenOutputRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{victim, filepath.Join(dir, "missing")} {
		path := filepath.Join(dir, "out")
		os.Remove(path)
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
		if f, err := openOutput(path, true); err == nil || !strings.Contains(err.Error(), "symbolic link") {
			t.Errorf("openOutput through a link to %s: %v", target, err)
			f.Close()
		}
		if f, err := openOutputRW(path); err == nil {
			t.Errorf("openOutputRW through a link to %s: no error", target)
			f.Close()
		}
		if l, err := openCappedLog(path, 4096); err == nil {
			t.Errorf("openCappedLog through a link to %s: no error", target)
			l.Close()
		}
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Fatalf("victim changed: %q", b)
	}
	if _, err := os.Lstat(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a dangling link's target was created")
	}
}

// TestOpenOutputMode: a new output file is 0600 and close-on-exec.
func TestOpenOutputMode(t *testing.T) {
	old := unix.Umask(0)
	defer unix.Umask(old)
	for _, open := range []func(string) (*os.File, error){
		func(p string) (*os.File, error) { return openOutput(p, true) },
		openOutputRW,
	} {
		path := filepath.Join(t.TempDir(), "out")
		f, err := open(path)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(path)
		if st.Mode().Perm() != 0o600 {
			t.Errorf("mode %v", st.Mode().Perm())
		}
		flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("not close-on-exec: %v %v", flags, err)
		}
		f.Close()
	}
}

// TestOpenOutputForeign: an existing regular file that is not the
// daemon's own (another owner, or a second name) is neither truncated nor
// written.
func TestOpenOutputForeign(t *testing.T) {
	dir := t.TempDir()
	mine := filepath.Join(dir, "mine")
	if err := os.WriteFile(mine, []byte("old contents\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A second name for it.
	linked := filepath.Join(dir, "linked")
	if err := os.Link(mine, linked); err != nil {
		t.Fatal(err)
	}
	if f, err := openOutput(linked, true); err == nil || !strings.Contains(err.Error(), "links") {
		t.Errorf("hard-linked file: %v", err)
		f.Close()
	}
	if b, _ := os.ReadFile(mine); string(b) != "old contents\n" {
		t.Fatalf("truncated through its second name: %q", b)
	}
	os.Remove(linked)
	if os.Geteuid() == 0 {
		other := filepath.Join(dir, "other")
		os.WriteFile(other, []byte("theirs\n"), 0o666)
		if err := os.Chown(other, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		for _, f := range []func() error{
			func() error { f, err := openOutput(other, true); f.Close(); return err },
			func() error { f, err := openOutputRW(other); f.Close(); return err },
		} {
			if err := f(); err == nil || !strings.Contains(err.Error(), "belongs to UID 65534") {
				t.Errorf("another user's file: %v", err)
			}
		}
		if b, _ := os.ReadFile(other); string(b) != "theirs\n" {
			t.Fatalf("another user's file changed: %q", b)
		}
	}
	// Our own, one name: truncated when asked.
	f, err := openOutput(mine, true)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if st, _ := os.Stat(mine); st.Size() != 0 {
		t.Fatalf("own file not truncated: %d bytes", st.Size())
	}
}

// TestOpenOutputFIFO: a FIFO (a live capture) is written as it is.
func TestOpenOutputFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	f, err := openOutput(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
}
