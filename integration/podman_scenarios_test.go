package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Podman scenarios the shared e2e script does not cover: real rootless
// podman 5 (as the unprivileged user setup-podman.sh made), gopasta as its
// pasta, and assertions on what a user would see -- bytes through the
// forwarded ports and outbound connections, exit codes, how fast the pasta
// daemons go away after podman deletes their namespace, ports free again,
// and the exact error text podman prints.
//
// # Theory of operation
//
// Each test gets its own podRig: a private copy of the gopasta binary named
// "pasta" (podman finds its helper by name; the wrapper setup-podman.sh put
// in podman's helper_binaries_dir runs $PASTA_UNDER_TEST) and its own
// wrapper log, where every pasta invocation leaves its argv. The copy's path
// is what tells this test's pasta daemons apart from any other podman user
// on the machine: a process whose /proc/PID/exe is the copy belongs to this
// test. The wrapper log gives the --netns paths podman handed to pasta,
// which must all be gone once the containers are. Every container and pod
// carries the rig's name prefix, so cleanup removes exactly those (and
// kills any leftover daemon by pid) without touching containers that other
// tests, such as the e2e script, may be running as the same user.

const (
	podPrefix = "/var/tmp/gopasta-podman"
	podUser   = "podtest"
	podImage  = "localhost/bbtest:latest"
)

// podRig is one test's view of rootless podman with gopasta as pasta.
type podRig struct {
	t       *testing.T
	dir     string // holds "pasta" and the wrapper log; readable by podUser
	pasta   string
	wlog    string
	prefix  string // name prefix of every container and pod the test makes
	uid     int
	netnsIn string // podman's netns directory, /run/user/UID/netns
}

// newPodRig sets up podman (or skips) and installs the current gopasta as
// the test's pasta. Cleanup removes the test's containers and pods and
// kills any pasta daemon of this test that is still around (the tests
// assert separately that none is).
func newPodRig(t *testing.T) *podRig {
	t.Helper()
	needPodman(t)
	needTool(t, "python3", "runuser")
	if _, err := os.Stat(filepath.Join(podPrefix, "bin", "podman")); err != nil {
		t.Skipf("podman not set up at %s: %v", podPrefix, err)
	}
	u, err := user.Lookup(podUser)
	if err != nil {
		t.Skipf("no user %s: %v", podUser, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	dir, err := os.MkdirTemp("", "gopasta-pm-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r := &podRig{
		t: t, dir: dir, pasta: filepath.Join(dir, "pasta"), wlog: filepath.Join(dir, "wrapper.log"),
		prefix: "gpsc-" + uniq(), uid: uid, netnsIn: fmt.Sprintf("/run/user/%d/netns", uid),
	}
	if out, err := exec.Command("install", "-m", "755", gopastaBin, r.pasta).CombinedOutput(); err != nil {
		t.Fatalf("install pasta: %v %s", err, out)
	}
	// The wrapper appends to its log as the unprivileged user.
	if err := os.WriteFile(r.wlog, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	_ = os.Chown(r.wlog, uid, -1)
	t.Cleanup(r.cleanup)
	return r
}

func (r *podRig) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	filter := "name=^" + r.prefix
	if out, err := r.pmCtx(ctx, "pod", "ps", "-q", "--filter", filter); err == nil {
		if ids := strings.Fields(out); len(ids) > 0 {
			_, _ = r.pmCtx(ctx, append([]string{"pod", "rm", "-f", "-t", "0"}, ids...)...)
		}
	}
	if out, err := r.pmCtx(ctx, "ps", "-aq", "--filter", filter); err == nil {
		if ids := strings.Fields(out); len(ids) > 0 {
			_, _ = r.pmCtx(ctx, append([]string{"rm", "-f", "-t", "0"}, ids...)...)
		}
	}
	for _, pid := range r.daemons() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if r.t.Failed() {
		r.t.Logf("pasta wrapper log (argv of every pasta run):\n%s", tail(r.cmdlines(), 4000))
	}
	os.RemoveAll(r.dir)
}

// name returns a container or pod name the rig's cleanup will find.
func (r *podRig) name(s string) string { return r.prefix + "-" + s }

// pm runs podman as the unprivileged user the way podman-e2e.sh does and
// returns its combined output; each call is bounded by 60 s.
func (r *podRig) pm(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return r.pmCtx(ctx, args...)
}

func (r *podRig) pmCtx(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "runuser", append([]string{"-u", podUser, "--",
		"env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8",
		fmt.Sprintf("XDG_RUNTIME_DIR=/run/user/%d", r.uid),
		"PASTA_UNDER_TEST=" + r.pasta, "PASTA_WRAPPER_LOG=" + r.wlog,
		filepath.Join(podPrefix, "bin", "podman")}, args...)...)
	cmd.Dir = "/"
	// podman's children (conmon, pasta) daemonize into their own sessions;
	// the group kill only stops a podman that hangs past the deadline.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustPM is pm failing the test on a non-zero exit.
func (r *podRig) mustPM(args ...string) string {
	r.t.Helper()
	out, err := r.pm(args...)
	if err != nil {
		r.t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// daemons lists the live (not zombie) processes running this rig's pasta.
func (r *podRig) daemons() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == r.pasta && pidAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitDaemons waits up to d for the number of this rig's pasta daemons
// to drop to at most n and returns how long that took, or fails.
func (r *podRig) waitDaemons(n int, d time.Duration, what string) time.Duration {
	r.t.Helper()
	start := time.Now()
	var left []int
	if !Eventually(d, func() bool { left = r.daemons(); return len(left) <= n }) {
		r.t.Fatalf("%s: %d pasta daemon(s) %v still running %v later, want %d", what, len(left), left, d, n)
	}
	return time.Since(start)
}

var netnsArg = regexp.MustCompile(`--netns (\S+)`)

// cmdlines returns the wrapper's "cmdline:" lines, one per pasta run.
func (r *podRig) cmdlines() string {
	b, _ := os.ReadFile(r.wlog)
	var ls []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "cmdline: ") {
			ls = append(ls, l)
		}
	}
	return strings.Join(ls, "\n")
}

// runs counts pasta invocations, excluding `pasta --version` (podman info).
func (r *podRig) runs() int {
	return len(netnsArg.FindAllString(r.cmdlines(), -1))
}

// netnsPaths returns the namespace files podman gave this rig's pasta.
func (r *podRig) netnsPaths() []string {
	var ps []string
	for _, m := range netnsArg.FindAllStringSubmatch(r.cmdlines(), -1) {
		ps = append(ps, m[1])
	}
	return ps
}

// checkNoNetns fails if any namespace file this rig's pasta was given is
// still there after d.
func (r *podRig) checkNoNetns(d time.Duration) {
	r.t.Helper()
	var left []string
	ok := Eventually(d, func() bool {
		left = left[:0]
		for _, p := range r.netnsPaths() {
			if _, err := os.Stat(p); err == nil {
				left = append(left, p)
			}
		}
		return len(left) == 0
	})
	if !ok {
		r.t.Errorf("leaked netns files: %v", left)
	}
}

// freePort returns a TCP port nothing listens on, v4 or v6, in the real
// host namespace. The tests only ever use ports from here.
func freePort(t *testing.T) int {
	t.Helper()
	return freePorts(t, 1)[0]
}

// freePorts returns n distinct ports free now. All n stay bound until the
// last is chosen: closed one by one, the kernel may hand out the same
// ephemeral port twice in a row (it did, in CI, to two parallel
// containers).
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", ":0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// checkPortFree fails unless port can be bound again on 0.0.0.0 and on
// [::] separately: pasta binds both families, and either left behind
// would make the next `podman run -p` fail.
func checkPortFree(t *testing.T, port int) {
	t.Helper()
	for _, nw := range []struct{ net, addr string }{{"tcp4", "0.0.0.0"}, {"tcp6", "[::]"}} {
		if nw.net == "tcp6" && !hostHasIPv6() {
			continue
		}
		l, err := net.Listen(nw.net, fmt.Sprintf("%s:%d", nw.addr, port))
		if err != nil {
			t.Errorf("port %d not released (%s): %v", port, nw.net, err)
			continue
		}
		l.Close()
	}
}

func hostHasIPv6() bool {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// hostServer serves dir over HTTP with python3 on 0.0.0.0 in the real host
// namespace: containers reach it through host.containers.internal, which
// podman maps (--map-guest-addr) to the host's own address.
func hostServer(t *testing.T, dir string) int {
	t.Helper()
	port := freePort(t)
	cmd := exec.Command("python3", "-m", "http.server", strconv.Itoa(port), "--bind", "0.0.0.0", "--directory", dir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("host http.server log:\n%s", tail(out.String(), 3000))
		}
	})
	if !Eventually(10*time.Second, func() bool { _, err := httpGet(port, "/"); return err == nil }) {
		t.Fatalf("python3 http.server on port %d did not come up:\n%s", port, out.String())
	}
	return port
}

var httpClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// httpGet fetches http://127.0.0.1:port/path and returns the body of a 200.
func httpGet(port int, path string) ([]byte, error) {
	return httpGetFrom("127.0.0.1", port, path)
}

// httpGetFrom is httpGet to another host address.
func httpGetFrom(addr string, port int, path string) ([]byte, error) {
	resp, err := httpClient.Get("http://" + net.JoinHostPort(addr, strconv.Itoa(port)) + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return b, fmt.Errorf("%s: %s", path, resp.Status)
	}
	return b, nil
}

// waitGet polls a forwarded port until the container behind it serves
// path (pasta accepts on the host before the container's server listens;
// such early connections are reset) and returns the body.
func waitGet(t *testing.T, port int, path string, d time.Duration) []byte {
	t.Helper()
	var (
		b   []byte
		err error
	)
	if !Eventually(d, func() bool { b, err = httpGet(port, path); return err == nil }) {
		t.Fatalf("GET 127.0.0.1:%d%s: no answer in %v: %v", port, path, d, err)
	}
	return b
}

func randomHex(n int) string {
	b := make([]byte, n/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:8])
}

// TestPodmanParallelContainers starts 8 containers at once, each with its
// own -p forward and an outbound fetch from a host server; every port must
// answer with its own container's bytes, and removing them must end every
// pasta, remove every namespace file and release every port.
func TestPodmanParallelContainers(t *testing.T) {
	r := newPodRig(t)
	const n = 8
	www := t.TempDir()
	_ = os.Chmod(www, 0o755)
	host := make([][]byte, n)
	for i := range host {
		host[i] = make([]byte, 256<<10+i) // differently sized, random: a swap or a cut shows
		_, _ = rand.Read(host[i])
		if err := os.WriteFile(filepath.Join(www, fmt.Sprintf("c%d.bin", i)), host[i], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	srv := hostServer(t, www)

	ports := freePorts(t, n)
	toks := make([]string, n)
	names := make([]string, n)
	for i := range ports {
		toks[i] = fmt.Sprintf("container-%d-%s", i, randomHex(32))
		names[i] = r.name(fmt.Sprintf("par%d", i))
	}
	start := time.Now()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// fetch first, then serve: a served fetched.bin proves the
			// outbound connection completed; a failure is served as a marker.
			script := fmt.Sprintf(`echo "$TOK" > /www/own.txt; `+
				`timeout 20 wget -q -O /www/fetched.bin http://host.containers.internal:%d/c%d.bin || echo FETCH-FAILED > /www/fetched.bin; `+
				`exec httpd -f -p 8080 -h /www`, srv, i)
			out, err := r.pm("run", "-d", "--name", names[i], "--network", "pasta",
				"-p", fmt.Sprintf("%d:8080", ports[i]), "-e", "TOK="+toks[i], podImage, "sh", "-c", script)
			if err != nil {
				errs[i] = fmt.Errorf("podman run %s: %v: %s", names[i], err, strings.TrimSpace(out))
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d containers started in parallel in %v", n, time.Since(start).Round(time.Millisecond))
	if got := len(r.daemons()); got != n {
		t.Errorf("%d pasta daemons running for %d containers", got, n)
	}

	for i := range n {
		own := waitGet(t, ports[i], "/own.txt", 20*time.Second)
		if string(own) != toks[i]+"\n" {
			t.Errorf("port %d (container %d) served %q, want its own token %q", ports[i], i, own, toks[i])
		}
		if hostHasIPv6() { // the same forward, through pasta's IPv6 listener
			if b, err := httpGetFrom("::1", ports[i], "/own.txt"); err != nil || string(b) != toks[i]+"\n" {
				t.Errorf("[::1]:%d (container %d) served %q (%v), want its own token", ports[i], i, b, err)
			}
		}
		fetched := waitGet(t, ports[i], "/fetched.bin", 20*time.Second)
		if !bytes.Equal(fetched, host[i]) {
			t.Errorf("container %d: fetched %d bytes (sha %s, head %q), want host's %d bytes (sha %s)",
				i, len(fetched), sum(fetched), fetched[:min(len(fetched), 16)], len(host[i]), sum(host[i]))
		}
	}
	t.Logf("forwards and outbound fetches verified after %v", time.Since(start).Round(time.Millisecond))

	if got := r.runs(); got != n {
		t.Errorf("podman ran pasta %d times for %d containers:\n%s", got, n, r.cmdlines())
	}
	rm := time.Now()
	r.mustPM(append([]string{"rm", "-f", "-t", "0"}, names...)...)
	returned := time.Since(rm)
	gone := r.waitDaemons(0, 2*time.Second, "after podman rm")
	t.Logf("podman rm of %d containers took %v; last pasta gone %v after it returned",
		n, returned.Round(time.Millisecond), gone.Round(time.Millisecond))
	r.checkNoNetns(2 * time.Second)
	for _, p := range ports {
		checkPortFree(t, p)
	}
}

// daemonLife is what a daemonWatch saw of one pasta process.
type daemonLife struct {
	first, last time.Time // first and last seen alive
	netns       string    // its --netns argument
	nsGone      time.Time // first seen without its namespace file (zero: never)
}

// daemonWatch samples a rig's pasta processes in the background every
// 20 ms, for checks on daemons too short-lived to catch between two
// podman calls: when each was alive, and when its namespace file went.
type daemonWatch struct {
	stop chan struct{}
	done chan map[int]*daemonLife
}

func (r *podRig) watchDaemons() *daemonWatch {
	w := &daemonWatch{stop: make(chan struct{}), done: make(chan map[int]*daemonLife, 1)}
	go func() {
		seen := map[int]*daemonLife{}
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			now := time.Now()
			for _, pid := range r.daemons() {
				l := seen[pid]
				if l == nil {
					l = &daemonLife{first: now}
					if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
						if m := netnsArg.FindSubmatch(bytes.ReplaceAll(b, []byte{0}, []byte{' '})); m != nil {
							l.netns = string(m[1])
						}
					}
					seen[pid] = l
				}
				l.last = now
			}
			for _, l := range seen {
				if l.netns != "" && l.nsGone.IsZero() {
					if _, err := os.Stat(l.netns); err != nil {
						l.nsGone = now
					}
				}
			}
			select {
			case <-w.stop:
				w.done <- seen
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

// Stop ends the sampling and returns what it saw, by pid.
func (w *daemonWatch) Stop() map[int]*daemonLife {
	close(w.stop)
	return <-w.done
}

// TestPodmanExitAtOnce runs containers whose process exits immediately,
// 20 times without and 20 times with a port forward, back to back as a
// script would: each podman run must exit 0 promptly (with -p: the same
// host port again at once, so the previous pasta must have released it in
// the time podman takes to return), and no pasta may outlive the end of
// its container by more than 2 s. A background sampler sees the daemons,
// since most live only a few hundred milliseconds.
func TestPodmanExitAtOnce(t *testing.T) {
	r := newPodRig(t)
	port := freePort(t)
	const rounds = 20
	for _, withPort := range []bool{false, true} {
		w := r.watchDaemons()
		type span struct{ start, end time.Time }
		var runs []span
		var worstRun time.Duration
		for i := range rounds {
			args := []string{"run", "--rm", "--name", r.name(fmt.Sprintf("quick%v%d", withPort, i)), "--network", "pasta"}
			if withPort {
				args = append(args, "-p", fmt.Sprintf("%d:80", port))
			}
			args = append(args, podImage, "true")
			start := time.Now()
			out, err := r.pm(args...)
			took := time.Since(start)
			runs = append(runs, span{start, time.Now()})
			if err != nil {
				w.Stop()
				t.Fatalf("-p=%v round %d: podman run ... true: %v after %v:\n%s", withPort, i, err, took, out)
			}
			if took > 10*time.Second {
				t.Errorf("-p=%v round %d: podman run ... true took %v", withPort, i, took)
			}
			worstRun = max(worstRun, took)
		}
		// The last daemon gets its 2 s too.
		r.waitDaemons(0, 2*time.Second, fmt.Sprintf("-p=%v after the last run", withPort))
		seen := w.Stop()
		// A daemon belongs to the last run started before it was first
		// seen; its container ended when that podman run returned.
		var worstAfter, worstNs time.Duration
		for pid, l := range seen {
			i := sort.Search(len(runs), func(i int) bool { return runs[i].start.After(l.first) }) - 1
			if i < 0 {
				t.Errorf("pasta %d seen before any run", pid)
				continue
			}
			after := l.last.Sub(runs[i].end)
			worstAfter = max(worstAfter, after)
			if after > 2*time.Second {
				t.Errorf("-p=%v: pasta %d of round %d still alive %v after its podman run returned", withPort, pid, i, after.Round(time.Millisecond))
			}
			if !l.nsGone.IsZero() {
				ns := l.last.Sub(l.nsGone)
				worstNs = max(worstNs, ns)
				if ns > 2*time.Second {
					t.Errorf("-p=%v: pasta %d of round %d still alive %v after its netns file %s went", withPort, pid, i, ns.Round(time.Millisecond), l.netns)
				}
			}
		}
		t.Logf("-p=%v: %d runs back to back, slowest %v; sampler saw %d pasta processes, alive at most %v after podman returned, %v after their netns file went",
			withPort, rounds, worstRun.Round(time.Millisecond), len(seen), worstAfter.Round(time.Millisecond), worstNs.Round(time.Millisecond))
	}
	if got := r.runs(); got != 2*rounds {
		t.Errorf("pasta ran %d times for %d containers", got, 2*rounds)
	}
	if b, _ := os.ReadFile(r.wlog); bytes.Count(b, []byte(" exit=0\n")) != 2*rounds {
		t.Errorf("not every pasta parent exited 0:\n%s", regexp.MustCompile(`(?m)^=== .* exit=\d+$`).FindAllString(string(b), -1))
	}
	r.checkNoNetns(2 * time.Second)
	checkPortFree(t, port)
}

// TestPodmanPod runs a pod with a forwarded port: one container serves on
// it, another (sharing the pod's namespace, so the same pasta) fetches
// from the host. Stopping and starting the pod must replace its pasta;
// removing the pod must end it within 2 s and free the port.
func TestPodmanPod(t *testing.T) {
	r := newPodRig(t)
	www := t.TempDir()
	_ = os.Chmod(www, 0o755)
	hostTok := "from-host-" + randomHex(64)
	if err := os.WriteFile(filepath.Join(www, "pod.txt"), []byte(hostTok), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := hostServer(t, www)
	port := freePort(t)
	pod := r.name("pod")
	podTok := "from-pod-" + randomHex(64)

	r.mustPM("pod", "create", "--name", pod, "--network", "pasta", "-p", fmt.Sprintf("%d:8080", port))
	r.mustPM("run", "-d", "--pod", pod, "--name", r.name("podweb"), "-e", "TOK="+podTok, podImage,
		"sh", "-c", `echo "$TOK" > /www/pod.txt; exec httpd -f -p 8080 -h /www`)
	if got := string(waitGet(t, port, "/pod.txt", 20*time.Second)); got != podTok+"\n" {
		t.Errorf("pod forward %d served %q, want %q", port, got, podTok)
	}
	out := r.mustPM("run", "--rm", "--pod", pod, "--name", r.name("podfetch"), podImage, "sh", "-c",
		fmt.Sprintf("timeout 20 wget -q -O- http://host.containers.internal:%d/pod.txt; echo; "+
			"timeout 20 wget -q -O- http://127.0.0.1:8080/pod.txt", srv))
	if want := hostTok + "\n" + podTok + "\n"; out != want {
		t.Errorf("second container in the pod printed %q, want host's then its sibling's token %q", out, want)
	}
	if d := r.daemons(); len(d) != 1 || r.runs() != 1 {
		t.Errorf("pod: %d pasta daemons %v, %d pasta runs; want one of each:\n%s", len(d), d, r.runs(), r.cmdlines())
	}

	// A stopped pod's namespace is gone: its pasta must go with it, and the
	// restarted pod's new pasta must get the port back.
	r.mustPM("pod", "stop", "-t", "0", pod)
	r.waitDaemons(0, 2*time.Second, "after podman pod stop")
	r.mustPM("pod", "start", pod)
	if got := string(waitGet(t, port, "/pod.txt", 20*time.Second)); got != podTok+"\n" {
		t.Errorf("after pod stop/start, forward %d served %q, want %q", port, got, podTok)
	}
	if d := r.daemons(); len(d) != 1 || r.runs() != 2 {
		t.Errorf("pod restarted: %d pasta daemons %v, %d pasta runs; want 1 and 2", len(d), d, r.runs())
	}

	rm := time.Now()
	r.mustPM("pod", "rm", "-f", "-t", "0", pod)
	returned := time.Since(rm)
	gone := r.waitDaemons(0, 2*time.Second, "after podman pod rm")
	t.Logf("podman pod rm took %v, pasta gone %v after it returned", returned.Round(time.Millisecond), gone.Round(time.Millisecond))
	r.checkNoNetns(2 * time.Second)
	checkPortFree(t, port)
}

// TestPodmanRestart restarts a container with a forwarded port 5 times:
// the old pasta must have let go of the port before the new one binds it,
// and the port must serve the restarted container each time.
func TestPodmanRestart(t *testing.T) {
	r := newPodRig(t)
	port := freePort(t)
	c := r.name("restart")
	// Each start appends a line: the count shows which incarnation serves.
	r.mustPM("run", "-d", "--name", c, "--network", "pasta", "-p", fmt.Sprintf("%d:8080", port), podImage,
		"sh", "-c", `echo "boot $(date +%s%N)" >> /www/boots; exec httpd -f -p 8080 -h /www`)
	if got := bytes.Count(waitGet(t, port, "/boots", 20*time.Second), []byte("boot ")); got != 1 {
		t.Fatalf("first start: %d boot lines", got)
	}
	var worst time.Duration
	for i := 1; i <= 5; i++ {
		start := time.Now()
		out, err := r.pm("restart", "-t", "0", c)
		took := time.Since(start)
		if strings.Contains(out, "Address already in use") {
			t.Fatalf("restart %d: %s", i, out)
		}
		if err != nil {
			t.Fatalf("restart %d: %v:\n%s", i, err, out)
		}
		// Served by the new incarnation: its line is in the file.
		var body []byte
		if !Eventually(20*time.Second, func() bool {
			b, err := httpGet(port, "/boots")
			body = b
			return err == nil && bytes.Count(b, []byte("boot ")) == i+1
		}) {
			t.Fatalf("restart %d: port %d serves %q, want %d boot lines", i, port, body, i+1)
		}
		r.waitDaemons(1, 2*time.Second, fmt.Sprintf("restart %d", i))
		worst = max(worst, took)
	}
	t.Logf("5 restarts, slowest podman restart %v", worst.Round(time.Millisecond))
	if got := r.runs(); got != 6 {
		t.Errorf("pasta ran %d times for 1 run + 5 restarts", got)
	}
	r.mustPM("rm", "-f", "-t", "0", c)
	r.waitDaemons(0, 2*time.Second, "after podman rm")
	r.checkNoNetns(2 * time.Second)
	checkPortFree(t, port)
}

// TestPodmanErrors checks that what podman shows when pasta refuses to
// start is pasta's one clear line, and that nothing is left behind.
func TestPodmanErrors(t *testing.T) {
	r := newPodRig(t)
	port := freePort(t)
	// Held on both families (a dual-stack socket), so neither of pasta's
	// binds can succeed.
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	cases := []struct {
		name string
		args []string
		want string // the whole line pasta prints ("" = just one line containing wantSub)
		sub  string
	}{
		{"port in use", []string{"--network", "pasta", "-p", fmt.Sprintf("%d:80", port)},
			fmt.Sprintf("Failed to bind port %d (Address already in use) for option '-t %d-%d:80-80', exiting", port, port, port), ""},
		{"unknown option", []string{"--network", "pasta:--no-such-option-gpsc"}, "", "--no-such-option-gpsc"},
		{"bad port", []string{"--network", "pasta:-t,99999"}, "", "99999"},
		{"bad mtu", []string{"--network", "pasta:--mtu,70000"}, "", "70000"},
	}
	for i, c := range cases {
		args := append([]string{"run", "--rm", "--name", r.name(fmt.Sprintf("err%d", i))}, c.args...)
		out, err := r.pm(append(args, podImage, "true")...)
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Errorf("%s: podman run succeeded or did not run (%v):\n%s", c.name, err, out)
			continue
		}
		// podman: "Error: pasta failed with exit code N:\n<pasta's output>"
		_, after, ok := strings.Cut(out, "pasta failed with exit code 1:\n")
		if !ok {
			t.Errorf("%s: podman did not report pasta's failure (exit %d):\n%s", c.name, ee.ExitCode(), out)
			continue
		}
		var lines []string
		for _, l := range strings.Split(after, "\n") {
			if strings.TrimSpace(l) != "" {
				lines = append(lines, l)
			}
		}
		switch {
		case len(lines) != 1:
			t.Errorf("%s: pasta printed %d lines, want one:\n%s", c.name, len(lines), after)
		case c.want != "" && lines[0] != c.want:
			t.Errorf("%s: pasta printed\n\t%q\nwant\n\t%q", c.name, lines[0], c.want)
		case c.sub != "" && !strings.Contains(lines[0], c.sub):
			t.Errorf("%s: pasta's line %q does not name %q", c.name, lines[0], c.sub)
		default:
			t.Logf("%s: %s", c.name, lines[0])
		}
	}
	r.waitDaemons(0, 2*time.Second, "after failed starts")
	r.checkNoNetns(2 * time.Second)
	if out, _ := r.pm("ps", "-aq", "--filter", "name=^"+r.prefix); strings.TrimSpace(out) != "" {
		t.Errorf("containers left after failed --rm runs: %s", out)
	}
	// The failed pasta must not have taken the v6 or v4 half of the port
	// behind the holder's back: once the holder closes, both are free.
	l.Close()
	checkPortFree(t, port)
}
