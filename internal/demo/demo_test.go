package demo

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/l2lb/l2lb/internal/e2e"
)

// TestDemo runs the README's demo scenario end to end with a freshly built binary: every frontend
// gets connections, and the transfers are verified.
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
	for _, f := range []string{"f1", "f2", "f3"} {
		m := regexp.MustCompile(`(?m)^` + f + `\s+\S+\s+(\d+)\s+(\d+)$`).FindStringSubmatch(report)
		if m == nil || m[1] == "0" || m[2] == "0" {
			t.Errorf("frontend %s got no TCP or no UDP in the demo:\n%s", f, report)
		}
	}
	if !strings.Contains(report, "90 TCP connections") || !strings.Contains(report, ", 0 failures") ||
		strings.Count(report, "ok (sha256 verified)") != 2 {
		t.Errorf("demo report:\n%s", report)
	}
	if race := e2e.RaceReport(errb.String()); race != "" {
		t.Errorf("the race detector reported in l2lb:\n%s", race)
	}
}
