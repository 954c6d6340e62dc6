package health

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/realservers"
	"github.com/l2lb/l2lb/internal/testbed"
)

// streamPort is the echo service of the long-lived streams, checked with check tcp.
const streamPort = 7000

// helperAnswerLimit bounds the wait for a helper's answer (ACTIVE answers within a second,
// docs/cgp-helper-protocol.md).
const helperAnswerLimit = 3 * time.Second

// leaveStreams is the number of long-lived connections.
const leaveStreams = 60

// streamEvery is the long-lived streams' write interval: a rescheduled flow meets the reset of
// its new frontend within streamEvery of the move.
const streamEvery = 100 * time.Millisecond

// streamOptions are the long-lived streams' options: 1 KiB every streamEvery, 10 s for any one
// read or write (far beyond what a reschedule takes), and no FrontendOf, since the echo servers
// (startEchoes) send the frontend's name as a banner.
var streamOptions = e2e.StreamOptions{Chunk: 1 << 10, Interval: streamEvery, Idle: 10 * time.Second,
	Pattern: "l2lb health stream"}

// streamServices is the services file body with the tcp check on the streams' port.
func streamServices() string { return fmt.Sprintf("service echo %d/tcp\n", streamPort) + timing("tcp") }

// startEchoes starts a real echo process (realservers.Echo, the frontend's name as banner) on
// the VIP's stream port of every frontend.
func startEchoes(t *testing.T, bed *testbed.Bed) map[string]*realservers.Server {
	t.Helper()
	out := map[string]*realservers.Server{}
	for _, f := range bed.Frontends {
		out[f.Name] = realservers.Echo(t, f, f.Name, netip.AddrPortFrom(bed.VIPs[0], streamPort))
	}
	return out
}

// TestHelperLeavingMemberServiceStops is the acceptance in CGP's helper mode: with 60
// long-lived connections over three frontends, STANDBY goes to the active f1 and ACTIVE to f2
// without f1. f1 is leaving and every stream keeps flowing. Then f1's service stops taking
// connections: its real echo process closes its listener (SIGUSR1) and keeps echoing on the
// connections it has, so only the health check can tell. f2 probes f1 through the DSR path, the
// check fails, and f1's flows follow --nodest (reschedule): their clients get resets within
// interval × fall (+ slack), while the streams on f2 and f3 keep flowing.
func TestHelperLeavingMemberServiceStops(t *testing.T) {
	leavingServiceStops(t, true)
}

// TestHelperLeavingMemberServiceStopsSameActive is the same without a takeover: f1 stays active
// and ACTIVE without f3 makes f3 the leaving member, whose service then stops.
func TestHelperLeavingMemberServiceStopsSameActive(t *testing.T) {
	leavingServiceStops(t, false)
}

// leavingServiceStops runs the helper-mode scenario; with takeover f1 leaves and f2 becomes
// active, without it f1 stays active and f3 leaves.
func leavingServiceStops(t *testing.T, takeover bool) {
	bed := suite.NewBed(t, "the health-check tests", testbed.Options{Frontends: 3, Clients: 2})
	echoes := startEchoes(t, bed)
	vipFile, svcFile := writeConfig(t, bed, streamServices())
	opts := e2e.HelperOptions{Args: []string{"-p", "0", "-t", "1", "--services", svcFile}, Control: true, Log: e2e.LogCommands}
	var hps []*e2e.Helper
	var addrs []string
	var members []netip.Addr
	for _, f := range bed.Frontends {
		hps = append(hps, e2e.StartHelper(t, f, suite.Bin, vipFile, opts))
		addrs = append(addrs, f.Addr.String())
		members = append(members, f.Addr)
	}
	h1, h2, h3 := hps[0], hps[1], hps[2]
	for _, hp := range hps {
		hp.Do("INTF 1", "^INTF 1$", helperAnswerLimit)
		hp.Do("STANDBY", "^OK$", helperAnswerLimit)
	}
	h1.Do("ACTIVE "+strings.Join(addrs, " "), "^OK$", helperAnswerLimit)
	_, took := waitStatus(t, h1.ControlPath(), 15*time.Second, allHealthy(members, []string{"echo"}))
	t.Logf("f1 active, every member passes its check after %v", took.Round(time.Millisecond))

	// leaver is the member that leaves, active the node active after the leave.
	leaver, active, others := bed.Frontends[2], h1, []*e2e.Helper{h2, h3}
	if takeover {
		leaver, active, others = bed.Frontends[0], h2, []*e2e.Helper{h3}
	}
	ss := e2e.StartStreams(t, sources(bed), netip.AddrPortFrom(bed.VIPs[0], streamPort), leaveStreams, streamOptions)
	if ss.PerFrontend(e2e.AllStreams)[leaver.Name] == 0 {
		t.Fatalf("no stream reached %s: the leave would not exercise its flows", leaver.Name)
	}
	_, took = waitStatus(t, h2.ControlPath(), 10*time.Second, func(st control.Status) (bool, string) {
		return st.Table.Flows >= leaveStreams, fmt.Sprintf("f2 holds %d flows, want >= %d (replicated)", st.Table.Flows, leaveStreams)
	})
	t.Logf("f2 holds the streams' flows %v after they started", took.Round(time.Millisecond))

	if takeover {
		// f1 leaves: STANDBY to it, ACTIVE to f2 without it.
		h1.Do("STANDBY", "^OK$", helperAnswerLimit)
		h2.Do("ACTIVE "+strings.Join(addrs[1:], " "), "^OK$", helperAnswerLimit)
	} else {
		h1.Do("ACTIVE "+strings.Join(addrs[:2], " "), "^OK$", helperAnswerLimit)
	}
	tLeft := time.Now()
	time.Sleep(3 * checkInterval * checkFall) // several probe rounds of the active node
	st, err := statusOf(active.ControlPath())
	if err != nil {
		t.Fatal(err)
	}
	m, listed := memberOf(st, leaver.Addr)
	c, _ := checkOf(st, leaver.Addr, "echo")
	t.Logf("%s active; %s: listed %v, leaving %v, %d flows, check %+v", active.Name(), leaver.Name, listed, m.Leaving, m.Flows, c)
	if !listed || !m.Leaving || !c.Healthy {
		t.Errorf("%v after the leave, %s shows the serving %s listed=%v leaving=%v with its check healthy=%v (%q), "+
			"want it leaving with a healthy check (the view the old active node sent)",
			time.Since(tLeft).Round(time.Millisecond), active.Name(), leaver.Name, listed, m.Leaving, c.Healthy, c.Error)
	}
	if bad := ss.Flowing(e2e.AllStreams, time.Now().Add(-time.Second)); len(bad) > 0 {
		t.Errorf("%d of %d streams broke across the leave (%v were on %s); the first: %s",
			len(bad), len(ss.All), ss.PerFrontend(e2e.AllStreams)[leaver.Name], leaver.Name, bad[0])
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("every stream flowed %v across the leave", time.Since(tLeft).Round(time.Millisecond))

	// The leaver's service stops taking connections; its established connections would go on.
	echoes[leaver.Name].CloseListeners(t)
	tStop := time.Now()
	bound := downBound + streamEvery
	deadline := tStop.Add(bound + 2*time.Second)
	for time.Now().Before(deadline) && len(ss.Flowing(e2e.OnHost(leaver), time.Time{})) < ss.PerFrontend(e2e.AllStreams)[leaver.Name] {
		time.Sleep(50 * time.Millisecond)
	}
	var worst time.Duration
	for _, s := range ss.All {
		if !e2e.OnHost(leaver)(s) {
			continue
		}
		err, at := s.Failure()
		switch {
		case err == nil:
			t.Errorf("stream %d on %s still flows %v after its service stopped", s.ID, leaver.Name, time.Since(tStop).Round(time.Millisecond))
		case !s.WasReset():
			t.Errorf("stream %d on %s ended with %v, want a reset from the frontend it was rescheduled to", s.ID, leaver.Name, err)
		default:
			worst = max(worst, at.Sub(tStop))
		}
	}
	st, _ = statusOf(active.ControlPath())
	c, _ = checkOf(st, leaver.Addr, "echo")
	t.Logf("%s's %d streams were reset within %v of its service stopping (bound %v); %s's view of it: %+v",
		leaver.Name, ss.PerFrontend(e2e.AllStreams)[leaver.Name], worst.Round(time.Millisecond), bound, active.Name(), c)
	if worst > bound {
		t.Errorf("%s's flows were rescheduled %v after its service stopped, want within %v", leaver.Name, worst.Round(time.Millisecond), bound)
	}
	time.Sleep(time.Second)
	for _, bad := range ss.Flowing(e2e.NotOnHost(leaver), time.Now().Add(-time.Second)) {
		t.Errorf("on a frontend that stays: %s", bad)
	}
	e2e.QuitAll(t, helperAnswerLimit, t.Errorf, append([]*e2e.Helper{active}, others...)...)
	if takeover {
		h1.CloseInput()
	}
}
