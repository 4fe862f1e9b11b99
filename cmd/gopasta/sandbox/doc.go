// Package sandbox takes from the gopasta daemon, once its setup is done,
// everything it does not need to move packets: its privileges (privs.go),
// every system call outside an allowlist (seccomp.go), and (filesystem.go,
// landlock.go) its view of the filesystem.
//
// # Theory of operation
//
// A compromised gopasta is a process that parses every frame a guest sends.
// What it can do then is what it holds after setup: its descriptors (the
// tap or the QEMU socket, the listening sockets, the log file), the right
// to open host sockets (that is the job), and whatever else the kernel
// would let its credentials do. The last part is what this package removes.
//
// Capabilities, the no_new_privs bit and the UID are per thread in Linux,
// and a Go program has many threads, some of which (the namespace worker
// of package actors, which stays inside the guest's network namespace)
// exist precisely because setup needed them. Changing only the calling
// thread would leave the others privileged, and a compromised process can
// run code on any of its threads. So every change here is made on all
// threads at once, through libcap's psx mechanism
// (kernel.org/pub/linux/libs/security/libcap/psx): with cgo it tracks every
// pthread from its creation and interrupts each with a signal to run the
// same system call; without cgo it uses the Go runtime's
// syscall.AllThreadsSyscall. Glibc does the same thing for setuid(2), but
// has no equivalent for capset(2) or prctl(2), and AllThreadsSyscall is
// refused in a cgo binary, which gopasta is (link/netns/nsenter). Threads
// created later are cloned from one of the changed ones and inherit the
// change. VerifyThreads reads /proc/self/task/*/status afterwards and
// refuses to go on if any thread kept a capability it should not have.
//
// The seccomp filter is installed with SECCOMP_FILTER_FLAG_TSYNC, which
// the kernel applies to every thread of the process atomically (and which
// sets no_new_privs on each of them as well).
package sandbox
