package cgp

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// forwardedSeries is the metrics' count of frames the fast path sent on to another member.
const forwardedSeries = `l2lb_verdicts_total{verdict="forwarded"}`

// TestHelperStatusAcrossFastPathRestart: the active helper's interface goes down and comes back.
// The fast path's sockets fail (ENETDOWN), the balancer keeps running and reopens them with a
// back-off; meanwhile the helper keeps answering CGP, and `l2lb status`, CGP's STATUS and a
// "* problem:" line say what is wrong. When the link is back the node is the active balancer
// again without a new ACTIVE, the connection table still holds the flows it knew, and the status
// and the metrics go on counting from where they were: they read the live balancer, not a dead
// one.
//
// The code before the redesign (46d3598) never noticed: its afpacket ignored POLLERR, so the
// worker spun in poll(2) on the pending ENETDOWN while the link was down, and the helper went on
// reporting role=active with no error in CGP's STATUS, no "* " line and no problem in
// `l2lb status`, whose JSON had no ready or problems fields at all (had the fast path stopped,
// its helper dropped the engine, fell back to standby and never reopened the sockets, while the
// control socket and the metrics kept reading the dead engine).
func TestHelperStatusAcrossFastPathRestart(t *testing.T) {
	// Persistence sticks a client address to one frontend, so the flows reach f2 and f3 (and
	// are forwarded, not delivered locally) only over many client addresses.
	bed, srcs := serveBed(t, 12)
	vip := bed.VIPs[0]
	raddr := netip.AddrPortFrom(vip, tcpPort)
	f1, f2, f3 := bed.Frontends[0], bed.Frontends[1], bed.Frontends[2]
	c1 := bed.Clients[0]
	vipFile := writeVIPFile(t, bed.VIPs)
	var hps []*e2e.Helper
	for _, f := range bed.Frontends {
		hps = append(hps, e2e.StartHelper(t, f, suite.Bin, vipFile, helperOpts))
	}
	h1 := hps[0]
	for _, hp := range hps {
		hp.Do("INTF 1", "^INTF 1$", answerLimit)
		hp.Do("STANDBY", "^OK$", answerLimit)
	}
	h1.Do(fmt.Sprintf("ACTIVE %v %v %v", f1.Addr, f2.Addr, f3.Addr), "^OK$", answerLimit)
	ctl := h1.ControlPath()

	// Traffic before the restart, and one long-lived connection from every source: dialled
	// (its flow is in the table from the SYN on) but idle, so that only a table that
	// survived the restart can still carry it afterwards. The frontends' servers wait 30 s
	// for the request.
	counts := perFrontend(askEach(t, srcs, raddr, 2))
	t.Logf("before the restart: connections per frontend %v", counts)
	if counts["f2"]+counts["f3"] == 0 {
		t.Fatalf("no connection was forwarded to f2 or f3 (%v): nothing to count", counts)
	}
	type held struct {
		src  source
		conn net.Conn
	}
	var holds []held
	for _, s := range srcs {
		c, err := s.h.DialTCP(netip.AddrPortFrom(s.addr, 0), raddr, 3*time.Second)
		if err != nil {
			t.Fatalf("long-lived connection from %v: %v", s.addr, err)
		}
		t.Cleanup(func() { c.Close() })
		holds = append(holds, held{s, c})
	}
	before, err := ctlStatus(ctl)
	if err != nil {
		t.Fatalf("f1: l2lb status before the restart: %v", err)
	}
	connsBefore, err := ctlConns(ctl)
	if err != nil {
		t.Fatalf("f1: l2lb conns before the restart: %v", err)
	}
	metricsBefore, err := scrapeMetrics(f1)
	if err != nil {
		t.Fatalf("f1: metrics before the restart: %v", err)
	}
	owner := map[string]string{} // long-lived connection's client address:port -> member address
	for _, h := range holds {
		local := h.conn.LocalAddr().String()
		m, ok := connsBefore[local]
		if !ok {
			t.Fatalf("f1's connection table has no flow for the long-lived connection from %s: %v", local, connsBefore)
		}
		owner[local] = m
	}
	t.Logf("before the restart: ready=%v role=%s forwarded=%d (metrics %v) flows=%d, %d long-lived connections",
		before.Ready, before.Role, before.Verdicts["forwarded"], metricsBefore[forwardedSeries], before.Table.Flows, len(holds))
	if !before.Ready || before.Role != control.RoleActive || before.Verdicts["forwarded"] == 0 ||
		metricsBefore[forwardedSeries] == 0 || before.Table.Flows < len(holds) {
		t.Fatalf("f1 before the restart: want ready, active, forwarded > 0 in status and metrics, at least %d flows; have %+v, metrics %v",
			len(holds), before, metricsBefore[forwardedSeries])
	}

	// The link goes down: the fast path's sockets fail.
	problemsBefore := countInfo(h1, "problem: ")
	if _, err := f1.RunIP("link", "set", "eth0", "down"); err != nil {
		t.Fatal(err)
	}
	tDown := time.Now()
	var down control.Status
	for {
		st, err := ctlStatus(ctl)
		if err == nil && !st.Ready && len(st.Problems) > 0 {
			down = st
			break
		}
		if time.Since(tDown) > 5*time.Second {
			t.Fatalf("f1: 5 s after its link went down, l2lb status is still ready or names no problem: %+v, %v", st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("link down: status not ready after %v, problems %q", time.Since(tDown).Round(time.Millisecond), down.Problems)
	if _, _, exited := h1.WaitExit(0); exited {
		t.Fatalf("f1: the helper exited when its link went down; stderr %q", h1.Stderr())
	}
	h1.Do("INTF 1", "^INTF 1$", answerLimit) // it answers commands
	st, _ := h1.Do("STATUS", "^OK ", answerLimit)
	t.Logf("link down: CGP STATUS %s", st.Text)
	if !strings.Contains(st.Text, ` error="`) || strings.Contains(st.Text, "role=active ") {
		t.Errorf("f1: CGP STATUS while its link is down: %q, want role=standby and an error field", st.Text)
	}
	for countInfo(h1, "problem: ") == problemsBefore {
		if time.Since(tDown) > 4*time.Second { // Periodic runs every second (-t 1)
			t.Errorf("f1: no new \"* problem: ...\" line 4 s after the link went down; info lines %q", h1.InfoLines())
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	// It stays down, and says so, for as long as the link is down: the balancer reopens its
	// sockets with a back-off, and a reopened socket on a link that is still down is not a
	// running fast path (binding to a down interface succeeds and leaves ENETDOWN pending).
	samples, readyN, activeN := 0, 0, 0
	for t0 := time.Now(); time.Since(t0) < time.Second; time.Sleep(20 * time.Millisecond) {
		st, err := ctlStatus(ctl)
		if err != nil {
			t.Errorf("f1: l2lb status while its link is down: %v", err)
			break
		}
		samples++
		if st.Ready {
			readyN++
		}
		if st.Role == control.RoleActive {
			activeN++
		}
	}
	if readyN > 0 || activeN > 0 {
		t.Errorf("f1: while its link is down, %d of %d status samples over 1 s said ready and %d active; want none "+
			"(is the fast path reopened over and over, without a back-off, while the link is down?)", readyN, samples, activeN)
	}
	if countInfo(h1, "repaired: ") > 0 {
		t.Errorf("f1: \"* repaired:\" written while its link is still down: %q", h1.InfoLines())
	}

	// The link comes back: the balancer reopens its sockets and is the active node again, with
	// no new ACTIVE from CGP.
	if _, err := f1.RunIP("link", "set", "eth0", "up"); err != nil {
		t.Fatal(err)
	}
	tUp := time.Now()
	var up control.Status
	for {
		st, err := ctlStatus(ctl)
		if err == nil && st.Ready && st.Role == control.RoleActive {
			up = st
			break
		}
		if time.Since(tUp) > 10*time.Second {
			t.Fatalf("f1: 10 s after its link came back, l2lb status is not ready and active: %+v, %v\ninfo lines %q", st, err, h1.InfoLines())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("link up: ready and active after %v (down for %v)", time.Since(tUp).Round(time.Millisecond), tUp.Sub(tDown).Round(time.Millisecond))
	if up.Transitions != before.Transitions || !up.Since.Equal(before.Since) {
		t.Errorf("f1: role transitions %d since %v after the restart, want %d since %v: the control plane's role changed",
			up.Transitions, up.Since, before.Transitions, before.Since)
	}
	// The flows learnt before are still in the table, on the same members.
	connsUp, err := ctlConns(ctl)
	if err != nil {
		t.Fatalf("f1: l2lb conns after the restart: %v", err)
	}
	for local, m := range owner {
		if got, ok := connsUp[local]; !ok || got != m {
			t.Errorf("f1: after the restart the table has %q for the long-lived connection from %s, want member %s", got, local, m)
		}
	}
	if up.Table.Flows < len(holds) {
		t.Errorf("f1: %d flows in the table after the restart, want at least the %d long-lived connections (had %d)",
			up.Table.Flows, len(holds), before.Table.Flows)
	}

	// Clients get through again: the first new connection, then every source; the long-lived
	// connections reach the frontends the table had for them.
	for {
		_, err := ask(srcs[0], raddr, 300*time.Millisecond)
		if err == nil {
			t.Logf("first new connection through the VIP %v after the link came back", time.Since(tUp).Round(time.Millisecond))
			break
		}
		if time.Since(tUp) > 10*time.Second {
			if mac, aerr := c1.ARPResolve(vip); aerr == nil {
				t.Logf("%v resolves to %v", vip, mac)
			}
			t.Fatalf("no connection through the VIP 10 s after f1's link came back: %v", err)
		}
	}
	counts = perFrontend(askEach(t, srcs, raddr, 1))
	t.Logf("after the restart: connections per frontend %v", counts)
	names := map[string]string{}
	for _, f := range bed.Frontends {
		names[f.Addr.String()] = f.Name
	}
	for _, h := range holds {
		local := h.conn.LocalAddr().String()
		name, err := testbed.AskNameOver(h.conn, 3*time.Second)
		if err != nil {
			t.Errorf("long-lived connection from %s (member %s) after the restart: %v", local, owner[local], err)
		} else if name != names[owner[local]] {
			t.Errorf("long-lived connection from %s was answered by %s after the restart, want %s (its flow's member)",
				local, name, names[owner[local]])
		}
	}

	// The status and the metrics read the same, live engine: its counters went on from the
	// values before the restart.
	after, err := ctlStatus(ctl)
	if err != nil {
		t.Fatalf("f1: l2lb status after the restart: %v", err)
	}
	metricsAfter, err := scrapeMetrics(f1)
	if err != nil {
		t.Fatalf("f1: metrics after the restart: %v", err)
	}
	t.Logf("after the restart: forwarded %d -> %d (metrics %v -> %v), flows %d -> %d, problems %q",
		before.Verdicts["forwarded"], after.Verdicts["forwarded"], metricsBefore[forwardedSeries], metricsAfter[forwardedSeries],
		before.Table.Flows, after.Table.Flows, after.Problems)
	if after.Verdicts["forwarded"] <= before.Verdicts["forwarded"] {
		t.Errorf("f1: status forwarded %d after the restart and new traffic, want more than the %d before",
			after.Verdicts["forwarded"], before.Verdicts["forwarded"])
	}
	if metricsAfter[forwardedSeries] <= metricsBefore[forwardedSeries] {
		t.Errorf("f1: metrics %s = %v after the restart and new traffic, want more than the %v before",
			forwardedSeries, metricsAfter[forwardedSeries], metricsBefore[forwardedSeries])
	}
	if after.Table.Flows < before.Table.Flows {
		t.Errorf("f1: %d flows after the restart and new traffic, fewer than the %d before", after.Table.Flows, before.Table.Flows)
	}
	if slicesHasPrefix(after.Problems, "fast path not running") {
		t.Errorf("f1: the status still names a fast-path problem after the restart: %q", after.Problems)
	}
	st, _ = h1.Do("STATUS", "^OK role=active ", answerLimit)
	if strings.Contains(st.Text, "error=") {
		t.Errorf("f1: CGP STATUS after the restart still has an error: %s", st.Text)
	}
	e2e.QuitAll(t, answerLimit, t.Errorf, hps...)
}

// slicesHasPrefix reports whether an element of ss starts with prefix.
func slicesHasPrefix(ss []string, prefix string) bool {
	for _, s := range ss {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

// countInfo counts the helper's "* " lines that start with prefix.
func countInfo(hp *e2e.Helper, prefix string) int {
	n := 0
	for _, l := range hp.InfoLines() {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}
