package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Real rootless podman 5 with gopasta as its pasta, through the shared
// end-to-end script (../../shared/podman): 32 checks of what podman relies
// on. The reference pasta runs the same checks first as a control, so a
// broken machine is told apart from a broken gopasta.

var (
	podmanOnce sync.Once
	podmanErr  error
)

const sharedDir = "../../shared"

func needPodman(t *testing.T) {
	t.Helper()
	needRoot(t)
	setup := filepath.Join(sharedDir, "podman", "setup-podman.sh")
	if _, err := os.Stat(setup); err != nil {
		t.Skipf("no podman toolkit at %s", setup)
	}
	if os.Getenv("GOPASTA_SKIP_PODMAN") != "" {
		t.Skip("GOPASTA_SKIP_PODMAN set")
	}
	podmanOnce.Do(func() {
		start := time.Now()
		out, err := exec.Command("bash", setup).CombinedOutput()
		if err != nil {
			podmanErr = err
			t.Logf("setup-podman.sh:\n%s", tail(string(out), 4000))
			return
		}
		t.Logf("setup-podman.sh took %v", time.Since(start).Round(time.Second))
	})
	if podmanErr != nil {
		t.Fatalf("setup-podman.sh: %v", podmanErr)
	}
}

var e2eSummary = regexp.MustCompile(`(?m)^e2e: (\d+) passed, (\d+) failed, (\d+) skipped$`)

// podmanE2E runs the 32 checks with bin as pasta and returns the summary
// line and the output.
func podmanE2E(t *testing.T, bin string) (passed, failed string, out string) {
	t.Helper()
	args := []string{filepath.Join(sharedDir, "podman", "podman-e2e.sh")}
	if bin != "" {
		args = append(args, bin)
	}
	start := time.Now()
	b, _ := exec.Command("bash", args...).CombinedOutput()
	out = string(b)
	m := e2eSummary.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("podman-e2e.sh printed no summary:\n%s", tail(out, 6000))
	}
	t.Logf("podman e2e with %s: %s passed, %s failed, %s skipped in %v",
		map[bool]string{true: "reference pasta", false: "gopasta"}[bin == ""], m[1], m[2], m[3], time.Since(start).Round(time.Second))
	return m[1], m[2], out
}

func failures(out string) string {
	var fs []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "FAIL ") {
			fs = append(fs, "    "+l)
		}
	}
	return strings.Join(fs, "\n")
}

func TestPodmanE2E(t *testing.T) {
	needPodman(t)
	// Control: the reference pasta that setup-podman.sh installed.
	if p, f, out := podmanE2E(t, ""); f != "0" || p != "32" {
		t.Fatalf("control run with the reference pasta failed, the machine is not fit for podman:\n%s", failures(out))
	}
	// podman finds pasta by its name: install the binary as "pasta".
	dir := t.TempDir()
	pasta := filepath.Join(dir, "pasta")
	if err := exec.Command("cp", gopastaBin, pasta).Run(); err != nil {
		t.Fatal(err)
	}
	p, f, out := podmanE2E(t, pasta)
	if f != "0" || p != "32" {
		t.Fatalf("gopasta as podman's pasta: %s passed, %s failed:\n%s", p, f, failures(out))
	}
}
