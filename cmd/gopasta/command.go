package main

import (
	"fmt"
	"os"
	"os/exec"

	"github.com/gopasta/gopasta/link/netns"
)

// startCommand starts COMMAND (default $SHELL, else /bin/sh) inside the
// namespace: it is forked from a thread switched into the namespace, and a
// child inherits its thread's namespaces. It gets the terminal (our stdio,
// inherited from the front) and our environment.
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
	if err := netns.Do(d.nsFD, cmd.Start); err != nil {
		return fmt.Errorf("start %s: %v", argv[0], err)
	}
	d.cmd = cmd
	d.log.Debugf("started %v, pid %d", argv, cmd.Process.Pid)
	return nil
}
