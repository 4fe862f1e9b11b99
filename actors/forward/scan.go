package forward

import (
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/internal/nbsys"
)

// Theory of operation: "auto"
//
// pasta's "auto" forwards a port while something is bound to it on the
// other side. The kernel lists every socket of a namespace in
// /proc/net/{tcp,tcp6,udp,udp6}; which namespace is decided when the file
// is opened (by the opening thread), not when it is read. So the scanner
// opens the four files of a namespace once, from a thread inside it
// (nsWorker), and re-reads them from offset 0 every scan: the seq_file
// behind them regenerates its text on every read from the start. Listening
// TCP sockets have state 0A (TCP_LISTEN), bound unconnected UDP sockets 07
// (TCP_CLOSE): a connected UDP socket is somebody's client, not a service.

// portSet is a bitmap of the 65536 port numbers.
type portSet [65536 / 64]uint64

func (s *portSet) add(p uint16)      { s[p/64] |= 1 << (p % 64) }
func (s *portSet) del(p uint16)      { s[p/64] &^= 1 << (p % 64) }
func (s *portSet) has(p uint16) bool { return s[p/64]&(1<<(p%64)) != 0 }
func (s *portSet) clear()            { *s = portSet{} }
func (s *portSet) or(o *portSet) {
	for i := range s {
		s[i] |= o[i]
	}
}
func (s *portSet) andNot(o *portSet) {
	for i := range s {
		s[i] &^= o[i]
	}
}
func (s *portSet) equal(o *portSet) bool { return *s == *o }
func (s *portSet) count() (n int) {
	for _, w := range s {
		for ; w != 0; w &= w - 1 {
			n++
		}
	}
	return n
}

// procNetFiles are the open /proc/net tables of one namespace for one
// protocol (IPv4 and IPv6).
type procNetFiles struct {
	fds   [2]int // -1: not open (no IPv6 in the kernel)
	state string // "0A" (TCP listen) or "07" (UDP unconnected)
	buf   []byte
	// skip, if set, lists socket inodes to leave out: our own.
	skip map[uint64]struct{}
}

// openProcNet opens the tables of proto ("tcp" or "udp") with open, which
// must open paths in the right namespace. A missing IPv6 table is not an
// error.
func openProcNet(proto string, open func(string) (int, error)) (*procNetFiles, error) {
	f := &procNetFiles{fds: [2]int{-1, -1}, state: "0A", buf: make([]byte, 64<<10)}
	if proto == "udp" {
		f.state = "07"
	}
	fd, err := open("/proc/thread-self/net/" + proto)
	if err != nil {
		return nil, err
	}
	f.fds[0] = fd
	if fd, err := open("/proc/thread-self/net/" + proto + "6"); err == nil {
		f.fds[1] = fd
	}
	return f, nil
}

// openHere opens a path in the calling process's namespace (the host
// side: gopasta's unlocked threads never leave it).
func openHere(p string) (int, error) {
	return unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
}

func (f *procNetFiles) Close() {
	for i, fd := range f.fds {
		if fd >= 0 {
			unix.Close(fd)
			f.fds[i] = -1
		}
	}
}

// scan sets in out the local port of every socket in the wanted state.
func (f *procNetFiles) scan(out *portSet) error {
	for _, fd := range f.fds {
		if fd < 0 {
			continue
		}
		// Raw calls (nbsys): procfs never makes them wait.
		if _, e := nbsys.Seek(fd, 0, 0); e != 0 {
			return os.NewSyscallError("lseek", e)
		}
		var carry int // bytes of an incomplete line kept at buf's start
		for {
			if carry == len(f.buf) {
				// A line longer than the buffer: never in these files.
				f.buf = make([]byte, 2*len(f.buf))
			}
			n, e := nbsys.Read(fd, f.buf[carry:])
			if e == unix.EINTR {
				continue
			}
			if e != 0 {
				return os.NewSyscallError("read", e)
			}
			if n == 0 {
				break
			}
			data := f.buf[:carry+n]
			last := strings.LastIndexByte(string(data), '\n') // no copy: compiler optimises the conversion
			if last < 0 {
				carry += n
				continue
			}
			parseProcNet(data[:last+1], f.state, f.skip, out)
			carry = copy(f.buf, data[last+1:])
		}
	}
	return nil
}

// parseProcNet parses complete lines of a /proc/net/{tcp,udp}[6] table.
// A line is "sl: local_address rem_address st ...", local_address being
// HEXADDR:HEXPORT; the tenth field is the socket's inode, checked
// against skip (if not nil). The header line and malformed lines are
// skipped.
func parseProcNet(data []byte, state string, skip map[uint64]struct{}, out *portSet) {
	for len(data) > 0 {
		nl := 0
		for nl < len(data) && data[nl] != '\n' {
			nl++
		}
		line := data[:nl]
		if nl < len(data) {
			data = data[nl+1:]
		} else {
			data = nil
		}
		var fields [10][]byte
		nf, want := 0, 4
		if skip != nil {
			want = 10
		}
		for i := 0; i < len(line) && nf < want; {
			for i < len(line) && line[i] == ' ' {
				i++
			}
			j := i
			for j < len(line) && line[j] != ' ' {
				j++
			}
			if j > i {
				fields[nf] = line[i:j]
				nf++
			}
			i = j
		}
		if nf < want || string(fields[3]) != state {
			continue
		}
		if skip != nil {
			ino, ok := parseDec(fields[9])
			if _, ours := skip[ino]; ok && ours {
				continue
			}
		}
		local := fields[1]
		colon := -1
		for i := len(local) - 1; i >= 0; i-- {
			if local[i] == ':' {
				colon = i
				break
			}
		}
		if colon < 0 || len(local)-colon-1 != 4 {
			continue
		}
		p, ok := parseHex16(local[colon+1:])
		if !ok || p == 0 {
			continue
		}
		out.add(p)
	}
}

func parseHex16(b []byte) (uint16, bool) {
	var v uint16
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		default:
			return 0, false
		}
		v = v<<4 | uint16(c)
	}
	return v, len(b) > 0 && len(b) <= 4
}

func parseDec(b []byte) (uint64, bool) {
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return v, len(b) > 0
}

// ephemeralRange reads the kernel's ephemeral port range (in the calling
// thread's namespace), which weak rules skip: those ports belong to
// clients. On error it returns Linux's default.
func ephemeralRange() (lo, hi uint16) {
	lo, hi = 32768, 60999
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return
	}
	l, err1 := strconv.ParseUint(f[0], 10, 16)
	h, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || l > h {
		return
	}
	return uint16(l), uint16(h)
}
