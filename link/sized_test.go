package link

import "testing"

func TestGetBufferClasses(t *testing.T) {
	for _, n := range []int{0, 1, 255, 256, 257, 1000, 2048, 2049, 4096, 20000, 32768, 32769, 65000, MaxFrameSize} {
		f := GetBuffer(n)
		if len(f.Data) != n {
			t.Fatalf("GetBuffer(%d): len %d", n, len(f.Data))
		}
		c := cap(f.Data)
		if c != BufferClass(n) || c < n || c > 2*n+MinBufferSize {
			t.Errorf("GetBuffer(%d): cap %d, class %d", n, c, BufferClass(n))
		}
		f.Release()
	}
}

func TestGetBufferNoAllocs(t *testing.T) {
	GetBuffer(3000).Release()
	if a := testing.AllocsPerRun(100, func() { GetBuffer(3000).Release() }); a != 0 {
		t.Errorf("%v allocations per buffer", a)
	}
}
