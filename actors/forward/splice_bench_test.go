package forward

import (
	"io"
	"net"
	"testing"
)

// The splice pumps wait in the Go runtime poller (two goroutines per
// pair). A variant that waited with a blocking poll(2) per pump instead
// measured the same TCP_RR through the daemon (netperf, -T) and twice the
// round-trip time here, and takes an OS thread per idle connection, so it
// was dropped.

// BenchmarkSpliceRR is one-byte request/response through a splice pair
// (client -> pair -> server -> pair -> client): the latency the loopback
// path adds, per round trip.
func BenchmarkSpliceRR(b *testing.B) {
	c, s := splicedConn(b, "tcp4", "127.0.0.1:0")
	benchRR(b, c, s)
}

// BenchmarkSpliceRRUnwatched is BenchmarkSpliceRR with the pair's sockets
// not watched for hang-ups: each pump reads until EAGAIN (see splicePump).
func BenchmarkSpliceRRUnwatched(b *testing.B) {
	c, s := splicedConnIn(b, nil, "tcp4", "127.0.0.1:0")
	benchRR(b, c, s)
}

func benchRR(b *testing.B, c, s *net.TCPConn) {
	go func() {
		buf := make([]byte, 1)
		for {
			if _, err := io.ReadFull(s, buf); err != nil {
				return
			}
			if _, err := s.Write(buf); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSpliceBulk moves 1 MiB writes one way through a splice pair.
func BenchmarkSpliceBulk(b *testing.B) {
	c, s := splicedConn(b, "tcp4", "127.0.0.1:0")
	benchBulk(b, c, s)
}

func benchBulk(b *testing.B, c, s *net.TCPConn) {
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, s)
		close(done)
	}()
	data := make([]byte, 1<<20)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(data); err != nil {
			b.Fatal(err)
		}
	}
	_ = c.CloseWrite()
	<-done
}

// directConn is a plain loopback connection: the baseline the splice
// benchmarks compare with (BenchmarkDirectRR, BenchmarkDirectBulk).
func directConn(b *testing.B) (client, server *net.TCPConn) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func BenchmarkDirectRR(b *testing.B) {
	c, s := directConn(b)
	benchRR(b, c, s)
}

func BenchmarkDirectBulk(b *testing.B) {
	c, s := directConn(b)
	benchBulk(b, c, s)
}
