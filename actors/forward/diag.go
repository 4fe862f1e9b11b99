package forward

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gopasta/gopasta/internal/nbsys"
)

// Listening TCP sockets through sock_diag
//
// Reading /proc/net/tcp walks the kernel's whole established-connection
// hash table, every bucket of it, whatever the namespace: on a host with
// memory to spare that table has hundreds of thousands of buckets, and a
// scan once a second of two tables in two namespaces is most of an idle
// daemon's CPU time (perf: established_get_first). The
// same question asked through NETLINK_SOCK_DIAG with only TCP_LISTEN in
// the state mask is answered from the listening table alone: the kernel
// skips the established table when no other state is asked for.
//
// Where sock_diag is missing (a kernel without inet_diag, modules that
// cannot be loaded), openTCPScanner falls back to the /proc/net files.

// portScanner lists the local ports of the sockets that offer a service
// in one namespace.
type portScanner interface {
	// scan sets in out the local port of every such socket, leaving out
	// the sockets whose inode is in skip (if not nil).
	scan(out *portSet, skip map[uint64]struct{}) error
	Close()
}

// diagScanner asks sock_diag for the listening TCP sockets of the
// namespace its netlink socket was created in.
type diagScanner struct {
	fd  int
	seq uint32
	buf []byte
	req [2][]byte // dump requests, IPv4 and IPv6
	has [2]bool   // families the kernel dumps
}

const (
	tcpListen        = 10 // TCP_LISTEN, the kernel's socket state
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	inetDiagReqLen   = 56 // struct inet_diag_req_v2
	inetDiagMsgLen   = 72 // struct inet_diag_msg
)

// newDiagScanner takes fd, a NETLINK_SOCK_DIAG socket, and checks that
// the kernel answers a dump for IPv4 (IPv6 is optional).
func newDiagScanner(fd int) (*diagScanner, error) {
	s := &diagScanner{fd: fd, buf: make([]byte, 32<<10)}
	for i, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		r := make([]byte, unix.NLMSG_HDRLEN+inetDiagReqLen)
		binary.NativeEndian.PutUint32(r[0:], uint32(len(r)))
		binary.NativeEndian.PutUint16(r[4:], sockDiagByFamily)
		binary.NativeEndian.PutUint16(r[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
		q := r[unix.NLMSG_HDRLEN:]
		q[0], q[1] = family, unix.IPPROTO_TCP
		binary.NativeEndian.PutUint32(q[4:], 1<<tcpListen)
		s.req[i] = r
		s.has[i] = true
	}
	var probe portSet
	if err := s.dump(0, &probe, nil); err != nil {
		return nil, err
	}
	if err := s.dump(1, &probe, nil); err != nil {
		s.has[1] = false // no IPv6 in the kernel
	}
	return s, nil
}

func (s *diagScanner) scan(out *portSet, skip map[uint64]struct{}) error {
	for i := range s.req {
		if s.has[i] {
			if err := s.dump(i, out, skip); err != nil {
				return err
			}
		}
	}
	return nil
}

// dump runs one dump request and adds the listening ports it lists.
func (s *diagScanner) dump(i int, out *portSet, skip map[uint64]struct{}) error {
	s.seq++
	binary.NativeEndian.PutUint32(s.req[i][8:], s.seq)
	// The kernel builds each part of a dump inside the send and receive
	// calls, so they do not wait: raw calls (nbsys) that leave the runtime's
	// sysmon asleep. Should a receive find nothing yet, a blocking one
	// (SO_RCVTIMEO bounds it) takes over.
	sa := unix.RawSockaddrNetlink{Family: unix.AF_NETLINK}
	if _, e := nbsys.Sendto(s.fd, s.req[i], unix.MSG_DONTWAIT, unsafe.Pointer(&sa), unix.SizeofSockaddrNetlink); e != 0 {
		return fmt.Errorf("sock_diag: %w", e)
	}
	for {
		n, e := nbsys.Recvfrom(s.fd, s.buf, unix.MSG_DONTWAIT, nil, nil)
		var err error
		if e == unix.EAGAIN {
			n, _, err = unix.Recvfrom(s.fd, s.buf, 0)
		} else if e != 0 {
			err = e
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("sock_diag: %w", err)
		}
		done, err := parseDiagDump(s.buf[:n], s.seq, out, skip)
		if err != nil || done {
			return err
		}
	}
}

// parseDiagDump reads the messages of one sock_diag answer into out; done
// is true at the end of the dump.
func parseDiagDump(b []byte, seq uint32, out *portSet, skip map[uint64]struct{}) (done bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:]))
		typ := binary.NativeEndian.Uint16(b[4:])
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return false, errors.New("sock_diag: truncated message")
		}
		msg := b[unix.NLMSG_HDRLEN:l]
		if binary.NativeEndian.Uint32(b[8:]) == seq {
			switch typ {
			case unix.NLMSG_DONE:
				return true, nil
			case unix.NLMSG_ERROR:
				if len(msg) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(msg)); e < 0 {
						return true, fmt.Errorf("sock_diag: %w", unix.Errno(-e))
					}
				}
				return true, nil
			case sockDiagByFamily:
				if len(msg) >= inetDiagMsgLen && msg[1] == tcpListen {
					ino := uint64(binary.NativeEndian.Uint32(msg[68:]))
					if _, ours := skip[ino]; !ours {
						out.add(binary.BigEndian.Uint16(msg[4:]))
					}
				}
			}
		}
		b = b[min(len(b), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
	}
	return false, nil
}

func (s *diagScanner) Close() {
	if s.fd >= 0 {
		unix.Close(s.fd)
		s.fd = -1
	}
}

// procScanner adapts the /proc/net files to portScanner.
type procScanner struct{ *procNetFiles }

func (p procScanner) scan(out *portSet, skip map[uint64]struct{}) error {
	p.skip = skip
	return p.procNetFiles.scan(out)
}

// openTCPScanner returns a scanner of listening TCP sockets: sock_diag
// through a socket made by newSock (in the namespace to scan), else the
// /proc/net files opened by open.
func openTCPScanner(newSock func() (int, error), open func(string) (int, error)) (portScanner, error) {
	if fd, err := newSock(); err == nil {
		// The socket was made non-blocking; a dump is answered at
		// once, so the scanner waits for it, but never for long.
		err = unix.SetNonblock(fd, false)
		if err == nil {
			err = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
		}
		if err == nil {
			if s, err := newDiagScanner(fd); err == nil {
				return s, nil
			}
		}
		unix.Close(fd)
	}
	f, err := openProcNet("tcp", open)
	if err != nil {
		return nil, err
	}
	return procScanner{f}, nil
}
