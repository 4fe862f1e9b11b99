package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
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
// or pesto finds no stale path. A sandboxed daemon cannot: it may have
// become nobody, which cannot unlink a file in root's directory, and
// unlink is not among its system calls. So a copy of the binary runs as a
// cleaner: a process that does nothing but read the list of files from
// its end of a socket pair whose other end only the daemon holds, until
// that end is shut down or closed, and then removes each file if it is
// still the one the daemon created (same device and inode). The list ends
// however the daemon ends, SIGKILL included; at an orderly exit the
// daemon shuts its end down and waits (a second at most) for the
// cleaner's to close, so that the files are gone when the daemon's exit
// is seen.
//
// Where the daemon runs in a PID namespace of its own (passt mode), it is
// that namespace's PID 1, whose end the kernel makes every other process
// of the namespace's end too, and which cannot make a sibling of itself
// (CLONE_PARENT): there the front starts the cleaner, before the daemon,
// with its caller's credentials and view of the filesystem, and passes
// the daemon the other end (startFrontCleaner). Elsewhere the daemon
// starts it before its sandbox closes (startCleaner).

const (
	stageCleaner = "cleaner"
	// cleanerFDEnv names the daemon's end of a front-started cleaner's
	// socket pair.
	cleanerFDEnv = "GOPASTA_CLEANER_FD"
)

// cleaner is the daemon's handle on its cleaner process.
type cleaner struct {
	cmd  *exec.Cmd // nil: the front's
	conn *net.UnixConn
}

// cleanerPair returns a connected stream socket pair as files.
func cleanerPair() (daemon, cleaner *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socket cleaner: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "cleaner"), os.NewFile(uintptr(fds[1]), "daemon"), nil
}

// cleanerCmd is the cleaner process, with its end of the pair as fd 3.
func cleanerCmd(end *os.File) *exec.Cmd {
	cmd := exec.Command("/proc/self/exe")
	cmd.Args[0] = "gopasta (socket cleaner)"
	cmd.Env = []string{stageEnv + "=" + stageCleaner}
	cmd.ExtraFiles = []*os.File{end}
	// Its own session: a terminal's ^C to the daemon's process group
	// must not take the cleaner with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return cmd
}

// startFrontCleaner starts the cleaner from the front and returns the
// daemon's end of its socket pair.
func startFrontCleaner() (*os.File, error) {
	mine, its, err := cleanerPair()
	if err != nil {
		return nil, err
	}
	defer its.Close()
	cmd := cleanerCmd(its)
	if err := cmd.Start(); err != nil {
		mine.Close()
		return nil, fmt.Errorf("socket cleaner: %w", err)
	}
	// Nobody waits for it: it outlives a background front, and the
	// init process that inherits it reaps it.
	_ = cmd.Process.Release()
	return mine, nil
}

// startCleaner hands the socket files at paths to the cleaner: the
// front's, if it started one (end is the daemon's end of its pair), else
// one started now.
func startCleaner(paths []string, end *os.File, ownMountNS bool) (*cleaner, error) {
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
	c := &cleaner{}
	if end == nil {
		var its *os.File
		var err error
		if end, its, err = cleanerPair(); err != nil {
			return nil, err
		}
		defer its.Close()
		c.cmd = cleanerCmd(its)
		if ownMountNS {
			// Not the daemon's: its pivot_root into an empty root
			// moves every process of its mount namespace along.
			c.cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNS
		}
		if err := c.cmd.Start(); err != nil {
			end.Close()
			return nil, fmt.Errorf("socket cleaner: %w", err)
		}
	}
	fc, err := net.FileConn(end)
	end.Close()
	if err != nil {
		return nil, fmt.Errorf("socket cleaner: %w", err)
	}
	c.conn = fc.(*net.UnixConn)
	if _, err := c.conn.Write([]byte(list.String())); err != nil {
		c.conn.Close()
		return nil, fmt.Errorf("socket cleaner: %w", err)
	}
	return c, nil
}

// finish lets the cleaner remove the files and waits a moment for it.
func (c *cleaner) finish() {
	_ = c.conn.CloseWrite()
	_ = c.conn.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.Copy(io.Discard, c.conn)
	c.conn.Close()
	if c.cmd != nil {
		go func() { _ = c.cmd.Wait() }()
	}
}

// cleanerMain is the cleaner process: fd 3 is its end of the pair.
func cleanerMain() int {
	end := os.NewFile(3, "daemon")
	var lines []string
	sc := bufio.NewScanner(end)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	status := 0
	if err := sc.Err(); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		status = 1
	}
	for _, line := range lines {
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
	// Exiting closes the end: the daemon's finish sees it.
	return status
}
