package flowtrace

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// DefaultDepth is a subscriber's buffer, in lines, unless Subscribe is
// told otherwise: a few seconds of a busy flow for a client that reads
// at terminal speed.
const DefaultDepth = 4096

// Hub fans trace lines out to subscribers. The zero Hub is ready; a nil
// *Hub has no subscribers.
type Hub struct {
	mu sync.Mutex // serialises changes of st
	st atomic.Pointer[hubState]
}

// hubState is one generation of the subscriber list; it is never changed
// once published.
type hubState struct {
	subs []*Sub
}

// Sub is one subscriber: a client streaming the lines of the flows its
// filter selects.
type Sub struct {
	hub     *Hub
	filter  Filter
	lines   chan string
	dead    chan struct{} // closed on overflow
	dropped atomic.Bool
	once    sync.Once
	closed  sync.Once
	// Lost counts lines not delivered because the buffer was full (at
	// most one: the subscriber is dropped at the first).
	Lost atomic.Uint64
}

// Active reports whether anybody subscribes: the one check a flow makes
// per event when nobody does.
func (h *Hub) Active() bool {
	if h == nil {
		return false
	}
	st := h.st.Load()
	return st != nil && len(st.subs) > 0
}

// Subscribers is the number of subscribers.
func (h *Hub) Subscribers() int {
	if h == nil {
		return 0
	}
	if st := h.st.Load(); st != nil {
		return len(st.subs)
	}
	return 0
}

// Subscribe adds a subscriber for the flows f selects, with a buffer of
// depth lines (DefaultDepth if depth <= 0). The caller must Close it.
func (h *Hub) Subscribe(f Filter, depth int) *Sub {
	if depth <= 0 {
		depth = DefaultDepth
	}
	s := &Sub{hub: h, filter: f, lines: make(chan string, depth), dead: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	var subs []*Sub
	if st := h.st.Load(); st != nil {
		subs = append(subs, st.subs...)
	}
	h.st.Store(&hubState{subs: append(subs, s)})
	return s
}

// Lines is where the subscriber's lines arrive. It is never closed: read
// it together with Dropped and your own end.
func (s *Sub) Lines() <-chan string { return s.lines }

// Dropped is closed when the subscriber fell behind and was dropped.
func (s *Sub) Dropped() <-chan struct{} { return s.dead }

// Filter is what the subscriber selects.
func (s *Sub) Filter() Filter { return s.filter }

// Close unsubscribes. Flows notice at their next event.
func (s *Sub) Close() {
	s.closed.Do(func() {
		s.dropped.Store(true) // nothing more is sent
		h := s.hub
		h.mu.Lock()
		defer h.mu.Unlock()
		st := h.st.Load()
		if st == nil {
			return
		}
		subs := make([]*Sub, 0, len(st.subs))
		for _, o := range st.subs {
			if o != s {
				subs = append(subs, o)
			}
		}
		h.st.Store(&hubState{subs: subs})
	})
}

// send delivers a line without ever blocking; a full buffer drops the
// subscriber.
func (s *Sub) send(line string) {
	if s.dropped.Load() {
		return
	}
	select {
	case s.lines <- line:
	default:
		s.Lost.Add(1)
		s.dropped.Store(true)
		s.once.Do(func() { close(s.dead) })
	}
}

// Tap is a flow's view of a hub: which subscribers want its lines. It is
// owned by whoever runs the flow (not safe for concurrent use); the zero
// Tap is ready.
type Tap struct {
	st   *hubState
	subs []*Sub
	desc string
}

// On reports whether any subscriber of h selects the flow (proto, guest,
// far, id), re-running the filters only when the subscribers changed.
// desc is how the flow's lines start ("17 tcp 10.0.2.100:40000 >
// 93.184.216.34:80"): a function, so that it is formatted only once a
// subscriber wants the flow.
func (t *Tap) On(h *Hub, proto uint8, guest, far netip.AddrPort, id uint64, desc func() string) bool {
	if h == nil {
		return false
	}
	st := h.st.Load()
	if st == nil || len(st.subs) == 0 {
		if t.st != nil {
			t.st, t.subs = nil, nil
		}
		return false
	}
	if st != t.st {
		t.st = st
		t.subs = t.subs[:0]
		for _, s := range st.subs {
			if s.filter.Match(proto, guest, far, id) {
				t.subs = append(t.subs, s)
			}
		}
		if len(t.subs) > 0 && t.desc == "" {
			t.desc = desc()
		}
	}
	return len(t.subs) > 0
}

// Emit sends text, prefixed with the flow's description and the time of
// day, to every subscriber that selects the flow. Call it after On
// returned true.
func (t *Tap) Emit(stamp, text string) {
	line := stamp + " " + t.desc + ": " + text
	for _, s := range t.subs {
		s.send(line)
	}
}
