package cluster

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/l2lb/l2lb/balancer"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/election"
)

// Documentation addresses only (RFC 5737).
var (
	vip   = netip.MustParseAddr("192.0.2.200")
	addr1 = netip.MustParseAddr("192.0.2.11")
	addr2 = netip.MustParseAddr("192.0.2.12")
	addr3 = netip.MustParseAddr("192.0.2.13")
	addr4 = netip.MustParseAddr("192.0.2.14")
)

// fakeMembership is a Membership whose view the test sets; it records what this node announces.
// A node that announces Draining can be answered by onMeta, the way a successor would react.
type fakeMembership struct {
	mu      sync.Mutex
	view    election.View
	metas   []election.NodeMeta
	updated chan struct{}
	left    bool
	onMeta  func(m election.NodeMeta, v *election.View)
}

func newFakeMembership() *fakeMembership {
	return &fakeMembership{updated: make(chan struct{}, 1)}
}

func (f *fakeMembership) View() election.View {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.view
	v.Members = slices.Clone(v.Members)
	return v
}

func (f *fakeMembership) Updated() <-chan struct{} { return f.updated }

func (f *fakeMembership) UpdateMeta(m election.NodeMeta) error {
	f.mu.Lock()
	f.metas = append(f.metas, m)
	changed := false
	if f.onMeta != nil {
		f.onMeta(m, &f.view)
		changed = true
	}
	f.mu.Unlock()
	if changed {
		f.signal()
	}
	return nil
}

func (f *fakeMembership) Leave(time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.left = true
	return nil
}

func (f *fakeMembership) Shutdown() error { return nil }

func (f *fakeMembership) set(ms ...election.Member) {
	f.mu.Lock()
	f.view.Members = ms
	f.mu.Unlock()
	f.signal()
}

func (f *fakeMembership) signal() {
	select {
	case f.updated <- struct{}{}:
	default:
	}
}

func (f *fakeMembership) lastMeta() election.NodeMeta {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.metas) == 0 {
		return election.NodeMeta{}
	}
	return f.metas[len(f.metas)-1]
}

func peer(name string, a netip.Addr, prio uint8, healthy bool) election.Member {
	return election.Member{Alive: true, NodeMeta: election.NodeMeta{Name: name, Addr: a, Weight: 100, Priority: prio,
		Healthy: healthy, Capable: true, PortLo: uint16(50000 + 1000*int(a.As4()[3]-10)), PortHi: uint16(50999 + 1000*int(a.As4()[3]-10))}}
}

func newNode(t *testing.T, b balancer.Control, m *fakeMembership, edit func(*Config)) *Node {
	t.Helper()
	cfg := Config{Name: "n1", Addr: addr1, VIPs: []netip.Addr{vip}, Weight: 100, SelfWeight: 40, Priority: 200,
		PortLo: 50000, PortHi: 50999, Join: func(election.ClusterConfig) (Membership, error) { return m, nil }}
	if edit != nil {
		edit(&cfg)
	}
	n, err := New(b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func byAddr(ms []balancer.Member) map[netip.Addr]balancer.Member {
	out := map[netip.Addr]balancer.Member{}
	for _, m := range ms {
		out[m.Addr] = m
	}
	return out
}

// TestNewGivesSelfAtOnce: the balancer can be operated before the group is joined.
func TestNewGivesSelfAtOnce(t *testing.T) {
	f := balancer.NewFake(control.Status{})
	newNode(t, f, newFakeMembership(), nil)
	ms := f.Members()
	if len(ms) != 1 || ms[0].Addr != addr1 || !ms[0].Local || ms[0].Weight != 100 || ms[0].Ports != (dataplane.PortRange{Lo: 50000, Hi: 50999}) {
		t.Fatalf("first member list %+v, want this node alone, local, weight 100, its port range", ms)
	}
}

// TestMembersFromTheView: alive nodes are members with their weights and ranges, an unhealthy
// one is Down (listed, no new flows), a dead one is not listed.
func TestMembersFromTheView(t *testing.T) {
	f := balancer.NewFake(control.Status{})
	m := newFakeMembership()
	n := newNode(t, f, m, nil)
	n.start(m)
	self := peer("n1", addr1, 200, true)
	p2, p3, p4 := peer("n2", addr2, 100, true), peer("n3", addr3, 100, false), peer("n4", addr4, 100, true)
	p2.Weight = 70
	p4.Alive = false
	m.set(self, p2, p3, p4)
	n.reconfigure()
	got := byAddr(f.Members())
	if len(got) != 3 {
		t.Fatalf("members %+v, want n1, n2 and n3", f.Members())
	}
	if g := got[addr2]; g.Weight != 70 || g.Down || g.Ports != (dataplane.PortRange{Lo: 52000, Hi: 52999}) {
		t.Errorf("n2: %+v, want weight 70, up, ports 52000-52999", g)
	}
	if !got[addr3].Down {
		t.Errorf("unhealthy n3 is not Down: %+v", got[addr3])
	}
	if _, ok := got[addr4]; ok {
		t.Error("a dead node is listed")
	}
}

// TestElectionDrivesTheRole runs the plane on the fake balancer: the best candidate becomes
// active with its -r weight, yields when a better one takes the VIP (split brain), and on stop
// hands the role over.
func TestElectionDrivesTheRole(t *testing.T) {
	f := balancer.NewFake(control.Status{})
	m := newFakeMembership()
	n := newNode(t, f, m, nil)
	// Our own entry: healthy, capable, priority 200; the peer ranks lower.
	m.set(peer("n1", addr1, 200, true), peer("n2", addr2, 100, true))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	eventually(t, "the best candidate to become active", func() bool { return f.Role() == balancer.RoleActive })
	eventually(t, "its -r weight", func() bool { return byAddr(f.Members())[addr1].Weight == 40 })
	if got := m.lastMeta().Active; len(got) != 1 || got[0] != vip {
		t.Errorf("announced Active %v, want [%v]", got, vip)
	}

	// A node that ranks higher announces the VIP too (split brain): we yield, releasing.
	better := peer("n0", netip.MustParseAddr("192.0.2.10"), 250, true)
	better.Active = []netip.Addr{vip}
	m.set(peer("n1", addr1, 200, true), peer("n2", addr2, 100, true), better)
	f.Emit(balancer.Event{Kind: balancer.EventConflict, From: vip})
	eventually(t, "the yield", func() bool { return f.Role() == balancer.RoleReleasing })
	eventually(t, "the standby weight", func() bool { return byAddr(f.Members())[addr1].Weight == 100 })

	// It goes away: we are elected again.
	m.set(peer("n1", addr1, 200, true), peer("n2", addr2, 100, true))
	eventually(t, "the takeover", func() bool { return f.Role() == balancer.RoleActive })

	// Stop: Draining is announced; the successor takes the VIP; we release and leave.
	m.mu.Lock()
	m.onMeta = func(meta election.NodeMeta, v *election.View) {
		if meta.Draining {
			succ := peer("n2", addr2, 100, true)
			succ.Active = []netip.Addr{vip}
			v.Members = []election.Member{{NodeMeta: meta, Alive: true}, succ}
		}
	}
	m.mu.Unlock()
	start := time.Now()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if f.Role() != balancer.RoleReleasing {
		t.Errorf("after the hand-over the role is %v, want releasing", f.Role())
	}
	if d := time.Since(start); d > handoverWait {
		t.Errorf("the hand-over took %v, longer than its bound", d)
	}
	if !m.left {
		t.Error("the node did not leave the membership")
	}
}

// TestHealthMarksSelfDown: a failing own probe marks this node Down and unhealthy in its
// announcement, so it gets no new flows and is no candidate.
func TestHealthMarksSelfDown(t *testing.T) {
	f := balancer.NewFake(control.Status{})
	m := newFakeMembership()
	n := newNode(t, f, m, func(c *Config) { c.Probe = func() bool { return false } })
	if !f.Members()[0].Down {
		t.Fatal("with a health check, the node must start Down until it proves healthy")
	}
	n.start(m)
	n.runner = election.NewRunner(m, n.newElector(), n.meta(), n.apply)
	n.observeHealth(true, true)
	if f.Members()[0].Down || !m.lastMeta().Healthy {
		t.Fatalf("healthy again: member %+v, meta healthy %v", f.Members()[0], m.lastMeta().Healthy)
	}
	n.observeHealth(false, true)
	if !f.Members()[0].Down || m.lastMeta().Healthy {
		t.Fatalf("unhealthy: member %+v, meta healthy %v", f.Members()[0], m.lastMeta().Healthy)
	}
}

// TestTableSyncedEventMakesTableReady: a completed bulk dump is announced as TableReady.
func TestTableSyncedEventMakesTableReady(t *testing.T) {
	f := balancer.NewFake(control.Status{})
	m := newFakeMembership()
	n := newNode(t, f, m, nil)
	m.set(peer("n1", addr1, 200, true))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	f.Emit(balancer.Event{Kind: balancer.EventTableSynced, From: addr2})
	eventually(t, "TableReady in the announcement", func() bool { return m.lastMeta().TableReady })
	cancel()
	<-done
}
