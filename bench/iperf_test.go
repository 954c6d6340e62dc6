package bench

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/e2e"
)

// TestIperfLeg runs the tcp scenario's iperf3 cross-check with short tests
// on a real testbed, through both fast-path backends, and checks that every
// transfer carried data, that the
// balancer it started is stopped, that its iperf3 servers are gone, and that
// the client's neighbour entry and f1's RPS mask for the kernel-router legs
// were undone.
func TestIperfLeg(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("iperf3"); err != nil {
		e2e.Prereq(t, "iperf3 (Debian package iperf3) for the tcp scenario's iperf3 cross-check")
	}
	if testing.Short() {
		t.Skip("builds the l2lb binary and a testbed")
	}
	e := newTestEnv(t, Options{Exe: buildL2LB(t), Scenarios: []string{"tcp"}, Duration: time.Second, Logf: t.Logf})
	backends := []string{"afpacket", "afxdp"}
	res, err := e.viaIperf3(t.Context(), 1, backends)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: download %.2f Gbit/s direct, %.2f via kernel router, %.2f with RPS; upload %.2f direct; via VIP %v",
		res.version, res.downDirect/1e9, res.downRouter/1e9, res.downRouterRPS/1e9, res.upDirect/1e9, res.vip)
	got := map[string]float64{"download direct": res.downDirect, "download direct again": res.downDirectAgain, "upload direct": res.upDirect,
		"download via kernel router": res.downRouter, "download via kernel router with RPS": res.downRouterRPS}
	for _, b := range backends {
		got["download via VIP on "+b], got["upload via VIP on "+b] = res.vip[b].down, res.vip[b].up
	}
	for name, v := range got {
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
	if out, err := e.client.RunIP("neigh", "show", e.vip.String(), "dev", "eth0"); err != nil || strings.Contains(string(out), "PERMANENT") {
		t.Errorf("client's neighbour entry for the VIP after the leg: %q (%v), want none", out, err)
	}
	if b, err := e.lb.Command("cat", "/sys/class/net/eth0/queues/rx-0/rps_cpus").Output(); err != nil || strings.Trim(string(b), "0,\n") != "" {
		t.Errorf("f1 eth0 rps_cpus after the leg: %q (%v), want 0", b, err)
	}
	for _, h := range e.backends {
		if err := waitListening(t.Context(), h, iperfPort, 0); err == nil {
			t.Errorf("an iperf3 server still listens on %s", h.Name)
		}
	}
}

// TestDownRef checks the download ratios' reference: the mean of the direct
// downloads that bracket the other legs, or the first alone when the second
// is missing.
func TestDownRef(t *testing.T) {
	for _, c := range []struct{ first, again, want float64 }{
		{20e9, 16e9, 18e9},
		{20e9, 0, 20e9},
	} {
		r := iperfResult{downDirect: c.first, downDirectAgain: c.again}
		if got := r.downRef(); got != c.want {
			t.Errorf("downRef of %v then %v = %v, want %v", c.first, c.again, got, c.want)
		}
	}
}
