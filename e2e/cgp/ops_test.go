package cgp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
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

// scrapeMetrics fetches /metrics from the helper on h, dialling from a thread inside h's
// namespace (as e2e/ops does), and returns every sample keyed by its series as written in the
// exposition format: `name{label="value",...}` or `name`.
func scrapeMetrics(h *testbed.Host) (map[string]float64, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := h.Do(func() error {
				var d net.Dialer
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
		DisableKeepAlives: true,
	}
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + helperMetricsAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics in %s: %s: %s", h.NS, resp.Status, body)
	}
	return parseExposition(body)
}

// parseExposition parses Prometheus' text exposition format (one sample a line: series, value
// and an optional timestamp; # lines are comments).
func parseExposition(body []byte) (map[string]float64, error) {
	out := map[string]float64{}
	for i, line := range strings.Split(string(body), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// Label values may contain blanks, so the series ends at the last '}' if there is one.
		series, rest := line, ""
		if j := strings.LastIndexByte(line, '}'); j >= 0 {
			series, rest = line[:j+1], strings.TrimSpace(line[j+1:])
		} else if f := strings.Fields(line); len(f) >= 2 {
			series, rest = f[0], strings.Join(f[1:], " ")
		}
		f := strings.Fields(rest)
		if len(f) < 1 {
			return nil, fmt.Errorf("line %d: no value: %q", i+1, line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", i+1, err)
		}
		out[series] = v
	}
	return out, nil
}
