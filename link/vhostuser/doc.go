// Package vhostuser is a vhost-user back end for virtio-net: passt mode's
// fast link to a virtual machine. QEMU (the front end) connects to a UNIX
// socket, shares the guest's memory with us as file descriptors, and tells
// us where the guest's virtqueues are; frames then move between those
// queues and gopasta's frame buffers with one copy and no socket, and TCP
// data goes without that copy both ways: from the host socket straight
// into the guest's receive buffers, the device lending those buffers to
// the flows (lend.go), and from the guest's transmit buffers straight to
// the host socket, a frame carrying only a private copy of its headers
// and a reference to its payload in guest memory (txext.go).
//
// # Pieces
//
//   - proto.go: the control messages, read from and written to the socket
//     (header, payload, descriptors passed with SCM_RIGHTS).
//   - mem.go: the memory table, the guest's memory mapped from the region
//     descriptors; the only way to turn a guest address into bytes.
//   - vring.go: one split virtqueue: the descriptor-chain walker, the used
//     ring, and notification suppression.
//   - device.go: the Device (a link.Device): sessions with front ends, the
//     request handlers, and the data path.
//   - lend.go: lending receive buffers to producers (link.Lender), the
//     stash of chains given back, memory references and queue epochs.
//   - txext.go: transmitted TCP payloads left in guest memory
//     (link.Frame.Ext), their used entries published on release.
//
// # Guest memory is hostile input
//
// The rings and the descriptors are written by the guest, which may
// change them at any time. Every value is read once into a local and
// checked before use; every address goes through the memory table, which
// returns only mapped memory of one region; a chain is no longer than its
// table, so a loop ends as an error; an indirect table must be the only
// descriptor of its chain, and is itself checked. Anything malformed stops
// the device: the error is logged, the control connection closed (QEMU
// sees its back end gone; a -1 daemon exits). A fault on guest memory (the
// front end truncating a region under us) is caught by the data path
// (debug.SetPanicOnFault) and handled the same way.
//
// # Concurrency
//
// Three goroutines touch a Device: the control goroutine of the session
// (one per front end; it alone changes state), the reader (ReadBatch,
// guest→us through the transmit queue) and the writer (WriteBatch,
// us→guest through the receive queue). The session state is under one
// RWMutex: the control goroutine holds it exclusively for a request, the
// reader and the writer each hold it shared for one batch of their own
// queue, so a memory table or a ring is never replaced under a batch, and
// the two directions never wait for each other. Lending adds a fourth
// kind, the flows' goroutines, which take and give back receive chains
// under rxMu (after mu), see lend.go, and publish the used entries of
// transmit chains whose payload they held under txMu (after mu), see
// txext.go. Waiting for the guest
// (a kick on the queue's eventfd, or a state change) happens without the
// lock; the control goroutine wakes waiters with a read deadline in the
// past on the kick file and by closing the changed channel.
//
// The reader is the dispatcher itself, which needs its goroutine back
// for its timers and queries: ReadBatch honours a read deadline
// (SetReadDeadline), kept beside the polling interval of missed.go, and
// one set not after now wakes a sleeping reader (rdlMu orders the two).
// A flow the dispatcher runs inline writes its frames for the guest in
// place, and must never wait: TryWriteBatch (link.TryWriter) is
// WriteBatch up to the first frame without room, and the link Writer
// queues the rest for its own goroutine, which waits as writers may.
//
// The kicks and interrupts, one of each per batch, are raw system calls
// (the nbsys package: through the runtime's, each would wake its sysmon
// thread whenever the daemon had been idle); the wait for a kick is the
// runtime poller's, through the kick file's RawConn.
//
// All session state, the rings' indexes included, lives in the Device, so
// that saving and restoring it (migration) has one place to look.
//
// # Speed
//
// No allocation per frame: chains are walked into reused segment slices,
// frames copied into the caller's pooled buffers, loans and Exts pooled.
// Batches both ways, with one used-index update and at most one interrupt
// per batch (and per released Ext, whose chain's turn comes when a flow
// lets go of it); event indexes
// (VIRTIO_RING_F_EVENT_IDX) or, without them, the ring flags, keep the
// guest from kicking us, and us from interrupting it, per frame.
//
// Under TCG the guest's emulated CPU, not ours, limits throughput, so the
// device takes work off it: checksums are offered both ways
// (VIRTIO_NET_F_CSUM: the guest leaves its checksums to us and we
// complete them before the frame goes on, except where nobody would read
// them: a TCP payload going to its socket from guest memory; GUEST_CSUM:
// our frames carry DATA_VALID, so the guest does not verify them).
package vhostuser
