package health

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// membershipPort is memberlist's customary port, which `l2lb run --peers` binds by default.
const membershipPort = 7946

// TestStandbyTakesOverHealthView runs a standalone cluster (`l2lb run --peers`) on the three
// frontends with the tcp check on the echo port. f3's service stops taking connections (its echo
// process closes its listener). The active f1 sees it fail; the standby f2, which does not probe,
// shows the same view (f3's check failing, f1 and f2 passing) within a few seconds (the view sent
// over the sync channel). Then f1 drains (SIGTERM) and f2 takes over: from the first second, no
// new connection reaches f3, and f2's own status never shows f3 healthy.
func TestStandbyTakesOverHealthView(t *testing.T) {
	bed := suite.NewBed(t, "the health-check tests", testbed.Options{Frontends: 3, Clients: 2})
	f1, f2, f3 := bed.Frontends[0], bed.Frontends[1], bed.Frontends[2]
	echoes := startEchoes(t, bed)
	serveNames(t, bed)
	vipFile, svcFile := writeConfig(t, bed, streamServices())
	var peers []string
	for _, f := range bed.Frontends {
		peers = append(peers, netip.AddrPortFrom(f.Addr, membershipPort).String())
	}
	prio := map[string]string{"f1": "200", "f2": "150", "f3": "100"}
	nodes := map[string]*e2e.Balancer{}
	start := func(f *testbed.Host) {
		ctl := filepath.Join(t.TempDir(), "control.sock")
		b := e2e.StartBalancer(t, f, suite.Bin, []string{"run", "-i", "eth0", "-f", vipFile, "-p", "0",
			"--peers", strings.Join(peers, ","), "--priority", prio[f.Name], "--services", svcFile, "--control", ctl})
		t.Cleanup(func() {
			b.Stop(t)
			if t.Failed() {
				t.Logf("%s log:\n%s", f.Name, b.LogText())
			}
		})
		b.WaitReady(t)
		nodes[f.Name] = b
	}
	start(f1)
	waitStatus(t, nodes["f1"].Control, 10*time.Second, func(st control.Status) (bool, string) {
		return st.Role == control.RoleActive, "f1 is " + st.Role
	})
	start(f2)
	start(f3)
	addrs := []netip.Addr{f1.Addr, f2.Addr, f3.Addr}
	_, took := waitStatus(t, nodes["f1"].Control, 15*time.Second, allHealthy(addrs, []string{"echo"}))
	t.Logf("f1 active, every member passes its check after %v", took.Round(time.Millisecond))

	echoes[f3.Name].CloseListeners(t)
	failing := func(st control.Status) (bool, string) {
		c, ok := checkOf(st, f3.Addr, "echo")
		m, _ := memberOf(st, f3.Addr)
		return ok && !c.Healthy && !m.Healthy, "f3's echo check is not shown failing"
	}
	st1, took := waitStatus(t, nodes["f1"].Control, downBound, failing)
	c1, _ := checkOf(st1, f3.Addr, "echo")
	t.Logf("f1 sees f3 fail %v after its service stopped: %+v", took.Round(time.Millisecond), c1)
	st2, took := waitStatus(t, nodes["f2"].Control, 5*time.Second, failing)
	c2, _ := checkOf(st2, f3.Addr, "echo")
	t.Logf("the standby f2 shows it %v later (role %s): %+v", took.Round(time.Millisecond), st2.Role, c2)
	if st2.Role == control.RoleActive {
		t.Fatal("f2 is active before the takeover")
	}
	// A standby that had not taken the view would show every member as a new target, failing
	// until probed: f1 and f2 passing tells the restored view from that.
	if ok, why := allHealthy([]netip.Addr{f1.Addr, f2.Addr}, []string{"echo"})(st2); !ok {
		t.Errorf("the standby f2 does not show the active node's view: %s%s", why, members(st2))
	}
	if per, errs := askNames(bed, 12); per[f3.Name] != 0 || len(errs) > 0 {
		t.Errorf("before the takeover: new connections %v (errors %v), want none on f3 and no errors", per, errs)
	}

	// New connections all along the takeover, and f2's view polled every 50 ms.
	var (
		mu      sync.Mutex
		reached []string
		f3Hits  []time.Time
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	srcs := sources(bed)
	raddr := netip.AddrPortFrom(bed.VIPs[0], namePort)
	for i, s := range srcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				name, err := s.Host.AskName(s.Addr, raddr)
				mu.Lock()
				if err == nil {
					reached = append(reached, name)
					if name == f3.Name {
						f3Hits = append(f3Hits, time.Now())
					}
				}
				mu.Unlock()
				time.Sleep(time.Duration(20+i) * time.Millisecond)
			}
		}()
	}
	tTerm := time.Now()
	if err := nodes["f1"].Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var tActive time.Time
	var healthySeen []string
	for time.Since(tTerm) < 5*time.Second {
		st, err := statusOf(nodes["f2"].Control)
		if err == nil {
			if st.Role == control.RoleActive && tActive.IsZero() {
				tActive = time.Now()
			}
			if m, ok := memberOf(st, f3.Addr); ok && m.Healthy {
				healthySeen = append(healthySeen, fmt.Sprintf("%v after SIGTERM (role %s)", time.Since(tTerm).Round(time.Millisecond), st.Role))
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if tActive.IsZero() {
		t.Fatalf("f2 did not become active within 5 s of f1's SIGTERM")
	}
	per := map[string]int{}
	for _, n := range reached {
		per[n]++
	}
	t.Logf("f2 active %v after f1's SIGTERM; new connections during the 5 s: %v", tActive.Sub(tTerm).Round(time.Millisecond), per)
	for _, at := range f3Hits {
		t.Errorf("a new connection reached the failing f3 %v after f1's SIGTERM (f2 active at %v)",
			at.Sub(tTerm).Round(time.Millisecond), tActive.Sub(tTerm).Round(time.Millisecond))
	}
	for _, s := range healthySeen {
		t.Errorf("f2's status showed the failing f3 healthy %s", s)
	}
	if per[f2.Name] == 0 {
		t.Error("no new connection reached f2 after the takeover")
	}
}
