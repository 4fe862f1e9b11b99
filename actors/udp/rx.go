package udp

import "golang.org/x/sys/unix"

// Pacing a host -> guest stream, theory of operation.
//
// A tap write never pushes back: the guest's stack takes the frame in the
// writer's own system call, all the way to the guest socket's receive
// queue, and drops it there if that queue is full. So when a host sender
// outpaces the guest's reader, gopasta keeps its host socket empty and
// the datagrams are lost at the far end of the path instead, after every
// cost of relaying them was paid: the recvmmsg copy, the checksum, the
// tap write and the guest's IP and UDP input. On a loaded machine that
// cost is CPU time the guest's reader needed, so the faster gopasta
// relays, the less the reader gets, and the larger the share of the
// datagrams relayed that the guest socket drops.
//
// After writing a full recvmmsg batch (a stream: the socket held at
// least a batch), the receiver therefore gives up the CPU with
// sched_yield. The guest's reader, woken by the frames just written and
// often queued on this very CPU, drains its socket before gopasta writes
// more, and what the guest cannot take waits, or is dropped, in gopasta's
// host socket, where a drop costs the least. When nothing else wants the
// CPU, sched_yield returns at once: one cheap system call per batch of up
// to 64 datagrams. Request/response traffic never fills a batch and never
// yields.

// yieldToGuest gives the CPU to whatever else is runnable on it, the
// guest's reader above all. It goes through the runtime's system call
// path, so that the P can be handed to another goroutine if the thread is
// kept off the CPU for long.
func yieldToGuest() {
	_, _, _ = unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
}
