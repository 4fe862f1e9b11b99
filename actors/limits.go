package actors

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Resource limits: what a guest can make the daemon hold.
//
// Every flow holds host descriptors: a TCP flow or an ICMP echo flow one
// socket, a UDP binding one socket (its flows, one per far end, share it),
// a spliced TCP connection two sockets and two pipes. A guest that opens
// flows as fast as it can, or a host peer that connects as fast as it can,
// would otherwise run the daemon out of descriptors, and then every other
// flow, the -t listeners' accepts, the QEMU socket's reconnect and the log
// all fail together. So flows take their descriptors from a budget
// (FDBudget) fixed at start from RLIMIT_NOFILE, and a flow that does not
// fit is refused on its own: a SYN answered with a reset, a datagram or an
// echo request dropped, an accepted connection reset, each counted.
//
// A connect() towards a host that never answers is the cheapest way to
// hold a descriptor, a kernel SYN_SENT socket and a conntrack entry for
// the kernel's whole SYN retry schedule (two minutes with the defaults),
// so those are capped too (Limits.Connecting) and given a deadline of
// their own (TCPConnectTimeout).

// Descriptors a flow of each kind holds.
const (
	FDsTCP    = 1 // the socket
	FDsUDP    = 1 // a binding's socket, whatever its number of flows
	FDsICMP   = 1 // the ping socket
	FDsSplice = 6 // both sockets, and a pipe (two descriptors) each way
)

// Descriptors kept out of the budget for what is not a flow but must not
// fail when flows have taken the rest. See FDBudgetFor.
const (
	// fdsAccept: a listener accepts a connection before it can know
	// whether the budget has room for it, and needs the descriptor to
	// reset it. Each -t/-T listener's goroutine holds at most one such
	// descriptor at a time; this many listeners accepting at the same
	// instant cover any real load, and past them accept4 fails with
	// EMFILE and the listener waits 100 ms (acceptLoop), as it did before.
	fdsAccept = 16
	// fdsQEMU: passt mode accepts the next QEMU client while one is
	// connected (to refuse it) and after it left (to serve it).
	fdsQEMU = 2
	// fdsRuntime: descriptors the daemon opens for itself while it runs:
	// the port scan's netlink socket and /proc files, a listener that
	// "auto" forwarding opens, the resolver's configuration re-read, the
	// log file, the Go runtime's own.
	fdsRuntime = 32
	// FDReserve is the sum, what FDBudgetFor keeps back.
	FDReserve = fdsAccept + fdsQEMU + fdsRuntime
)

// Pending connects: at most a quarter of the budget, so that flows that
// did connect always have room, and at most maxConnecting whatever the
// budget, a guest's share of the host's SYN_SENT sockets and conntrack
// table; never fewer than minConnecting.
const (
	maxConnecting = 1024
	minConnecting = 16
)

// FDBudgetFor returns how many descriptors flows may hold, given the
// RLIMIT_NOFILE soft limit nofile and the descriptors open now (listeners,
// tap or QEMU socket, epoll, log, namespace: everything set up before the
// first flow): the rest, minus FDReserve. With podman's limit of 524288
// that is about half a million; under "prlimit --nofile=256" about 200, of
// which 50 may be pending connects. A result below FDsSplice is raised to
// it, so that the daemon stays usable (one flow at a time) rather than
// refusing everything. nofile 0 means unknown: no budget (0).
func FDBudgetFor(nofile uint64, open int) int {
	if nofile == 0 || nofile > 1<<30 {
		return 0
	}
	return max(int(nofile)-open-FDReserve, FDsSplice)
}

// NofileLimit returns the soft RLIMIT_NOFILE (which the Go runtime has
// raised to the hard limit at start), 0 if unknown.
func NofileLimit() uint64 {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) != nil || rl.Cur == unix.RLIM_INFINITY {
		return 0
	}
	return rl.Cur
}

// OpenFDs counts the process's open descriptors.
func OpenFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents) - 1 // ReadDir's own
}

// Kinds of flows, each held to its share of the descriptor budget.
const (
	FDGuestTCP   = iota // TCP flows the guest opens
	FDGuestDgram        // UDP bindings and ICMP echo flows the guest opens
	FDInbound           // connections accepted on -t listeners, tap path or spliced
	FDNSSplice          // connections accepted on -T listeners in the namespace
	numFDKinds
)

// fdShare is the part of the budget one kind of flow may hold: whatever a
// guest (or a host peer) floods, the other kinds keep a quarter of the
// descriptors, so that a guest opening TCP connections without end still
// has its DNS and its ping, and a -t forward still accepts.
func fdShare(budget int64) int64 { return budget - budget/4 }

// Limits are the shared budgets of Env. The zero value limits nothing.
type Limits struct {
	mu     sync.Mutex // fdUsed, fdKind
	FDMax  atomic.Int64
	fdUsed int64
	fdKind [numFDKinds]int64

	connMax    atomic.Int64 // 0: derived from fdMax, or maxConnecting
	connecting atomic.Int64

	// Refusals, for the statistics.
	FDRefused      atomic.Uint64 // a flow refused: the descriptor budget was spent
	ConnectRefused atomic.Uint64 // a SYN reset: too many connects pending
	ConnectTimeout atomic.Uint64 // a connect that passed its deadline
}

// SetFDBudget sets how many descriptors flows may hold in all (0: no
// limit). Safe to call while flows run: it applies to flows started later.
func (l *Limits) SetFDBudget(n int) { l.FDMax.Store(int64(n)) }

// SetConnectLimit sets the cap on pending connects (0: the default).
func (l *Limits) SetConnectLimit(n int) { l.connMax.Store(int64(n)) }

// FDBudget returns the descriptor budget (0: none) and what flows hold.
func (l *Limits) FDBudget() (budget, used int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.FDMax.Load(), l.fdUsed
}

// ConnectLimit is the cap on pending connects in force.
func (l *Limits) ConnectLimit() int64 {
	if n := l.connMax.Load(); n > 0 {
		return n
	}
	if b := l.FDMax.Load(); b > 0 {
		return min(max(b/4, minConnecting), maxConnecting)
	}
	return maxConnecting
}

// takeFDs reserves n descriptors for a new flow of kind and reports whether
// they were there (in the budget, and in the kind's share); a refusal is
// counted. giveFDs returns them when the flow has closed its descriptors.
// Called once per flow, never per packet.
func (l *Limits) TakeFDs(kind, n int) bool {
	max := l.FDMax.Load()
	l.mu.Lock()
	defer l.mu.Unlock()
	if max > 0 && (l.fdUsed+int64(n) > max || l.fdKind[kind]+int64(n) > fdShare(max)) {
		l.FDRefused.Add(1)
		return false
	}
	l.fdUsed += int64(n)
	l.fdKind[kind] += int64(n)
	return true
}

func (l *Limits) GiveFDs(kind, n int) {
	l.mu.Lock()
	l.fdUsed -= int64(n)
	l.fdKind[kind] -= int64(n)
	l.mu.Unlock()
}

// startConnect counts a connect about to start, unless ConnectLimit are
// pending already (counted as a refusal). endConnect ends it, once.
func (l *Limits) StartConnect() bool {
	max := l.ConnectLimit()
	for {
		c := l.connecting.Load()
		if c >= max {
			l.ConnectRefused.Add(1)
			return false
		}
		if l.connecting.CompareAndSwap(c, c+1) {
			return true
		}
	}
}

func (l *Limits) EndConnect() { l.connecting.Add(-1) }

// Connecting is the number of connects pending.
func (l *Limits) Connecting() int64 { return l.connecting.Load() }

// TCPConnectTimeout is how long an outbound flow waits for the host's
// connect() before it gives up and resets the guest: pasta's handshake
// timeout, from the same kernel settings (see synTimeout).
var TCPConnectTimeout = sync.OnceValue(func() time.Duration {
	return synTimeout(readSysctl("/proc/sys/net/ipv4/tcp_syn_retries", 6),
		readSysctl("/proc/sys/net/ipv4/tcp_syn_linear_timeouts", 4))
})

// TCPConnectTimeoutFor is what the actors use, a variable so that tests
// can shorten it.
var TCPConnectTimeoutFor = TCPConnectTimeout

// synTimeout is the time pasta takes to give up a handshake: it repeats
// its SYN up to retries+linear times but at most 7 (the size of its retry
// counter), the first linear intervals a second each, then doubling, and
// resets at the end of the last interval. 19 s with Linux's defaults (6
// retries, 4 linear timeouts), against the kernel's own 127 s for a
// connect() with 6 retries and no linear timeouts.
func synTimeout(retries, linear int) time.Duration {
	n := min(retries+linear, 7)
	var total time.Duration
	for r := 0; r <= n; r++ {
		total += min(time.Second<<max(r-linear, 0), 120*time.Second)
	}
	return total
}

// readSysctl reads an integer sysctl file, def if it cannot.
func readSysctl(path string, def int) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return def
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || v < 0 {
		return def
	}
	return v
}

// RateLog rate-limits one kind of per-event warning: the first is logged,
// later ones within Every are only counted, and the next one logged after
// that says how many were suppressed ("suppressed N similar messages").
// A guest or host peer can make such events happen thousands of times a
// second (descriptor exhaustion fails every new socket), and a log line
// each would be a flood of its own. The zero value logs at most one line
// every 10 seconds. Safe for concurrent use.
type RateLog struct {
	Every time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

const defaultRateLogEvery = 10 * time.Second

// Log logs at level through e, or counts the message if one was logged
// less than Every ago.
func (r *RateLog) Log(e *logrus.Entry, level logrus.Level, format string, args ...any) {
	if !e.Logger.IsLevelEnabled(level) {
		return
	}
	every := r.Every
	if every <= 0 {
		every = defaultRateLogEvery
	}
	now := time.Now()
	r.mu.Lock()
	if !r.last.IsZero() && now.Sub(r.last) < every {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	r.mu.Unlock()
	if n > 0 {
		e = e.WithField("suppressed", n)
		format += " (suppressed %d similar messages)"
		args = append(args, n)
	}
	e.Logf(level, format, args...)
}

// Warnf is Log at warning level.
func (r *RateLog) Warnf(e *logrus.Entry, format string, args ...any) {
	r.Log(e, logrus.WarnLevel, format, args...)
}
