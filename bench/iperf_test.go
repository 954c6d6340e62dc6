package bench

import (
	"os/exec"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/e2e"
)

// TestIperfLeg runs the tcp scenario's iperf3 cross-check with short tests
// on a real testbed and checks that all four transfers carried data, that the
// balancer it started is stopped, and that its iperf3 servers are gone.
func TestIperfLeg(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("iperf3"); err != nil {
		e2e.Prereq(t, "iperf3 (Debian package iperf3) for the tcp scenario's iperf3 cross-check")
	}
	if testing.Short() {
		t.Skip("builds the l2lb binary and a testbed")
	}
	e := newTestEnv(t, Options{Exe: buildL2LB(t), Scenarios: []string{"tcp"}, Duration: time.Second, Logf: t.Logf})
	res, err := e.viaIperf3(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: download %.2f Gbit/s via VIP, %.2f direct; upload %.2f via VIP, %.2f direct",
		res.version, res.downVIP/1e9, res.downDirect/1e9, res.upVIP/1e9, res.upDirect/1e9)
	for name, v := range map[string]float64{"download via VIP": res.downVIP, "download direct": res.downDirect,
		"upload via VIP": res.upVIP, "upload direct": res.upDirect} {
		if !(v > 0) {
			t.Errorf("%s = %v bit/s, want > 0", name, v)
		}
	}
	e.mu.Lock()
	bal := e.bal
	e.mu.Unlock()
	if bal != nil {
		t.Error("the balancer the leg started is still running")
	}
	for _, h := range e.backends {
		if err := waitListening(t.Context(), h, iperfPort, 0); err == nil {
			t.Errorf("an iperf3 server still listens on %s", h.Name)
		}
	}
}
