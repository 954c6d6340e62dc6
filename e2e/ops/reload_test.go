package ops

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// addVIPOnFrontends does what an operator does on every frontend before a
// reload adds a VIP: `l2lb vip up -f FILE` (the seed's ifup-lo) in each
// frontend's namespace, and a service listening on the new VIP. The VIP
// and its servers are removed when the test ends.
func addVIPOnFrontends(t *testing.T, vipFile string, v netip.Addr) {
	t.Helper()
	only := filepath.Join(t.TempDir(), "vip-"+v.String())
	if err := os.WriteFile(only, []byte(v.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range suite.Bed.Frontends {
		f := f
		t.Cleanup(func() {
			if out, err := f.Command(suite.Bin, "vip", "down", "-f", only).CombinedOutput(); err != nil {
				t.Errorf("l2lb vip down -f %s in %s: %v\n%s", only, f.Name, err, out)
			}
		})
		if out, err := f.Command(suite.Bin, "vip", "up", "-f", vipFile).CombinedOutput(); err != nil {
			t.Fatalf("l2lb vip up -f %s in %s: %v\n%s", vipFile, f.Name, err, out)
		} else {
			t.Logf("%s: l2lb vip up: %s", f.Name, strings.TrimSpace(string(out)))
		}
		stop, err := f.ServeName(v, []uint16{tcpPort}, []uint16{udpPort})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
}

// checkVIPServed checks that v is announced with the balancer's virtual
// MAC and that connections to it from every source are answered, by more
// than one frontend.
func checkVIPServed(t *testing.T, b *balancer, v netip.Addr) {
	t.Helper()
	var mac string
	deadline := time.Now().Add(3 * time.Second)
	for {
		m, err := suite.Bed.Clients[1].ARPResolve(v)
		if err == nil {
			mac = m.String()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nobody answers ARP for the new VIP %v: %v", v, err)
		}
	}
	if mac != b.VMAC.String() {
		t.Errorf("ARP for the new VIP %v answers %s, want the balancer's virtual MAC %s", v, mac, b.VMAC)
	}
	names := map[string]int{}
	srcs := sources()
	for i := 0; i < 24; i++ {
		s := srcs[i%len(srcs)]
		_, name, err := askOnce(s, netip.AddrPortFrom(v, tcpPort))
		if err != nil {
			t.Errorf("connection from %v to the new VIP %v: %v", s, v, err)
			continue
		}
		names[name]++
	}
	t.Logf("new VIP %v: ARP -> %s, connections answered by %v", v, mac, names)
	if len(names) < 2 {
		t.Errorf("connections to the new VIP %v were answered by %v, want more than one frontend", v, names)
	}
}

// checkTrafficFlows makes a few connections to the original VIP.
func checkTrafficFlows(t *testing.T, when string) {
	t.Helper()
	for i, s := range sources() {
		if _, _, err := askOnce(s, netip.AddrPortFrom(vip(), tcpPort)); err != nil {
			t.Errorf("%s: connection %d from %v to %v: %v", when, i, s, vip(), err)
		}
	}
}

// Issue 6, acceptance 3: a reload (`l2lb reload` and SIGHUP) with a broken
// VIP file changes nothing and names file:line; a reload adding a VIP makes
// it reachable; established connections through the old VIP survive all of
// it without a reset.
func TestReload(t *testing.T) {
	needBed(t)
	b := startBalancer(t, "-p", "0")
	vip201 := netip.MustParseAddr("192.0.2.201") // TEST-NET-1 (RFC 5737), no host of the bed has it
	vip202 := netip.MustParseAddr("192.0.2.202")

	var caps []*testbed.Capture
	for _, c := range suite.Bed.Clients {
		cp, err := c.Capture("eth0")
		if err != nil {
			t.Fatal(err)
		}
		caps = append(caps, cp)
	}
	var downloads []*download
	defer func() {
		for _, d := range downloads {
			d.finish(30 * time.Second)
		}
	}()
	for _, s := range sources() {
		d, err := startDownload(s, netip.AddrPortFrom(vip(), tcpPort), 16<<20)
		if err != nil {
			t.Fatal(err)
		}
		downloads = append(downloads, d)
	}
	vipsBefore := b.status(t).VIPs

	// A broken file through `l2lb reload`: refused with file:line, nothing
	// changes.
	b.writeVIPs(t, "# e2e/ops VIPs", vip().String(), "192.0.2.0/16")
	out, errOut, code, err := b.cli("reload")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("l2lb reload with a /16 on line 3: exit %d, %s", code, strings.TrimSpace(errOut))
	if code == 0 {
		t.Errorf("l2lb reload of a broken VIP file exited 0: %s", out)
	}
	if want := b.vipFile + ":3"; !strings.Contains(errOut, want) || !strings.Contains(errOut, "Incorrect mask") {
		t.Errorf("l2lb reload error %q does not name %s and the seed's \"Incorrect mask\"", errOut, want)
	}
	if got := b.status(t).VIPs; !slices.Equal(got, vipsBefore) {
		t.Errorf("after a refused reload the VIPs are %v, want %v unchanged", got, vipsBefore)
	}
	checkTrafficFlows(t, "after a refused reload")

	// A broken file through SIGHUP: the balancer logs file:line and keeps
	// running with its VIPs.
	b.writeVIPs(t, vip().String(), "not-an-address")
	b.Cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(3 * time.Second)
	for !b.LogContains("reload refused", b.vipFile+":2") {
		if time.Now().After(deadline) || !b.Running() {
			t.Fatalf("no \"reload refused\" log line naming %s:2 within 3 s of SIGHUP\nlog:\n%s", b.vipFile, b.LogText())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := b.status(t).VIPs; !slices.Equal(got, vipsBefore) {
		t.Errorf("after a refused SIGHUP the VIPs are %v, want %v unchanged", got, vipsBefore)
	}
	checkTrafficFlows(t, "after a refused SIGHUP")

	// A good file adding a VIP through `l2lb reload`. Before it, the new VIP
	// is on every frontend's lo but nobody answers ARP for it (arp_ignore).
	b.writeVIPs(t, "# e2e/ops VIPs", vip().String(), vip201.String())
	addVIPOnFrontends(t, b.vipFile, vip201)
	if mac, err := suite.Bed.Clients[1].ARPResolve(vip201); err == nil {
		t.Fatalf("before the reload %s already answers ARP for %v; the test cannot show the reload did it", mac, vip201)
	}
	out, errOut, code, err = b.cli("reload")
	if err != nil || code != 0 {
		t.Fatalf("l2lb reload of a good file: exit %d, %v: %s%s", code, err, out, errOut)
	}
	if got, want := b.status(t).VIPs, []string{vip().String(), vip201.String()}; !slices.Equal(got, want) {
		t.Errorf("after the reload the VIPs are %v, want %v", got, want)
	}
	checkVIPServed(t, b, vip201)

	// Another one through SIGHUP.
	b.writeVIPs(t, vip().String(), vip201.String(), vip202.String())
	addVIPOnFrontends(t, b.vipFile, vip202)
	b.Cmd.Process.Signal(syscall.SIGHUP)
	want := []string{vip().String(), vip201.String(), vip202.String()}
	deadline = time.Now().Add(3 * time.Second)
	for got := b.status(t).VIPs; !slices.Equal(got, want); got = b.status(t).VIPs {
		if time.Now().After(deadline) {
			t.Fatalf("3 s after SIGHUP the VIPs are %v, want %v\nlog:\n%s", got, want, b.LogText())
		}
		time.Sleep(50 * time.Millisecond)
	}
	checkVIPServed(t, b, vip202)
	checkTrafficFlows(t, "after the reloads")

	// The connections established before all this finish normally.
	for _, d := range downloads {
		if err := d.finish(30 * time.Second); err != nil {
			t.Errorf("download %v established before the reloads: %v", d.local, err)
		}
	}
	if err := e2e.WaitClosed(append(slices.Clone(suite.Bed.Clients), suite.Bed.Frontends...)...); err != nil {
		t.Log(err)
	}
	for i, cp := range caps {
		st := cp.Stop()
		if err := cp.Err(); err != nil {
			t.Errorf("capture on %s: %v", suite.Bed.Clients[i].Name, err)
		}
		if st.Dropped != 0 {
			t.Errorf("capture on %s dropped %d frames; the reset count is incomplete", suite.Bed.Clients[i].Name, st.Dropped)
		}
		if n := st.RSTs(); n != 0 {
			t.Errorf("%s saw %d TCP resets across the reloads, want none", suite.Bed.Clients[i].Name, n)
		}
	}
	if !b.Running() {
		t.Fatalf("l2lb exited: %v", b.WaitErr())
	}
}
