package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link/netns"
)

// commandNamespaces are the namespaces COMMAND gets of its own besides the
// network namespace, unshared on the thread that forks it (a child
// inherits its thread's namespaces; netns.Do throws the thread away after).
// pasta gives its command new UTS, IPC, PID and mount namespaces, as does
// gopasta. The mount and PID namespaces are clone flags instead
// (startCommand): unshare(2) cannot give a mount namespace to a thread of
// a Go program (its threads share their filesystem information), and an
// unshared PID namespace would be the next child's of the whole daemon,
// not of this thread's, and never again another one's.
const commandNamespaces = unix.CLONE_NEWUTS | unix.CLONE_NEWIPC

// commandCloneFlags are the namespaces COMMAND is created in by clone(2):
// a PID namespace of which it is PID 1, as with pasta (`echo $$` prints 1,
// ps shows its own processes only, and when it exits the kernel kills
// what it leaves behind), and a mount namespace, a copy of the daemon's
// (which still is the host's view), where /proc can show that PID
// namespace, and which the daemon's pivot_root into an empty root later
// does not move.
const commandCloneFlags = syscall.CLONE_NEWPID | syscall.CLONE_NEWNS

// stageCommand is the first program COMMAND's process runs: a copy of
// this binary that mounts the new PID namespace's /proc and then
// executes COMMAND in its place, so that COMMAND stays PID 1
// (commandInitMain). commandPathEnv is the program it executes.
const (
	stageCommand   = "command"
	commandPathEnv = "GOPASTA_COMMAND_PATH"
)

// hostnamePrefix is what pasta puts before the host's name to make the
// hostname of a command's namespace when -H does not give one.
const hostnamePrefix = "pasta-"

// hostNameMax is HOST_NAME_MAX: the longest name sethostname(2) takes.
const hostNameMax = 64

// commandHostname is the hostname of COMMAND's UTS namespace: -H's, else
// "pasta-" and the host's, cut to what the kernel takes, as pasta does.
func commandHostname(cfg *conf.Config) string {
	if cfg.Hostname != "" {
		return cfg.Hostname
	}
	h, _ := os.Hostname()
	name := hostnamePrefix + h
	if len(name) > hostNameMax {
		name = name[:hostNameMax]
	}
	return name
}

// startCommand starts COMMAND (default $SHELL, else /bin/sh) inside the
// namespace: it is forked from a thread switched into the network
// namespace, with the other namespaces of commandNamespaces unshared and
// the hostname set, and a child inherits its thread's namespaces. It gets
// the terminal (our stdio, inherited from the front) and our environment.
func (d *daemon) startCommand() error {
	argv := d.cfg.Command
	if len(argv) == 0 {
		sh := os.Getenv("SHELL")
		if sh == "" {
			sh = "/bin/sh"
		}
		argv = []string{sh}
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("command %s: %v", argv[0], err)
	}
	// The daemon is root of the user namespace that owns the network
	// namespace (its own, or the one it joined), so it may create these
	// namespaces; COMMAND's process is the init stage until it executes
	// COMMAND.
	cmd := &exec.Cmd{Path: "/proc/self/exe", Args: argv, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		Env:         append(os.Environ(), stageEnv+"="+stageCommand, commandPathEnv+"="+path),
		SysProcAttr: &syscall.SysProcAttr{Cloneflags: commandCloneFlags}}
	hostname := commandHostname(d.cfg)
	err = netns.Do(d.nsFD, func() error {
		if err := unix.Unshare(commandNamespaces); err != nil {
			return fmt.Errorf("namespaces for %s: %w", argv[0], err)
		}
		if err := unix.Sethostname([]byte(hostname)); err != nil {
			// pasta's wording: the command still runs.
			d.log.WithError(err).Warnf("Unable to set hostname %q", hostname)
		}
		return cmd.Start()
	})
	if err != nil {
		return fmt.Errorf("start %s: %v", argv[0], err)
	}
	d.cmd = cmd
	d.log.Debugf("started %v, pid %d, hostname %s", argv, cmd.Process.Pid, hostname)
	return nil
}

// commandInitMain runs as PID 1 of COMMAND's new PID namespace, in its new
// mount namespace: it mounts a /proc that shows that PID namespace and
// executes COMMAND in its place. A /proc that cannot be mounted is a
// warning, as with pasta: COMMAND still runs, seeing the host's.
func commandInitMain(prog string) int {
	path := os.Getenv(commandPathEnv)
	os.Unsetenv(commandPathEnv)
	os.Unsetenv(stageEnv)
	// The mount namespace is a copy of the host's, and as real root its
	// mounts may still be peers of the host's: nothing mounted here may
	// propagate there, while what the host mounts still shows here.
	err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, "")
	if err == nil {
		err = unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: couldn't mount /proc for the command's PID namespace: %v\n", prog, err)
	}
	err = unix.Exec(path, os.Args, os.Environ())
	fmt.Fprintf(os.Stderr, "%s: %s: %v\n", prog, path, err)
	return 127
}

// commandSignals passes the front's termination signals on to COMMAND,
// once the daemon has named it (readiness line "ok PID"; what comes
// before waits for it, as the daemon would have had them wait for the end
// of its setup): the front has
// the credentials of whoever started gopasta, while the daemon, sandboxed
// (as nobody, if started as root), may not signal a COMMAND running as
// root. As PID 1 of its namespace, COMMAND gets no signal it has left at
// its default action, not even from us (pid_namespaces(7)), nor SIGINT
// from the terminal: so for a signal it neither catches nor ignores, which
// would have ended it without the PID namespace, it gets SIGKILL in its
// stead, and status reports it ended by the signal sent. SIGINT itself is
// not passed on: the terminal sent it to COMMAND's process group already.
type commandSignals struct {
	pid       atomic.Int64
	killedFor atomic.Int64
	// pidfd is COMMAND's from when the daemon named it (still its
	// unreaped child then): no signal reaches a process that reused the
	// number after COMMAND ended. -1: kill(2) by number.
	pidfd atomic.Int64

	// pending are the signals that came before COMMAND was known: the
	// daemon, sandboxed by then, could not pass them on.
	mu      sync.Mutex
	pending []syscall.Signal
}

// setPID records COMMAND, named by the daemon's readiness line, and
// passes on what came before.
func (c *commandSignals) setPID(pid int) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		fd = -1
	}
	c.mu.Lock()
	c.pidfd.Store(int64(fd))
	c.pid.Store(int64(pid))
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	for _, s := range pending {
		c.signal(s)
	}
}

// kill sends s to COMMAND.
func (c *commandSignals) kill(pid int, s syscall.Signal) {
	if fd := int(c.pidfd.Load()); fd >= 0 {
		_ = unix.PidfdSendSignal(fd, s, nil, 0)
		return
	}
	_ = unix.Kill(pid, s)
}

// signal passes s on, or keeps it until COMMAND is known.
func (c *commandSignals) signal(s syscall.Signal) {
	if s == syscall.SIGQUIT {
		return
	}
	c.mu.Lock()
	pid := int(c.pid.Load())
	if pid <= 0 {
		c.pending = append(c.pending, s)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	if s != syscall.SIGINT {
		c.kill(pid, s)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return // gone
	}
	var caught, ignored uint64
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":\t")
		switch k {
		case "SigCgt":
			caught, _ = strconv.ParseUint(v, 16, 64)
		case "SigIgn":
			ignored, _ = strconv.ParseUint(v, 16, 64)
		}
	}
	if (caught|ignored)&(1<<(uint(s)-1)) == 0 {
		c.killedFor.Store(int64(s))
		c.kill(pid, unix.SIGKILL)
	}
}

// status is the exit status COMMAND's shell would see: if signal killed
// it in place of a signal, ended by that signal.
func (c *commandSignals) status(status int) int {
	if s := int(c.killedFor.Load()); s != 0 && status == 128+int(syscall.SIGKILL) {
		return 128 + s
	}
	return status
}
