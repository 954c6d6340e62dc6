// Package ipv6 holds the end-to-end acceptance tests of issue 12 (IPv6 VIPs) for IPv6 and dual
// stack: the real l2lb binary runs as the active balancer on f1 of a namespace testbed
// (internal/testbed) whose hosts all have IPv6 beside IPv4, with offloads at their defaults, and
// the tests check that clients find the IPv6 VIP by neighbour discovery alone, that connections
// to it are spread by weight and answered exactly once, that large transfers and fragmented UDP
// get through, that path MTU discovery works through the VIP, that a flood of malformed IPv6
// frames is survived and counted, and that a member named by its IPv6 address is resolved by NDP.
//
// The balancer runs as `l2lb run --member ...` (static members) with a VIP file listing the IPv4
// VIP and the IPv6 VIP (2001:db8::200) of the bed; members are named by their IPv4 addresses
// except where a test says otherwise, and IPv6 VIP traffic goes to the same frontends' MACs.
package ipv6

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// suite is what TestMain prepared: the binary and the shared bed.
var suite e2e.Suite

// Ports the frontends' name servers listen on, on both VIPs.
const (
	tcpPort = 80
	udpPort = 5060 // SIP over UDP
)

// defaultVMAC is the virtual MAC of SyncID 0 (`-s 0`, the default): 02:6c:32:62:SS:SS.
var defaultVMAC = net.HardwareAddr{0x02, 0x6c, 0x32, 0x62, 0, 0}

// extraSources is how many further IPv6 addresses each client of the shared bed gets beside its
// Addr6 and Extra6, so that connections come from many client addresses.
const extraSources = 6

func TestMain(m *testing.M) {
	os.Exit(suite.Run(m, e2e.SuiteOptions{Name: "e2e/ipv6", Tools: []string{"ip", "ss"}, SharedBed: true,
		Setup: setupBed}))
}

// setupBed starts the name servers on both VIPs of every frontend and gives every client more
// IPv6 addresses (2001:db8::cN:1 ... on cN's eth0, nodad as the testbed's own).
func setupBed(bed *testbed.Bed) error {
	if err := serveBothVIPs(bed); err != nil {
		return err
	}
	for i, c := range bed.Clients {
		for j := 1; j <= extraSources; j++ {
			a := netip.MustParseAddr(fmt.Sprintf("2001:db8::c%d:%d", i+1, j))
			if _, err := c.RunIP("addr", "add", netip.PrefixFrom(a, 64).String(), "dev", c.Ifname, "nodad"); err != nil {
				return err
			}
			extra6[c] = append(extra6[c], a)
		}
	}
	return nil
}

// extra6 are the addresses setupBed added, per client of the shared bed.
var extra6 = map[*testbed.Host][]netip.Addr{}

// serveBothVIPs starts the testbed's name servers (TCP tcpPort, UDP udpPort) on the first IPv4
// and the first IPv6 VIP of every frontend of bed.
func serveBothVIPs(bed *testbed.Bed) error {
	for _, f := range bed.Frontends {
		for _, v := range []netip.Addr{bed.VIPs[0], bed.VIPs6[0]} {
			if _, err := f.ServeName(v, []uint16{tcpPort}, []uint16{udpPort}); err != nil {
				return err
			}
		}
	}
	return nil
}

// needBed fails (CI=true) or skips when the shared testbed is unavailable.
func needBed(t *testing.T) *testbed.Bed {
	t.Helper()
	suite.NeedBed(t, "the IPv6 end-to-end tests")
	return suite.Bed
}

// source is one client address connections are made from.
type source = e2e.Source

// sources6 returns every IPv6 address of every client of bed: Addr6, Extra6 and what setupBed
// added.
func sources6(bed *testbed.Bed) []source {
	var out []source
	for _, c := range bed.Clients {
		for _, a := range append(append([]netip.Addr{c.Addr6}, c.Extra6...), extra6[c]...) {
			out = append(out, source{Host: c, Addr: a})
		}
	}
	return out
}

// sources4 returns every IPv4 address of every client of bed.
func sources4(bed *testbed.Bed) []source { return e2e.Sources(bed) }

// balancer is a running `l2lb run` on f1 of a bed.
type balancer struct {
	*e2e.Balancer
	bed *testbed.Bed
	// VMAC6 is what a neighbour solicitation for the IPv6 VIP was answered with (Balancer.VMAC
	// is the ARP answer for the IPv4 VIP).
	VMAC6 net.HardwareAddr

	stopOnce sync.Once
}

// options of startBalancer.
type options struct {
	// members replaces the default member list (every frontend by its IPv4 address).
	members []netip.Addr
	// extra are further flags of `l2lb run`.
	extra []string
	// before runs after the neighbour caches were flushed and just before l2lb starts.
	before func()
}

// f1 is the frontend the balancer runs on.
func f1(bed *testbed.Bed) *testbed.Host { return bed.Frontends[0] }

// vip4 and vip6 are the bed's first VIP of each family.
func vip4(bed *testbed.Bed) netip.Addr { return bed.VIPs[0] }
func vip6(bed *testbed.Bed) netip.Addr { return bed.VIPs6[0] }

// resolver is the host on the VIPs' link that resolves them: the router when the clients sit
// behind one, the first client otherwise.
func resolver(bed *testbed.Bed) *testbed.Host {
	if bed.Router != nil {
		return bed.Router
	}
	return bed.Clients[0]
}

// startBalancer runs l2lb on f1 of bed with the VIP file "IPv4 VIP, IPv6 VIP", the members of o
// and o's flags, waits until it is ready, lists every member as usable and answers ARP for the
// IPv4 VIP and neighbour solicitations for the IPv6 VIP with the same MAC, and stops it with
// SIGTERM when the test ends (or earlier, with stop).
func startBalancer(t *testing.T, bed *testbed.Bed, o options) *balancer {
	t.Helper()
	args, members := balancerArgs(t, bed, o)
	if o.before != nil {
		o.before()
	}
	b := &balancer{bed: bed}
	b.Balancer = e2e.StartBalancer(t, f1(bed), suite.Bin, args)
	t.Cleanup(func() { b.stop(t) })
	b.WaitReady(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := b.status()
		usable := 0
		for _, m := range st.Members {
			if m.MAC != "" || m.Local {
				usable++
			}
		}
		if err == nil && usable == len(members) {
			break
		}
		if time.Now().After(deadline) || !b.Running() {
			t.Fatalf("l2lb never listed %d members with a MAC or local (last: %+v, err %v)\nlog:\n%s",
				len(members), st.Members, err, b.LogText())
		}
		time.Sleep(100 * time.Millisecond)
	}
	r := resolver(bed)
	b.ResolveVIP(t, r, vip4(bed), deadline)
	for {
		mac, err := r.NDPResolve(vip6(bed))
		if err == nil {
			b.VMAC6 = mac
			break
		}
		if time.Now().After(deadline) || !b.Running() {
			t.Fatalf("nobody answers neighbour solicitations for the IPv6 VIP %v: %v\nlog:\n%s", vip6(bed), err, b.LogText())
		}
	}
	if b.VMAC.String() != b.VMAC6.String() {
		t.Fatalf("ARP for %v answers %v, NDP for %v answers %v; want the same virtual MAC", vip4(bed), b.VMAC, vip6(bed), b.VMAC6)
	}
	return b
}

// balancerArgs writes the VIP file "IPv4 VIP, IPv6 VIP", flushes the clients' and the router's
// neighbour caches and returns the arguments of `l2lb run` on f1 with the members of o (every
// frontend by default) and o's flags, and the members.
func balancerArgs(t *testing.T, bed *testbed.Bed, o options) ([]string, []netip.Addr) {
	t.Helper()
	dir := t.TempDir()
	vipFile := filepath.Join(dir, "vipaddrs")
	body := fmt.Sprintf("# e2e/ipv6 VIPs: one of each family\n%v\n%v\n", vip4(bed), vip6(bed))
	if err := os.WriteFile(vipFile, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	// Clients (and the router) may still cache the VIPs' MAC from an earlier balancer.
	hosts := slices.Clone(bed.Clients)
	if bed.Router != nil {
		hosts = append(hosts, bed.Router)
	}
	for _, h := range hosts {
		if err := h.FlushNeigh(); err != nil {
			t.Fatal(err)
		}
	}
	members := o.members
	if members == nil {
		for _, f := range bed.Frontends {
			members = append(members, f.Addr)
		}
	}
	args := []string{"run", "-i", "eth0", "-f", vipFile, "--stats-file", filepath.Join(dir, "stats.json"),
		"--control", filepath.Join(dir, "control.sock")}
	for _, m := range members {
		args = append(args, "--member", m.String())
	}
	return append(args, o.extra...), members
}

// stop sends SIGTERM (once) and expects a clean exit that leaves f1's interface as it found it
// (the virtual MAC's membership made the veth promiscuous; it must be gone).
func (b *balancer) stop(t *testing.T) {
	t.Helper()
	b.stopOnce.Do(func() {
		b.Stop(t, append(slices.Clone(b.bed.Clients), b.bed.Frontends...)...)
		out, err := f1(b.bed).RunIP("-d", "-j", "link", "show", "eth0")
		if err != nil {
			t.Errorf("inspecting f1 eth0 after l2lb exit: %v", err)
		} else {
			var links []struct {
				Promiscuity int `json:"promiscuity"`
			}
			if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
				t.Errorf("parsing `ip -d -j link show eth0` in f1: %v: %s", err, out)
			} else if links[0].Promiscuity != 0 {
				t.Errorf("f1 eth0 promiscuity is %d after l2lb exited, want 0", links[0].Promiscuity)
			}
		}
		if t.Failed() {
			t.Logf("l2lb log:\n%s", b.LogText())
		}
	})
}

// status asks the control socket.
func (b *balancer) status() (control.Status, error) {
	return control.Dial(b.Control).Status()
}

// statusCLI runs `l2lb status --json` against the balancer, as an operator would.
func (b *balancer) statusCLI(t *testing.T) control.Status {
	t.Helper()
	cmd := exec.Command(suite.Bin, "status", "--json", "--control", b.Control)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("l2lb status --json: %v: %s", err, stderr.String())
	}
	var st control.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("parsing l2lb status --json: %v: %s", err, out)
	}
	return st
}

// conn is one finished AskName over a VIP.
type conn struct {
	src   source
	local netip.AddrPort
	name  string
}

// askMany makes n AskName connections to raddr, cycling over srcs, a few in parallel. Failures
// are reported with t.Errorf (so it may run on another goroutine than the test's).
func askMany(t *testing.T, n int, srcs []source, raddr netip.AddrPort) []conn {
	t.Helper()
	const workers = 8
	var (
		mu   sync.Mutex
		out  []conn
		errs []string
		wg   sync.WaitGroup
		next atomic.Int64
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				s := srcs[i%len(srcs)]
				c, err := s.Host.DialTCP(netip.AddrPortFrom(s.Addr, 0), raddr, 5*time.Second)
				var name string
				if err == nil {
					name, err = testbed.AskNameOver(c, 5*time.Second)
					local := c.LocalAddr().(*net.TCPAddr).AddrPort()
					c.Close()
					if err == nil {
						mu.Lock()
						out = append(out, conn{s, local, name})
						mu.Unlock()
						continue
					}
					err = fmt.Errorf("%v -> %v: %w", local, raddr, err)
				}
				mu.Lock()
				errs = append(errs, fmt.Sprintf("%v: %v", s, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		if len(errs) > 10 {
			errs = append(errs[:10], fmt.Sprintf("... and %d more", len(errs)-10))
		}
		t.Errorf("%d of %d connections to %v failed:\n%s", len(errs), n, raddr, strings.Join(errs, "\n"))
	}
	return out
}

func countNames(cs []conn) map[string]int {
	m := map[string]int{}
	for _, c := range cs {
		m[c.name]++
	}
	return m
}

// served returns which frontends' Served counters grew between before and now.
func servedBy(bed *testbed.Bed, before map[string]testbed.Served, grew func(was, now testbed.Served) bool) []string {
	var by []string
	for _, f := range bed.Frontends {
		if grew(before[f.Name], f.Served()) {
			by = append(by, f.Name)
		}
	}
	return by
}

func servedNow(bed *testbed.Bed) map[string]testbed.Served {
	m := map[string]testbed.Served{}
	for _, f := range bed.Frontends {
		m[f.Name] = f.Served()
	}
	return m
}

// startCaptures starts a capture on the interface of each host.
func startCaptures(t *testing.T, hosts ...*testbed.Host) map[string]*testbed.Capture {
	t.Helper()
	caps := map[string]*testbed.Capture{}
	for _, h := range hosts {
		c, err := h.Capture(h.Ifname)
		if err != nil {
			t.Fatal(err)
		}
		caps[h.Name] = c
	}
	return caps
}

// stopCaptures stops the captures and fails the test if one of them lost frames or failed.
func stopCaptures(t *testing.T, caps map[string]*testbed.Capture) map[string]testbed.CaptureStats {
	t.Helper()
	out := map[string]testbed.CaptureStats{}
	for name, c := range caps {
		out[name] = c.Stop()
		if err := c.Err(); err != nil {
			t.Errorf("capture on %s: %v", name, err)
		}
		if d := out[name].Dropped; d != 0 {
			t.Errorf("capture on %s dropped %d frames: its counts are incomplete", name, d)
		}
	}
	return out
}

// neighEntry is one entry of `ip -j neigh show`.
type neighEntry struct {
	Dst    string   `json:"dst"`
	LLAddr string   `json:"lladdr"`
	State  []string `json:"state"`
}

// neigh returns h's neighbour cache entry for a on its interface, if there is one.
func neigh(t *testing.T, h *testbed.Host, a netip.Addr) (neighEntry, bool) {
	t.Helper()
	out, err := h.RunIP("-j", "neigh", "show", a.String(), "dev", h.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	var es []neighEntry
	if len(strings.TrimSpace(string(out))) > 0 {
		if err := json.Unmarshal(out, &es); err != nil {
			t.Fatalf("%s: parsing ip -j neigh show: %v: %s", h.Name, err, out)
		}
	}
	for _, e := range es {
		if e.Dst == a.String() {
			return e, true
		}
	}
	return neighEntry{}, false
}

// isTimeout reports a testbed resolution that nobody answered.
func isTimeout(err error) bool { return errors.Is(err, testbed.ErrTimeout) }

// macEq compares MACs by value.
func macEq(a, b net.HardwareAddr) bool { return a.String() == b.String() }
