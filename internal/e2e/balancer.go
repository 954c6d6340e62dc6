package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/testbed"
)

// Balancer is an `l2lb run` process in a testbed namespace whose standard error is kept,
// line by line, for the test's messages.
type Balancer struct {
	// Cmd is the process.
	Cmd *exec.Cmd
	// Control is its control socket.
	Control string
	// VMAC is what a client's ARP for the VIP resolved to (set by ResolveVIP).
	VMAC net.HardwareAddr

	done    chan struct{} // closed when the process has exited
	waitErr error         // valid after done

	mu  sync.Mutex
	log []string
}

// StartBalancer starts bin with args in h's namespace and keeps its standard error. Unless args
// name a control socket (--control PATH), one in a temporary directory is added. The caller
// stops it (Stop), normally from a t.Cleanup registered right away, and waits for it to be ready
// (WaitReady).
func StartBalancer(t *testing.T, h *testbed.Host, bin string, args []string) *Balancer {
	t.Helper()
	return StartBalancerEnv(t, h, bin, args, nil)
}

// StartBalancerEnv is StartBalancer with env (KEY=VALUE) added to the process's environment.
func StartBalancerEnv(t *testing.T, h *testbed.Host, bin string, args, env []string) *Balancer {
	t.Helper()
	b := &Balancer{done: make(chan struct{})}
	for i, a := range args {
		if a == "--control" && i+1 < len(args) {
			b.Control = args[i+1]
		}
	}
	if b.Control == "" {
		b.Control = filepath.Join(t.TempDir(), "control.sock")
		args = append(args[:1:1], append([]string{"--control", b.Control}, args[1:]...)...)
	}
	b.Cmd = h.Command(bin, args...)
	if len(env) > 0 {
		b.Cmd.Env = append(os.Environ(), env...)
	}
	stderr, err := b.Cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("starting in %s: l2lb %s", h.NS, strings.Join(args, " "))
	if err := b.Cmd.Start(); err != nil {
		t.Fatalf("starting l2lb: %v", err)
	}
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			b.mu.Lock()
			b.log = append(b.log, sc.Text())
			b.mu.Unlock()
		}
	}()
	go func() {
		<-logDone // Wait must not run before the pipe is drained (os/exec docs)
		b.waitErr = b.Cmd.Wait()
		close(b.done)
	}()
	return b
}

// WaitReady fails the test unless the balancer reports ready on its control socket within
// 10 s.
func (b *Balancer) WaitReady(t *testing.T) {
	t.Helper()
	if err := WaitReady(b.Control, 10*time.Second, b.done); err != nil {
		t.Fatalf("%v (exit: %v)\nlog:\n%s", err, b.WaitErr(), b.LogText())
	}
}

// ResolveVIP resolves vip by ARP from client until it is answered, and keeps the answer in
// VMAC; it fails the test if no answer came by deadline or the balancer exited.
func (b *Balancer) ResolveVIP(t *testing.T, client *testbed.Host, vip netip.Addr, deadline time.Time) {
	t.Helper()
	for {
		mac, err := client.ARPResolve(vip)
		if err == nil {
			b.VMAC = mac
			return
		}
		if time.Now().After(deadline) || !b.Running() {
			t.Fatalf("nobody answers ARP for the VIP %v: %v\nlog:\n%s", vip, err, b.LogText())
		}
	}
}

// LogText returns the last 200 lines of the balancer's standard error.
func (b *Balancer) LogText() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	lines := b.log
	if len(lines) > 200 {
		lines = lines[len(lines)-200:]
	}
	return strings.Join(lines, "\n")
}

// LogContains reports whether a line of the balancer's log contains all of parts.
func (b *Balancer) LogContains(parts ...string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, l := range b.log {
		ok := true
		for _, p := range parts {
			if !strings.Contains(l, p) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// Running reports whether the process has not exited yet.
func (b *Balancer) Running() bool {
	select {
	case <-b.done:
		return false
	default:
		return true
	}
}

// Exited waits at most d for the process to exit on its own and reports whether it did.
func (b *Balancer) Exited(d time.Duration) bool {
	select {
	case <-b.done:
		return true
	case <-time.After(d):
		return false
	}
}

// WaitErr returns how the process exited; it is meaningful once Running reports false.
func (b *Balancer) WaitErr() error {
	if b.Running() {
		return nil
	}
	return b.waitErr
}

// Stop sends SIGTERM and fails the test unless the balancer exits 0 within 10 s (it is
// killed then). Before that it waits (WaitClosed) for the connections of hosts that a
// test closed to finish their FIN/ACK exchange through the balancer: stopping it earlier
// leaves half-closed connections retransmitting into the next test.
func (b *Balancer) Stop(t *testing.T, hosts ...*testbed.Host) {
	t.Helper()
	if b.Running() {
		if err := WaitClosed(hosts...); err != nil {
			t.Logf("note: before stopping l2lb: %v", err)
		}
	}
	if b.Running() {
		b.Cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-b.done:
		if b.waitErr != nil {
			t.Errorf("l2lb did not exit 0 on SIGTERM: %v", b.waitErr)
		}
		if race := RaceReport(b.LogText()); race != "" {
			t.Errorf("the race detector reported in l2lb:\n%s", race)
		}
	case <-time.After(10 * time.Second):
		b.Cmd.Process.Kill()
		<-b.done
		t.Errorf("l2lb still running 10 s after SIGTERM; killed")
	}
}

// WaitReady waits up to limit until the balancer serving the control socket at path reports
// ready (control.Client.WaitReady), or fails early when exited is closed (the process ended).
// It is the one way the end-to-end tests wait for a balancer: no log text is parsed.
func WaitReady(path string, limit time.Duration, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	if _, err := control.Dial(path).WaitReady(ctx); err != nil {
		select {
		case <-exited:
			return fmt.Errorf("l2lb exited before it was ready (%w)", err)
		default:
		}
		return fmt.Errorf("l2lb not ready within %v: %w", limit, err)
	}
	return nil
}

// Metrics scrapes http://<addr>/metrics (a balancer's --metrics listener, loopback-only by
// default) from inside h's namespace and returns every sample keyed by its series as the text
// exposition format writes it: `name{label="value",...}`, or `name` without labels.
func Metrics(h *testbed.Host, addr string) (map[string]float64, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			var c net.Conn
			err := h.Do(func() error {
				var d net.Dialer
				var err error
				c, err = d.DialContext(ctx, network, a)
				return err
			})
			return c, err
		}}}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET http://%s/metrics in %s: %s", addr, h.NS, resp.Status)
	}
	return ParseMetrics(body)
}

// ParseMetrics parses Prometheus' text exposition format (with prometheus/common's parser) into
// every sample keyed by its series as the format writes it: `name{label="value",...}` with the
// labels in name order, or `name` without labels.
func ParseMetrics(body []byte) (map[string]float64, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("parsing the metrics: %w", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			key := name
			if ls := m.GetLabel(); len(ls) > 0 {
				parts := make([]string, 0, len(ls))
				for _, l := range ls {
					parts = append(parts, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
				sort.Strings(parts)
				key += "{" + strings.Join(parts, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Untyped != nil:
				out[key] = m.GetUntyped().GetValue()
			}
		}
	}
	return out, nil
}

// WeightWhenServed sets a member's weight the moment the control socket at path accepts
// connections, then once more with the command line: it sends the request with control.Client
// (no process to start, so it arrives within a millisecond of the socket being served), retrying
// every millisecond only while the socket does not exist yet or refuses connections (ENOENT,
// ECONNREFUSED), then runs `bin weight --control path member weight`, which must exit 0. Any other
// failure is returned, with the command's standard error. It gives up after limit, or as soon as
// running reports false (the balancer exited). It returns how long after the call the first
// request was answered and the command's standard output.
func WeightWhenServed(bin, path string, member netip.Addr, weight uint32, limit time.Duration, running func() bool) (first time.Duration, stdout string, err error) {
	start := time.Now()
	deadline := start.Add(limit)
	notServed := func(err error) bool {
		return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
	}
	client := control.Dial(path)
	client.Timeout = 5 * time.Second
	for {
		if !running() {
			return 0, "", errors.New("l2lb exited before its control socket accepted a connection")
		}
		if time.Now().After(deadline) {
			return 0, "", fmt.Errorf("the control socket %s accepted no connection within %v", path, limit)
		}
		err := client.SetWeight(member, weight)
		if notServed(err) {
			time.Sleep(time.Millisecond)
			continue
		}
		first = time.Since(start)
		if err != nil {
			return first, "", fmt.Errorf("weight %v %d, the first request on the control socket (%v after the call): %w",
				member, weight, first.Round(time.Millisecond), err)
		}
		break
	}
	cmd := exec.Command(bin, "weight", "--control", path, member.String(), strconv.FormatUint(uint64(weight), 10))
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		return first, o.String(), fmt.Errorf("l2lb weight %v %d: %v: %s", member, weight, err, strings.TrimSpace(e.String()))
	}
	return first, o.String(), nil
}

// PortsColumn returns the Ports column of each member row of the `l2lb status` text view, keyed
// by member address. The view is aligned by text/tabwriter, so a column starts at the offset of
// its heading in every row.
func PortsColumn(text string) (map[string]string, error) {
	col := -1
	out := map[string]string{}
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "Member") {
			col = strings.Index(l, "Ports")
			continue
		}
		f := strings.Fields(l)
		if col < 0 || len(f) < 2 || f[0] != "->" {
			continue
		}
		if len(l) <= col {
			return nil, fmt.Errorf("member row shorter than the Ports column: %q", l)
		}
		out[f[1]] = strings.Fields(l[col:])[0]
	}
	if col < 0 {
		return nil, fmt.Errorf("no member heading with Ports in l2lb status:\n%s", text)
	}
	return out, nil
}

// PortOverlapShown checks a balancer's status in which a's and b's source-port ranges overlap
// and keep's range is lo-hi: `l2lb status --json` (st) shows a and b with port_conflict and no
// range, keep with its range, and a problem naming the overlap with both addresses; `l2lb
// status` (text) says "overlap" in the Ports column of a and b and lo-hi in keep's. It returns
// what does not hold (nothing when all does).
func PortOverlapShown(st control.Status, text string, a, b, keep netip.Addr, lo, hi uint16) []string {
	var bad []string
	fail := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }
	cols, err := PortsColumn(text)
	if err != nil {
		return []string{err.Error()}
	}
	for _, addr := range []netip.Addr{a, b} {
		m, found := st.FindMember(addr)
		switch {
		case !found:
			fail("status lists no member %v", addr)
		case !m.PortConflict || m.PortLo != 0 || m.PortHi != 0:
			fail("member %v: port_conflict=%v, ports %d-%d; want port_conflict=true and no range", addr, m.PortConflict, m.PortLo, m.PortHi)
		}
		if got := cols[addr.String()]; got != "overlap" {
			fail("l2lb status shows %q in the Ports column of %v, want \"overlap\"", got, addr)
		}
	}
	m, found := st.FindMember(keep)
	switch {
	case !found:
		fail("status lists no member %v", keep)
	case m.PortConflict || m.PortLo != lo || m.PortHi != hi:
		fail("member %v: port_conflict=%v, ports %d-%d; want its own range %d-%d", keep, m.PortConflict, m.PortLo, m.PortHi, lo, hi)
	}
	if got, want := cols[keep.String()], fmt.Sprintf("%d-%d", lo, hi); got != want {
		fail("l2lb status shows %q in the Ports column of %v, want %q", got, keep, want)
	}
	named := false
	for _, p := range st.Problems {
		named = named || (strings.Contains(p, "overlap") && strings.Contains(p, a.String()) && strings.Contains(p, b.String()))
	}
	if !named {
		fail("no problem names the overlap of %v and %v: %q", a, b, st.Problems)
	}
	return bad
}
