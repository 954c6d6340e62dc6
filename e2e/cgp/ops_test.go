package cgp

import (
	"bytes"
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// What the operator's side of a helper looks like from the tests: its control socket
// (`l2lb status --json`, `l2lb reload`) and its Prometheus metrics.

// helperMetricsAddr is where `l2lb helper` serves its metrics by default (metrics.DefaultListen),
// inside the namespace of the frontend it runs on; every frontend has its own loopback.
const helperMetricsAddr = "127.0.0.1:9781"

// ctlStatus asks a helper's control socket for its status, bounded by 2 s.
func ctlStatus(path string) (control.Status, error) {
	c := control.Dial(path)
	c.Timeout = 2 * time.Second
	return c.Status()
}

// ctlConns returns a helper's connection table as client address:port -> member address.
func ctlConns(path string) (map[string]string, error) {
	c := control.Dial(path)
	c.Timeout = 2 * time.Second
	conns, err := c.Conns(netip.Addr{}, netip.Addr{})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, cn := range conns {
		out[cn.Client] = cn.Member
	}
	return out, nil
}

// l2lbCLI runs an l2lb client command (status, reload, ...) against a control socket and returns
// its standard output, standard error and exit code. The socket is a file-system path, so the
// client needs no namespace.
func l2lbCLI(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return o.String(), e.String(), ee.ExitCode()
	case err != nil:
		t.Fatalf("running l2lb %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), 0
}

// scrapeMetrics fetches /metrics from the helper on h (from inside h's namespace) and returns
// every sample keyed by its series (e2e.Metrics).
func scrapeMetrics(h *testbed.Host) (map[string]float64, error) {
	return e2e.Metrics(h, helperMetricsAddr)
}
