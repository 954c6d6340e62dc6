package cgp

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// Contract bounds (cgp-helper-protocol.md and issue 3).
const (
	activeWithin   = time.Second     // ACTIVE: answer ARP, announce and forward, then OK
	standbyWithin  = time.Second     // STANDBY answered promptly
	failoverWithin = 2 * time.Second // new connections after the new ACTIVE's OK
	answerLimit    = 3 * time.Second // bound on any wait for an answer
	// dwell is the least time each phase lasts, so that the ARP probe
	// (every 50 ms) sees it a dozen times or more.
	dwell = 800 * time.Millisecond
)

// serveBed builds a bed of three frontends serving names on tcpPort of the VIP and two clients,
// and returns it with the client addresses to connect from: every client's main and extra
// addresses and extra more on c2 (persistence sticks an address to one frontend, so spreading
// shows only over many of them).
func serveBed(t *testing.T, extra int) (*testbed.Bed, []source) {
	t.Helper()
	bed := newBed(t, testbed.Options{Frontends: 3, Clients: 2})
	for _, f := range bed.Frontends {
		if _, err := f.ServeName(bed.VIPs[0], []uint16{tcpPort}, nil); err != nil {
			t.Fatal(err)
		}
	}
	var srcs []source
	for _, c := range bed.Clients {
		srcs = append(srcs, source{c, c.Addr})
	}
	for _, c := range bed.Clients {
		for _, x := range c.Extra {
			srcs = append(srcs, source{c, x})
		}
	}
	c2 := bed.Clients[1]
	for _, a := range addAddrs(t, c2, 150, extra) {
		srcs = append(srcs, source{c2, a})
	}
	return bed, srcs
}

// TestHelperFailover plays CGP for three frontends: INTF and STANDBY to all,
// ACTIVE to f1, a membership change on f1, the active role moved to f2, and
// QUIT to all. A client watches ARP for the VIP the whole time and makes real
// connections.
func TestHelperFailover(t *testing.T) {
	// With -p 15 a client address sticks to one frontend (IPVS
	// persistence), so balancing shows only across many client addresses:
	// c2 gets 30 more. c1 carries the ARP probe's tag addresses.
	bed, srcs := serveBed(t, 30)
	vip := bed.VIPs[0]
	raddr := netip.AddrPortFrom(vip, tcpPort)
	f1, f2, f3 := bed.Frontends[0], bed.Frontends[1], bed.Frontends[2]
	c1 := bed.Clients[0]
	tags := addAddrs(t, c1, 120, 8)

	waitDAD(t, bed.Frontends...)
	before := map[string]map[string]string{}
	for _, f := range bed.Frontends {
		before[f.Name] = snapshot(t, f)
	}
	vipFile := writeVIPFile(t, bed.VIPs)

	tStart := time.Now()
	probe := startARPProbe(t, c1, vip, tags)
	helpers := map[string]*e2e.Helper{}
	var pids []int
	for _, f := range bed.Frontends {
		hp := e2e.StartHelper(t, f, suite.Bin, vipFile, helperOpts)
		helpers[f.Name] = hp
		pids = append(pids, hp.Pid())
	}
	h1, h2, h3 := helpers["f1"], helpers["f2"], helpers["f3"]
	for _, f := range bed.Frontends {
		helpers[f.Name].Do("INTF 3", "^INTF 1$", answerLimit)
	}
	for _, f := range bed.Frontends {
		a, sent := helpers[f.Name].Do("STANDBY", "^OK$", answerLimit)
		if d := a.At.Sub(sent); d > standbyWithin {
			t.Errorf("%s: STANDBY answered after %v", f.Name, d)
		}
	}
	// Every helper opens its fast path in the standby role (so that ACTIVE
	// only flips a switch): its socket's virtual-MAC membership shows as
	// promiscuity. That makes the "nothing left behind" check below real.
	for _, f := range bed.Frontends {
		if p := promiscuity(t, f); p == 0 {
			t.Errorf("%s: eth0 promiscuity 0 while the standby helper runs; want its virtual-MAC membership", f.Name)
		}
	}
	time.Sleep(600 * time.Millisecond) // a dozen ARP requests while all are standbys

	members := fmt.Sprintf("%v %v %v", f1.Addr, f2.Addr, f3.Addr)
	portsA := portCaptures(t, bed)
	tActiveSent := time.Now()
	aActive, _ := h1.Do("ACTIVE "+members, "^OK$", answerLimit)
	tActiveOK := aActive.At
	if d := tActiveOK.Sub(tActiveSent); d > activeWithin {
		t.Errorf("f1: ACTIVE answered after %v, want within %v", d.Round(time.Millisecond), activeWithin)
	}
	wantInfo := fmt.Sprintf("active: VIPs %v on eth0, members %v (self, weight 100) %v %v", vip, f1.Addr, f2.Addr, f3.Addr)
	if !h1.HasInfo(wantInfo) {
		t.Errorf("f1: no info line %q before the OK; info lines: %q", wantInfo, h1.InfoLines())
	}
	// Forwarding works when OK is answered: the very first connection.
	if name, err := ask(srcs[0], raddr, time.Second); err != nil {
		t.Errorf("first connection after ACTIVE's OK: %v", err)
	} else {
		t.Logf("first connection after ACTIVE's OK answered by %s in %v", name, time.Since(tActiveOK).Round(time.Millisecond))
	}

	// Balanced over the members, each client address sticking to one.
	names := askEach(t, srcs, raddr, 2)
	counts := perFrontend(names)
	t.Logf("f1 active: connections per frontend %v over %d client addresses", counts, len(srcs))
	owner := map[netip.Addr]string{}
	for a, ns := range names {
		owner[a] = ns[0]
		for _, n := range ns[1:] {
			if n != ns[0] {
				t.Errorf("-p 15: connections from %v went to %v, want one frontend", a, ns)
				break
			}
		}
	}
	for _, f := range bed.Frontends {
		if counts[f.Name] == 0 {
			t.Errorf("%s got none of %d connections from %d addresses: not balanced over the members (%v)",
				f.Name, 2*len(srcs), len(srcs), counts)
		}
	}
	checkNames(t, counts, "f1", "f2", "f3")

	// Membership change on the active node: f2 leaves. A download to f3 and
	// one to f1 (local delivery) run across the change.
	srcOf := func(name string) source {
		for _, s := range srcs {
			if owner[s.addr] == name {
				return s
			}
		}
		t.Fatalf("no client address was balanced to %s: %v", name, counts)
		return source{}
	}
	const dlSize = 32 << 20
	served0 := map[string]uint64{}
	for _, f := range bed.Frontends {
		served0[f.Name] = f.Served().Downloads
	}
	dls := map[string]*download{}
	for _, name := range []string{"f3", "f1"} {
		d := startDownload(t, srcOf(name), raddr, dlSize)
		if err := d.read(1 << 20); err != nil {
			t.Fatalf("download from %v (to %s) before the change: %v", d.src.addr, name, err)
		}
		dls[name] = d
	}
	a, sent := h1.Do(fmt.Sprintf("ACTIVE %v,%v", f1.Addr, f3.Addr), "^OK$", answerLimit)
	if d := a.At.Sub(sent); d > activeWithin {
		t.Errorf("f1: ACTIVE with a changed list answered after %v", d)
	}
	for name, d := range dls {
		if err := d.read(-1); err != nil {
			t.Errorf("download from %v to %s, a member that stays, broke over the membership change: %v", d.src.addr, name, err)
		}
		d.conn.Close()
	}
	for _, f := range bed.Frontends {
		want := served0[f.Name]
		if dls[f.Name] != nil {
			want++
		}
		if got := f.Served().Downloads; got != want {
			t.Errorf("%s served %d downloads over the change, want %d", f.Name, got-served0[f.Name], want-served0[f.Name])
		}
	}
	names = askEach(t, srcs, raddr, 1)
	afterChange := map[netip.Addr]string{}
	for a, ns := range names {
		afterChange[a] = ns[0]
	}
	counts = perFrontend(names)
	t.Logf("after ACTIVE f1,f3: connections per frontend %v", counts)
	checkNames(t, counts, "f1", "f3")
	if counts["f1"] == 0 || counts["f3"] == 0 {
		t.Errorf("after the change, connections %v do not reach both remaining members", counts)
	}
	for a, ns := range names {
		if was := owner[a]; was != "f2" && ns[0] != was {
			t.Errorf("%v stuck to %s (a member that stays) but went to %s after the change", a, was, ns[0])
		}
	}
	st, _ := h1.Do("STATUS", "^OK ", answerLimit)
	checkStatus(t, "f1", st.Text, "active", f1.Addr, f3.Addr)
	time.Sleep(time.Until(tActiveOK.Add(dwell)))
	stopA := time.Now()

	// Hand-over: STANDBY to f1, then ACTIVE to f2.
	tStandbySent := time.Now()
	aSb, _ := h1.Do(fmt.Sprintf("STANDBY %v", f2.Addr), "^OK$", answerLimit)
	tStandbyOK := aSb.At
	if d := tStandbyOK.Sub(tStandbySent); d > standbyWithin {
		t.Errorf("f1: STANDBY answered after %v", d)
	}
	// Forwarding stopped before the OK: nothing answers now.
	if name, err := ask(srcs[1], raddr, 500*time.Millisecond); err == nil {
		t.Errorf("a connection to the VIP was answered by %s after f1's STANDBY OK, with no active balancer", name)
	}
	time.Sleep(100 * time.Millisecond)
	statsA := stopCaptures(portsA)
	portsB := portCaptures(t, bed)
	tFailSent := time.Now()
	aFail, _ := h2.Do("ACTIVE "+members, "^OK$", answerLimit)
	tFailOK := aFail.At
	if d := tFailOK.Sub(tFailSent); d > activeWithin {
		t.Errorf("f2: ACTIVE answered after %v, want within %v", d.Round(time.Millisecond), activeWithin)
	}
	var firstOK time.Duration
	for i := 0; ; i++ {
		_, err := ask(srcs[i%len(srcs)], raddr, 300*time.Millisecond)
		if err == nil {
			firstOK = time.Since(tFailOK)
			break
		}
		if time.Since(tFailOK) > failoverWithin+time.Second {
			t.Fatalf("no connection to the VIP succeeded within %v of f2's ACTIVE answer: %v", failoverWithin+time.Second, err)
		}
	}
	t.Logf("hand-over: first new connection %v after f2's OK", firstOK.Round(time.Millisecond))
	if firstOK > failoverWithin {
		t.Errorf("first new connection %v after f2's ACTIVE answer, want within %v", firstOK.Round(time.Millisecond), failoverWithin)
	}
	names = askEach(t, srcs, raddr, 1)
	counts = perFrontend(names)
	t.Logf("f2 active: persistent clients' connections per frontend %v", counts)
	checkNames(t, counts, "f1", "f2", "f3")
	// The connection-sync channel carried f1's persistence templates (-p 15) to f2, so every
	// persistent client keeps the frontend it had after the membership change.
	same := 0
	for a, ns := range names {
		if ns[0] == afterChange[a] {
			same++
		}
	}
	t.Logf("%d of %d persistent client addresses reached the same frontend through f2 as through f1", same, len(names))
	if same != len(names) {
		t.Errorf("only %d of %d persistent clients kept their frontend across the hand-over", same, len(names))
	}
	// New clients are balanced over every member, f2 (now the active node) included.
	// .220-.249: clear of the VIP (.200) and of every host address.
	var fresh []source
	for _, a := range addAddrs(t, bed.Clients[1], 220, 30) {
		fresh = append(fresh, source{h: bed.Clients[1], addr: a})
	}
	freshNames := askEach(t, fresh, raddr, 1)
	freshCounts := perFrontend(freshNames)
	t.Logf("f2 active: new clients' connections per frontend %v", freshCounts)
	for _, f := range bed.Frontends {
		if freshCounts[f.Name] == 0 {
			t.Errorf("with f2 active, %s got none of %d new clients' connections (%v)", f.Name, len(fresh), freshCounts)
		}
	}
	st, _ = h2.Do("STATUS", "^OK ", answerLimit)
	checkStatus(t, "f2", st.Text, "active", f1.Addr, f2.Addr, f3.Addr)
	for _, hp := range []*e2e.Helper{h1, h3} {
		st, _ := hp.Do("STATUS", "^OK ", answerLimit)
		checkStatus(t, hp.Name(), st.Text, "standby")
	}
	time.Sleep(time.Until(tFailOK.Add(dwell)))
	tEnd := time.Now()
	statsB := stopCaptures(portsB)

	// ARP, as seen from the client and on the switch ports.
	probe.check(defaultVMAC)
	probe.expect("before any ACTIVE", tStart, tActiveSent, 0)
	probe.expect("f1 active", tActiveOK, stopA, 1)
	probe.expect("all standby during the hand-over", tStandbyOK, tFailSent, 0)
	probe.expect("f2 active", tFailOK, tEnd, 1)
	if !probe.announcedWithin(tActiveSent, tActiveSent.Add(activeWithin)) {
		t.Errorf("no gratuitous ARP for %v within %v of ACTIVE to f1", vip, activeWithin)
	}
	if !probe.announcedWithin(tFailSent, tFailSent.Add(activeWithin)) {
		t.Errorf("no gratuitous ARP for %v within %v of ACTIVE to f2", vip, activeWithin)
	}
	checkARPPorts(t, "f1 active", statsA, vip, tags, "f1")
	checkARPPorts(t, "f2 active", statsB, vip, tags, "f2")

	// QUIT to all leaves nothing behind.
	e2e.QuitAll(t, answerLimit, t.Fatalf, h1, h2, h3)
	if t.Failed() {
		for _, hp := range helpers {
			t.Logf("%s info lines: %q", hp.Name(), hp.InfoLines())
		}
	}
	for _, f := range bed.Frontends {
		noHelperLeft(t, f, pids...)
		diffSnapshots(t, f.Name, "by the helper run", before[f.Name], snapshot(t, f))
	}
	h1.CheckTrace("< 1 INTF 3", "> 1 INTF 1", "< 2 STANDBY", "> 2 OK", "< 3 ACTIVE "+members, "> 3 OK",
		fmt.Sprintf("< 4 ACTIVE %v,%v", f1.Addr, f3.Addr), "> 4 OK", "< 5 STATUS",
		fmt.Sprintf("< 6 STANDBY %v", f2.Addr), "> 6 OK", "< 8 QUIT", "> 8 OK")
	h2.CheckTrace("< 1 INTF 3", "> 1 INTF 1", "< 2 STANDBY", "> 2 OK", "< 3 ACTIVE "+members, "> 3 OK",
		"< 4 STATUS", "< 5 QUIT", "> 5 OK")
	h3.CheckTrace("< 1 INTF 3", "> 1 INTF 1", "< 2 STANDBY", "> 2 OK", "< 3 STATUS", "< 4 QUIT", "> 4 OK")
}

// checkNames fails on answers from anything but the allowed frontends.
func checkNames(t *testing.T, counts map[string]int, allowed ...string) {
	t.Helper()
	for name, n := range counts {
		ok := false
		for _, a := range allowed {
			ok = ok || name == a
		}
		if !ok {
			t.Errorf("%d connections were answered by %s, not one of the members %v", n, name, allowed)
		}
	}
}

// checkStatus checks a STATUS answer's role and, for an active node, its
// members (each "addr/weight/state/flows").
func checkStatus(t *testing.T, who, status, role string, members ...netip.Addr) {
	t.Helper()
	if !strings.Contains(status, "role="+role+" ") {
		t.Errorf("%s: STATUS %q, want role=%s", who, status, role)
	}
	if !strings.Contains(status, "vips=192.0.2.200") {
		t.Errorf("%s: STATUS %q does not list the VIP", who, status)
	}
	if role != "active" {
		return
	}
	m := regexp.MustCompile(` members=(\S+)`).FindStringSubmatch(status)
	if m == nil {
		t.Errorf("%s: STATUS %q lists no members", who, status)
		return
	}
	var got, want []string
	for _, e := range strings.Split(m[1], ",") {
		f := strings.Split(e, "/")
		if len(f) == 4 && f[2] == "leaving" && f[1] == "0" {
			continue // a server that left the list and keeps its established flows (issue 13)
		}
		got = append(got, f[0])
		if len(f) != 4 || f[2] != "ready" {
			t.Errorf("%s: STATUS member %q is not addr/weight/ready/flows", who, e)
		}
	}
	for _, a := range members {
		want = append(want, a.String())
	}
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("%s: STATUS members %v, want %v", who, got, want)
	}
}

// portCaptures records the frames on the switch port of every frontend.
func portCaptures(t *testing.T, bed *testbed.Bed) map[string]*testbed.Capture {
	t.Helper()
	caps := map[string]*testbed.Capture{}
	for _, f := range bed.Frontends {
		c, err := bed.Switch.Capture(f.Name) // the switch-side veth is named after the host
		if err != nil {
			t.Fatal(err)
		}
		caps[f.Name] = c
	}
	return caps
}

func stopCaptures(caps map[string]*testbed.Capture) map[string]testbed.CaptureStats {
	out := map[string]testbed.CaptureStats{}
	for name, c := range caps {
		out[name] = c.Stop()
	}
	return out
}

// checkARPPorts checks on which switch ports replies to the probe's requests
// came in: only the active node's. A reply to a client is unicast to the
// client's MAC, which the switch knows, so it crosses no other frontend's
// port: seeing one on a port means that frontend sent it.
func checkARPPorts(t *testing.T, phase string, stats map[string]testbed.CaptureStats, vip netip.Addr, tags []netip.Addr, active string) {
	t.Helper()
	isTag := map[netip.Addr]bool{}
	for _, a := range tags {
		isTag[a] = true
	}
	seen := map[string]int{}
	for port, st := range stats {
		for _, r := range st.ARPRepliesFor(vip) {
			if isTag[r.Target] {
				seen[port]++
			}
		}
	}
	t.Logf("%s: ARP replies to the probe per switch port %v", phase, seen)
	for port, n := range seen {
		if port != active && n > 0 {
			t.Errorf("%s: %s sent %d ARP replies for %v while %s was the active balancer", phase, port, n, vip, active)
		}
	}
	if seen[active] == 0 {
		t.Errorf("%s: no ARP reply for %v came from %s's port", phase, vip, active)
	}
}

// TestEndOfInputReleases: CGP stopping or restarting a helper closes its
// input; the helper must then release everything and exit 0 within a
// second, as after QUIT, even while it is the active balancer.
func TestEndOfInputReleases(t *testing.T) {
	bed := newBed(t, testbed.Options{Frontends: 1, Clients: 1})
	vip := bed.VIPs[0]
	f1, c1 := bed.Frontends[0], bed.Clients[0]
	if _, err := f1.ServeName(vip, []uint16{tcpPort}, nil); err != nil {
		t.Fatal(err)
	}
	waitDAD(t, f1)
	before := snapshot(t, f1)
	hp := e2e.StartHelper(t, f1, suite.Bin, writeVIPFile(t, bed.VIPs), helperOpts)
	hp.Do("INTF 1", "^INTF 1$", answerLimit)
	hp.Do(fmt.Sprintf("ACTIVE %v", f1.Addr), "^OK$", answerLimit)
	if name, err := ask(source{c1, c1.Addr}, netip.AddrPortFrom(vip, tcpPort), time.Second); err != nil || name != f1.Name {
		t.Fatalf("connection through the active helper: %q, %v; want %s", name, err, f1.Name)
	}
	if promiscuity(t, f1) == 0 {
		t.Errorf("eth0 promiscuity 0 while the active helper runs; want its virtual-MAC membership")
	}
	closed := time.Now()
	if err := hp.CloseInput(); err != nil {
		t.Fatal(err)
	}
	at, err, ok := hp.WaitExit(time.Second + 100*time.Millisecond)
	if !ok {
		t.Fatal("helper still running 1 s after the end of its input")
	}
	if d := at.Sub(closed); d > time.Second {
		t.Errorf("helper exited %v after the end of its input, want within 1 s", d.Round(time.Millisecond))
	}
	if err != nil {
		t.Errorf("exit at the end of input: %v, want status 0", err)
	}
	if s := hp.Stderr(); s != "" {
		t.Errorf("helper wrote to standard error: %q", s)
	}
	noHelperLeft(t, f1, hp.Pid())
	diffSnapshots(t, f1.Name, "by a helper ended by the end of its input", before, snapshot(t, f1))
	if mac, err := c1.ARPResolve(vip); err == nil {
		t.Errorf("%v still answered in ARP (%v) after the helper exited", vip, mac)
	}
	hp.CheckTrace("< 1 INTF 1", "> 1 INTF 1", fmt.Sprintf("< 2 ACTIVE %v", f1.Addr), "> 2 OK")
}
