package cgphelper_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l2lb/l2lb/balancer"
	"github.com/l2lb/l2lb/cgphelper"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/dataplane/node"
	"github.com/l2lb/l2lb/election"
	"github.com/l2lb/l2lb/helperproto"
	"github.com/l2lb/l2lb/hostcfg"
)

// fakeHost is a Host without sockets or /proc: it returns what the test sets
// and records what the helper asked.
type fakeHost struct {
	local    map[netip.Addr]bool
	findings []hostcfg.Finding

	mu          sync.Mutex
	doctorCalls []hostcfg.DoctorInput
	ifaceCalls  []string
}

func (f *fakeHost) LocalAddrs() map[netip.Addr]bool { return f.local }

func (f *fakeHost) Interface(name string) (netip.Addr, net.HardwareAddr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ifaceCalls = append(f.ifaceCalls, name)
	return self, net.HardwareAddr{0x02, 0, 0, 0, 0, 0x11}, nil
}

func (f *fakeHost) Doctor(iface string, vips []netip.Addr) []hostcfg.Finding {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.doctorCalls = append(f.doctorCalls, hostcfg.DoctorInput{Iface: iface, VIPs: vips})
	return f.findings
}

// infoLog collects the helper's "* " lines.
type infoLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *infoLog) info(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

// take returns the lines logged since the last take.
func (l *infoLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.lines
	l.lines = nil
	return out
}

// Addresses from TEST-NET-1 (RFC 5737), as the namespace testbed uses.
var (
	vipA  = netip.MustParseAddr("192.0.2.200")
	vipB  = netip.MustParseAddr("192.0.2.201")
	self  = netip.MustParseAddr("192.0.2.11")
	peer2 = netip.MustParseAddr("192.0.2.12")
	peer3 = netip.MustParseAddr("192.0.2.13")
)

// vmac is a locally administered MAC (IEEE 802: bit 1 of the first octet), as
// the helper derives from -s.
var vmac = net.HardwareAddr{0x02, 0x6c, 0x32, 0x62, 0x00, 0x07}

func writeVIPs(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vipaddrs")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func options(vipFile string) cgphelper.Options {
	return cgphelper.Options{Interface: "eth0", VIPFile: vipFile, SelfWeight: 50}
}

// newHelper returns a helper on b, closed when the test ends.
func newHelper(t *testing.T, b balancer.Control, vipFile string, host *fakeHost, log *infoLog) *cgphelper.Helper {
	t.Helper()
	h := cgphelper.New(b, host, options(vipFile), log.info, nil)
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return h
}

// newDry returns a helper driving the -m balancer.
func newDry(t *testing.T) (*cgphelper.Helper, *fakeHost, *infoLog) {
	t.Helper()
	host := &fakeHost{local: map[netip.Addr]bool{self: true, vipA: true, vipB: true}}
	log := &infoLog{}
	vips := writeVIPs(t, "# two VIPs\n192.0.2.200\n192.0.2.201\n")
	return newHelper(t, cgphelper.NewDryRun("eth0", vips, vmac, log.info), vips, host, log), host, log
}

// statusField returns the value of key=value in a STATUS summary.
func statusField(t *testing.T, status, key string) string {
	t.Helper()
	m := regexp.MustCompile(`(?:^| )` + regexp.QuoteMeta(key) + `=(\S*)`).FindStringSubmatch(status)
	if m == nil {
		t.Fatalf("STATUS %q has no %s=", status, key)
	}
	return m[1]
}

func hasLine(lines []string, substr string) bool {
	for _, l := range lines {
		if strings.Contains(l, substr) {
			return true
		}
	}
	return false
}

func TestStartReportsHostChecksAndDryRun(t *testing.T) {
	h, host, log := newDry(t)
	host.findings = []hostcfg.Finding{
		{Check: hostcfg.CheckARPIgnore, OK: false, Have: "net.ipv4.conf.eth0.arp_ignore=0",
			Want: "net.ipv4.conf.eth0.arp_ignore>=1", Fix: "sysctl -w net.ipv4.conf.eth0.arp_ignore=1"},
		{Check: hostcfg.CheckRPFilter, OK: true, Have: "net.ipv4.conf.all.rp_filter=2"},
		{Check: hostcfg.CheckVIPOnLo, OK: false, Have: "192.0.2.201 missing", Want: "192.0.2.201/32 on lo"},
	}
	if err := h.Start(); err != nil {
		t.Fatalf("Start with -m: %v", err)
	}
	lines := log.take()
	want := []string{
		"host check arp_ignore: have net.ipv4.conf.eth0.arp_ignore=0, want net.ipv4.conf.eth0.arp_ignore>=1; fix: sysctl -w net.ipv4.conf.eth0.arp_ignore=1",
		"host check vip_on_lo: have 192.0.2.201 missing, want 192.0.2.201/32 on lo",
	}
	for _, w := range want {
		found := false
		for _, l := range lines {
			if l == w {
				found = true
			}
		}
		if !found {
			t.Errorf("Start logged %q, want a line %q", lines, w)
		}
	}
	if hasLine(lines, "rp_filter") {
		t.Errorf("a passing check was reported: %q", lines)
	}
	if !hasLine(lines, "-m:") {
		t.Errorf("Start with DryRun did not say that nothing is opened: %q", lines)
	}
	if len(host.doctorCalls) != 1 {
		t.Fatalf("Doctor called %d times, want 1", len(host.doctorCalls))
	}
	in := host.doctorCalls[0]
	if in.Iface != "eth0" || len(in.VIPs) != 2 || in.VIPs[0] != vipA || in.VIPs[1] != vipB {
		t.Errorf("Doctor asked about %+v, want eth0 and both VIPs", in)
	}
	if len(host.ifaceCalls) != 0 {
		t.Errorf("DryRun Start looked up the interface %v: it must open nothing", host.ifaceCalls)
	}
}

func TestActiveDryRun(t *testing.T) {
	h, host, log := newDry(t)
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	log.take()
	st := h.Status()
	if got := statusField(t, st, "role"); got != "standby" {
		t.Errorf("before ACTIVE role=%s, want standby (contract: standby until the first ACTIVE)", got)
	}
	since0 := statusField(t, st, "since")

	time.Sleep(1100 * time.Millisecond) // since= has whole seconds: make a role change visible
	if err := h.Active([]netip.Addr{self, peer2, peer3}); err != nil {
		t.Fatalf("Active with -m: %v", err)
	}
	lines := log.take()
	if !hasLine(lines, "would answer ARP for 192.0.2.200, 192.0.2.201 on eth0 with "+vmac.String()) {
		t.Errorf("ACTIVE -m lines %q do not describe answering ARP for both VIPs with the virtual MAC", lines)
	}
	if !hasLine(lines, "would forward VIP traffic to members 192.0.2.11 (self, weight 50) 192.0.2.12 192.0.2.13") {
		t.Errorf("ACTIVE -m lines %q do not describe forwarding to the members with self's -r weight", lines)
	}
	st = h.Status()
	for k, want := range map[string]string{
		"role": "active", "iface": "eth0", "vips": "192.0.2.200,192.0.2.201",
		"members": "192.0.2.11,192.0.2.12,192.0.2.13",
	} {
		if got := statusField(t, st, k); got != want {
			t.Errorf("STATUS %s=%s, want %s (status %q)", k, got, want, st)
		}
	}
	since1 := statusField(t, st, "since")
	if since1 == since0 {
		t.Errorf("since= did not change with the role: %s", since1)
	}
	if _, err := time.Parse(time.RFC3339, since1); err != nil {
		t.Errorf("since=%s is not RFC 3339: %v", since1, err)
	}
	if !strings.HasSuffix(st, " dry-run") {
		t.Errorf("STATUS %q does not say dry-run", st)
	}
	if strings.ContainsAny(st, "\n\r") {
		t.Errorf("STATUS %q is not one line", st)
	}
	if len(host.ifaceCalls) != 0 {
		t.Errorf("DryRun ACTIVE looked up the interface %v", host.ifaceCalls)
	}

	// Repeating the same ACTIVE changes nothing (CGP re-sends pending
	// commands after a restart): same summary, role start unchanged.
	time.Sleep(1100 * time.Millisecond)
	if err := h.Active([]netip.Addr{self, peer2, peer3}); err != nil {
		t.Fatalf("repeated Active: %v", err)
	}
	if again := h.Status(); again != st {
		t.Errorf("repeated ACTIVE changed STATUS:\n before %q\n after  %q", st, again)
	}

	// A different list is a change of membership, still active.
	if err := h.Active([]netip.Addr{self, peer3}); err != nil {
		t.Fatalf("Active with a changed list: %v", err)
	}
	st = h.Status()
	if got := statusField(t, st, "members"); got != "192.0.2.11,192.0.2.13" {
		t.Errorf("after the membership change members=%s, want 192.0.2.11,192.0.2.13", got)
	}
	if got := statusField(t, st, "since"); got != since1 {
		t.Errorf("a membership change restarted the role: since %s -> %s", since1, got)
	}
}

func TestStandbyDryRun(t *testing.T) {
	h, _, log := newDry(t)
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	if err := h.Standby(netip.Addr{}); err != nil {
		t.Fatalf("Standby before any ACTIVE: %v", err)
	}
	if lines := log.take(); hasLine(lines, "stop answering ARP") {
		t.Errorf("STANDBY while standby claims to stop something: %q", lines)
	}
	if err := h.Active([]netip.Addr{self, peer2}); err != nil {
		t.Fatal(err)
	}
	log.take()
	if err := h.Standby(peer2); err != nil {
		t.Fatalf("Standby: %v", err)
	}
	if lines := log.take(); !hasLine(lines, "would stop answering ARP for 192.0.2.200, 192.0.2.201 and stop forwarding") {
		t.Errorf("STANDBY after ACTIVE with -m logged %q, want the ARP/forwarding stop described", lines)
	}
	st := h.Status()
	if got := statusField(t, st, "role"); got != "standby" {
		t.Errorf("after STANDBY role=%s", got)
	}
	if strings.Contains(st, "members=") {
		t.Errorf("a standby still lists members: %q", st)
	}
	// Repeating STANDBY is harmless and says nothing more.
	if err := h.Standby(peer2); err != nil {
		t.Fatal(err)
	}
	if lines := log.take(); hasLine(lines, "stop answering ARP") {
		t.Errorf("repeated STANDBY logged %q", lines)
	}
}

// realBalancer returns a balancer whose fast path cannot open (open returns openErr): enough
// for the helper's error paths, without sockets.
func realBalancer(t *testing.T, vipFile string, openErr error) *balancer.Balancer {
	t.Helper()
	b, err := balancer.New(balancer.Config{Mode: "helper", Interface: "lo", VIPFile: vipFile, VirtualMAC: vmac,
		StartAnyway: true, Open: func(node.OpenConfig) (node.Sockets, error) { return node.Sockets{}, openErr }})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMissingVIPFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-vipaddrs")
	for _, dry := range []bool{false, true} {
		t.Run(fmt.Sprintf("dry=%v", dry), func(t *testing.T) {
			host := &fakeHost{local: map[netip.Addr]bool{self: true}}
			log := &infoLog{}
			var b balancer.Control = realBalancer(t, missing, errors.New("unused"))
			if dry {
				b = cgphelper.NewDryRun("eth0", missing, vmac, log.info)
			}
			h := newHelper(t, b, missing, host, log)
			if err := h.Start(); err != nil {
				t.Fatalf("Start must not fail on a missing VIP file (STANDBY works without VIPs): %v", err)
			}
			if lines := log.take(); !hasLine(lines, "VIP file: ") || !hasLine(lines, missing) {
				t.Errorf("Start logged %q, want a VIP file line naming %s", lines, missing)
			}
			err := h.Active([]netip.Addr{self, peer2})
			if err == nil {
				t.Fatal("ACTIVE without a readable VIP file answered OK")
			}
			if !errors.Is(err, balancer.ErrNoVIPs) || !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("ACTIVE error %v: want ErrNoVIPs wrapping the file's not-exist error", err)
			}
			if err := h.Standby(netip.Addr{}); err != nil {
				t.Errorf("STANDBY without VIPs: %v", err)
			}
			st := h.Status()
			if got := statusField(t, st, "role"); got != "standby" {
				t.Errorf("role=%s after a failed ACTIVE, want standby", got)
			}
			if !strings.Contains(st, "vips=error(") {
				t.Errorf("STATUS %q does not report the VIP error", st)
			}
			if len(host.doctorCalls) != 0 {
				t.Errorf("Doctor was run without VIPs: %+v", host.doctorCalls)
			}
		})
	}
}

func TestEmptyVIPFile(t *testing.T) {
	vips := writeVIPs(t, "# nothing yet\n\n")
	h := newHelper(t, cgphelper.NewDryRun("eth0", vips, vmac, (&infoLog{}).info), vips, &fakeHost{}, &infoLog{})
	if err := h.Active([]netip.Addr{self}); !errors.Is(err, balancer.ErrNoVIPs) {
		t.Errorf("ACTIVE with an empty VIP file: %v, want ErrNoVIPs", err)
	}
}

// TestActiveWithoutInterface: the fast path cannot open; ACTIVE answers ErrNoInterface naming
// it, STATUS reports it, and the helper stays up.
func TestActiveWithoutInterface(t *testing.T) {
	vips := writeVIPs(t, "192.0.2.200\n")
	b := realBalancer(t, vips, fmt.Errorf("%w: l2lbnone0: no such network interface", node.ErrNoInterface))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	defer func() { cancel(); <-done }()
	log := &infoLog{}
	h := newHelper(t, b, vips, &fakeHost{local: map[netip.Addr]bool{self: true}}, log)
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	var err error
	deadline := time.Now().Add(2 * time.Second)
	for err = h.Active([]netip.Addr{self, peer2}); !errors.Is(err, balancer.ErrNoInterface) && time.Now().Before(deadline); err = h.Active([]netip.Addr{self, peer2}) {
		time.Sleep(10 * time.Millisecond) // the first attempt to open may not have failed yet
	}
	if !errors.Is(err, balancer.ErrNoInterface) || !strings.Contains(err.Error(), "l2lbnone0") {
		t.Fatalf("ACTIVE without an interface: %v, want ErrNoInterface naming it", err)
	}
	st := h.Status()
	if got := statusField(t, st, "role"); got != "standby" {
		t.Errorf("role=%s after a failed ACTIVE", got)
	}
	if !strings.Contains(st, "error=") || !strings.Contains(st, "l2lbnone0") {
		t.Errorf("STATUS %q does not report the interface problem", st)
	}
	h.Periodic()
	if lines := log.take(); !hasLine(lines, "problem: ") || !hasLine(lines, "l2lbnone0") {
		t.Errorf("Periodic did not report the problem as an info line: %q", lines)
	}
	if err := h.Standby(netip.Addr{}); err != nil {
		t.Errorf("STANDBY: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := h.Close(); err != nil {
			t.Errorf("Close #%d: %v", i+1, err)
		}
	}
}

func TestCloseTwice(t *testing.T) {
	h, _, _ := newDry(t)
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	if err := h.Active([]netip.Addr{self}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := h.Close(); err != nil {
			t.Errorf("Close #%d: %v", i+1, err)
		}
	}
	if err := h.Active([]netip.Addr{self}); !errors.Is(err, cgphelper.ErrClosed) {
		t.Errorf("ACTIVE after Close: %v, want ErrClosed", err)
	}
}

// TestRolesAndMembersOnTheFake drives the helper through CGP's commands on the fake balancer:
// ACTIVE gives the members (this server at -r, the others at 100) and the active role, a new list
// changes only the members, an ACTIVE the balancer cannot take yet is answered with its error and
// still asked for, and STANDBY steps down.
func TestRolesAndMembersOnTheFake(t *testing.T) {
	f := balancer.NewFake(control.Status{Interface: "eth0", VIPs: []string{"192.0.2.200"}, Ready: true})
	log := &infoLog{}
	h := newHelper(t, f, writeVIPs(t, "192.0.2.200\n"), &fakeHost{local: map[netip.Addr]bool{self: true}}, log)
	if err := h.Active([]netip.Addr{self, peer2, peer3}); err != nil {
		t.Fatal(err)
	}
	if f.Role() != balancer.RoleActive {
		t.Fatalf("role %v after ACTIVE", f.Role())
	}
	want := []balancer.Member{{Addr: self, Weight: 50, Local: true}, {Addr: peer2, Weight: 100}, {Addr: peer3, Weight: 100}}
	if got := f.Members(); !slices.Equal(got, want) {
		t.Errorf("members %+v, want %+v", got, want)
	}
	if lines := log.take(); !hasLine(lines, "active: VIPs 192.0.2.200 on eth0, members 192.0.2.11 (self, weight 50) 192.0.2.12 192.0.2.13") {
		t.Errorf("ACTIVE logged %q", lines)
	}
	// The same list again changes nothing and says nothing.
	n := f.MemberLists()
	if err := h.Active([]netip.Addr{self, peer2, peer3}); err != nil {
		t.Fatal(err)
	}
	if lines := log.take(); len(lines) != 0 {
		t.Errorf("a repeated ACTIVE logged %q", lines)
	}
	if f.MemberLists() != n+1 || !slices.Equal(f.Members(), want) {
		t.Errorf("a repeated ACTIVE changed the members: %+v", f.Members())
	}
	// A new list is a membership change.
	if err := h.Active([]netip.Addr{self, peer3}); err != nil {
		t.Fatal(err)
	}
	if got := f.Members(); len(got) != 2 || got[1].Addr != peer3 {
		t.Errorf("members after the new list: %+v", got)
	}
	// STANDBY.
	if err := h.Standby(peer2); err != nil {
		t.Fatal(err)
	}
	if f.Role() != balancer.RoleStandby {
		t.Errorf("role %v after STANDBY", f.Role())
	}
	// An ACTIVE the balancer cannot take is answered with its error, and asked for anyway.
	f.SetRoleErr(fmt.Errorf("%w: l2lbnone0", balancer.ErrNoInterface))
	if err := h.Active([]netip.Addr{self}); !errors.Is(err, balancer.ErrNoInterface) {
		t.Errorf("ACTIVE on a balancer that cannot: %v", err)
	}
	if f.Role() != balancer.RoleActive {
		t.Errorf("the role asked for after a failed ACTIVE is %v; the balancer must keep CGP's wish", f.Role())
	}
}

// fakeMembership is the group's gossip as the helper sees it.
type fakeMembership struct {
	mu      sync.Mutex
	view    election.View
	joined  []string
	updated chan struct{}
}

func (m *fakeMembership) View() election.View {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.view
}
func (m *fakeMembership) Updated() <-chan struct{} { return m.updated }
func (m *fakeMembership) JoinPeers(p []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.joined = append(m.joined, p...)
	return nil
}
func (m *fakeMembership) Leave(time.Duration) error { return nil }
func (m *fakeMembership) Shutdown() error           { close(m.updated); return nil }

// TestPortRangesFromMembership: the members' ranges learnt by gossip reach the balancer, also
// when they arrive after ACTIVE; overlapping ones are passed on for the balancer's one rule.
func TestPortRangesFromMembership(t *testing.T) {
	f := balancer.NewFake(control.Status{Ready: true})
	m := &fakeMembership{updated: make(chan struct{}, 1)}
	opt := options(writeVIPs(t, "192.0.2.200\n"))
	opt.GossipPort = 7946
	opt.Join = func(election.ClusterConfig) (cgphelper.Membership, error) { return m, nil }
	h := cgphelper.New(f, &fakeHost{local: map[netip.Addr]bool{self: true}}, opt, (&infoLog{}).info, nil)
	defer h.Close()
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	if err := h.Active([]netip.Addr{self, peer2, peer3}); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	m.view.Members = []election.Member{
		{Alive: true, NodeMeta: election.NodeMeta{Name: "a", Addr: peer2, PortLo: 55000, PortHi: 59000}},
		{Alive: true, NodeMeta: election.NodeMeta{Name: "b", Addr: peer3, PortLo: 58000, PortHi: 60000}},
		{Alive: false, NodeMeta: election.NodeMeta{Name: "c", Addr: self, PortLo: 50000, PortHi: 54000}},
	}
	m.mu.Unlock()
	m.updated <- struct{}{}
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := map[netip.Addr]dataplane.PortRange{}
		for _, mm := range f.Members() {
			got[mm.Addr] = mm.Ports
		}
		if got[peer2] == (dataplane.PortRange{Lo: 55000, Hi: 59000}) && got[peer3] == (dataplane.PortRange{Lo: 58000, Hi: 60000}) {
			if got[self] != (dataplane.PortRange{}) {
				t.Errorf("a dead member's range was used: %+v", got[self])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ranges never reached the balancer: %+v", f.Members())
		}
		time.Sleep(5 * time.Millisecond)
	}
	deadline = time.Now().Add(2 * time.Second)
	for {
		m.mu.Lock()
		joined := slices.Clone(m.joined)
		m.mu.Unlock()
		if slices.Contains(joined, "192.0.2.12:7946") && slices.Contains(joined, "192.0.2.13:7946") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the helper joined %v, want the other members at the gossip port", joined)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestStatusLine: the STATUS summary CGP reads, from the balancer's status.
func TestStatusLine(t *testing.T) {
	since := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	st := control.Status{Role: "active", Since: since, Interface: "eth0", VIPs: []string{"192.0.2.200", "192.0.2.201"},
		Members: []control.Member{{Addr: "192.0.2.11", Weight: 50, Ready: true, Flows: 3},
			{Addr: "192.0.2.12", Weight: 100, Flows: 1}, {Addr: "192.0.2.13", Weight: 0, Ready: true}},
		Table: control.Table{Flows: 4, Templates: 2}, Verdicts: map[string]uint64{"forwarded": 7, "local": 5, "dropped": 1},
		Problems: []string{"connection sync unavailable: no IPv4 address"}}
	want := `role=active since=2026-12-03T10:00:00Z iface=eth0 vips=192.0.2.200,192.0.2.201 ` +
		`members=192.0.2.11/50/ready/3,192.0.2.12/100/unresolved/1,192.0.2.13/0/quiescent/0 ` +
		`connections=4 templates=2 forwarded=7 local=5 dropped=1 error="connection sync unavailable: no IPv4 address"`
	if got := cgphelper.StatusLine(st); got != want {
		t.Errorf("STATUS\n got  %s\n want %s", got, want)
	}
}

// TestSession drives the helper through the protocol session exactly as the
// binary does, and checks the answers CGP would read.
func TestSession(t *testing.T) {
	for _, tc := range []struct {
		name    string
		vips    string
		in      string
		want    []string // regexps, one per output line in order
		wantErr bool
	}{
		{
			name: "dry run",
			vips: "192.0.2.200\n",
			in:   "1 INTF 3\n2 STANDBY 192.0.2.12\n3 ACTIVE 192.0.2.11,192.0.2.12\n4 ACTIVE 192.0.2.11 192.0.2.12\n5 STATUS\n6 STANDBY\n7 QUIT\n",
			want: []string{
				`^\* -m: `,
				`^1 INTF 1$`,
				`^2 OK$`,
				`^\* would answer ARP for 192\.0\.2\.200 on eth0 with 02:6c:32:62:00:07 and announce them$`,
				`^\* would forward VIP traffic to members 192\.0\.2\.11 \(self, weight 50\) 192\.0\.2\.12$`,
				`^3 OK$`,
				`^\* would answer ARP`,
				`^\* would forward`,
				`^4 OK$`,
				`^5 OK role=active since=\S+ iface=eth0 vips=192\.0\.2\.200 members=192\.0\.2\.11,192\.0\.2\.12 dry-run$`,
				`^\* would stop answering ARP for 192\.0\.2\.200 and stop forwarding$`,
				`^6 OK$`,
				`^7 OK$`,
			},
		},
		{
			name: "no VIP file",
			in:   "1 INTF 1\n2 ACTIVE 192.0.2.11\n3 STANDBY\n4 STATUS\n",
			want: []string{
				`^\* VIP file: `,
				`^\* -m: `,
				`^1 INTF 1$`,
				`^2 ERROR no VIP could be read: .*no such file or directory$`,
				`^3 OK$`,
				`^4 OK role=standby .* vips=error\(`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vipFile := filepath.Join(t.TempDir(), "absent")
			if tc.vips != "" {
				vipFile = writeVIPs(t, tc.vips)
			}
			var out bytes.Buffer
			var sess *helperproto.Session
			info := func(f string, a ...any) { sess.Info(f, a...) }
			h := cgphelper.New(cgphelper.NewDryRun("eth0", vipFile, vmac, info), &fakeHost{local: map[netip.Addr]bool{self: true}},
				options(vipFile), info, nil)
			sess = helperproto.NewSession(helperproto.Config{In: strings.NewReader(tc.in), Out: &out,
				Handler: h, Timeout: time.Second})
			if err := h.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- sess.Run() }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("session did not end within 5 s of the end of its input")
			}
			got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			if len(got) != len(tc.want) {
				t.Fatalf("got %d lines, want %d:\n%s", len(got), len(tc.want), out.String())
			}
			for i, re := range tc.want {
				if !regexp.MustCompile(re).MatchString(got[i]) {
					t.Errorf("line %d %q does not match %s", i+1, got[i], re)
				}
			}
		})
	}
}
