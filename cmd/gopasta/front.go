package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link/netns"
	"github.com/gopasta/gopasta/link/netns/nsenter"
)

// readyFD is the daemon's end of the readiness pipe (ExtraFiles[0]).
const readyFD = 3

// commandMode reports whether gopasta creates the namespace and runs a
// command in it (no PID, no --netns).
func commandMode(cfg *conf.Config) bool {
	return cfg.Mode == conf.ModePasta && cfg.TargetPID == 0 && cfg.NetNS == ""
}

// front starts the daemon child and waits for its readiness line; see the
// package documentation.
func front(prog string, cfg *conf.Config) int {
	foreground := cfg.Foreground || commandMode(cfg)
	fail := func(f string, a ...any) int {
		fmt.Fprintf(os.Stderr, "%s: %s\n", prog, fmt.Sprintf(f, a...))
		return 1
	}

	// Descriptors we inherited without close-on-exec (anything our caller
	// leaked to us) must not reach the daemon: it would hold them for its
	// whole life, and a caller waiting for EOF on such a pipe would hang,
	// as pasta's closing of inherited files avoids.
	markInheritedCloexec()

	readR, readW, err := os.Pipe()
	if err != nil {
		return fail("pipe: %v", err)
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.ExtraFiles = []*os.File{readW}
	cmd.Env = append(cleanEnv(os.Environ()), stageEnv+"="+stageDaemon)
	qemuFile, err := passtFD(cfg)
	if err != nil {
		return fail("%v", err)
	}
	if qemuFile != nil {
		// passt -F: the daemon gets the socket as qemuFDChild.
		cmd.ExtraFiles = append(cmd.ExtraFiles, qemuFile)
		cmd.Env = append(cmd.Env, qemuFDEnv+"="+strconv.Itoa(qemuFDChild))
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{}

	userns, err := usernsToJoin(cfg)
	if err != nil {
		return fail("%v", err)
	}
	if userns != "" {
		if !nsenter.Supported {
			return fail("cannot join user namespace %s: gopasta was built with CGO_ENABLED=0, and joining one needs the cgo start-up code (build with CGO_ENABLED=1)", userns)
		}
		cmd.Env = append(cmd.Env, nsenter.EnvVar+"="+userns)
	}
	ownUserNS := os.Geteuid() != 0 && userns == "" && (commandMode(cfg) || cfg.Mode == conf.ModePasst)
	if ownUserNS {
		// Root in a user namespace of our own, still in our network
		// namespace: enough to create and configure the new one in
		// command mode, and to detach into the sandbox's namespaces.
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}}
		cmd.SysProcAttr.GidMappingsEnableSetgroups = false
	}
	if !cfg.NoSandbox {
		// The daemon's own mount, IPC and UTS namespaces (sandbox.go).
		// They must belong to the user namespace the daemon has its
		// capabilities in: created with it by the clone, or, when it
		// joins one, by the nsenter constructor right after the join.
		// Unprivileged without either (pasta --netns-only as a user),
		// the daemon runs without them and says so.
		switch {
		case userns != "":
			cmd.Env = append(cmd.Env, nsenter.IsolateEnv+"="+nsenter.IsolateUnshare)
		case ownUserNS || os.Geteuid() == 0:
			cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWNS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS
			cmd.Env = append(cmd.Env, nsenter.IsolateEnv+"="+nsenter.IsolateClone)
			if cfg.Mode == conf.ModePasst {
				// passt's own PID namespace, as upstream's: the
				// daemon is its PID 1 and sees no other process.
				// Its cleaner must live outside (cleaner.go), and
				// its sandbox mounts a procfs of the new namespace
				// for psx (sandbox.Jail).
				end, err := startFrontCleaner()
				if err != nil {
					return fail("%v", err)
				}
				defer end.Close()
				cmd.ExtraFiles = append(cmd.ExtraFiles, end)
				cmd.Env = append(cmd.Env, cleanerFDEnv+"="+strconv.Itoa(readyFD+len(cmd.ExtraFiles)-1))
				cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWPID
			}
		}
	}

	var relay sync.WaitGroup
	var relayed int64 // bytes the daemon wrote to stderr during setup
	var errW *os.File
	if foreground {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	} else {
		var errR *os.File
		if errR, errW, err = os.Pipe(); err != nil {
			return fail("pipe: %v", err)
		}
		cmd.Stdout, cmd.Stderr = errW, errW
		cmd.SysProcAttr.Setsid = true
		relay.Add(1)
		go func() {
			defer relay.Done()
			relayed, _ = io.Copy(os.Stderr, errR)
			errR.Close()
		}()
	}

	// Signals that arrive while we wait are the daemon's business.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)

	err = cmd.Start()
	// From here on only the daemon holds the write ends, so its exit or
	// its switch to /dev/null is EOF for us.
	readW.Close()
	if errW != nil {
		errW.Close()
	}
	if qemuFile != nil {
		// The VM's end must see EOF when the daemon closes the socket.
		qemuFile.Close()
	}
	if err != nil {
		readR.Close()
		relay.Wait()
		return fail("start daemon: %v", err)
	}
	var command *commandSignals
	if commandMode(cfg) {
		command = &commandSignals{}
	}
	go relaySignals(sigs, cmd.Process, command)

	line, _ := bufio.NewReader(readR).ReadString('\n')
	readR.Close()
	line = strings.TrimSuffix(line, "\n")
	ready := line == "ok" || strings.HasPrefix(line, "ok ")
	if pid, err := strconv.Atoi(strings.TrimPrefix(line, "ok ")); err == nil && command != nil {
		command.setPID(pid)
	}

	if !ready {
		status := exitStatus(cmd.Wait())
		relay.Wait()
		if msg, ok := strings.CutPrefix(line, "err "); ok {
			return fail("%s", msg)
		}
		if msg, ok := strings.CutPrefix(line, "die "); ok {
			fmt.Fprintln(os.Stderr, msg)
			return 1
		}
		if (foreground || relayed > 0) && status != 0 && line == "" {
			// The daemon died before reporting; whatever it had to
			// say is on stderr already (the nsenter constructor's
			// message, a crash).
			return status
		}
		return fail("daemon exited during setup (status %d)", status)
	}
	if err := notifyReady(cmd.Process.Pid); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
	}
	if foreground {
		status := exitStatus(cmd.Wait())
		if command != nil {
			status = command.status(status)
		}
		return status
	}
	// The daemon has pointed its stdio at /dev/null: the copy ends.
	relay.Wait()
	return 0
}

// cleanEnv drops our own control variables from an environment.
func cleanEnv(env []string) []string {
	out := env[:0:0]
	for _, e := range env {
		// NOTIFY_SOCKET is the front's to use (notify.go): not the
		// daemon's, nor its COMMAND's.
		if strings.HasPrefix(e, stageEnv+"=") || strings.HasPrefix(e, nsenter.EnvVar+"=") || strings.HasPrefix(e, nsenter.IsolateEnv+"=") ||
			strings.HasPrefix(e, qemuFDEnv+"=") || strings.HasPrefix(e, notifyEnv+"=") {
			continue
		}
		out = append(out, e)
	}
	return out
}

// usernsToJoin returns the user namespace the daemon must join: --userns,
// or the target PID's if it differs from ours, unless --netns-only.
func usernsToJoin(cfg *conf.Config) (string, error) {
	if cfg.NetNSOnly {
		return "", nil
	}
	path := cfg.UserNS
	if path == "" && cfg.TargetPID != 0 {
		path = "/proc/" + strconv.Itoa(cfg.TargetPID) + "/ns/user"
	}
	if path == "" {
		return "", nil
	}
	same, err := netns.SameFile(path, "/proc/self/ns/user")
	if err != nil {
		if cfg.TargetPID != 0 && cfg.UserNS == "" && errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("no such process: %d", cfg.TargetPID)
		}
		return "", fmt.Errorf("user namespace %s: %v", path, err)
	}
	if same {
		return "", nil
	}
	return path, nil
}

// relaySignals passes termination signals to the daemon or, in command
// mode, to COMMAND (the daemon exits when it does; commandSignals).
func relaySignals(sigs <-chan os.Signal, p *os.Process, command *commandSignals) {
	for s := range sigs {
		if command != nil {
			command.signal(s.(syscall.Signal))
			continue
		}
		if s == syscall.SIGQUIT {
			continue
		}
		_ = p.Signal(s)
	}
}

// exitStatus turns a Wait result into a shell-style exit status.
func exitStatus(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 1
}

// markInheritedCloexec sets close-on-exec on every descriptor above 2.
// The Go runtime opens its own with it already.
func markInheritedCloexec() {
	if unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC) == nil {
		return
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}
