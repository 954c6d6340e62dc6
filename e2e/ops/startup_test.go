package ops

import (
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
)

// TestWeightRightAfterStartStatic: `l2lb weight` on a --member, sent the moment a freshly
// started `l2lb run --member ...` serves its control socket, is applied (exit 0) and stays once
// the fast path is open, the node is active and every member's MAC is known.
//
// The static control plane gives the balancer its members only when it runs (static.Plane.Run,
// after the control socket is served), unlike the cluster plane, which gives its own member at
// construction; a weight that arrived in between would be refused as "unknown member", which
// fails here. Before the redesign (46d3598) `l2lb run --member` configured the engine before
// serving the socket, so the weight itself worked there too; the old binary fails this test only
// where it waits for readiness on the control socket (its status had no "ready").
func TestWeightRightAfterStartStatic(t *testing.T) {
	needBed(t)
	f2 := suite.Bed.Frontends[1]
	b := launchBalancer(t)
	first, out, err := e2e.WeightWhenServed(suite.Bin, b.ctl, f2.Addr, 50, 10*time.Second, b.Running)
	if err != nil {
		time.Sleep(300 * time.Millisecond) // for the log of a crash
		t.Fatalf("%v (l2lb running: %v, exit: %v)\nlog:\n%s", err, b.Running(), b.WaitErr(), b.LogText())
	}
	t.Logf("weight %v 50 answered %v after starting l2lb; then l2lb weight exited 0: %q", f2.Addr, first.Round(time.Millisecond), out)
	if m := member(t, b.status(t), f2.Addr); m.Weight != 50 {
		t.Fatalf("right after l2lb weight the status shows weight %d for %v, want 50", m.Weight, f2.Addr)
	}
	b.waitUsable(t)
	time.Sleep(1500 * time.Millisecond)
	st := b.status(t)
	for _, f := range suite.Bed.Frontends {
		want := uint32(100) // -r and --member's default
		if f == f2 {
			want = 50
		}
		if m := member(t, st, f.Addr); m.Weight != want {
			t.Errorf("once the balancer is ready and active the status shows weight %d for %s %v, want %d", m.Weight, f.Name, f.Addr, want)
		}
	}
	if st.Role != control.RoleActive {
		t.Errorf("role %q, want %q", st.Role, control.RoleActive)
	}
}

// TestPortRangeOverlapStatic: `l2lb run` with two --port-range flags that overlap starts, uses
// neither range (replies to those ports are scheduled like new flows, whichever order the flags
// came in), keeps a third member's range, and says so in `l2lb status --json` (port_conflict, a
// problem) and in `l2lb status` ("overlap" in the Ports column).
//
// Before the redesign (46d3598) `l2lb run` refused to start: the engine's Configure returned
// dataplane.ErrPortRangeOverlap and the process exited 1.
func TestPortRangeOverlapStatic(t *testing.T) {
	needBed(t)
	f1, f2, f3 := suite.Bed.Frontends[0], suite.Bed.Frontends[1], suite.Bed.Frontends[2]
	b := startBalancer(t, "--port-range", f2.Addr.String()+"=50000-54000", "--port-range", f3.Addr.String()+"=53000-57000",
		"--port-range", f1.Addr.String()+"=58000-60000")
	st := b.status(t)
	text, errOut, code, err := b.cli("status")
	if err != nil || code != 0 {
		t.Fatalf("l2lb status: exit %d, %v: %s", code, err, errOut)
	}
	if bad := e2e.PortOverlapShown(st, text, f2.Addr, f3.Addr, f1.Addr, 58000, 60000); len(bad) > 0 {
		t.Errorf("the overlap of %s's and %s's ranges is not shown as it should be:\n%s\nmembers: %+v\nl2lb status:\n%s",
			f2.Name, f3.Name, strings.Join(bad, "\n"), st.Members, text)
	} else {
		t.Logf("problems: %q", st.Problems)
	}
	if st.Role != control.RoleActive {
		t.Errorf("role %q, want %q", st.Role, control.RoleActive)
	}
}
