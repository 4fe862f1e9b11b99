package link

import (
	"context"
	"testing"
)

// benchWriter runs a Writer on a NullDevice for the benchmark's length.
func benchWriter(b *testing.B) (*Writer, context.Context) {
	b.Helper()
	w := NewWriter(NewNullDevice(1500), 256)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	return w, ctx
}

// BenchmarkWriterSendNow: lone frames from one producer, which the
// Writer, idle between them, lets the producer write itself.
func BenchmarkWriterSendNow(b *testing.B) {
	w, ctx := benchWriter(b)
	b.ReportAllocs()
	for b.Loop() {
		w.SendNow(ctx, GetFrame(64))
	}
}

// BenchmarkWriterSendNowParallel: lone frames from several producers at
// once, which run directly or queue behind each other.
func BenchmarkWriterSendNowParallel(b *testing.B) {
	w, ctx := benchWriter(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w.SendNow(ctx, GetFrame(64))
		}
	})
}

// BenchmarkWriterSendCtx: frames queued for the writer goroutine.
func BenchmarkWriterSendCtx(b *testing.B) {
	w, ctx := benchWriter(b)
	b.ReportAllocs()
	for b.Loop() {
		w.SendCtx(ctx, GetFrame(64))
	}
}
