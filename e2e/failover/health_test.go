package failover

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

const (
	// healthPort is the service every frontend runs on its real address for `--health-port`
	// (serveHealth).
	healthPort = 8080
	// metricsListen is the nodes' --metrics address, inside each node's namespace.
	metricsListen = "127.0.0.1:9781"
	// healthBound bounds how long a change of a node's service takes to show on the active node:
	// three failed probes one second apart (or two good ones), plus the gossip.
	healthBound = 8 * time.Second
	// healthAsks is how many NAME connections through the VIP judge where new connections go:
	// with -p 0 each lands on a healthy member by its 5-tuple's hash, so a member with a third
	// of the weight gets none of them with a chance of (2/3)^30, about 5e-6.
	healthAsks = 30
)

// serveHealth runs the health-checked service on h's real address: a TCP listener that accepts
// and closes every connection (the probe only connects). stop closes it and waits for its loop.
func serveHealth(t *testing.T, h *testbed.Host) (stop func()) {
	t.Helper()
	ln, err := h.ListenTCP(netip.AddrPortFrom(h.Addr, healthPort))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { ln.Close(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// askNames makes n NAME connections through the VIP from both addresses of every client and
// counts the answers by frontend; every connection must succeed.
func askNames(t *testing.T, bed *testbed.Bed, n int) map[string]int {
	t.Helper()
	raddr := netip.AddrPortFrom(bed.VIPs[0], namePort)
	var srcs []e2e.Source
	for _, c := range bed.Clients {
		srcs = append(srcs, e2e.Source{Host: c, Addr: c.Addr})
		for _, x := range c.Extra {
			srcs = append(srcs, e2e.Source{Host: c, Addr: x})
		}
	}
	got := map[string]int{}
	for i := 0; i < n; i++ {
		s := srcs[i%len(srcs)]
		name, err := s.Host.AskName(s.Addr, raddr)
		if err != nil {
			t.Fatalf("NAME %d from %v through the VIP: %v", i, s, err)
		}
		got[name]++
	}
	return got
}

// healthyMetric returns l2lb_member_healthy of member on node n, scraped from its --metrics
// listener inside its namespace.
func healthyMetric(n *node, member netip.Addr) (float64, error) {
	ms, err := e2e.Metrics(n.host, metricsListen)
	if err != nil {
		return 0, err
	}
	series := fmt.Sprintf("l2lb_member_healthy{member=%q}", member.String())
	v, ok := ms[series]
	if !ok {
		return 0, fmt.Errorf("%s: no %s in the metrics", n.host.Name, series)
	}
	return v, nil
}

// waitHealthyMetric waits up to healthBound until n's l2lb_member_healthy of member is want, and
// returns how long that took.
func waitHealthyMetric(t *testing.T, n *node, member netip.Addr, want float64) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		v, err := healthyMetric(n, member)
		if err == nil && v == want {
			return time.Since(start)
		}
		if time.Since(start) > healthBound {
			t.Fatalf("%s: l2lb_member_healthy{member=%q} is %v (err %v), want %v within %v", n.host.Name, member, v, err, want, healthBound)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestMemberHealthyMetric: in a standalone group with `--health-port`, a node whose service
// stops is reported unhealthy by the active node (l2lb_member_healthy 0; healthy=false in
// `l2lb status --json`, still listed) and gets no new connections; when its service is back it
// is healthy again and gets new connections again.
//
// Before the redesign (46d3598) the status and the metrics never read the health of cluster
// members (provider.Source.Health was not set in cluster mode), so l2lb_member_healthy was
// always 1, and an unhealthy node was dropped from the member list (or kept at weight 0 only
// while flows pointed at it) instead of being listed with healthy=false.
func TestMemberHealthyMetric(t *testing.T) {
	bed := newBed(t)
	stops := map[string]func(){}
	for _, f := range bed.Frontends {
		if _, err := f.ServeName(bed.VIPs[0], []uint16{namePort}, nil); err != nil {
			t.Fatal(err)
		}
		stops[f.Name] = serveHealth(t, f)
	}
	// -p 0: with persistence a client's new connections follow its template to a member of
	// weight 0, as IPVS does; they must follow health here.
	c := startCluster(t, bed, "-p", "0", "--health-port", fmt.Sprint(healthPort), "--metrics", metricsListen)
	f1, f3 := c.node("f1"), bed.Frontends[2]
	allHealthy := func(st control.Status) (bool, string) {
		if len(st.Members) != 3 {
			return false, fmt.Sprintf("lists %d members, want 3", len(st.Members))
		}
		for _, m := range st.Members {
			if !m.Healthy || m.Weight == 0 {
				return false, fmt.Sprintf("member %s healthy=%v weight %d", m.Addr, m.Healthy, m.Weight)
			}
		}
		return true, ""
	}
	f1.waitStatus(healthBound, allHealthy)
	if v, err := healthyMetric(f1, f3.Addr); err != nil || v != 1 {
		t.Fatalf("f1: l2lb_member_healthy{member=%q} is %v (err %v) with every service up, want 1", f3.Addr, v, err)
	}
	if got := askNames(t, bed, healthAsks); got[f3.Name] == 0 {
		t.Fatalf("with every member healthy f3 got none of %d new connections: %v", healthAsks, got)
	} else {
		t.Logf("every member healthy: new connections per frontend %v", got)
	}

	// f3's service stops: its own probe fails three times, it gossips the result.
	stops[f3.Name]()
	took := waitHealthyMetric(t, f1, f3.Addr, 0)
	t.Logf("f3's service stopped: f1's l2lb_member_healthy{member=%q} 0 after %v", f3.Addr, took.Round(time.Millisecond))
	st := f1.status()
	if m, ok := st.FindMember(f3.Addr); !ok {
		t.Errorf("f1: with f3 unhealthy the status no longer lists it: %+v", st.Members)
	} else if m.Healthy {
		t.Errorf("f1: the metrics say f3 is unhealthy, the status says healthy=true: %+v", m)
	} else {
		t.Logf("f1: status of f3 while unhealthy: healthy=%v weight %d", m.Healthy, m.Weight)
	}
	if got := askNames(t, bed, healthAsks); got[f3.Name] > 0 {
		t.Errorf("with f3 unhealthy it still got %d of %d new connections: %v", got[f3.Name], healthAsks, got)
	} else {
		t.Logf("f3 unhealthy: new connections per frontend %v", got)
	}

	// The service is back: two good probes, gossip, and f3 takes new connections again.
	serveHealth(t, f3)
	took = waitHealthyMetric(t, f1, f3.Addr, 1)
	t.Logf("f3's service back: f1's l2lb_member_healthy{member=%q} 1 after %v", f3.Addr, took.Round(time.Millisecond))
	f1.waitStatus(time.Second, allHealthy)
	if got := askNames(t, bed, healthAsks); got[f3.Name] == 0 {
		t.Errorf("with f3 healthy again it got none of %d new connections: %v", healthAsks, got)
	} else {
		t.Logf("f3 healthy again: new connections per frontend %v", got)
	}
}
