package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countWriter counts what is written to it.
type countWriter struct{ n *atomic.Int64 }

func (w countWriter) Write(p []byte) (int, error) { w.n.Add(int64(len(p))); return len(p), nil }

// TestCtlTraceOneOfThousand: a daemon with 1000 flows moving data, and a
// trace attached to one of them in alternate phases. Only that flow's
// lines arrive, and the others' throughput with the trace attached is
// that without, within noise (logged; the test fails only on a gross
// difference, as the machine is shared). Minutes of CPU: run it with
// GOPASTA_LOAD_TESTS=1.
func TestCtlTraceOneOfThousand(t *testing.T) {
	if os.Getenv("GOPASTA_LOAD_TESTS") == "" {
		t.Skip("set GOPASTA_LOAD_TESTS=1 to run")
	}
	const flows = 1000
	phase := 3 * time.Second
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	gp := StartGopasta(t, "-c", sock)

	var bulkBytes atomic.Int64
	lb := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	ServeEach(lb, func(c net.Conn) { _, _ = io.CopyBuffer(countWriter{&bulkBytes}, c, make([]byte, 64<<10)) })
	lt := ListenTCPIn(t, gp.Host, "tcp4", "127.0.0.1:0")
	ServeEach(lt, replyDouble)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(stop); wg.Wait() })
	conns := make([]*net.TCPConn, 0, flows)
	for range flows - 1 {
		c, err := DialTCPIn(t, gp.Guest, "tcp4", "", hostPort(HostGW4, lport(lb)))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			buf := make([]byte, 16<<10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				c.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := c.Write(buf); err != nil && !os.IsTimeout(err) {
					return
				}
			}
		}()
	}
	// The traced flow: request/response, 100 bytes for 200, every 5 ms.
	tc := mustDial(t, gp.Guest, "tcp4", hostPort(HostGW4, lport(lt)))
	var exchanges atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		req, resp := make([]byte, 100), make([]byte, 200)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			tc.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := tc.Write(req); err != nil {
				return
			}
			if _, err := io.ReadFull(tc, resp); err != nil {
				return
			}
			exchanges.Add(1)
		}
	}()
	if !Eventually(30*time.Second, func() bool {
		return len(ctlFlows(t, sock, "tcp")) >= flows
	}) {
		t.Fatalf("%d flows, want %d", len(ctlFlows(t, sock, "tcp")), flows)
	}
	time.Sleep(phase) // steady state

	want := " > " + hostPort(HostGW4, lport(lt)) + ": "
	var rates [2][]float64 // without, with a trace
	lines, foreign := 0, 0
	var tracedExchanges int64
	for round := range 3 {
		for traced := range 2 {
			var tr *exec.Cmd
			var got chan [2]int
			if traced == 1 {
				tr = exec.Command(gopastaBin, "ctl", sock, "trace", "tcp", "port", fmt.Sprint(lport(lt)))
				out, _ := tr.StdoutPipe()
				if err := tr.Start(); err != nil {
					t.Fatal(err)
				}
				got = make(chan [2]int, 1)
				go func() {
					n, bad := 0, 0
					s := bufio.NewScanner(out)
					for s.Scan() {
						n++
						if !strings.Contains(s.Text(), want) {
							bad++
							if bad < 3 {
								t.Errorf("line of another flow: %q", s.Text())
							}
						}
					}
					got <- [2]int{n, bad}
				}()
				time.Sleep(200 * time.Millisecond) // attached
			}
			b0, t0, e0 := bulkBytes.Load(), time.Now(), exchanges.Load()
			time.Sleep(phase)
			r := float64(bulkBytes.Load()-b0) / time.Since(t0).Seconds()
			if traced == 1 {
				tracedExchanges += exchanges.Load() - e0
			}
			rates[traced] = append(rates[traced], r)
			if tr != nil {
				tr.Process.Signal(os.Interrupt)
				tr.Wait()
				c := <-got
				lines += c[0]
				foreign += c[1]
			}
			t.Logf("round %d, trace %v: others %.1f MB/s, traced flow %d exchanges", round, traced == 1, r/1e6, exchanges.Load())
		}
	}
	med := func(v []float64) float64 { s := append([]float64(nil), v...); sort.Float64s(s); return s[len(s)/2] }
	without, with := med(rates[0]), med(rates[1])
	t.Logf("1000 flows: others' throughput median %.1f MB/s without a trace, %.1f MB/s with one (ratio %.3f); %d trace lines for %d exchanges, %d of other flows",
		without/1e6, with/1e6, with/without, lines, tracedExchanges, foreign)
	if foreign > 0 {
		t.Fatalf("%d lines of other flows", foreign)
	}
	// Each exchange is a segment each way at least.
	if lines == 0 || int64(lines) < 2*tracedExchanges {
		t.Fatalf("%d trace lines for %d exchanges while traced", lines, tracedExchanges)
	}
	if with < 0.7*without {
		t.Fatalf("throughput with a trace %.1f MB/s, without %.1f MB/s", with/1e6, without/1e6)
	}
}
