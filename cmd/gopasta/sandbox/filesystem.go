package sandbox

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Filesystem, theory of operation.
//
// The daemon runs in a mount namespace of its own (created with it by the
// front process, or by the nsenter constructor right after it joins a user
// namespace), and once everything that needs a path is open, Jail makes
// an empty read-only tmpfs its root with pivot_root(2) and detaches the
// old root. What keeps working afterwards does so through descriptors
// opened before: the tap or QEMU socket and its listener, the log and pcap
// files, the /proc/net tables of the "auto" scan, the inotify and pidfd
// watches, and the directory descriptors of the namespace-file watch and
// the resolv.conf follower.
//
// One directory stays visible in the new root: the daemon's own
// /proc/PID/task, bind-mounted read-only, because libcap's psx (which
// changes credentials and installs Landlock on every thread) finds the
// threads by listing it, and that must happen after the pivot: the pivot
// needs CAP_SYS_ADMIN, which goes with those changes. It shows nothing of
// other processes; Landlock, where the kernel has it, then takes even that
// away (landlock.go). In a PID namespace of its own (passt mode) the
// daemon is PID 1 to itself while the host's /proc knows it and its
// threads by the host's numbers, and psx signals the thread numbers it
// lists: there the directory comes from a procfs of the daemon's PID
// namespace, mounted only for as long as it takes to bind it.

// jailMountPoints are tried in turn for the new root: an existing
// directory of the old root, over which the empty tmpfs is mounted (in
// the daemon's own mount namespace only).
var jailMountPoints = []string{"/tmp", "/run", "/mnt", "/dev"}

// Jail replaces the daemon's root with an empty read-only tmpfs holding
// only /proc/PID/task. ownPIDNS says the daemon is PID 1 of a PID
// namespace of its own, which the host's /proc does not show as such. With chrootFallback, a refused pivot_root (an
// initramfs root) falls back to chroot(2), as pasta's --chroot-fallback
// does; without it, that is an error. It returns "pivot_root" or
// "chroot".
func Jail(chrootFallback, ownPIDNS bool) (string, error) {
	// Nothing mounted or unmounted here may reach the host's mount
	// namespace (or COMMAND's), and what the host unmounts (a netns
	// file) should still reach the daemon: a recursive slave.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return "", fmt.Errorf("make / a slave mount: %w", err)
	}
	dir := ""
	for _, d := range jailMountPoints {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			dir = d
			break
		}
	}
	if dir == "" {
		return "", errors.New("no directory to mount the empty root on")
	}
	const flags = unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_NOSUID
	if err := unix.Mount("gopasta", dir, "tmpfs", flags, "size=16k,nr_inodes=8,mode=0555"); err != nil {
		return "", fmt.Errorf("mount empty tmpfs on %s: %w", dir, err)
	}
	task := "/proc/" + strconv.Itoa(os.Getpid()) + "/task"
	for _, d := range []string{"/proc", "/proc/" + strconv.Itoa(os.Getpid()), task} {
		if err := unix.Mkdir(dir+d, 0o555); err != nil {
			return "", fmt.Errorf("new root: %w", err)
		}
	}
	src := "/proc/self/task"
	if ownPIDNS {
		// The host's /proc numbers our threads as the host does, and
		// psx signals the numbers it lists: a procfs of our own PID
		// namespace, mounted for the moment beside the bind mount's
		// target (we still have CAP_SYS_ADMIN over the namespace).
		tmp := dir + "/proc.new"
		if err := unix.Mkdir(tmp, 0o555); err != nil {
			return "", fmt.Errorf("new root: %w", err)
		}
		if err := unix.Mount("proc", tmp, "proc", flags, ""); err != nil {
			return "", fmt.Errorf("mount a procfs for the PID namespace: %w", err)
		}
		src = tmp + "/self/task"
	}
	if err := unix.Mount(src, dir+task, "", unix.MS_BIND, ""); err != nil {
		return "", fmt.Errorf("bind-mount %s: %w", task, err)
	}
	if ownPIDNS {
		// The bind mount keeps what it shows; the rest goes.
		if err := unix.Unmount(dir+"/proc.new", unix.MNT_DETACH); err != nil {
			return "", fmt.Errorf("unmount the PID namespace's procfs: %w", err)
		}
		if err := unix.Rmdir(dir + "/proc.new"); err != nil {
			return "", fmt.Errorf("new root: %w", err)
		}
	}
	// Best effort: in a user namespace the kernel may refuse a remount
	// that does not repeat every locked flag of the procfs mount, and
	// the daemon's own task files are not worth failing for.
	_ = unix.Mount("", dir+task, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|flags, "")
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY|flags, ""); err != nil {
		return "", fmt.Errorf("remount the new root read-only: %w", err)
	}
	if err := unix.Chdir(dir); err != nil {
		return "", fmt.Errorf("chdir %s: %w", dir, err)
	}
	// Old and new root in the same place: the old one ends up stacked
	// on top and is detached right away (pivot_root(2), NOTES).
	if err := unix.PivotRoot(".", "."); err != nil {
		if !chrootFallback {
			return "", fmt.Errorf("pivot_root into an empty tmpfs: %w (see --chroot-fallback)", err)
		}
		if err := unix.Mount(dir, "/", "", unix.MS_MOVE, ""); err != nil {
			return "", fmt.Errorf("--chroot-fallback: move the empty root to /: %w", err)
		}
		if err := unix.Chroot("."); err != nil {
			return "", fmt.Errorf("--chroot-fallback: chroot: %w", err)
		}
		return "chroot", unix.Chdir("/")
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return "", fmt.Errorf("detach the old root: %w", err)
	}
	return "pivot_root", unix.Chdir("/")
}
