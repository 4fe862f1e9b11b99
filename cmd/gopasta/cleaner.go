package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The socket cleaner.
//
// The daemon removes its socket files when it exits (passt mode's
// listening socket, the -c control socket), so that the next passt, QEMU
// or pesto finds no stale path. A sandboxed
// daemon cannot: it may have become nobody, which cannot unlink a file in
// root's directory, and unlink is not among its system calls. So before
// the sandbox closes, it starts a copy of the binary as a cleaner: a
// process that does nothing but wait for the end of a pipe whose other
// end only the daemon holds, and then removes the socket file, if it is
// still the one the daemon created (same device and inode). The pipe ends
// however the daemon ends, SIGKILL included; at an orderly exit the
// daemon closes it and waits for the cleaner, so that the file is gone
// when the daemon's exit is seen.

const (
	stageCleaner = "cleaner"
	// cleanListEnv lists the files, one "DEV:INO:PATH" a line.
	cleanListEnv = "GOPASTA_CLEAN"
)

// cleaner is the daemon's handle on its cleaner process.
type cleaner struct {
	cmd *exec.Cmd
	w   *os.File // the daemon's end of the pipe
}

// startCleaner starts the cleaner for the socket files at paths.
func startCleaner(paths []string, ownMountNS bool) (*cleaner, error) {
	var list strings.Builder
	for _, path := range paths {
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return nil, fmt.Errorf("socket cleaner: %w", err)
		}
		if strings.ContainsRune(path, '\n') {
			return nil, fmt.Errorf("socket cleaner: a newline in %q", path)
		}
		fmt.Fprintf(&list, "%d:%d:%s\n", st.Dev, st.Ino, path)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("socket cleaner: %w", err)
	}
	defer r.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Args[0] = "gopasta (socket cleaner)"
	cmd.Env = []string{stageEnv + "=" + stageCleaner, cleanListEnv + "=" + list.String()}
	cmd.ExtraFiles = []*os.File{r}
	// Its own session: a terminal's ^C to the daemon's process group
	// must not take the cleaner with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if ownMountNS {
		// Not the daemon's: its pivot_root into an empty root moves
		// every process of its mount namespace along.
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNS
	}
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("socket cleaner: %w", err)
	}
	return &cleaner{cmd: cmd, w: w}, nil
}

// finish lets the cleaner remove the files and waits a moment for it.
func (c *cleaner) finish() {
	c.w.Close()
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
	}
}

// cleanerMain is the cleaner process: fd 3 is the pipe.
func cleanerMain() int {
	list := os.Getenv(cleanListEnv)
	_, _ = io.Copy(io.Discard, os.NewFile(3, "daemon"))
	status := 0
	for _, line := range strings.Split(strings.TrimSuffix(list, "\n"), "\n") {
		dev, rest, _ := strings.Cut(line, ":")
		ino, path, ok := strings.Cut(rest, ":")
		var st unix.Stat_t
		if !ok || unix.Lstat(path, &st) != nil {
			continue
		}
		if strconv.FormatUint(st.Dev, 10) != dev || strconv.FormatUint(st.Ino, 10) != ino {
			continue // somebody else's file now
		}
		if err := unix.Unlink(path); err != nil {
			status = 1
		}
	}
	return status
}
