package balancer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l2lb/l2lb/afpacket"
	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/dataplane/node"
)

// Documentation addresses only (RFC 5737).
var (
	vip    = netip.MustParseAddr("192.0.2.200")
	self   = netip.MustParseAddr("192.0.2.11")
	peer2  = netip.MustParseAddr("192.0.2.12")
	peer3  = netip.MustParseAddr("192.0.2.13")
	vmac   = net.HardwareAddr{0x02, 0x6c, 0x32, 0x62, 0, 7}
	ifMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x11}
	peerMC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x12}
)

// fakeSocket is a worker or lo socket: it receives nothing, blocks until closed or failed.
type fakeSocket struct {
	once   sync.Once
	closed chan struct{}
	fail   chan error
}

func newFakeSocket() *fakeSocket {
	return &fakeSocket{closed: make(chan struct{}), fail: make(chan error, 1)}
}

func (s *fakeSocket) ReceiveBlocks(func(*afpacket.Frame), func()) (int, error) {
	select {
	case <-s.closed:
		return 0, afpacket.ErrClosed
	case err := <-s.fail:
		return 0, err
	}
}
func (s *fakeSocket) SetPrefetch(func([]byte))             {}
func (s *fakeSocket) JoinMulticast(net.HardwareAddr) error { return nil }
func (s *fakeSocket) Send([]byte) error                    { return nil }
func (s *fakeSocket) SendBatch(f [][]byte) (int, error)    { return len(f), nil }
func (s *fakeSocket) Close() error                         { s.once.Do(func() { close(s.closed) }); return nil }
func (s *fakeSocket) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

// fakeResolver answers every member with peerMC.
type fakeResolver struct{}

func (fakeResolver) Resolve(netip.Addr) (net.HardwareAddr, error) { return peerMC, nil }
func (fakeResolver) Close() error                                 { return nil }

// opener hands out fake sockets and remembers them; it can be told to fail.
type opener struct {
	mu    sync.Mutex
	err   error
	socks []*fakeSocket
	opens int
}

func (o *opener) open(node.OpenConfig) (node.Sockets, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.opens++
	if o.err != nil {
		return node.Sockets{}, o.err
	}
	w := newFakeSocket()
	o.socks = append(o.socks, w)
	return node.Sockets{Workers: []node.RxSocket{w}, Lo: newFakeSocket(), ARP: fakeResolver{}, MAC: ifMAC}, nil
}

func (o *opener) last() *fakeSocket {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.socks) == 0 {
		return nil
	}
	return o.socks[len(o.socks)-1]
}

func (o *opener) setErr(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.err = err
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vipaddrs")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func newTest(t *testing.T, vipFile string, edit func(*Config)) (*Balancer, *opener) {
	t.Helper()
	o := &opener{}
	cfg := Config{Mode: control.ModeRun, Name: "t", Interface: "lo", VIPFile: vipFile, VirtualMAC: vmac,
		Open: o.open, Timeouts: conntrack.DefaultTimeouts()}
	if edit != nil {
		edit(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b, o
}

// start runs b until the test ends and waits for it to be ready.
func start(t *testing.T, b *Balancer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor(t, "ready", func() bool { return b.Status().Ready })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func member(st control.Status, a netip.Addr) (control.Member, bool) { return st.FindMember(a) }

func TestBadVIPFileFailsUnlessStartAnyway(t *testing.T) {
	bad := writeFile(t, "192.0.2.200\n10.0.0.0/16\n")
	_, err := New(Config{Interface: "lo", VIPFile: bad, VirtualMAC: vmac})
	if !errors.Is(err, ErrNoVIPs) || !strings.Contains(err.Error(), bad+":2") {
		t.Fatalf("New with a bad VIP file: %v, want ErrNoVIPs naming %s:2", err, bad)
	}
	if _, err := New(Config{Interface: "l2lbnone0", VIPFile: writeFile(t, "192.0.2.200\n"), VirtualMAC: vmac}); !errors.Is(err, ErrNoInterface) {
		t.Fatalf("New on a missing interface: %v, want ErrNoInterface", err)
	}
}

// TestReloadRepairsBadVIPFile: a helper started with a VIP file it cannot read keeps CGP's
// ACTIVE and takes it once `l2lb reload` reads a good file.
func TestReloadRepairsBadVIPFile(t *testing.T) {
	path := writeFile(t, "192.0.2.200\n10.0.0.0/16\n")
	b, _ := newTest(t, path, func(c *Config) { c.StartAnyway = true })
	start(t, b)
	if err := b.SetRole(RoleActive); !errors.Is(err, ErrNoVIPs) {
		t.Fatalf("SetRole(active) without VIPs: %v, want ErrNoVIPs", err)
	}
	st := b.Status()
	if st.Role != control.RoleStandby || len(st.Problems) == 0 || !strings.Contains(st.Problems[0], path+":2") {
		t.Fatalf("status %q %q: want standby and the VIP file's problem", st.Role, st.Problems)
	}
	if err := b.Reload(); err == nil {
		t.Fatal("Reload of the same bad file succeeded")
	}
	if err := os.WriteFile(path, []byte("192.0.2.200\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := b.Reload(); err != nil {
		t.Fatalf("Reload of a good file: %v", err)
	}
	st = b.Status()
	if st.Role != control.RoleActive || len(st.VIPs) != 1 || st.VIPs[0] != vip.String() || len(st.Problems) != 0 {
		t.Fatalf("after the reload: role %s, VIPs %v, problems %q; want active with 192.0.2.200", st.Role, st.VIPs, st.Problems)
	}
	if !b.Engine().Active() {
		t.Error("the engine is not active after the reload")
	}
}

// TestFastPathRestart: sockets that fail are opened again; the engine, its table and the
// counters carry over, and Status reads the live fast path.
func TestFastPathRestart(t *testing.T) {
	b, o := newTest(t, writeFile(t, "192.0.2.200\n"), nil)
	start(t, b)
	b.SetMembers([]Member{{Addr: self, Weight: 100, Local: true}})
	if err := b.SetRole(RoleActive); err != nil {
		t.Fatal(err)
	}
	k := conntrack.Key{Src: 0xc6336401, Dst: 0xc00002c8, SPort: 1000, DPort: 25, Proto: conntrack.ProtoTCP}
	id, _ := b.Engine().MemberID(self)
	if err := b.Engine().Table().Insert(k, id, 0x02, b.Engine().Tick()); err != nil {
		t.Fatal(err)
	}
	first := o.last()
	o.setErr(errors.New("no such device"))
	first.fail <- errors.New("afpacket: receive: network is down")
	waitFor(t, "the fast path to stop", func() bool { return !b.Status().Ready })
	st := b.Status()
	if st.Role != control.RoleStandby || !strings.Contains(strings.Join(st.Problems, ";"), "network is down") {
		t.Errorf("after the sockets failed: role %s problems %q; want standby and the receive error", st.Role, st.Problems)
	}
	if st.FastPath != nil {
		t.Errorf("fast path %+v in the status while it is down", *st.FastPath)
	}
	// The sockets failed right after opening: the next attempt waits (back-off), then fails.
	waitFor(t, "the failed reopen", func() bool {
		return strings.Contains(strings.Join(b.Status().Problems, ";"), "no such device")
	})
	o.mu.Lock()
	opens := o.opens
	o.mu.Unlock()
	if opens != 2 {
		t.Errorf("%d opens by the time the reopen failed, want 2 (no reopen loop)", opens)
	}
	if err := b.SetRole(RoleActive); !errors.Is(err, ErrNotRunning) {
		t.Errorf("SetRole(active) while the fast path is down: %v, want ErrNotRunning", err)
	}
	o.setErr(nil)
	waitFor(t, "the fast path to reopen", func() bool { return b.Status().Ready })
	if o.last() == first || !first.isClosed() {
		t.Fatal("the failed sockets were not replaced and closed")
	}
	st = b.Status()
	if st.FastPath == nil || st.FastPath.Sockets != 1 {
		t.Errorf("fast path %+v after the restart, want one socket", st.FastPath)
	}
	if st.Role != control.RoleActive || st.Table.Flows != 1 || !b.Engine().Active() {
		t.Errorf("after the restart: role %s, %d flows, engine active %v; want active with the flow kept",
			st.Role, st.Table.Flows, b.Engine().Active())
	}
	if m, ok := member(st, self); !ok || m.Flows != 1 {
		t.Errorf("after the restart member %v: %+v", self, m)
	}
}

// TestSetWeightRightAfterStart: `l2lb weight` before the fast path or the control plane ran.
func TestSetWeightRightAfterStart(t *testing.T) {
	b, _ := newTest(t, writeFile(t, "192.0.2.200\n"), nil)
	if err := b.SetWeight(peer2, 50); !errors.Is(err, control.ErrUnknownMember) {
		t.Fatalf("SetWeight of an unknown member: %v, want ErrUnknownMember", err)
	}
	if err := b.SetMembers([]Member{{Addr: self, Weight: 100, Local: true}, {Addr: peer2, Weight: 100}}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetWeight(peer2, 50); err != nil {
		t.Fatalf("SetWeight before Run: %v", err)
	}
	// The override outlives the control plane's next list.
	if err := b.SetMembers([]Member{{Addr: self, Weight: 100, Local: true}, {Addr: peer2, Weight: 100}, {Addr: peer3, Weight: 100}}); err != nil {
		t.Fatal(err)
	}
	if m, _ := member(b.Status(), peer2); m.Weight != 50 {
		t.Errorf("weight of %v after a new member list: %d, want the override 50", peer2, m.Weight)
	}
}

func TestDownMemberIsUnhealthyAndGetsNoNewFlows(t *testing.T) {
	b, _ := newTest(t, writeFile(t, "192.0.2.200\n"), nil)
	if err := b.SetMembers([]Member{{Addr: self, Weight: 100, Local: true}, {Addr: peer2, Weight: 100, Down: true}}); err != nil {
		t.Fatal(err)
	}
	m, ok := member(b.Status(), peer2)
	if !ok || m.Healthy || m.Weight != 0 {
		t.Fatalf("a Down member in the status: %+v (found %v), want unhealthy with weight 0", m, ok)
	}
	if m, _ := member(b.Status(), self); !m.Healthy {
		t.Errorf("a healthy member reported unhealthy: %+v", m)
	}
}

// TestPortRangeOverlapRule: overlapping ranges are both dropped, whatever the order.
func TestPortRangeOverlapRule(t *testing.T) {
	for _, order := range [][]netip.Addr{{self, peer2, peer3}, {peer3, peer2, self}} {
		b, _ := newTest(t, writeFile(t, "192.0.2.200\n"), nil)
		ranges := map[netip.Addr]dataplane.PortRange{self: {Lo: 50000, Hi: 54000}, peer2: {Lo: 53000, Hi: 57000},
			peer3: {Lo: 58000, Hi: 60000}}
		var ms []Member
		for _, a := range order {
			ms = append(ms, Member{Addr: a, Weight: 100, Local: a == self, Ports: ranges[a]})
		}
		if err := b.SetMembers(ms); err != nil {
			t.Fatal(err)
		}
		st := b.Status()
		for a, want := range map[netip.Addr]bool{self: true, peer2: true, peer3: false} {
			m, _ := member(st, a)
			if m.PortConflict != want || (want && m.PortLo != 0) || (!want && m.PortLo != 58000) {
				t.Errorf("order %v: member %v %+v, want conflict=%v", order, a, m, want)
			}
		}
		if !strings.Contains(strings.Join(st.Problems, ";"), "overlap") {
			t.Errorf("order %v: problems %q do not report the overlap", order, st.Problems)
		}
	}
}

// TestGracefulLeave: a member that leaves keeps its flows at weight 0, then goes; a frontend
// this node never listed, whose flows arrived by sync, is kept the same way; an unreachable or
// unhealthy one is let go at once (issue 13).
func TestGracefulLeave(t *testing.T) {
	b, _ := newTest(t, writeFile(t, "192.0.2.200\n"), nil)
	if err := b.SetMembers([]Member{{Addr: self, Weight: 100, Local: true}, {Addr: peer2, Weight: 100}}); err != nil {
		t.Fatal(err)
	}
	id, _ := b.Engine().MemberID(peer2)
	k := conntrack.Key{Src: 0xc6336401, Dst: 0xc00002c8, SPort: 1000, DPort: 25, Proto: conntrack.ProtoTCP}
	if err := b.Engine().Table().Insert(k, id, 0x02, b.Engine().Tick()); err != nil {
		t.Fatal(err)
	}
	if err := b.SetMembers([]Member{{Addr: self, Weight: 100, Local: true}}); err != nil {
		t.Fatal(err)
	}
	m, ok := member(b.Status(), peer2)
	if !ok || !m.Leaving || m.Weight != 0 || m.Flows != 1 {
		t.Fatalf("member that left with a flow: %+v (listed %v), want leaving, weight 0, 1 flow", m, ok)
	}
	b.Engine().Table().Delete(k)
	b.mu.Lock()
	b.applyMembersLocked()
	b.mu.Unlock()
	if _, ok := member(b.Status(), peer2); ok {
		t.Error("the member is still listed after its last flow ended")
	}

	// Flows imported from the active node for peer3, which this node never listed.
	rec := connsync.Record{Kind: connsync.RecordFlow, Src: netip.MustParseAddr("198.51.100.1"),
		Dst: netip.MustParseAddr("192.0.2.200"), SPort: 1001, DPort: 143, Proto: conntrack.ProtoTCP,
		State: conntrack.StateEstablished, TTL: 60 * time.Second, Member: peer3}
	if err := b.Engine().Import([]connsync.Record{rec}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetMembers([]Member{{Addr: self, Weight: 100, Local: true}}); err != nil {
		t.Fatal(err)
	}
	if m, ok := member(b.Status(), peer3); !ok || !m.Leaving || m.Flows != 1 {
		t.Fatalf("imported frontend not kept as leaving: %+v (listed %v)", m, ok)
	}
	// Its health checks fail: let go.
	b.mu.Lock()
	b.unhealthy[peer3] = true
	b.applyMembersLocked()
	b.mu.Unlock()
	if _, ok := member(b.Status(), peer3); ok {
		t.Error("an unhealthy leaving member is still kept")
	}
	// Let go stays let go while its flows move, even if the checks pass again (it is no longer
	// probed: re-adding it would keep it as an unproven target).
	b.mu.Lock()
	delete(b.unhealthy, peer3)
	b.applyMembersLocked()
	b.mu.Unlock()
	if _, ok := member(b.Status(), peer3); ok {
		t.Fatal("a frontend that was let go is kept again")
	}
	// Listed again and removed again: it leaves gracefully as the first time.
	if err := b.SetMembers([]Member{{Addr: self, Weight: 100, Local: true}, {Addr: peer3, Weight: 100}}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetMembers([]Member{{Addr: self, Weight: 100, Local: true}}); err != nil {
		t.Fatal(err)
	}
	if m, ok := member(b.Status(), peer3); !ok || !m.Leaving {
		t.Fatalf("a frontend listed and removed again is not leaving: %+v (listed %v)", m, ok)
	}
	// Its MAC no longer resolves: let go.
	if err := b.Engine().SetMAC(peer3, nil); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	b.applyMembersLocked()
	b.mu.Unlock()
	if _, ok := member(b.Status(), peer3); ok {
		t.Error("an unreachable leaving member is still kept")
	}
}

func TestReleasingThenStandby(t *testing.T) {
	b, _ := newTest(t, writeFile(t, "192.0.2.200\n"), nil)
	start(t, b)
	if err := b.SetRole(RoleActive); err != nil {
		t.Fatal(err)
	}
	if err := b.SetRole(RoleReleasing); err != nil {
		t.Fatal(err)
	}
	if b.Status().Role != control.RoleStandby {
		t.Error("a releasing balancer reports itself active")
	}
	waitFor(t, "the release to end", func() bool { return !b.Engine().Active() })
	if st := b.Status(); st.Transitions != 2 {
		t.Errorf("transitions %d, want 2 (to active and back)", st.Transitions)
	}
}

func TestDefaultVirtualMAC(t *testing.T) {
	m := DefaultVirtualMAC(0x1234)
	if m.String() != "02:6c:32:62:12:34" || m[0]&0x02 == 0 || m[0]&0x01 != 0 {
		t.Fatalf("vmac %v must be locally administered unicast", m)
	}
}

// TestLeavingKinds: a member leaving on purpose (Member.Leaving) loses its persistent clients
// and stays that way after it vanishes; with KeepVanishedPersistence a member that merely
// vanished keeps them (quiesced), without it it does not.
func TestLeavingKinds(t *testing.T) {
	engineLeaving := func(b *Balancer, a netip.Addr) (bool, bool) {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, m := range b.applied {
			if m.Addr == a {
				return m.Leaving, true
			}
		}
		return false, false
	}
	for _, keep := range []bool{false, true} {
		b, _ := newTest(t, writeFile(t, "192.0.2.200\n"), func(c *Config) { c.KeepVanishedPersistence = keep })
		all := []Member{{Addr: self, Weight: 100, Local: true}, {Addr: peer2, Weight: 100}, {Addr: peer3, Weight: 100}}
		if err := b.SetMembers(all); err != nil {
			t.Fatal(err)
		}
		for i, a := range []netip.Addr{peer2, peer3} {
			id, _ := b.Engine().MemberID(a)
			k := conntrack.Key{Src: 0xc6336401, Dst: 0xc00002c8, SPort: uint16(1000 + i), DPort: 25, Proto: conntrack.ProtoTCP}
			if err := b.Engine().Table().Insert(k, id, 0x02, b.Engine().Tick()); err != nil {
				t.Fatal(err)
			}
		}
		// peer2 drains on purpose, then vanishes; peer3 just vanishes.
		draining := slices.Clone(all)
		draining[1].Leaving = true
		if err := b.SetMembers(draining); err != nil {
			t.Fatal(err)
		}
		if l, ok := engineLeaving(b, peer2); !ok || !l {
			t.Errorf("keep=%v: draining member: engine leaving=%v listed=%v, want leaving", keep, l, ok)
		}
		if m, _ := member(b.Status(), peer2); !m.Leaving || m.Weight != 0 {
			t.Errorf("keep=%v: draining member's status %+v, want leaving at weight 0", keep, m)
		}
		if err := b.SetMembers(all[:1]); err != nil {
			t.Fatal(err)
		}
		if l, ok := engineLeaving(b, peer2); !ok || !l {
			t.Errorf("keep=%v: vanished after draining: engine leaving=%v listed=%v, want still leaving", keep, l, ok)
		}
		if l, ok := engineLeaving(b, peer3); !ok || l == keep {
			t.Errorf("keep=%v: vanished member: engine leaving=%v listed=%v, want leaving=%v", keep, l, ok, !keep)
		}
		if m, _ := member(b.Status(), peer3); !m.Leaving {
			t.Errorf("keep=%v: vanished member's status %+v, want leaving", keep, m)
		}
	}
}

// planeFunc is a Plane.
type planeFunc func(ctx context.Context) error

func (f planeFunc) Run(ctx context.Context) error { return f(ctx) }

// TestConfigErrorEndsRunWith checks that a configuration error of the fast path (more receive
// queues than workers, generic XDP that would drop super-frames) ends Run and RunWith with it,
// stopping the balancer's own goroutines and the control plane, instead of leaving the process
// up with no fast path (both hung until TestAFXDPRefusesSuperFrames caught it).
func TestConfigErrorEndsRunWith(t *testing.T) {
	for _, cfgErr := range []error{node.ErrQueues, node.ErrSuperFrames} {
		b, o := newTest(t, writeFile(t, vip.String()+"\n"), nil)
		o.setErr(fmt.Errorf("opening: %w", cfgErr))
		planeStopped := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- b.RunWith(context.Background(), planeFunc(func(ctx context.Context) error {
				<-ctx.Done()
				close(planeStopped)
				return nil
			}))
		}()
		select {
		case err := <-done:
			if !errors.Is(err, cfgErr) {
				t.Errorf("RunWith: %v, want %v", err, cfgErr)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("RunWith still running 5 s after the fast path failed with %v", cfgErr)
		}
		select {
		case <-planeStopped:
		default:
			t.Errorf("%v: RunWith returned with the plane still running", cfgErr)
		}
		if o.opens != 1 {
			t.Errorf("%v: %d opens, want 1 (a configuration error is not retried)", cfgErr, o.opens)
		}
	}
}
