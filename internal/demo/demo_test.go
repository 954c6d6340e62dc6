package demo

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/l2lb/l2lb/internal/e2e"
)

// TestDemo runs the README's demo scenario end to end with a freshly built binary: every frontend
// gets TCP and UDP through the IPv4 VIP and through the IPv6 VIP (issue 12: "the demo shows an
// IPv6 VIP too"), and the transfers over both families are verified.
func TestDemo(t *testing.T) {
	e2e.Require(t, e2e.Missing(), "the demo")
	bin, err := e2e.BuildL2LB(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if err := Run(Options{Binary: bin, Conns: 90, SelfWeight: 100}, &out, &errb); err != nil {
		t.Fatalf("demo: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
	}
	report := out.String()
	if !strings.Contains(report, "VIPs 192.0.2.200 and 2001:db8::200 balanced by f1") {
		t.Errorf("the demo report names not both VIPs:\n%s", report)
	}
	// frontend, address, address6, then tcp, udp (IPv4) and tcp6, udp6 (IPv6).
	row := regexp.MustCompile(`(?m)^(f\d)\s+(\S+)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$`)
	rows := map[string][]string{}
	for _, m := range row.FindAllStringSubmatch(report, -1) {
		rows[m[1]] = m
	}
	tcp4, tcp6 := 0, 0
	for _, f := range []string{"f1", "f2", "f3"} {
		m := rows[f]
		if m == nil {
			t.Errorf("no row for frontend %s in the demo report:\n%s", f, report)
			continue
		}
		if !strings.Contains(m[3], ":") {
			t.Errorf("frontend %s's IPv6 address column is %q", f, m[3])
		}
		for i, col := range []string{"tcp", "udp", "tcp6", "udp6"} {
			if m[4+i] == "0" {
				t.Errorf("frontend %s got no %s traffic in the demo:\n%s", f, col, report)
			}
		}
		n4, _ := strconv.Atoi(m[4])
		n6, _ := strconv.Atoi(m[6])
		tcp4, tcp6 = tcp4+n4, tcp6+n6
	}
	if tcp4 != 90 || tcp6 != 90 {
		t.Errorf("the table counts %d IPv4 and %d IPv6 TCP connections, want 90 each:\n%s", tcp4, tcp6, report)
	}
	if !strings.Contains(report, "90 TCP connections over IPv4") || !strings.Contains(report, "90 over IPv6") ||
		!strings.Contains(report, "; 0 failures") {
		t.Errorf("demo report:\n%s", report)
	}
	for _, via := range []string{"192.0.2.200:25", "[2001:db8::200]:25"} {
		if !strings.Contains(report, "20 MB download through "+via+": ok (sha256 verified); 20 MB upload: ok (sha256 verified)") {
			t.Errorf("the 20 MB transfers through %s were not both verified:\n%s", via, report)
		}
	}
	if m := regexp.MustCompile(`ndp replies (\d+)`).FindStringSubmatch(report); m == nil || m[1] == "0" {
		t.Errorf("the balancer answered no neighbour solicitation for the IPv6 VIP:\n%s", report)
	}
	if race := e2e.RaceReport(errb.String()); race != "" {
		t.Errorf("the race detector reported in l2lb:\n%s", race)
	}
}
