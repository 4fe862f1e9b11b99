package sandbox

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"kernel.org/pub/linux/libs/security/libcap/cap"
)

// Privileges is what the daemon keeps of its credentials after setup.
type Privileges struct {
	// ChangeUser switches every thread to UID and GID, with no
	// supplementary groups.
	ChangeUser bool
	UID, GID   int
	// KeepBindService keeps CAP_NET_BIND_SERVICE in the effective and
	// permitted sets, if the process has it: the daemon may have to bind
	// ports below net.ipv4.ip_unprivileged_port_start after setup.
	KeepBindService bool
}

// Dropped is what Drop did, for the log and for VerifyThreads.
type Dropped struct {
	Privileges
	// KeptBindService: CAP_NET_BIND_SERVICE is still effective.
	KeptBindService bool
	// Bounded: the bounding set could be emptied (it needs CAP_SETPCAP;
	// a process without it has no capability to lose either).
	Bounded bool
}

// bindService is the one capability a daemon may keep.
const bindServiceMask = uint64(1) << cap.NET_BIND_SERVICE

// Drop gives up, on every thread, every capability but (if asked for and
// held) CAP_NET_BIND_SERVICE: effective, permitted, inheritable, ambient
// and bounding sets. It switches user if asked to, sets no_new_privs on
// every thread, and makes the process non-dumpable, so that nothing of
// the same user can ptrace it or read its memory through /proc.
//
// It must run after the last setup step that needs a privilege and before
// the daemon reads anything from its guest.
func Drop(p Privileges) (Dropped, error) {
	d := Dropped{Privileges: p}
	cur := cap.GetProc()
	hasBind, _ := cur.GetFlag(cap.Permitted, cap.NET_BIND_SERVICE)
	hasPcap, _ := cur.GetFlag(cap.Permitted, cap.SETPCAP)
	d.KeptBindService = p.KeepBindService && hasBind

	// Inheritable and ambient sets empty, and the bounding set too, so
	// that nothing exec'd (if anything ever were) could regain a
	// capability. This comes first: emptying the bounding set needs
	// CAP_SETPCAP, which goes away below.
	iab := cap.NewIAB()
	if hasPcap {
		for v := cap.Value(0); v < cap.MaxBits(); v++ {
			if err := iab.SetVector(cap.Bound, true, v); err != nil {
				return d, fmt.Errorf("bounding set: %w", err)
			}
		}
		d.Bounded = true
	}
	if err := iab.SetProc(); err != nil {
		return d, fmt.Errorf("drop inheritable, ambient and bounding capabilities: %w", err)
	}

	if p.ChangeUser {
		// Both raise CAP_SETGID/CAP_SETUID only for the call and keep
		// the permitted set, which the capset below then empties.
		if err := cap.SetGroups(p.GID); err != nil {
			return d, fmt.Errorf("setgid(%d), setgroups: %w", p.GID, err)
		}
		if err := cap.SetUID(p.UID); err != nil {
			return d, fmt.Errorf("setuid(%d): %w", p.UID, err)
		}
	}

	final := cap.NewSet()
	if d.KeptBindService {
		if err := final.SetFlag(cap.Permitted, true, cap.NET_BIND_SERVICE); err != nil {
			return d, err
		}
		if err := final.SetFlag(cap.Effective, true, cap.NET_BIND_SERVICE); err != nil {
			return d, err
		}
	}
	if err := final.SetProc(); err != nil {
		return d, fmt.Errorf("drop capabilities: %w", err)
	}
	if _, err := cap.Prctlw(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return d, fmt.Errorf("PR_SET_NO_NEW_PRIVS: %w", err)
	}
	// Per process (it belongs to the memory map), so one call does.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return d, fmt.Errorf("PR_SET_DUMPABLE: %w", err)
	}
	return d, nil
}

// ThreadCreds is the part of /proc/PID/task/TID/status this package
// checks.
type ThreadCreds struct {
	TID                            int
	UID, GID                       [4]int // real, effective, saved, filesystem
	Groups                         string
	CapInh, CapPrm, CapEff, CapBnd uint64
	CapAmb                         uint64
	NoNewPrivs, Seccomp            int
}

// ParseStatus reads the fields of ThreadCreds from a status file.
func ParseStatus(b []byte) (ThreadCreds, error) {
	var c ThreadCreds
	seen := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		var err error
		switch k {
		case "Pid":
			c.TID, err = strconv.Atoi(v)
		case "Uid", "Gid":
			f := strings.Fields(v)
			if len(f) != 4 {
				return c, fmt.Errorf("%s: %q", k, v)
			}
			dst := &c.UID
			if k == "Gid" {
				dst = &c.GID
			}
			for i := range f {
				if dst[i], err = strconv.Atoi(f[i]); err != nil {
					break
				}
			}
		case "Groups":
			c.Groups = v
		case "CapInh":
			c.CapInh, err = strconv.ParseUint(v, 16, 64)
		case "CapPrm":
			c.CapPrm, err = strconv.ParseUint(v, 16, 64)
		case "CapEff":
			c.CapEff, err = strconv.ParseUint(v, 16, 64)
		case "CapBnd":
			c.CapBnd, err = strconv.ParseUint(v, 16, 64)
		case "CapAmb":
			c.CapAmb, err = strconv.ParseUint(v, 16, 64)
		case "NoNewPrivs":
			c.NoNewPrivs, err = strconv.Atoi(v)
		case "Seccomp":
			c.Seccomp, err = strconv.Atoi(v)
		default:
			continue
		}
		if err != nil {
			return c, fmt.Errorf("%s: %v", k, err)
		}
		seen++
	}
	if seen < 11 {
		return c, errors.New("status lacks credential fields")
	}
	return c, nil
}

// VerifyThreads checks every thread of the process against d: the Go
// runtime and cgo each create threads of their own, and one thread that
// kept a capability would be enough for a compromised daemon.
func VerifyThreads(d Dropped) error {
	// Not /proc/self: after Jail only /proc/PID/task is left.
	dir := "/proc/" + strconv.Itoa(os.Getpid()) + "/task"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	want := uint64(0)
	if d.KeptBindService {
		want = bindServiceMask
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "status"))
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread ended meanwhile
		}
		if err != nil {
			return err
		}
		c, err := ParseStatus(b)
		if err != nil {
			return fmt.Errorf("thread %s: %v", e.Name(), err)
		}
		bad := func(what string, got, want any) error {
			return fmt.Errorf("thread %s kept %s %v (want %v)", e.Name(), what, got, want)
		}
		switch {
		case c.CapEff != want:
			return bad("CapEff", fmt.Sprintf("%016x", c.CapEff), fmt.Sprintf("%016x", want))
		case c.CapPrm != want:
			return bad("CapPrm", fmt.Sprintf("%016x", c.CapPrm), fmt.Sprintf("%016x", want))
		case c.CapInh != 0 || c.CapAmb != 0:
			return bad("CapInh/CapAmb", fmt.Sprintf("%016x/%016x", c.CapInh, c.CapAmb), 0)
		case d.Bounded && c.CapBnd != 0:
			return bad("CapBnd", fmt.Sprintf("%016x", c.CapBnd), 0)
		case c.NoNewPrivs != 1:
			return bad("NoNewPrivs", c.NoNewPrivs, 1)
		}
		if d.ChangeUser {
			for i := range 4 {
				if c.UID[i] != d.UID || c.GID[i] != d.GID {
					return bad("UID/GID", fmt.Sprint(c.UID, c.GID), fmt.Sprint(d.UID, d.GID))
				}
			}
			if c.Groups != "" {
				return bad("groups", c.Groups, "none")
			}
		}
	}
	return nil
}
