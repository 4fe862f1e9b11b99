package control

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// RulesBackend is the daemon's forwarding rules as the control socket
// sees them.
type RulesBackend interface {
	// Tables returns the forwarding tables in force (the caller may
	// keep them).
	Tables() []Table
	// Apply puts the given tables in force, leaving the others as they
	// are. An error means nothing changed. problems are the rules now in
	// force that could not (fully) be honoured, such as a port already
	// bound by another program, worded for the user.
	Apply(ts []Table) (problems []string, err error)
}

// sessionTimeout bounds the pesto exchange: sending the tables, receiving
// an update. pesto needs milliseconds; a client that stalls holds up the
// others (sessions are serialised) this long. A variable for tests.
var sessionTimeout = 10 * time.Second

// Limits of one session.
const (
	// maxUpdate bounds a client's update: every table once, each with
	// at most MaxRules rules.
	maxUpdate = maxTables*(5+MaxRules*RuleSize) + 1
	// maxConns is how many clients may be connected at once; more are
	// closed at once. Native sessions (traces) are long-lived.
	maxConns = 16
)

// Server is a listening control socket.
type Server struct {
	path string
	ln   *net.UnixListener
	b    RulesBackend
	log  logrus.FieldLogger
	// owner is the uid that may connect, if set (AllowUID); else the
	// daemon's own effective uid at the time.
	owner    atomic.Int64
	ownerSet atomic.Bool

	session sync.Mutex // one pesto session at a time, as pasta
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
	closed  bool
}

// Listen creates the control socket at path, mode 0600. An existing
// socket file nobody listens on is replaced; one in use is an error, as
// is any other file there.
func Listen(path string, b RulesBackend, log logrus.FieldLogger) (*Server, error) {
	if len(path) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("control socket path too long: %s", path)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("control socket %s: file exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket path %s already in use", path)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("control socket %s: %v", path, err)
		}
		_ = os.Remove(path)
	}
	// The socket file takes its mode from the umask at bind(2): never
	// let it exist with more than 0600, not even for a moment.
	old := unix.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("couldn't open control socket %s: %v", path, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %v", path, err)
	}
	return &Server{path: path, ln: ln, b: b, log: log, conns: map[net.Conn]struct{}{}}, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Chown gives the socket file to uid:gid, for a daemon that is about to
// become that user (--runas): only that user may then connect.
func (s *Server) Chown(uid, gid int) error { return os.Chown(s.path, uid, gid) }

// AllowUID makes uid the one user that may connect, whatever the daemon
// becomes: a daemon started as root that turns into nobody by itself (not
// by --runas) still serves root, who owns the socket file.
func (s *Server) AllowUID(uid int) { s.owner.Store(int64(uid)); s.ownerSet.Store(true) }

// KeepFileOnClose makes Close leave the socket file in place: a sandboxed
// daemon can no longer reach the path, and its cleaner process removes the
// file instead (cmd/gopasta/cleaner.go).
func (s *Server) KeepFileOnClose() { s.ln.SetUnlinkOnClose(false) }

// Serve accepts clients until ctx ends or Close is called. Each client is
// served on a goroutine of its own, owned by the server; Close waits for
// them.
func (s *Server) Serve(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	defer s.Close() // returns once every client's goroutine has
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warnf("control socket: accept: %v", err)
			time.Sleep(100 * time.Millisecond) // EMFILE and the like
			continue
		}
		if !s.track(c) {
			s.log.Warnf("control socket: more than %d clients, closing the new one", maxConns)
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.serve(ctx, c)
		}()
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || len(s.conns) >= maxConns {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// Close stops listening, removes the socket file, closes every client's
// connection and waits for their goroutines.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return
	}
	s.closed = true
	s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// peerCred returns the client's credentials (SO_PEERCRED: who called
// connect(2), fixed at that moment).
func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// serve runs one client's session: the hello and the tables, then an
// update, a request for the native protocol, or nothing (a client that
// only lists).
func (s *Server) serve(ctx context.Context, c *net.UnixConn) {
	cred, err := peerCred(c)
	if err != nil {
		s.log.Warnf("control socket: can't get client credentials: %v", err)
		return
	}
	// Our own effective uid now: after --runas it is the user we became;
	// a daemon that became nobody on its own serves who started it.
	uid := os.Geteuid()
	if s.ownerSet.Load() {
		uid = int(s.owner.Load())
	}
	if int(cred.Uid) != uid {
		s.log.Warnf("control socket: refusing client of uid %d (pid %d): only uid %d may connect", cred.Uid, cred.Pid, uid)
		return
	}
	s.session.Lock()
	locked := true
	defer func() {
		if locked {
			s.session.Unlock()
		}
	}()
	s.log.Debugf("control socket: accepted client, pid %d", cred.Pid)
	_ = c.SetDeadline(time.Now().Add(sessionTimeout))
	known := s.b.Tables()
	msg := AppendTables(AppendHello(nil), known)
	if _, err := c.Write(msg); err != nil {
		s.log.Debugf("control socket: writing tables: %v", err)
		return
	}
	// One byte, unbuffered: after NativeByte the rest of the stream is
	// the native handler's.
	var b1 [1]byte
	_, err = io.ReadFull(c, b1[:])
	first := b1[0]
	if err != nil {
		// pesto without changes reads the tables and hangs up.
		if !errors.Is(err, io.EOF) {
			s.log.Debugf("control socket: %v", err)
		}
		return
	}
	if first == NativeByte {
		s.session.Unlock()
		locked = false
		h := nativeHandler
		if h == nil {
			s.log.Warnf("control socket: client (pid %d) asked for the native protocol, which this build lacks", cred.Pid)
			reply(c, "error: native protocol not available")
			return
		}
		_ = c.SetDeadline(time.Time{})
		if err := h(ctx, c); err != nil {
			s.log.Debugf("control socket: native client (pid %d): %v", cred.Pid, err)
		}
		return
	}
	r := bufio.NewReader(io.LimitReader(c, maxUpdate))
	ts, err := readUpdate(r, first, known)
	if err != nil {
		s.log.Warnf("control socket: bad update from pid %d: %v", cred.Pid, err)
		reply(c, "error: "+err.Error())
		return
	}
	problems, err := s.b.Apply(ts)
	if err != nil {
		s.log.Warnf("control socket: update from pid %d refused: %v", cred.Pid, err)
		reply(c, "error: "+err.Error())
		return
	}
	lines := make([]string, 0, len(problems)+1)
	for _, p := range problems {
		lines = append(lines, "warning: "+p)
	}
	reply(c, append(lines, "ok")...)
}

// reply writes status lines after an update. pesto has hung up by then
// and never reads them; gopasta's client does (Client.Replace).
func reply(c net.Conn, lines ...string) {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(strings.ReplaceAll(l, "\n", " "))
		b.WriteByte('\n')
	}
	_, _ = io.WriteString(c, b.String())
}
