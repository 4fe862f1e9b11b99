package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestLookupRunAs(t *testing.T) {
	for _, tc := range []struct {
		spec     string
		uid, gid int
		err      bool
	}{
		{spec: "0", uid: 0, gid: 0},
		{spec: "root", uid: 0, gid: 0},
		{spec: "65534:65534", uid: 65534, gid: 65534},
		{spec: "nobody", uid: 65534, gid: 65534},
		{spec: "54321", uid: 54321, gid: 54321}, // unknown UID: its own number as GID
		{spec: "54321:0", uid: 54321, gid: 0},
		{spec: "no-such-user-here", err: true},
		{spec: "0:no-such-group-here", err: true},
	} {
		uid, gid, err := lookupRunAs(tc.spec)
		if (err != nil) != tc.err || !tc.err && (uid != tc.uid || gid != tc.gid) {
			t.Errorf("%q: %d:%d, %v; want %d:%d, error %v", tc.spec, uid, gid, err, tc.uid, tc.gid, tc.err)
		}
	}
}

// TestReadInotify: deleting another file in the directory is not the
// namespace going; deleting it is.
func TestReadInotify(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"other", "ns"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Skip("inotify:", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_DELETE|unix.IN_DELETE_SELF|unix.IN_MOVED_FROM|unix.IN_UNMOUNT); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "inotify")
	done := make(chan bool, 1)
	go func() { done <- readInotify(f, "ns") }()
	if err := os.Remove(filepath.Join(dir, "other")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		t.Fatal("another file's deletion taken for the namespace's")
	case <-time.After(200 * time.Millisecond):
	}
	if err := os.Remove(filepath.Join(dir, "ns")); err != nil {
		t.Fatal(err)
	}
	select {
	case gone := <-done:
		if !gone {
			t.Fatal("reader ended without seeing the deletion")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("deletion not seen")
	}
	f.Close()
}
