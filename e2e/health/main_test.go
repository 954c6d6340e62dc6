// Package health holds the end-to-end acceptance tests of issue 13's service health checks: the
// real l2lb binary (race-built by the suite) on a namespace testbed whose frontends run real
// servers bound to the VIP (nginx, Dovecot, aiosmtpd, kamailio, an echo process; see
// internal/realservers). The checks must go through the DSR path (the probe source, the virtual
// MAC, the VIP), withdraw a failing member from new connections while its established ones
// continue, reschedule a leaving member's flows when its service stops, and reach the standbys
// so that a takeover starts with the same view.
package health

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// suite is what TestMain prepared: the binary and the prerequisites.
var suite e2e.Suite

func TestMain(m *testing.M) {
	os.Exit(suite.Run(m, e2e.SuiteOptions{Name: "e2e/health", Tools: []string{"ip"}}))
}

// Health-check timing of every test: short, so that each test stays within seconds.
const (
	checkInterval = 300 * time.Millisecond
	checkTimeout  = 200 * time.Millisecond
	checkRise     = 2
	checkFall     = 2
	// slack absorbs scheduling on a loaded two-core machine with race-built binaries, and
	// the status polling.
	slack = 3 * time.Second
	// downBound bounds how long a stopped service stays healthy: fall failed probes one
	// interval apart, the last one taking the whole timeout.
	downBound = checkInterval*checkFall + checkTimeout + slack
	// upBound bounds how long a resumed service stays unhealthy: rise good probes.
	upBound = checkInterval*checkRise + checkTimeout + slack
)

// probeSource is the probes' source address: free in the testbed subnet (clients use .1-.9 and
// .101-.109, frontends .11 on, the router .254, the VIP .200).
var probeSource = netip.MustParseAddr("192.0.2.250")

// namePort is the testbed name server every frontend runs on the VIP: a client's NAME request
// through the VIP tells which frontend a new connection reached.
const namePort = 8000

// timing returns the stanza lines of a check with the tests' timing.
func timing(kind string) string {
	return fmt.Sprintf("    check %s\n    interval %v\n    timeout %v\n    rise %d\n    fall %d\n",
		kind, checkInterval, checkTimeout, checkRise, checkFall)
}

// writeConfig writes the VIP file (the bed's first VIP) and a services file with the probe
// source and body, and returns their paths.
func writeConfig(t *testing.T, bed *testbed.Bed, body string) (vipFile, svcFile string) {
	t.Helper()
	dir := t.TempDir()
	vipFile, svcFile = filepath.Join(dir, "vipaddrs"), filepath.Join(dir, "services.conf")
	if err := os.WriteFile(vipFile, []byte(bed.VIPs[0].String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	text := "# e2e/health\nprobe-source " + probeSource.String() + "\n\n" + body
	if err := os.WriteFile(svcFile, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("services file:\n%s", text)
	return vipFile, svcFile
}

// serveNames starts the name server on the VIP of every frontend.
func serveNames(t *testing.T, bed *testbed.Bed) {
	t.Helper()
	for _, f := range bed.Frontends {
		if _, err := f.ServeName(bed.VIPs[0], []uint16{namePort}, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// statusOf reads the status over a control socket.
func statusOf(path string) (control.Status, error) {
	return control.Dial(path).Status()
}

// memberOf returns the member with address a.
func memberOf(st control.Status, a netip.Addr) (control.Member, bool) {
	for _, m := range st.Members {
		if m.Addr == a.String() {
			return m, true
		}
	}
	return control.Member{}, false
}

// checkOf returns member a's check of service.
func checkOf(st control.Status, a netip.Addr, service string) (control.Check, bool) {
	m, ok := memberOf(st, a)
	if !ok {
		return control.Check{}, false
	}
	for _, c := range m.Checks {
		if c.Service == service {
			return c, true
		}
	}
	return control.Check{}, false
}

// waitStatus polls the status at path every 50 ms until ok accepts it, and returns it and how
// long that took; after limit it fails the test with ok's explanation of the last status.
func waitStatus(t *testing.T, path string, limit time.Duration, ok func(control.Status) (bool, string)) (control.Status, time.Duration) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(limit)
	for {
		st, err := statusOf(path)
		why := fmt.Sprint(err)
		if err == nil {
			var good bool
			if good, why = ok(st); good {
				return st, time.Since(start)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s\nmembers: %s\nproblems: %q", limit, why, members(st), st.Problems)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// members formats the members and their checks for a message.
func members(st control.Status) string {
	var b strings.Builder
	for _, m := range st.Members {
		fmt.Fprintf(&b, "\n  %s weight=%d healthy=%v leaving=%v flows=%d", m.Addr, m.Weight, m.Healthy, m.Leaving, m.Flows)
		for _, c := range m.Checks {
			fmt.Fprintf(&b, "\n    %s %d/%s healthy=%v since=%s err=%q", c.Service, c.Port, c.Proto, c.Healthy,
				c.Since.Format("15:04:05.000"), c.Error)
		}
	}
	return b.String()
}

// allHealthy accepts a status in which every one of addrs is listed, healthy, and passes each of
// services.
func allHealthy(addrs []netip.Addr, services []string) func(control.Status) (bool, string) {
	return func(st control.Status) (bool, string) {
		for _, a := range addrs {
			m, ok := memberOf(st, a)
			if !ok {
				return false, fmt.Sprintf("member %v not listed", a)
			}
			for _, s := range services {
				c, ok := checkOf(st, a, s)
				if !ok {
					return false, fmt.Sprintf("member %v has no check %s", a, s)
				}
				if !c.Healthy {
					return false, fmt.Sprintf("member %v: %s unhealthy (%s)", a, s, c.Error)
				}
			}
			if !m.Healthy {
				return false, fmt.Sprintf("member %v unhealthy with every check passing", a)
			}
		}
		return true, ""
	}
}

// sources returns every address of every client.
func sources(bed *testbed.Bed) []e2e.Source { return e2e.Sources(bed) }

// askNames makes n NAME connections through the VIP, round-robin over the clients' addresses,
// and returns how many each frontend answered; failed connections are returned as errors.
func askNames(bed *testbed.Bed, n int) (map[string]int, []error) {
	per := map[string]int{}
	var errs []error
	srcs := sources(bed)
	raddr := netip.AddrPortFrom(bed.VIPs[0], namePort)
	for i := 0; i < n; i++ {
		s := srcs[i%len(srcs)]
		name, err := s.Host.AskName(s.Addr, raddr)
		if err != nil {
			errs = append(errs, fmt.Errorf("from %v: %w", s, err))
			continue
		}
		per[name]++
	}
	return per, errs
}

// askUntil makes NAME connections through the VIP until one reaches frontend want, at most n;
// it returns how many it made and whether one reached want.
func askUntil(bed *testbed.Bed, want string, n int) (int, bool) {
	srcs := sources(bed)
	raddr := netip.AddrPortFrom(bed.VIPs[0], namePort)
	for i := 0; i < n; i++ {
		s := srcs[i%len(srcs)]
		if name, err := s.Host.AskName(s.Addr, raddr); err == nil && name == want {
			return i + 1, true
		}
	}
	return n, false
}
