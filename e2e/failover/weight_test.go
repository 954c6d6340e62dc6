package failover

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
)

// unusedAddr is an address of the testbed's subnet that no host has.
var unusedAddr = netip.MustParseAddr("192.0.2.99")

// weightOf returns the weight st shows for addr, and whether st lists addr at all.
func weightOf(st control.Status, addr netip.Addr) (uint32, bool) {
	m, ok := st.FindMember(addr)
	return m.Weight, ok
}

// TestWeightRightAfterStart: `l2lb weight` on the node's own address, sent the moment a freshly
// started cluster node (`l2lb run --peers`) serves its control socket, before it has joined the
// group, is applied (exit 0), does not hurt the process, and the override outlives the node
// joining the group, taking the active role (its own weight is -r then) and every member list
// the cluster derives afterwards, including ones with new members.
//
// Before the redesign (46d3598) the control socket was served while the cluster was still
// joining: the weight went to cluster.Node.SetWeight, which found the node in the engine (New
// had configured it) and called reconfigure, which read the membership (n.cl) before Join had
// set it. The nil dereference panicked in the request's handler; the control server recovered
// it and answered "control: internal error: runtime error: invalid memory address or nil
// pointer dereference", and the weight was not set (the first request fails here). The cluster
// plane now gives the balancer its own member when it is built (cluster.New), so the node's own
// address is known from the first request on: "unknown member" is a failure here too, and so is
// an exit of l2lb.
func TestWeightRightAfterStart(t *testing.T) {
	bed := newBed(t)
	c := newCluster(t, bed)
	f1 := c.node("f1")
	self := f1.host.Addr
	// A peer that is powered off (its address answers no ARP) holds the join up for memberlist's
	// TCP timeout (1 s), so the request reliably arrives before the node has joined.
	f1.args = append(f1.args, "--peers", netip.AddrPortFrom(unusedAddr, membershipPort).String())
	f1.start()
	first, out, err := e2e.WeightWhenServed(suite.Bin, f1.ctlPath(), self, 50, 10*time.Second, f1.running)
	if err != nil {
		time.Sleep(300 * time.Millisecond) // for the log of a crash
		t.Fatalf("f1: %v (l2lb running: %v, exit: %v)", err, f1.running(), f1.err())
	}
	t.Logf("f1: weight %v 50 answered %v after starting l2lb; then l2lb weight exited 0: %q", self, first.Round(time.Millisecond), out)
	// A crash would end the process within moments of the request.
	time.Sleep(300 * time.Millisecond)
	if !f1.running() {
		t.Fatalf("f1: l2lb exited after l2lb weight: %v", f1.err())
	}
	if w, ok := weightOf(f1.status(), self); !ok || w != 50 {
		t.Fatalf("f1: right after l2lb weight the status shows weight %d for %v (listed: %v), want 50", w, self, ok)
	}
	// The request must have arrived before the node joined, or this test proves nothing: the
	// election runs only once the join is done, so its first word comes after the override.
	applied, ok := f1.findLog(time.Time{}, "msg=members", self.String()+"/50")
	if !ok {
		t.Fatalf("f1 never logged its member list with the override %v/50", self)
	}
	if elected, ok := f1.findLog(time.Time{}, "acquired the VIP"); ok && elected.at.Before(applied.at) {
		t.Fatalf("f1 had joined and been elected before the request arrived (%s before %s): the test did not run before the join",
			elected.text, applied.text)
	}

	// The node joins (alone: the others are not started yet), its fast path opens and it takes
	// the active role, which re-derives its member list with its own weight -r (100).
	f1.waitReady(10 * time.Second)
	if _, _, ok := c.waitRoleActive(time.Time{}, 5*time.Second, ""); !ok {
		t.Fatalf("f1 did not take the active role within 5 s of starting alone")
	}
	// The member list is re-derived every second: two more rounds.
	time.Sleep(2500 * time.Millisecond)
	if w, ok := weightOf(f1.status(), self); !ok || w != 50 {
		t.Fatalf("f1: after joining and taking the active role the status shows weight %d for %v (listed: %v), want 50", w, self, ok)
	}

	// Two more nodes join: member lists with new members must keep the override.
	for _, n := range c.nodes[1:] {
		n.start()
	}
	for _, n := range c.nodes[1:] {
		n.waitReady(10 * time.Second)
	}
	st := f1.waitStatus(10*time.Second, func(st control.Status) (bool, string) {
		return len(st.Members) == 3, fmt.Sprintf("f1 lists %d members, want 3", len(st.Members))
	})
	time.Sleep(1500 * time.Millisecond)
	st = f1.status()
	for _, n := range c.nodes {
		want := uint32(100)
		if n == f1 {
			want = 50
		}
		if w, ok := weightOf(st, n.host.Addr); !ok || w != want {
			t.Errorf("f1: with the group complete the status shows weight %d for %s %v (listed: %v), want %d", w, n.host.Name, n.host.Addr, ok, want)
		}
	}
	if !f1.running() {
		t.Fatalf("f1: l2lb exited: %v", f1.err())
	}
}
