package sandbox

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	ll "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// Landlock, theory of operation.
//
// After Jail, the daemon's root is an empty read-only tmpfs; Landlock is a
// second wall behind it, and the only one where --chroot-fallback had to
// use chroot(2) (a chroot can be left by a process that keeps a directory
// descriptor outside it, and the resolv.conf follower keeps one). The
// ruleset handles every filesystem right the kernel knows and grants
// none, except reading files beneath the directories given (the
// follower's), and listing /proc/PID/task, which psx does on every thread
// right after enforcing it. Descriptors opened before (tap, sockets, log,
// pcap, /proc/net tables) are not affected: Landlock checks at open time.
//
// What each kernel gets (Landlock ABI version):
//
//	< 5.13  no Landlock: the empty root (or chroot) is the only wall
//	5.13 v1 no file may be opened, created, removed, renamed or executed
//	5.19 v2 nor linked or renamed across directories (refer)
//	6.2  v3 nor truncated by path
//	6.10 v5 nor a device ioctl on a device opened afterwards
//	6.12 v6 no connection to abstract UNIX sockets outside the daemon, and
//	        (not in command mode, whose COMMAND gets signals from the
//	        daemon) no signal to a process outside it
//
// Landlock's network rules (v4, 6.7) are not used: they allow or deny
// bind(2) and connect(2) by TCP port, and a proxy connects wherever its
// guest asks and binds whatever "auto" finds, so the only rule that would
// fit is "any port", which is no rule. What the daemon may do with the
// network is bounded by the descriptors it holds and the seccomp filter.

// LandlockResult says what was enforced, for the log.
type LandlockResult struct {
	ABI int // 0: the kernel has no Landlock (or it is disabled)
}

// Landlock restricts every thread as described above. readDirs are
// directory descriptors (O_PATH is enough) beneath which files may still
// be read. Without Landlock in the kernel it does nothing and says so.
func Landlock(readDirs []int, signals bool) (LandlockResult, error) {
	abi, err := ll.LandlockGetABIVersion()
	if err != nil || abi < 1 {
		return LandlockResult{}, nil
	}
	attr := ll.RulesetAttr{HandledAccessFS: (1 << 13) - 1}
	if abi >= 2 {
		attr.HandledAccessFS |= ll.AccessFSRefer
	}
	if abi >= 3 {
		attr.HandledAccessFS |= ll.AccessFSTruncate
	}
	if abi >= 5 {
		attr.HandledAccessFS |= ll.AccessFSIoctlDev
	}
	if abi >= 6 {
		attr.Scoped = ll.ScopeAbstractUnixSocket
		if !signals {
			attr.Scoped |= ll.ScopeSignal
		}
	}
	rs, err := ll.LandlockCreateRuleset(&attr, 0)
	if err != nil {
		return LandlockResult{}, fmt.Errorf("landlock ruleset: %w", err)
	}
	defer unix.Close(rs)
	for _, fd := range readDirs {
		if err := ll.LandlockAddPathBeneathRule(rs, &ll.PathBeneathAttr{
			AllowedAccess: ll.AccessFSReadFile, ParentFd: fd}, 0); err != nil {
			return LandlockResult{}, fmt.Errorf("landlock rule: %w", err)
		}
	}
	task, err := unix.Open("/proc/"+strconv.Itoa(os.Getpid())+"/task", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return LandlockResult{}, fmt.Errorf("landlock: %w", err)
	}
	defer unix.Close(task)
	if err := ll.LandlockAddPathBeneathRule(rs, &ll.PathBeneathAttr{
		AllowedAccess: ll.AccessFSReadDir, ParentFd: task}, 0); err != nil {
		return LandlockResult{}, fmt.Errorf("landlock rule: %w", err)
	}
	if err := ll.AllThreadsLandlockRestrictSelf(rs, 0); err != nil {
		if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
			return LandlockResult{}, nil
		}
		return LandlockResult{}, fmt.Errorf("landlock: %w", err)
	}
	return LandlockResult{ABI: abi}, nil
}
