package failover

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
)

// TestPortRangeOverlapCluster: when two nodes of a standalone group announce overlapping
// source-port ranges (their net.ipv4.ip_local_port_range, seed step 7), every node uses neither
// of the two ranges, keeps the third node's, and says so in `l2lb status --json` (port_conflict,
// a problem naming the overlap) and in `l2lb status` ("overlap" in the Ports column): the rule
// of `l2lb run --member` and of the helper, which does not depend on the order members are
// listed in, so every balancer of the group sends the same replies to the same place.
//
// Before the redesign (46d3598) the cluster kept the range of whichever of the two came first in
// its membership order and dropped the other's (cluster.dropOverlaps), with no port_conflict in
// the status: one of f2 and f3 still showed its range.
func TestPortRangeOverlapCluster(t *testing.T) {
	bed := newBed(t)
	f1, f2, f3 := bed.Frontends[0], bed.Frontends[1], bed.Frontends[2]
	// f1 keeps the testbed's 50000-54000; f2 and f3 share 57000-59000.
	for h, r := range map[string]string{f2.Name: "55000 59000", f3.Name: "57000 61000"} {
		if err := bed.Host(h).SetSysctl("net.ipv4.ip_local_port_range", r); err != nil {
			t.Fatal(err)
		}
	}
	c := startCluster(t, bed)
	for _, n := range c.nodes {
		// Members arrive with the gossip: wait until the node lists all three.
		n.waitStatus(10*time.Second, func(st control.Status) (bool, string) {
			return len(st.Members) == 3, fmt.Sprintf("lists %d members, want 3", len(st.Members))
		})
		// A member list is applied at once: nothing to wait for once all three are there.
		st, text := n.status(), n.cli("status")
		if bad := e2e.PortOverlapShown(st, text, f2.Addr, f3.Addr, f1.Addr, f1.PortRange[0], f1.PortRange[1]); len(bad) > 0 {
			t.Errorf("%s (%s): the overlap of %s's and %s's ranges is not shown as it should be:\n%s\nmembers: %+v\nl2lb status:\n%s",
				n.host.Name, st.Role, f2.Name, f3.Name, strings.Join(bad, "\n"), st.Members, text)
		} else {
			t.Logf("%s (%s): problems %q", n.host.Name, st.Role, st.Problems)
		}
	}
}
