package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/conf"
	"github.com/gopasta/gopasta/link/netns"
)

// commandNamespaces are the namespaces COMMAND gets of its own besides the
// network namespace, unshared on the thread that forks it (a child
// inherits its thread's namespaces; netns.Do throws the thread away after).
// pasta gives its command new UTS, IPC, PID and mount namespaces; here the
// mount namespace is a clone flag (startCommand), and there is no PID
// namespace yet.
const commandNamespaces = unix.CLONE_NEWUTS | unix.CLONE_NEWIPC

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
	cmd := &exec.Cmd{Path: path, Args: argv, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	if d.mountNS {
		// A mount namespace of its own (a copy of the daemon's, which
		// still is the host's view), as a clone flag: unshare(2) cannot
		// give one to a thread of a Go program (its threads share their
		// filesystem information), and without it the daemon's
		// pivot_root into an empty root later would move COMMAND too.
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	}
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
