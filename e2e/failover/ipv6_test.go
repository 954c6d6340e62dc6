package failover

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// IPv6 VIPs (issue 12): "Failover (planned and crash) keeps IPv6 connections as the IPv4 tests
// do". The cluster's VIP file lists the IPv4 VIP and the IPv6 VIP; long-lived echo streams run
// over IPv6 to [VIP6]:echoPort and, at the same time, over IPv4 to the IPv4 VIP; persistent
// clients open new connections over both families all along; the clients find the VIP's MAC by
// neighbour discovery.

// The dual-stack stream set: as many streams as the IPv4 tests run (numStreams), most of them
// over IPv6.
const (
	numStreams6 = 60
	numStreams4 = numStreams - numStreams6
	// stream6ID numbers the IPv6 streams (1000, 1001, ...) apart from the IPv4 ones (0, 1, ...).
	stream6ID = 1000
)

// dualStack is a testbed with both VIPs, the three nodes running, the echo and name servers on
// both VIPs of every frontend, the IPv6 and IPv4 streams established and replicated, and the
// persistent clients running over both families.
type dualStack struct {
	bed        *testbed.Bed
	cl         *cluster
	vip4, vip6 netip.Addr
	vmac       net.HardwareAddr // the virtual MAC every node reports
	ss6, ss4   *e2e.Streams
	p6, p4     *prober
	since      time.Time // when the persistent clients started
}

// sources6 returns both IPv6 addresses of every client plus n more per client (2001:db8::120
// on), so that the IPv6 streams spread over all three frontends despite -p 60: the IPv6
// counterpart of sources.
func sources6(t *testing.T, bed *testbed.Bed, n int) []e2e.Source {
	t.Helper()
	var out []e2e.Source
	next := 0x120
	for _, c := range bed.Clients {
		out = append(out, e2e.Source{Host: c, Addr: c.Addr6})
		for _, x := range c.Extra6 {
			out = append(out, e2e.Source{Host: c, Addr: x})
		}
		for i := 0; i < n; i++ {
			b := testbed.Subnet6.Addr().As16()
			b[14], b[15] = byte(next>>8), byte(next)
			next++
			a := netip.AddrFrom16(b)
			if _, err := c.RunIP("addr", "add", netip.PrefixFrom(a, testbed.Subnet6.Bits()).String(), "dev", "eth0", "nodad"); err != nil {
				t.Fatal(err)
			}
			out = append(out, e2e.Source{Host: c, Addr: a})
		}
	}
	return out
}

func setupDualStack(t *testing.T) *dualStack {
	t.Helper()
	d := &dualStack{bed: newBed(t)}
	if len(d.bed.VIPs6) == 0 {
		t.Fatal("the testbed has no IPv6 VIP")
	}
	d.vip4, d.vip6 = d.bed.VIPs[0], d.bed.VIPs6[0]
	for _, f := range d.bed.Frontends {
		for _, v := range []netip.Addr{d.vip4, d.vip6} {
			if _, err := f.ServeName(v, []uint16{namePort}, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	echo := startEchoOn(t, d.bed, d.vip4, d.vip6)
	srcs6, srcs4 := sources6(t, d.bed, 4), sources(t, d.bed, 2)
	d.cl = startClusterVIPs(t, d.bed, []netip.Addr{d.vip4, d.vip6})
	f1 := d.cl.node("f1")
	st := f1.status()
	if !slices.ContainsFunc(st.VIPs, func(v string) bool { return strings.HasPrefix(v, d.vip6.String()) }) ||
		!slices.ContainsFunc(st.VIPs, func(v string) bool { return strings.HasPrefix(v, d.vip4.String()) }) {
		t.Fatalf("f1 balances VIPs %q, want %v and %v", st.VIPs, d.vip4, d.vip6)
	}
	mac, err := net.ParseMAC(st.VirtualMAC)
	if err != nil {
		t.Fatalf("f1's virtual MAC %q: %v", st.VirtualMAC, err)
	}
	d.vmac = mac

	// The clients' kernels resolve the IPv6 VIP by neighbour discovery as the streams open:
	// f1 answers their solicitations with the virtual MAC.
	d.ss6 = startStreamsTo(t, netip.AddrPortFrom(d.vip6, echoPort), echo, srcs6, numStreams6, stream6ID)
	d.ss4 = startStreamsTo(t, netip.AddrPortFrom(d.vip4, echoPort), echo, srcs4, numStreams4, 0)
	for _, fe := range d.bed.Frontends {
		if d.ss6.PerFrontend(e2e.AllStreams)[fe.Name] == 0 {
			t.Fatalf("no IPv6 stream went to %s: %v", fe.Name, d.ss6.PerFrontend(e2e.AllStreams))
		}
	}
	d.cl.waitSynced(numStreams, 10*time.Second)
	// Every node, the standbys above all, holds each IPv6 stream's own flow.
	d.waitTables6(d.cl.nodes, 10*time.Second, "before the failover")
	d.checkNDP(t, f1, 0, "before the failover")

	// The persistent clients: the two main IPv6 addresses of each client to [VIP6]:namePort,
	// and each client's main IPv4 address to the IPv4 VIP.
	var ps6, ps4 []e2e.Source
	for _, c := range d.bed.Clients {
		ps6 = append(ps6, e2e.Source{Host: c, Addr: c.Addr6}, e2e.Source{Host: c, Addr: c.Extra6[0]})
		ps4 = append(ps4, e2e.Source{Host: c, Addr: c.Addr})
	}
	d.since = time.Now()
	d.p6 = startProberTo(t, netip.AddrPortFrom(d.vip6, namePort), ps6)
	d.p4 = startProberTo(t, netip.AddrPortFrom(d.vip4, namePort), ps4)
	time.Sleep(warmup)
	return d
}

// conn is one row of `l2lb conns`.
type conn struct{ proto, state, client, vip, member string }

// conns runs `l2lb conns --vip vip` against the node and returns its rows by client address
// and port.
func (n *node) conns(vip netip.Addr) map[string]conn {
	n.t.Helper()
	out := map[string]conn{}
	lines := strings.Split(n.cli("conns", "--vip", vip.String()), "\n")
	for _, l := range lines[1:] { // the first line is the header
		f := strings.Fields(l)
		if len(f) == 6 {
			out[f[3]] = conn{proto: f[0], state: f[2], client: f[3], vip: f[4], member: f[5]}
		}
	}
	return out
}

// waitTables6 waits until every one of nodes lists, in `l2lb conns --vip VIP6`, each IPv6
// stream's flow: TCP, to [VIP6]:echoPort, pointing at the frontend that accepted the stream (by
// either of its addresses), and fails the test if that does not happen within limit. The
// entries must then also reach ESTABLISHED within limit, as they are on the active node (the
// insert notification carries SYN_RECV, the periodic refresh the state since); that is an error
// that does not stop the test.
func (d *dualStack) waitTables6(nodes []*node, limit time.Duration, when string) {
	t := d.cl.t
	t.Helper()
	vip := netip.AddrPortFrom(d.vip6, echoPort).String()
	deadline := time.Now().Add(limit)
	for _, n := range nodes {
		present := false
		for {
			rows := n.conns(d.vip6)
			var bad []string
			states := map[string]int{}
			for _, s := range d.ss6.All {
				fe := d.bed.Host(s.Frontend)
				r, ok := rows[s.Local.String()]
				switch {
				case !ok:
					bad = append(bad, fmt.Sprintf("%v: missing", s.Local))
				case r.proto != "TCP" || r.vip != vip || (r.member != fe.Addr.String() && r.member != fe.Addr6.String()):
					bad = append(bad, fmt.Sprintf("%v: %+v, want TCP to %s at %s (%v)", s.Local, r, vip, fe.Name, fe.Addr))
				default:
					states[r.state]++
				}
			}
			if len(bad) == 0 && !present {
				present = true
				t.Logf("%s: %s's table (l2lb conns --vip %v) holds all %d IPv6 streams with their frontends (%d rows; states %v)",
					when, n.host.Name, d.vip6, len(d.ss6.All), len(rows), states)
			}
			if present && states["ESTABLISHED"] == len(d.ss6.All) {
				break
			}
			if time.Now().After(deadline) {
				if !present {
					t.Fatalf("%s: %s's table lacks %d of %d IPv6 streams within %v; first: %s",
						when, n.host.Name, len(bad), len(d.ss6.All), limit, strings.Join(bad[:min(len(bad), 5)], "; "))
				}
				t.Errorf("%s: %s's table holds the %d IPv6 streams in states %v after %v, want all ESTABLISHED as on the active node",
					when, n.host.Name, len(d.ss6.All), states, limit)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// checkNDP checks that the clients resolve the IPv6 VIP by neighbour discovery to the virtual
// MAC: their kernels' neighbour entries (learnt while connecting) and a fresh solicitation of
// each client, which the active node act must have answered (its NDP reply counter passes
// repliesBefore by at least one per client).
func (d *dualStack) checkNDP(t *testing.T, act *node, repliesBefore uint64, when string) {
	t.Helper()
	for _, c := range d.bed.Clients {
		out, err := c.RunIP("-6", "neigh", "show", d.vip6.String(), "dev", c.Ifname)
		if err != nil {
			t.Errorf("%s: %v", when, err)
		} else if e := strings.TrimSpace(string(out)); !strings.Contains(e, "lladdr "+d.vmac.String()) {
			t.Errorf("%s: %s's kernel neighbour entry for %v is %q, want the virtual MAC %v", when, c.Name, d.vip6, e, d.vmac)
		} else {
			t.Logf("%s: %s's kernel neighbour entry: %s", when, c.Name, e)
		}
		mac, err := c.NDPResolve(d.vip6)
		if err != nil {
			t.Errorf("%s: %v", when, err)
		} else if mac.String() != d.vmac.String() {
			t.Errorf("%s: %s's neighbour solicitation for %v was answered with %v, want the virtual MAC %v", when, c.Name, d.vip6, mac, d.vmac)
		}
	}
	got := act.status().ARP.NDPReplies
	if got < repliesBefore+uint64(len(d.bed.Clients)) {
		t.Errorf("%s: the active node %s answered %d neighbour solicitations (%d before), want at least one per client (%d)",
			when, act.host.Name, got, repliesBefore, len(d.bed.Clients))
	} else {
		t.Logf("%s: the active node %s answered %d neighbour solicitations for %v (%d before)", when, act.host.Name, got, d.vip6, repliesBefore)
	}
}

// ndpWatch captures on every client while a failover happens.
type ndpWatch struct {
	d    *dualStack
	caps []*testbed.Capture
	// announced is each node's announcement counter when the watch started.
	announced map[string]uint64
}

func (d *dualStack) watch(t *testing.T) *ndpWatch {
	t.Helper()
	w := &ndpWatch{d: d, announced: map[string]uint64{}}
	for _, n := range d.cl.nodes {
		w.announced[n.host.Name] = n.status().ARP.Announced
	}
	for _, c := range d.bed.Clients {
		cp, err := c.Capture(c.Ifname)
		if err != nil {
			t.Fatal(err)
		}
		w.caps = append(w.caps, cp)
	}
	return w
}

// check stops the captures and checks what the clients saw: unsolicited neighbour
// advertisements for the IPv6 VIP with the Override flag and the virtual MAC, sent to all nodes
// — the new active node succ's announcement of its takeover, which its counter confirms — no
// advertisement for the VIP with another MAC, and no TCP reset on a stream of either family.
func (w *ndpWatch) check(t *testing.T, succ *node) {
	t.Helper()
	d := w.d
	allNodes := netip.MustParseAddr("ff02::1")
	for i, cp := range w.caps {
		c := d.bed.Clients[i]
		st := cp.Stop()
		if err := cp.Err(); err != nil {
			t.Errorf("capture on %s: %v", c.Name, err)
		}
		unsolicited := 0
		for _, a := range st.NDPAdvertsFor(d.vip6) {
			if a.MAC.String() != d.vmac.String() || a.EthSrc.String() != d.vmac.String() || !a.Override {
				t.Errorf("%s saw a neighbour advertisement for %v claiming %v (Ethernet source %v, override %v), want the virtual MAC %v",
					c.Name, d.vip6, a.MAC, a.EthSrc, a.Override, d.vmac)
				continue
			}
			if !a.Solicited && a.Dst == allNodes {
				unsolicited++
			}
		}
		rsts := 0
		for fl, fs := range st.Flows {
			if fl.Remote.Port() == echoPort && fs.RSTsSent+fs.RSTsReceived > 0 {
				rsts++
				t.Errorf("%s: TCP reset on stream %v -> %v (%d sent, %d received)", c.Name, fl.Local, fl.Remote, fs.RSTsSent, fs.RSTsReceived)
			}
		}
		t.Logf("%s saw %d unsolicited neighbour advertisements for %v (override, virtual MAC, to ff02::1), %d gratuitous ARP replies for %v, %d streams with a reset (%d frames, %d dropped by the capture)",
			c.Name, unsolicited, d.vip6, len(st.ARPRepliesFor(d.vip4)), d.vip4, rsts, st.Frames, st.Dropped)
		// One burst is three (dataplane/node announceBurst); the burst repeats at 0.5 s and 2 s.
		if unsolicited < 3 {
			t.Errorf("%s saw %d unsolicited neighbour advertisements for %v after the failover, want at least one burst of 3", c.Name, unsolicited, d.vip6)
		}
	}
	if got, was := succ.status().ARP.Announced, w.announced[succ.host.Name]; got < was+3 {
		t.Errorf("the new active node %s counted %d announcements (%d before the failover), want a burst more", succ.host.Name, got, was)
	} else {
		t.Logf("the new active node %s sent %d announcements (ARP and NDP) since the failover", succ.host.Name, got-was)
	}
}

// reresolve empties the clients' neighbour caches while the streams and the persistent
// clients run, so that their kernels must solicit the VIPs' MACs afresh from the new active
// node succ, and then checks that they resolve the IPv6 VIP by NDP to the virtual MAC.
func (d *dualStack) reresolve(t *testing.T, succ *node) {
	t.Helper()
	before := succ.status().ARP.NDPReplies
	for _, c := range d.bed.Clients {
		if err := c.FlushNeigh(); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second) // traffic on: the kernels solicit the VIP at once
	d.checkNDP(t, succ, before, "after the failover and a neighbour cache flush")
}

// switchPort logs the switch port the virtual MAC is learnt on (where the VIPs' frames go),
// and fails the test unless it is want's; skipped without iproute2's bridge.
func (d *dualStack) switchPort(t *testing.T, want *node) {
	t.Helper()
	if _, err := exec.LookPath("bridge"); err != nil {
		t.Logf("no bridge tool: not reading the switch's forwarding table")
		return
	}
	out, err := exec.Command("bridge", "-n", d.bed.Switch.NS, "fdb", "show", "br", "br0").Output()
	if err != nil {
		t.Errorf("bridge fdb show: %v", err)
		return
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[0] == d.vmac.String() && f[1] == "dev" {
			if f[2] != want.host.Name {
				t.Errorf("the switch forwards the virtual MAC to port %s, want %s (the new active node)", f[2], want.host.Name)
			} else {
				t.Logf("the switch learnt the virtual MAC on %s's port: %s", want.host.Name, strings.TrimSpace(l))
			}
			return
		}
	}
	t.Errorf("the switch has no forwarding entry for the virtual MAC %v", d.vmac)
}

// finishStreams ends both stream sets and checks them: with all, every stream of both families
// must be kept; otherwise every IPv6 stream, and minSurvival of the IPv4 ones.
func (d *dualStack) finishStreams(t *testing.T, t0 time.Time, what string, all4 bool) {
	t.Helper()
	res6, res4 := d.ss6.Finish(t0), d.ss4.Finish(t0)
	for _, x := range []struct {
		family string
		ss     *e2e.Streams
		res    map[*e2e.Stream]error
		strict bool
	}{{"IPv6", d.ss6, res6, true}, {"IPv4", d.ss4, res4, all4}} {
		kept, total, resets, bytes := x.ss.Report(x.res, e2e.AllStreams)
		ownKept, ownTotal, _, _ := x.ss.Report(x.res, func(s *e2e.Stream) bool { return s.Frontend == "f1" })
		t.Logf("%s: %d of %d %s streams kept (%d of %d on f1's own frontend), %d reset, %d bytes echoed and verified; per frontend %v",
			what, kept, total, x.family, ownKept, ownTotal, resets, bytes, x.ss.PerFrontend(e2e.AllStreams))
		if resets > 0 {
			t.Errorf("%s: %d %s streams were reset, want 0", what, resets, x.family)
		}
		switch {
		case x.strict && kept != total:
			t.Errorf("%s: %d of %d %s streams did not stream through intact", what, total-kept, total, x.family)
		case !x.strict && float64(kept) < minSurvival*float64(total):
			t.Errorf("%s: %d of %d %s streams survived, want at least %.0f %%", what, kept, total, x.family, 100*minSurvival)
		}
	}
}

// TestIPv6PlannedHandover: SIGTERM to the active node hands the role over with every IPv6
// stream (and every IPv4 stream beside them) intact, no reset, new connections of both
// families unaffected, and the successor announcing the IPv6 VIP by unsolicited neighbour
// advertisements and answering the clients' solicitations.
func TestIPv6PlannedHandover(t *testing.T) {
	d := setupDualStack(t)
	f1 := d.cl.node("f1")
	w := d.watch(t)
	t0 := f1.signal(syscall.SIGTERM)
	succ, at, ok := d.cl.waitRoleActive(t0, handoverLimit, "f1")
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
	w.check(t, succ)
	d.switchPort(t, succ)
	d.reresolve(t, succ)
	end := time.Now()
	d.p6.halt()
	d.p4.halt()
	if got := d.cl.waitSingleActive(5*time.Second, time.Second); got != succ.host.Name {
		t.Errorf("after the hand-over the single active node is %q, want %s", got, succ.host.Name)
	}
	// The remaining standby keeps the IPv6 flows, now replicated by the new active node.
	var rest []*node
	for _, n := range d.cl.nodes {
		if n != f1 && n != succ {
			rest = append(rest, n)
		}
	}
	d.waitTables6(append([]*node{succ}, rest...), 5*time.Second, "after the hand-over")

	for _, p := range []struct {
		family string
		p      *prober
	}{{"IPv6", d.p6}, {"IPv4", d.p4}} {
		if okB, failedB, errB, _ := p.p.window(d.since, t0); failedB > 0 {
			t.Errorf("%s before the hand-over: %d new connections ok, %d failed; first: %v", p.family, okB, failedB, errB)
		}
		okN, failed, firstErr, gap := p.p.window(t0, end)
		t.Logf("%s new connections during and after the hand-over: %d ok, %d failed, longest gap between successes %v",
			p.family, okN, failed, gap.Round(time.Millisecond))
		if failed > 0 {
			t.Errorf("%s: %d new connections failed across the hand-over; first: %v", p.family, failed, firstErr)
		}
		if gap > newConnGap {
			t.Errorf("%s: new connections saw no success for %v across the hand-over, want under %v", p.family, gap.Round(time.Millisecond), newConnGap)
		}
		// As in TestPlannedHandover: clients persisted to the departed f1 may move.
		before, after := p.p.frontends(d.since, t0), p.p.frontends(t0, end)
		for a, b := range before {
			if b["f1"] > 0 {
				delete(before, a)
			}
		}
		p.p.checkPersistence(t, before, after)
	}
	d.finishStreams(t, t0, "planned hand-over", true)
}

// TestIPv6CrashFailover: SIGKILL of the active node's l2lb. New connections over IPv6 (and
// IPv4) work again within crashRecovery, every IPv6 stream survives with its bytes verified and
// no reset, the new active node announces the IPv6 VIP and answers for it, and the crashed node,
// started again, rejoins as a standby whose table the bulk dump fills with the IPv6 flows.
func TestIPv6CrashFailover(t *testing.T) {
	d := setupDualStack(t)
	f1 := d.cl.node("f1")
	w := d.watch(t)
	t0 := f1.signal(syscall.SIGKILL)
	if !f1.waitExit(5 * time.Second) {
		t.Fatalf("f1: l2lb still running 5 s after SIGKILL")
	}
	succ, at, ok := d.cl.waitRoleActive(t0, 10*time.Second, "f1")
	if !ok {
		t.Fatalf("no node took the active role within 10 s of the crash of f1")
	}
	t.Logf("crash: %s logged taking the active role %v after SIGKILL to f1", succ.host.Name, at.Sub(t0).Round(time.Millisecond))
	time.Sleep(settle)
	w.check(t, succ)
	d.switchPort(t, succ)
	d.reresolve(t, succ)
	tRestart := time.Now()
	for _, p := range []struct {
		family string
		p      *prober
	}{{"IPv6", d.p6}, {"IPv4", d.p4}} {
		rec, ok := p.p.recovery(t0)
		switch {
		case !ok:
			t.Errorf("crash: no new %s connection to the VIP succeeded within %v after the crash", p.family, tRestart.Sub(t0).Round(time.Millisecond))
		case rec > crashRecovery:
			t.Errorf("crash: new %s connections to the VIP succeed again %v after the crash, want within %v", p.family, rec.Round(time.Millisecond), crashRecovery)
		default:
			t.Logf("crash: %s takeover time (SIGKILL to the first new connection answered through the VIP): %v", p.family, rec.Round(time.Millisecond))
		}
		okN, failed, _, gap := p.p.window(t0, tRestart)
		t.Logf("crash: %s new connections after it: %d ok, %d failed, longest gap %v", p.family, okN, failed, gap.Round(time.Millisecond))
		p.p.checkPersistence(t, p.p.frontends(d.since, t0), p.p.frontends(t0, tRestart))
	}
	alive := 0
	for _, s := range d.ss6.All {
		if err, _ := s.Failure(); err == nil && s.LastRecv().After(at) {
			alive++
		}
	}
	t.Logf("crash: %d of %d IPv6 streams received data after %s took over", alive, len(d.ss6.All), succ.host.Name)

	// f1 comes back as a standby (no --preempt) and the bulk dump gives it the IPv6 flows.
	f1.start()
	f1.waitReady(10 * time.Second)
	if l, ok := f1.findLog(time.Time{}, "connection table ready"); ok {
		t.Logf("restarted f1: %s", l.text)
	}
	d.waitTables6([]*node{f1}, 10*time.Second, "after f1's restart")
	if l, ok := f1.findLog(time.Time{}, roleActive...); ok {
		t.Errorf("restarted f1 took the active role back: %s", l.text)
	}
	if got := d.cl.waitSingleActive(5*time.Second, time.Second); got != succ.host.Name {
		t.Errorf("after f1's restart the single active node is %q, want %s to keep the role", got, succ.host.Name)
	}
	end := time.Now()
	d.p6.halt()
	d.p4.halt()
	for _, p := range []struct {
		family string
		p      *prober
	}{{"IPv6", d.p6}, {"IPv4", d.p4}} {
		okN, failed, firstErr, gap := p.p.window(tRestart, end)
		t.Logf("restart: %s new connections during it: %d ok, %d failed, longest gap %v", p.family, okN, failed, gap.Round(time.Millisecond))
		if failed > 0 {
			t.Errorf("restart: %d new %s connections failed while f1 rejoined; first: %v", failed, p.family, firstErr)
		}
	}
	d.finishStreams(t, t0, "crash and restart", false)
}
