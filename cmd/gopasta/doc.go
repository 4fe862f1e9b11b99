// Command gopasta is a pasta-compatible user-mode network for containers:
// it connects a network namespace to the host through a tap device, turning
// the namespace's frames into ordinary host sockets. Run as passt (or with
// --mode passt) it serves a virtual machine over QEMU's stream socket
// instead; the process model below is the same, only the link differs
// (passt.go).
//
// # Theory of operation: processes
//
// pasta's contract with podman is about processes, not just options:
// podman runs `pasta ... --netns PATH` with CombinedOutput(), takes the
// first process exiting 0 as "the namespace is configured and the ports are
// bound", prints whatever it wrote as warnings, and later deletes the
// namespace file, after which pasta must go away on its own. The C pasta
// does all its setup and then fork()s; the parent exits, the child lives on.
//
// Go cannot fork: the runtime has threads, and a forked copy would hold
// only one of them. Nor can a Go process join a user namespace
// (setns(CLONE_NEWUSER) demands a single-threaded caller). So gopasta runs
// as two processes from the same binary:
//
//   - The front process parses the options (so that usage errors, -h and
//     --version are answered at once), then re-executes /proc/self/exe with
//     the same arguments and GOPASTA_STAGE=daemon in the environment. It
//     gives the child a pipe as fd 3 and reads one line from it: "ok" once
//     setup is complete ("ok PID" in command mode, naming COMMAND, to
//     which the front then passes signals: command.go), or "err MESSAGE".
//     On "ok" it exits 0 (in command mode, with COMMAND's status); on an
//     error it prints "<prog>: MESSAGE" and exits 1.
//
//   - The daemon child does all the setup: it resolves the host's template
//     interface, enters or creates the target network namespace, opens the
//     tap there and configures it (--config-net), starts the dispatcher,
//     binds the forwarded ports, writes the -P pid file (its own pid, as its
//     caller numbers it), and only then reports readiness. Nothing the
//     front does after "ok" can fail, so readiness means what podman
//     thinks it means.
//
// In the background (the default), the child runs in its own session
// (Setsid) and its stdout and stderr are a pipe that the front copies to
// its own stderr, so that warnings during setup reach podman. At readiness
// the child points fds 0, 1 and 2 at /dev/null and closes fd 3 before
// writing nothing more: the front sees EOF on both pipes, exits, and
// podman's CombinedOutput() returns. The daemon never holds a descriptor of
// podman's pipe at all; only the front does, and it exits. After readiness
// the daemon logs only to the -l file, if any.
//
// With -f the front stays: the child inherits stdin, stdout and stderr, the
// front relays SIGTERM, SIGINT and SIGHUP to it and exits with its status.
//
// # Namespaces
//
//   - --netns PATH|NAME: the daemon opens the namespace file and switches a
//     locked thread into it only for the syscalls that must happen there
//     (opening the tap, netlink). Its host sockets stay in its own
//     namespace. It exits when the file is deleted or unmounted (inotify on
//     the directory, plus a check four times a second).
//
//   - PID: the same with /proc/PID/ns/net. If PID's user namespace is not
//     ours (and --netns-only is not given), the daemon must be in it to
//     have capabilities over the network namespace; the front passes
//     GOPASTA_USERNS=/proc/PID/ns/user (or --userns PATH) and the C
//     constructor in link/netns/nsenter joins it before the Go runtime
//     starts. The daemon exits when PID does (pidfd).
//
//   - Neither (command mode): the daemon creates a new network namespace
//     on a locked thread (link/netns.NewUnshared), configures it as with
//     --config-net, and starts COMMAND (default $SHELL, else /bin/sh) from
//     a thread inside it: a forked child inherits its thread's namespace.
//     That thread also unshares the other namespaces COMMAND gets
//     (commandNamespaces in command.go: UTS, whose hostname is -H's, else
//     "pasta-" and the host's, and IPC), and COMMAND is cloned into new
//     PID and mount namespaces, as with pasta: it is PID 1 there, after a
//     copy of this binary (GOPASTA_STAGE=command) mounted that namespace's
//     /proc and executed COMMAND in its place.
//     Without root, the front starts the daemon itself in a new user
//     namespace (CLONE_NEWUSER, the caller mapped to root, setgroups
//     denied), which makes it root over the network namespace it creates
//     while it stays in the caller's network namespace, where its sockets
//     belong. Command mode is always in the foreground: COMMAND has the
//     terminal, and the front and daemon exit with COMMAND's status
//     (128+N if a signal N killed it). The front passes SIGTERM and SIGHUP
//     on to COMMAND; SIGINT comes from the terminal to COMMAND directly.
//     As PID 1, COMMAND ignores any of them it leaves at its default
//     action: the front kills it in their stead (commandSignals).
//
//   - The sandbox's own (sandbox.go): unless --no-sandbox, the daemon runs
//     in new mount, IPC and UTS namespaces. The front creates them with
//     the daemon (clone flags, with CLONE_NEWUSER where it creates a user
//     namespace: command mode and passt mode without root); when the
//     daemon joins a user namespace instead, the nsenter constructor
//     unshares them right after the join (GOPASTA_ISOLATE), so that they
//     belong to the user namespace the daemon has capabilities in. Once
//     set up, the daemon pivot_roots into an empty tmpfs there. In passt
//     mode, where the front creates them, the daemon also gets a PID
//     namespace (CLONE_NEWPID) and is its PID 1; its socket cleaner is then
//     the front's (cleaner.go).
//
// # Shutdown
//
// SIGTERM or SIGINT (or the namespace or PID going away) cancels the
// daemon's context: forwarders stop, the tap is closed, which ends the
// dispatcher's read and the writer, and the daemon exits 0. It removes
// nothing: the namespace file and the pid file belong to whoever created
// them.
package main
