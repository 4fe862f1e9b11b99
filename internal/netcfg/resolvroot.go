package netcfg

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The follower inside the sandbox
//
// Once set up, the daemon's root is an empty tmpfs (package sandbox): the
// path /etc/resolv.conf leads nowhere. KeepRoot, called before that,
// keeps a descriptor of (a copy of) the host's mount tree, and from then
// on the follower
// resolves every path through it: openat2 with RESOLVE_IN_ROOT reads the
// file (an absolute symbolic link, such as systemd-resolved's, is followed
// inside the host's tree, not ours), readlinkat follows a re-pointed link
// one step at a time, and inotify_add_watch, which takes only a path, is
// given one relative to a working directory that is, for that one call,
// the directory concerned (fchdir to a descriptor of it, then back to /).
// Nothing else in the daemon uses a relative path after setup. Landlock,
// where the kernel has it, allows reading beneath the directories that
// the file and its link target are in (ReadDirs), and nothing else.

// KeepRoot makes the follower reach the file through a descriptor of the
// current root from now on. Call it while / still is the host's.
func (r *ResolvFollower) KeepRoot() error {
	// A detached copy of the whole mount tree (open_tree(2), Linux
	// 5.2): the file or its directory may be on another mount than /
	// (a tmpfs /run, ip netns exec's bind mount over /etc/resolv.conf),
	// and a plain descriptor of / would lose those when the sandbox
	// detaches the old root with all its mounts.
	fd, err := unix.OpenTree(unix.AT_FDCWD, "/", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		fd, err = unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return os.NewSyscallError("open /", err)
	}
	r.root = fd
	return nil
}

// ReadDirs opens (O_PATH) the directories the file and its symbolic link's
// target are in, for a Landlock rule that lets them be read. The caller
// closes them.
func (r *ResolvFollower) ReadDirs() []int {
	var fds []int
	dirs := []string{filepath.Dir(r.path)}
	if t, err := filepath.EvalSymlinks(r.path); err == nil && filepath.Dir(t) != dirs[0] {
		dirs = append(dirs, filepath.Dir(t))
	}
	for _, d := range dirs {
		if fd, err := unix.Open(d, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
			fds = append(fds, fd)
		}
	}
	return fds
}

// inRoot is path relative to r.root.
func inRoot(path string) string {
	p := strings.TrimLeft(filepath.Clean(path), "/")
	if p == "" {
		return "."
	}
	return p
}

// openIn opens path read-only (flags added), through r.root if kept.
func (r *ResolvFollower) openIn(path string, flags int) (int, error) {
	if r.root < 0 {
		return unix.Open(path, flags|unix.O_CLOEXEC, 0)
	}
	return unix.Openat2(r.root, inRoot(path), &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
}

// evalSymlinks resolves the symbolic links of path's last component.
func (r *ResolvFollower) evalSymlinks(path string) (string, error) {
	if r.root < 0 {
		return filepath.EvalSymlinks(path)
	}
	buf := make([]byte, 4096)
	for range 40 {
		n, err := unix.Readlinkat(r.root, inRoot(path), buf)
		if err == unix.EINVAL {
			return path, nil // not a link
		}
		if err != nil {
			return "", err
		}
		t := string(buf[:n])
		if !filepath.IsAbs(t) {
			t = filepath.Join(filepath.Dir(path), t)
		}
		path = filepath.Clean(t)
	}
	return "", unix.ELOOP
}

// addWatch adds an inotify watch on path (not following a last symbolic
// link when r.root is kept: see above).
func (r *ResolvFollower) addWatch(path string, mask uint32) (int, error) {
	if r.root < 0 {
		return unix.InotifyAddWatch(r.fd, path, mask)
	}
	dir, name := filepath.Dir(path), filepath.Base(path)
	if mask&unix.IN_ONLYDIR != 0 {
		dir, name = path, "."
	}
	dfd, err := r.openIn(dir, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return -1, err
	}
	defer unix.Close(dfd)
	if err := unix.Fchdir(dfd); err != nil {
		return -1, err
	}
	defer unix.Chdir("/")
	return unix.InotifyAddWatch(r.fd, name, mask|unix.IN_DONT_FOLLOW)
}

// read returns the nameservers of the file.
func (r *ResolvFollower) read() []netip.Addr {
	fd, err := r.openIn(r.path, unix.O_RDONLY)
	if err != nil {
		return nil
	}
	f := os.NewFile(uintptr(fd), r.path)
	defer f.Close()
	servers, _ := parseResolvConf(f)
	return servers
}
