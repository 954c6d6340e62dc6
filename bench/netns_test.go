package bench

import (
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// requireRoot fails (CI=true) or skips when namespaces cannot be built.
func requireRoot(t *testing.T) {
	t.Helper()
	var missing string
	if os.Geteuid() != 0 {
		missing = "root privileges"
	} else {
		for _, tool := range []string{"ip", "bridge"} {
			if _, err := exec.LookPath(tool); err != nil {
				missing = "iproute2's " + tool
			}
		}
	}
	e2e.Require(t, missing, "l2lb bench")
}

// buildL2LB builds the l2lb binary the scenarios run (static, like .ci/run's
// build) into a temporary directory and returns its path.
func buildL2LB(t *testing.T) string {
	t.Helper()
	exe := filepath.Join(t.TempDir(), "l2lb")
	build := exec.Command("go", "build", "-o", exe, "github.com/l2lb/l2lb/cmd/l2lb")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return exe
}

// newTestEnv builds the testbed for o (normalized) and removes it when the
// test ends, failing the test if that leaves anything behind.
func newTestEnv(t *testing.T, o Options) *env {
	t.Helper()
	if err := o.normalize(); err != nil {
		t.Fatal(err)
	}
	e, err := newEnv(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.close(); err != nil {
			t.Error(err)
		}
	})
	return e
}

// ourNamespaces lists namespaces this test process created.
func ourNamespaces(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("/run/netns")
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	prefix := testbed.NamePrefix + itoa(os.Getpid()) + "-"
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestSmokePPSConn runs pps and conn once for a short phase against the
// real binary and checks that every figure is positive and that nothing is
// left behind.
func TestSmokePPSConn(t *testing.T) {
	requireRoot(t)
	if testing.Short() {
		t.Skip("builds the l2lb binary and a testbed")
	}
	exe := buildL2LB(t)
	t.Cleanup(func() {
		// Run removes the bed itself; this is the safety net if it did not.
		for _, ns := range ourNamespaces(t) {
			exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	rep, err := Run(t.Context(), Options{Exe: exe, Scenarios: []string{"pps", "conn"}, Runs: 1,
		Duration: 800 * time.Millisecond, Workers: []int{2}, Backends: []string{"afpacket", "afxdp"}, PPSRate: 20000, Logf: t.Logf,
		// go test runs packages in parallel: the machine is not quiet, and
		// the smoke test only measures it.
		QuietWait: -1})
	if err != nil {
		t.Fatal(err)
	}
	if left := ourNamespaces(t); len(left) > 0 {
		t.Errorf("namespaces left after Run: %v", left)
	}
	want := map[string][]string{
		"pps": {"direct delivered", "kernel delivered", "kernel offered", "kernel loss-free rate", "kernel RPS delivered", "l2lb w2 delivered", "l2lb w2 offered",
			"l2lb w2 / kernel", "l2lb w2 / kernel RPS", "l2lb w2 loss-free rate", "l2lb w2 balancer CPU/frame", "l2lb w2 balancer CPU/frame incl. receivers",
			// AF_XDP with 2 workers: the bench gives the veth 2 queues, one socket each.
			"l2lb afxdp w2 delivered", "l2lb afxdp w2 / kernel RPS", "l2lb afxdp w2 loss-free rate", "l2lb afxdp w2 balancer CPU/frame"},
		// conn measures every backend in the same run; afpacket's names have no prefix.
		"conn": {"via VIP", "direct", "VIP/direct", "afxdp via VIP", "afxdp VIP/direct"},
	}
	for _, sc := range rep.Scenarios {
		if sc.Error != "" {
			t.Errorf("%s: %s", sc.Name, sc.Error)
			continue
		}
		if len(sc.BusyAtStart) != 1 || sc.BusyAtStart[0] < 0 || sc.BusyAtStart[0] > 1 {
			t.Errorf("%s: CPUs busy before the run %v, want one share in [0, 1]", sc.Name, sc.BusyAtStart)
		}
		for _, name := range want[sc.Name] {
			m := sc.metric(name, "")
			if len(m.Values) != 1 || !(m.Median > 0) {
				t.Errorf("%s %q = %v, want one positive value", sc.Name, name, m.Values)
			}
		}
	}
	// Forwarding CPU is a difference of whole-machine busy times, so other
	// tests running beside this one (go test runs packages in parallel) can
	// make it negative: it must be there and finite, not positive.
	for _, sc := range rep.Scenarios {
		if sc.Name != "pps" || sc.Error != "" {
			continue
		}
		for _, name := range []string{"kernel forwarding CPU/frame", "kernel RPS forwarding CPU/frame", "l2lb w2 forwarding CPU/frame"} {
			if m := sc.metric(name, ""); len(m.Values) != 1 || math.IsNaN(m.Median) || math.IsInf(m.Median, 0) {
				t.Errorf("pps %q = %v, want one finite value", name, m.Values)
			}
		}
	}
	var buf strings.Builder
	rep.WriteTable(&buf)
	t.Logf("\n%s", buf.String())
}
