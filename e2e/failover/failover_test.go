package failover

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// Acceptance bounds of issue 4.
const (
	crashRecovery = 3 * time.Second // traffic to the VIP flows again after a crash
	minSurvival   = 0.99            // fraction of established streams that survive a crash
	// handoverLimit bounds the SIGTERM hand-over: the lead's smoke run saw
	// about 150 ms; cluster.handoverWait allows 3 s before giving up.
	handoverLimit = 3 * time.Second
	// newConnGap bounds the longest time new connections see no success
	// during a planned hand-over: a lost SYN costs the 1 s initial RTO
	// (RFC 6298 section 2), which "unaffected" must not need.
	newConnGap = time.Second
	// warmup is how long traffic runs before an event, so that the
	// persistent clients have a "before".
	warmup = 2 * time.Second
	// settle is how long traffic runs after an event before it is judged.
	settle = 3 * time.Second
)

// scenario is a testbed with the three nodes running, the echo and name
// servers on every frontend, the streams established and replicated, and
// optionally the persistent clients running.
type scenario struct {
	bed   *testbed.Bed
	cl    *cluster
	echo  *echoServers
	srcs  []e2e.Source
	ss    *e2e.Streams
	probe *prober
	since time.Time // when the persistent clients started
}

func setup(t *testing.T, probe bool, extra ...string) *scenario {
	t.Helper()
	sc := &scenario{bed: newBed(t)}
	for _, f := range sc.bed.Frontends {
		if _, err := f.ServeName(sc.bed.VIPs[0], []uint16{namePort}, nil); err != nil {
			t.Fatal(err)
		}
	}
	sc.echo = startEcho(t, sc.bed)
	sc.srcs = sources(t, sc.bed, 4)
	sc.cl = startCluster(t, sc.bed, extra...)
	sc.ss = startStreams(t, sc.bed, sc.echo, sc.srcs, numStreams)
	sc.cl.waitSynced(numStreams, 10*time.Second)
	if probe {
		// The persistent clients: both addresses of each client.
		sc.since = time.Now()
		var ps []e2e.Source
		for _, s := range sc.srcs {
			if s.Addr == s.Host.Addr || (len(s.Host.Extra) > 0 && s.Addr == s.Host.Extra[0]) {
				ps = append(ps, s)
			}
		}
		sc.probe = startProber(t, sc.bed, ps)
	}
	time.Sleep(warmup)
	return sc
}

// TestPlannedHandover: SIGTERM to the active node hands the role over with no
// connection reset, every byte intact, and new connections unaffected.
func TestPlannedHandover(t *testing.T) {
	sc := setup(t, true)
	f1 := sc.cl.node("f1")
	t0 := f1.signal(syscall.SIGTERM)
	succ, at, ok := sc.cl.waitRoleActive(t0, handoverLimit, "f1")
	if !ok {
		t.Fatalf("no node took the active role within %v of SIGTERM to f1", handoverLimit)
	}
	t.Logf("planned hand-over: %s active %v after SIGTERM to f1", succ.host.Name, at.Sub(t0).Round(time.Millisecond))
	if !f1.waitExit(10 * time.Second) {
		t.Errorf("f1: l2lb still running 10 s after SIGTERM")
	} else if err := f1.err(); err != nil {
		t.Errorf("f1: l2lb did not exit 0 on SIGTERM: %v", err)
	}
	if _, ok := f1.findLog(t0, "handed over the active role"); !ok {
		t.Errorf("f1 did not log \"handed over the active role\" on SIGTERM")
	}
	time.Sleep(settle)
	end := time.Now()
	sc.probe.halt()
	if got := sc.cl.waitSingleActive(5*time.Second, time.Second); got != succ.host.Name {
		t.Errorf("after the hand-over the single active node is %q, want %s", got, succ.host.Name)
	}

	if okB, failedB, errB, _ := sc.probe.window(sc.since, t0); failedB > 0 {
		t.Errorf("before the hand-over: %d new connections ok, %d failed; first: %v", okB, failedB, errB)
	}
	okN, failed, firstErr, gap := sc.probe.window(t0, end)
	t.Logf("new connections during and after the hand-over: %d ok, %d failed, longest gap between successes %v",
		okN, failed, gap.Round(time.Millisecond))
	if failed > 0 {
		t.Errorf("%d new connections failed across the hand-over; first: %v", failed, firstErr)
	}
	if gap > newConnGap {
		t.Errorf("new connections saw no success for %v across the hand-over, want under %v", gap.Round(time.Millisecond), newConnGap)
	}
	// f1's l2lb left the group, so clients persisted to f1 may move (its
	// templates point at a departed member); the others must stay.
	before, after := sc.probe.frontends(sc.since, t0), sc.probe.frontends(t0, end)
	for a, b := range before {
		if b["f1"] > 0 {
			delete(before, a)
		}
	}
	sc.probe.checkPersistence(t, before, after)

	res := sc.ss.Finish(t0)
	kept, total, resets, bytes := sc.ss.Report(res, e2e.AllStreams)
	t.Logf("planned hand-over: %d of %d streams kept, %d reset, %d bytes echoed and verified", kept, total, resets, bytes)
	if resets > 0 {
		t.Errorf("%d streams were reset by the planned hand-over, want 0", resets)
	}
	if kept != total {
		t.Errorf("%d of %d streams did not stream through the planned hand-over intact", total-kept, total)
	}
}

// TestCrashAndRestart: SIGKILL of the active node's l2lb, then l2lb started
// again on it. Traffic flows again within 3 s, at least 99 % of the streams
// survive, persistent clients keep their frontend, and the restarted node
// rejoins as a standby without cutting any flow.
func TestCrashAndRestart(t *testing.T) {
	sc := setup(t, true)
	f1 := sc.cl.node("f1")
	t0 := f1.signal(syscall.SIGKILL)
	if !f1.waitExit(5 * time.Second) {
		t.Fatalf("f1: l2lb still running 5 s after SIGKILL")
	}
	succ, at, ok := sc.cl.waitRoleActive(t0, 10*time.Second, "f1")
	if !ok {
		t.Fatalf("no node took the active role within 10 s of the crash of f1")
	}
	t.Logf("crash: %s logged taking the active role %v after SIGKILL to f1", succ.host.Name, at.Sub(t0).Round(time.Millisecond))
	time.Sleep(settle)
	tRestart := time.Now()
	rec, ok := sc.probe.recovery(t0)
	switch {
	case !ok:
		t.Errorf("crash: no new connection to the VIP succeeded within %v after the crash", tRestart.Sub(t0).Round(time.Millisecond))
	case rec > crashRecovery:
		t.Errorf("crash: new connections to the VIP succeed again %v after the crash, want within %v", rec.Round(time.Millisecond), crashRecovery)
	default:
		t.Logf("crash: takeover time (SIGKILL to the first new connection answered through the VIP): %v", rec.Round(time.Millisecond))
	}
	okN, failed, _, gap := sc.probe.window(t0, tRestart)
	t.Logf("crash: new connections after it: %d ok, %d failed, longest gap %v", okN, failed, gap.Round(time.Millisecond))
	sc.probe.checkPersistence(t, sc.probe.frontends(sc.since, t0), sc.probe.frontends(t0, tRestart))

	// Streams alive after the crash: no error and data after the takeover.
	aliveAtRestart := map[*e2e.Stream]bool{}
	for _, s := range sc.ss.All {
		if err, _ := s.Failure(); err == nil && s.LastRecv().After(at) {
			aliveAtRestart[s] = true
		}
	}
	t.Logf("crash: %d of %d streams alive %v after it (per frontend %v)", len(aliveAtRestart), len(sc.ss.All),
		tRestart.Sub(t0).Round(time.Millisecond), sc.ss.PerFrontend(func(s *e2e.Stream) bool { return aliveAtRestart[s] }))

	// Restart: f1 comes back as a standby (no --preempt) and cuts nothing.
	f1.start()
	f1.waitReady(10 * time.Second)
	if got := sc.cl.waitSingleActive(10*time.Second, 5*time.Second); got != succ.host.Name {
		t.Errorf("after f1's restart the single active node is %q, want %s to keep the role", got, succ.host.Name)
	}
	if l, ok := f1.findLog(time.Time{}, roleActive...); ok {
		t.Errorf("restarted f1 took the active role back: %s", l.text)
	}
	if s, err := f1.stats(); err != nil || s.Active {
		t.Errorf("restarted f1's stats: active=%v (err %v), want a standby", s.Active, err)
	}
	if l, ok := f1.findLog(time.Time{}, "connection table ready"); ok {
		t.Logf("restarted f1: %s", l.text)
	} else {
		t.Errorf("restarted f1 never declared its connection table ready")
	}
	time.Sleep(time.Second)
	end := time.Now()
	sc.probe.halt()
	okN, failed, firstErr, gap := sc.probe.window(tRestart, end)
	t.Logf("restart: new connections during it: %d ok, %d failed, longest gap %v", okN, failed, gap.Round(time.Millisecond))
	if failed > 0 {
		t.Errorf("restart: %d new connections failed while f1 rejoined; first: %v", failed, firstErr)
	}

	res := sc.ss.Finish(t0)
	kept, total, resets, bytes := sc.ss.Report(res, e2e.AllStreams)
	t.Logf("crash and restart: %d of %d streams kept through both (%.1f %%), %d reset, %d bytes verified",
		kept, total, 100*float64(kept)/float64(total), resets, bytes)
	if float64(kept) < minSurvival*float64(total) {
		t.Errorf("crash: %d of %d streams survived, want at least %.0f %%", kept, total, 100*minSurvival)
	}
	cutByRestart := 0
	for s := range aliveAtRestart {
		if res[s] != nil {
			cutByRestart++
		}
	}
	if cutByRestart > 0 {
		t.Errorf("restart: %d streams alive before f1's l2lb restarted were cut after it", cutByRestart)
	}
	ownKept, ownTotal, _, _ := sc.ss.Report(res, func(s *e2e.Stream) bool { return s.Frontend == "f1" })
	t.Logf("crash: %d of %d streams served by the crashed node's own frontend f1 kept", ownKept, ownTotal)
	if ownTotal == 0 {
		t.Errorf("no stream was served by f1: the crashed node's own flows were not exercised")
	}
}

// TestPartitionHeal cuts the active balancer's link for longer than the
// membership needs to declare it dead, so both sides elect an active node,
// then heals it: afterwards exactly one node is active and every stream
// not served by the partitioned node's own frontend survived.
//
// The active node (f1) is the one partitioned: that is the case where the
// other side must take over with its replicated table and where, on
// healing, two active nodes meet. Streams to f1's own frontend are cut off
// from the clients for the partition and are only reported.
func TestPartitionHeal(t *testing.T) {
	sc := setup(t, true)
	sw := sc.bed.Switch
	healed := false
	heal := func() {
		if !healed {
			healed = true
			if _, err := sw.RunIP("link", "set", "f1", "up"); err != nil {
				t.Errorf("healing: %v", err)
			}
		}
	}
	t.Cleanup(heal)
	t0 := time.Now()
	if _, err := sw.RunIP("link", "set", "f1", "down"); err != nil {
		t.Fatalf("cutting f1's switch port: %v", err)
	}
	succ, at, ok := sc.cl.waitRoleActive(t0, 8*time.Second, "f1")
	if !ok {
		heal()
		t.Fatalf("the nodes cut off from f1 elected no active node within 8 s")
	}
	t.Logf("partition: %s active %v after f1's port went down", succ.host.Name, at.Sub(t0).Round(time.Millisecond))
	// Hold the partition well past the detection time on both sides.
	time.Sleep(time.Until(at.Add(3 * time.Second)))
	f1s, _ := sc.cl.node("f1").stats()
	t.Logf("partition: f1 (isolated) reports active=%v", f1s.Active)
	tHeal := time.Now()
	heal()
	one := sc.cl.waitSingleActive(20*time.Second, 3*time.Second)
	t.Logf("healed: single active node %q, %v after healing", one, time.Since(tHeal).Round(time.Millisecond))
	time.Sleep(time.Second)
	end := time.Now()
	sc.probe.halt()
	// Which switch port the virtual MAC is learned on decides which node
	// receives the VIP's traffic, whatever the nodes believe.
	if out, err := exec.Command("bridge", "-n", sw.NS, "fdb", "show", "br", "br0").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "02:6c:32:62:00:00 ") {
				t.Logf("after healing the switch forwards the virtual MAC to: %s (active: %q)", l, one)
			}
		}
	}
	for _, n := range sc.cl.nodes {
		if s, err := n.stats(); err == nil {
			t.Logf("after healing %s: active=%v verdicts=%v drops=%v", n.host.Name, s.Active, s.Verdicts, s.Drops)
		}
	}
	if rec, ok := sc.probe.recovery(t0); ok {
		t.Logf("partition: new connections succeeded again %v after the cut", rec.Round(time.Millisecond))
	}
	okN, failed, _, gap := sc.probe.window(tHeal, end)
	t.Logf("after healing: new connections %d ok, %d failed, longest gap %v", okN, failed, gap.Round(time.Millisecond))

	res := sc.ss.Finish(t0)
	others := func(s *e2e.Stream) bool { return s.Frontend != "f1" }
	kept, total, resets, bytes := sc.ss.Report(res, others)
	t.Logf("partition and heal: %d of %d streams of f2 and f3 kept, %d reset, %d bytes verified", kept, total, resets, bytes)
	if kept != total {
		t.Errorf("%d of %d streams not served by the partitioned node were lost", total-kept, total)
	}
	ownKept, ownTotal, _, _ := sc.ss.Report(res, func(s *e2e.Stream) bool { return !others(s) })
	t.Logf("partition: %d of %d streams served by the partitioned f1 itself survived (not required)", ownKept, ownTotal)
}
