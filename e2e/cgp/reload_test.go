package cgp

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// TestReloadRepairsHelperWithBadVIPFile: a helper started with a VIP file it refuses (line 2 is
// a /16, "Incorrect mask") keeps running, says so on a "* VIP file:" line, in `l2lb status` and
// in its answer to ACTIVE, and serves its control socket all the same, so that the operator can
// fix the file and run `l2lb reload` without CGP restarting the helper. The reload makes it the
// active balancer CGP asked for, without another ACTIVE. SIGHUP reloads too.
//
// The code before the redesign (46d3598) opened its control socket and metrics only once its
// fast path had started, which it never did with a bad VIP file: `l2lb status` and `l2lb reload`
// found no socket, so only CGP restarting the helper could repair it. It did not remember the
// refused ACTIVE either, and it had no SIGHUP handler: the signal killed it.
func TestReloadRepairsHelperWithBadVIPFile(t *testing.T) {
	vip1, vip2 := netip.MustParseAddr("192.0.2.200"), netip.MustParseAddr("192.0.2.201")
	bed := newBed(t, testbed.Options{Frontends: 1, Clients: 1, VIPs: []netip.Addr{vip1, vip2}})
	f1, c1 := bed.Frontends[0], bed.Clients[0]
	for _, v := range bed.VIPs {
		if _, err := f1.ServeName(v, []uint16{tcpPort}, nil); err != nil {
			t.Fatal(err)
		}
	}
	vipFile := filepath.Join(t.TempDir(), "vipaddrs")
	writeLines := func(lines ...string) {
		t.Helper()
		if err := os.WriteFile(vipFile, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeLines("# VIPs of the load balancer group", "10.0.0.0/16")
	where := vipFile + ":2"

	hp := e2e.StartHelper(t, f1, suite.Bin, vipFile, helperOpts)
	hp.Do("INTF 1", "^INTF 1$", answerLimit)
	// The helper checks the file as it starts, before any command is answered.
	named := false
	for _, l := range hp.InfoLines() {
		named = named || strings.HasPrefix(l, "VIP file: ") && strings.Contains(l, where+": ")
	}
	if !named {
		t.Errorf("no \"* VIP file: ...\" line naming %s; info lines %q", where, hp.InfoLines())
	}

	// The control socket is served although the helper cannot balance.
	ctl := hp.ControlPath()
	out, errOut, code := l2lbCLI(t, suite.Bin, "status", "--json", "--control", ctl)
	if code != 0 {
		t.Fatalf("l2lb status --json with a bad VIP file: exit %d: %s%s", code, errOut, out)
	}
	st, err := ctlStatus(ctl)
	if err != nil {
		t.Fatalf("control socket: %v", err)
	}
	if !slicesContainsSub(st.Problems, where) {
		t.Errorf("l2lb status: problems %q do not name %s", st.Problems, where)
	}
	t.Logf("bad VIP file: status role=%s ready=%v vips=%v problems %q", st.Role, st.Ready, st.VIPs, st.Problems)

	members := fmt.Sprintf("ACTIVE %v", f1.Addr)
	a, _ := hp.Do(members, "^ERROR no VIP could be read: ", answerLimit)
	if !strings.Contains(a.Text, where+": ") {
		t.Errorf("ACTIVE answered %q, want the file:line %s", a.Text, where)
	}
	if !strings.Contains(a.Text, "Incorrect mask") {
		t.Errorf("ACTIVE answered %q, want the reason (Incorrect mask)", a.Text)
	}
	if mac, err := c1.ARPResolve(vip1); err == nil {
		t.Errorf("%v answered in ARP (%v) while the VIP file is refused", vip1, mac)
	}

	// The operator fixes the file and reloads; no new ACTIVE.
	writeLines("# VIPs of the load balancer group", vip1.String())
	out, errOut, code = l2lbCLI(t, suite.Bin, "reload", "--control", ctl)
	tReload := time.Now()
	if code != 0 || strings.TrimSpace(out) != "reloaded" {
		t.Fatalf("l2lb reload after fixing the file: exit %d, stdout %q, stderr %q; want 0 and \"reloaded\"", code, out, errOut)
	}
	for {
		mac, err := c1.ARPResolve(vip1)
		if err == nil {
			if mac.String() != defaultVMAC.String() {
				t.Errorf("after the reload ARP for %v answers %v, want the virtual MAC %v", vip1, mac, defaultVMAC)
			}
			t.Logf("%v answers ARP %v after the reload", vip1, time.Since(tReload).Round(time.Millisecond))
			break
		}
		if time.Since(tReload) > 2*time.Second {
			t.Fatalf("nobody answers ARP for %v 2 s after the reload: %v", vip1, err)
		}
	}
	if err := c1.FlushNeigh(); err != nil { // the kernel may have cached a failed resolution
		t.Fatal(err)
	}
	for {
		name, err := ask(source{c1, c1.Addr}, netip.AddrPortFrom(vip1, tcpPort), 500*time.Millisecond)
		if err == nil {
			if name != f1.Name {
				t.Errorf("connection through %v answered by %q, want %s", vip1, name, f1.Name)
			}
			break
		}
		if time.Since(tReload) > 2*time.Second {
			t.Fatalf("no connection through %v 2 s after the reload: %v", vip1, err)
		}
	}
	for i := 0; i < 5; i++ {
		if name, err := ask(source{c1, c1.Addr}, netip.AddrPortFrom(vip1, tcpPort), time.Second); err != nil || name != f1.Name {
			t.Errorf("connection %d through %v after the reload: %q, %v", i, vip1, name, err)
		}
	}
	sline, _ := hp.Do("STATUS", "^OK role=active ", answerLimit)
	if strings.Contains(sline.Text, "error=") || !strings.Contains(sline.Text, "vips="+vip1.String()+" ") {
		t.Errorf("STATUS after the reload: %q, want vips=%v and no error", sline.Text, vip1)
	}
	if st, err := ctlStatus(ctl); err != nil || st.Role != control.RoleActive || len(st.Problems) > 0 {
		t.Errorf("l2lb status after the reload: role %q, problems %q (%v); want active and none", st.Role, st.Problems, err)
	}

	// The helper says in CGP's log that the cause went away (Periodic, every second with -t 1).
	for !hp.HasInfo("repaired: no VIP could be read: " + where) {
		if time.Since(tReload) > 3*time.Second {
			t.Errorf("no \"* repaired: no VIP could be read: %s...\" line 3 s after the reload; info lines %q", where, hp.InfoLines())
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	// SIGHUP re-reads the file too: a second VIP.
	writeLines("# VIPs of the load balancer group", vip1.String(), vip2.String())
	if err := syscall.Kill(hp.Pid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	tHup := time.Now()
	for {
		if _, _, exited := hp.WaitExit(0); exited {
			t.Fatalf("the helper exited on SIGHUP; stderr %q", hp.Stderr())
		}
		st, err := ctlStatus(ctl)
		if err == nil && slices.Equal(st.VIPs, []string{vip1.String(), vip2.String()}) {
			t.Logf("status lists %v %v after SIGHUP", st.VIPs, time.Since(tHup).Round(time.Millisecond))
			break
		}
		if time.Since(tHup) > 2*time.Second {
			t.Fatalf("2 s after SIGHUP the status lists VIPs %v (err %v), want %v and %v", st.VIPs, err, vip1, vip2)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if mac, err := c1.ARPResolve(vip2); err != nil || mac.String() != defaultVMAC.String() {
		t.Errorf("after SIGHUP ARP for the new VIP %v: %v, %v; want the virtual MAC %v", vip2, mac, err, defaultVMAC)
	}
	if name, err := ask(source{c1, c1.Addr}, netip.AddrPortFrom(vip2, tcpPort), 2*time.Second); err != nil || name != f1.Name {
		t.Errorf("connection through the new VIP %v after SIGHUP: %q, %v", vip2, name, err)
	}
	hp.Do("STATUS", "^OK role=active .* vips="+vip1.String()+","+vip2.String()+" ", answerLimit)
	e2e.QuitAll(t, answerLimit, t.Errorf, hp)
	hp.CheckTrace("< 1 INTF 1", "> 1 INTF 1", "< 2 "+members, "< 3 STATUS", "< 4 STATUS", "< 5 QUIT", "> 5 OK")
}

// slicesContainsSub reports whether an element of ss contains sub.
func slicesContainsSub(ss []string, sub string) bool {
	for _, s := range ss {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
