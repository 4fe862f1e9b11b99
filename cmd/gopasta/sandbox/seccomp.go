package sandbox

import (
	"fmt"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/sys/unix"
)

// The system call allowlist, one entry per call, each saying who needs it
// after setup. Anything not listed here fails: the daemon dies with SIGSYS
// (SECCOMP_RET_KILL_PROCESS) and the kernel's audit log (dmesg, journalctl
// -k: "audit: type=1326 ... syscall=N") names the call. --seccomp-debug
// turns every denial into an EPERM that the kernel logs the same way, so a
// developer can collect all the missing entries of a scenario in one run.
//
// Setup (opening the tap, configuring the namespace, binding the listeners,
// starting COMMAND) runs before the filter and needs none of this; what
// is missing here on purpose is anything that would let a compromised
// daemon reach further than its descriptors: execve, fork (clone without
// CLONE_THREAD), setns, unshare, mount, pivot_root, ptrace, bpf, keyctl,
// io_uring, perf_event_open, module and kexec calls, and ioctls other than
// the few queries below.
//
// Names missing on an architecture (open, stat and epoll_wait do not exist
// on arm64) are left out there, where the runtime uses their *at and
// pwait forms instead.
var allowed = []struct {
	name string
	who  string
}{
	// The Go runtime: memory, threads, scheduling, signals, timers.
	{"mmap", "runtime heap and stacks; glibc thread stacks"},
	{"munmap", "runtime heap scavenger; glibc thread stacks"},
	{"madvise", "runtime scavenger returning memory to the kernel"},
	{"mprotect", "glibc: guard page of a new thread's stack"},
	{"brk", "glibc malloc (cgo)"},
	{"mincore", "runtime: checks a stack mapping on some paths"},
	{"futex", "runtime and glibc locks, thread parking"},
	{"sched_yield", "runtime spinning, nbsys writer back-off"},
	{"sched_getaffinity", "runtime: GOMAXPROCS follows the CPU mask (procs.go too)"},
	{"nanosleep", "runtime usleep; time.Sleep fallback"},
	{"clock_nanosleep", "glibc sleep"},
	{"clock_gettime", "time.Now where the vDSO cannot answer"},
	{"gettimeofday", "glibc/vDSO fallback"},
	{"getpid", "runtime signal handling; logging"},
	{"gettid", "runtime signal delivery to a thread"},
	{"tgkill", "runtime preemption signals (SIGURG) and crash handling"},
	{"tkill", "runtime: signal to a thread on older code paths"},
	{"rt_sigaction", "runtime and os/signal installing handlers"},
	{"rt_sigprocmask", "runtime and glibc thread start"},
	{"rt_sigreturn", "every signal handler's return"},
	{"sigaltstack", "runtime: signal stack of every new thread"},
	{"restart_syscall", "kernel: restarting a call a signal interrupted"},
	{"exit", "a thread ending (a locked goroutine's thread is destroyed)"},
	{"exit_group", "the daemon's exit"},
	{"set_robust_list", "glibc: every new thread"},
	{"rseq", "glibc: every new thread registers restartable sequences"},
	{"getrandom", "runtime hash seeds, crypto/rand, math/rand/v2"},
	{"prlimit64", "runtime and os: RLIMIT_NOFILE, RLIMIT_STACK queries"},
	{"getrlimit", "glibc: pthread default stack size"},
	{"setitimer", "runtime/pprof CPU profile (GOPASTA_CPUPROFILE)"},
	{"timer_create", "runtime/pprof per-thread CPU profile timers"},
	{"timer_settime", "runtime/pprof per-thread CPU profile timers"},
	{"timer_delete", "runtime/pprof per-thread CPU profile timers"},
	{"getrusage", "procs.go: the daemon's CPU use sizes GOMAXPROCS"},
	{"uname", "glibc and runtime kernel-version checks"},
	{"getuid", "os/user and glibc"},
	{"geteuid", "glibc"},
	{"getgid", "glibc"},
	{"getegid", "glibc"},

	// The netpoller and the daemon's own event loops.
	{"epoll_create1", "runtime netpoller; per-loop epoll sets (nbsys)"},
	{"epoll_ctl", "runtime netpoller; nbsys.EpollCtl"},
	{"epoll_wait", "runtime netpoller (amd64)"},
	{"epoll_pwait", "runtime netpoller; nbsys.EpollWait"},
	{"epoll_pwait2", "runtime netpoller on newer Go"},
	{"eventfd2", "runtime netpoller wake-ups"},
	{"pipe2", "runtime netpoller break on old kernels; splice pipes"},
	{"poll", "link: QEMU socket waits"},
	{"ppoll", "glibc poll on arm64"},
	{"pselect6", "glibc"},

	// Descriptors: read, write, close, and their metadata.
	{"read", "tap, pcap, /proc/net tables, inotify, pidfd"},
	{"write", "tap, log file, pcap file, readiness pipe"},
	{"readv", "os.File vectored reads"},
	{"writev", "os.File vectored writes (logrus, pcap)"},
	{"pread64", "log file size management"},
	{"pwrite64", "log file size management (moves the newest half)"},
	{"lseek", "the auto scan re-reads /proc/net from offset 0; log file"},
	{"close", "every descriptor"},
	{"close_range", "os/exec leftovers; closing inherited files"},
	{"dup", "os.File duplication"},
	{"dup3", "os.File duplication"},
	{"fcntl", "O_NONBLOCK and FD_CLOEXEC on new sockets"},
	{"fstat", "os.File.Stat on open files"},
	{"newfstatat", "stat(2) of the namespace file (watch.go), resolv.conf"},
	{"statx", "os.Stat on newer Go"},
	{"ftruncate", "log file size management"},
	{"fsync", "log file on close"},
	{"getdents64", "reading a directory left open by setup"},
	{"readlinkat", "resolv.conf follower: a symlink re-pointed"},
	{"openat", "resolv.conf follower re-reading the file; /proc/net tables"},
	{"faccessat", "namespace file watch (access F_OK)"},
	{"faccessat2", "namespace file watch (access F_OK), newer glibc/Go"},
	{"openat2", "resolv.conf follower: the file read inside the host's root (RESOLVE_IN_ROOT)"},
	{"fchdir", "resolv.conf follower: inotify_add_watch relative to a directory descriptor"},
	{"chdir", "resolv.conf follower: back to the (empty) root after that"},
	{"inotify_init1", "resolv.conf follower re-arming its watch"},
	{"inotify_add_watch", "resolv.conf follower: re-pointed symlink target"},
	{"inotify_rm_watch", "resolv.conf follower"},

	// Sockets: the job.
	{"connect", "host-side sockets for the guest's flows"},
	{"bind", "host-side sockets; auto listeners; source port preservation"},
	{"listen", "auto listeners"},
	{"accept", "listeners (glibc)"},
	{"accept4", "listeners; QEMU reconnects on the listening socket"},
	{"getsockname", "flows: the local address of a host socket"},
	{"getpeername", "flows: the peer of an accepted connection"},
	{"getsockopt", "SO_ERROR, TCP_INFO, SO_TYPE"},
	{"setsockopt", "TCP_NODELAY, SO_REUSEADDR, IP_TTL, SO_LINGER, ..."},
	{"shutdown", "TCP half-close"},
	{"sendto", "UDP and ICMP flows; netlink requests"},
	{"recvfrom", "UDP and ICMP flows; netlink answers"},
	{"sendmsg", "UDP with ancillary data; QEMU socket"},
	{"recvmsg", "UDP with ancillary data; QEMU socket; netlink"},
	{"sendmmsg", "batched UDP and QEMU frames"},
	{"recvmmsg", "batched UDP"},
	{"socketpair", "os/exec leftovers; tests of the link"},

	// Processes the daemon watches or owns.
	{"kill", "signals to COMMAND (command mode); PID watch fallback"},
	{"pidfd_open", "PID-mode watch of the target process"},
	{"pidfd_send_signal", "os.Process.Signal to COMMAND on newer Go"},
	{"wait4", "waiting for COMMAND"},
	{"waitid", "waiting for COMMAND (os.Process with a pidfd)"},
	{"prctl", "runtime: thread names (PR_SET_NAME) and checks"},
	{"arch_prctl", "glibc thread setup on amd64"},
	{"membarrier", "glibc/runtime on some paths"},
}

// pastaOnly is needed only where there is a namespace to splice with.
var pastaOnly = []struct {
	name string
	who  string
}{
	{"splice", "loopback splice path (namespace <-> host sockets)"},
	{"tee", "splice path"},
}

// Calls allowed only with some arguments.
var (
	// cloneThread: clone(2) only for threads (runtime and glibc); a clone
	// without CLONE_THREAD would be a fork.
	cloneThread = seccomp.NameWithConditions{Name: "clone", Conditions: seccomp.ArgumentConditions{
		{Argument: 0, Operation: seccomp.BitsSet, Value: unix.CLONE_THREAD},
	}}
	// ioctls are the kernel's widest door; these are the queries the
	// daemon makes after setup.
	ioctls = []struct {
		req uint64
		who string
	}{
		{unix.SIOCOUTQ, "TCP: unsent bytes (window accounting)"},
		{unix.SIOCINQ, "unread bytes (FIONREAD)"},
		{unix.SIOCGIFINDEX, "interface index of a scope ID"},
		{unix.TCGETS, "logging: is stderr a terminal"},
	}
	// socketFamilies are the only kinds of sockets the daemon opens.
	socketFamilies = []struct {
		family uint64
		who    string
	}{
		{unix.AF_INET, "IPv4 flows"},
		{unix.AF_INET6, "IPv6 flows"},
		{unix.AF_NETLINK, "auto scan (NETLINK_SOCK_DIAG), address follower"},
	}
)

// Action says what a denied call does.
type Action int

const (
	// Kill: the daemon dies with SIGSYS; the kernel logs the call.
	Kill Action = iota
	// Errno: the call fails with EPERM and the kernel logs it (debug).
	Errno
)

// Mode is the daemon's mode, for the parts of the list that differ.
type Mode int

const (
	ModePasta Mode = iota
	ModePasst
)

// policy builds the filter for mode.
func policy(mode Mode, action Action) (seccomp.Filter, error) {
	info, err := arch.GetInfo("")
	if err != nil {
		return seccomp.Filter{}, err
	}
	var names []string
	add := func(n string) {
		if _, ok := info.SyscallNames[n]; ok {
			names = append(names, n)
		}
	}
	for _, a := range allowed {
		add(a.name)
	}
	if mode == ModePasta {
		for _, a := range pastaOnly {
			add(a.name)
		}
	}
	cond := []seccomp.NameWithConditions{cloneThread}
	for _, i := range ioctls {
		cond = append(cond, seccomp.NameWithConditions{Name: "ioctl", Conditions: seccomp.ArgumentConditions{
			{Argument: 1, Operation: seccomp.Equal, Value: i.req},
		}})
	}
	for _, f := range socketFamilies {
		cond = append(cond, seccomp.NameWithConditions{Name: "socket", Conditions: seccomp.ArgumentConditions{
			{Argument: 0, Operation: seccomp.Equal, Value: f.family},
		}})
	}
	deny := seccomp.ActionKillProcess
	flag := seccomp.FilterFlagTSync
	if action == Errno {
		deny = seccomp.ActionErrno // EPERM
		flag |= seccomp.FilterFlagLog
	}
	groups := []seccomp.SyscallGroup{
		{Names: names, NamesWithCondtions: cond, Action: seccomp.ActionAllow},
	}
	if _, ok := info.SyscallNames["clone3"]; ok {
		// glibc's pthread_create tries clone3 first and falls back to
		// clone on ENOSYS; clone3's flags are in memory, out of the
		// filter's reach, so it is refused as if the kernel lacked it.
		groups = append(groups, seccomp.SyscallGroup{Names: []string{"clone3"},
			Action: seccomp.ActionErrno | seccomp.Action(unix.ENOSYS)})
	}
	return seccomp.Filter{
		NoNewPrivs: true,
		Flag:       flag,
		Policy:     seccomp.Policy{DefaultAction: deny, Syscalls: groups},
	}, nil
}

// Seccomp installs the allowlist for mode on every thread of the process
// (SECCOMP_FILTER_FLAG_TSYNC), with no_new_privs set on each.
func Seccomp(mode Mode, action Action) error {
	f, err := policy(mode, action)
	if err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	if err := seccomp.LoadFilter(f); err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	return nil
}
