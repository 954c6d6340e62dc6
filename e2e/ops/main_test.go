// Package ops holds the acceptance tests of issue 6 (operating l2lb): the
// real l2lb binary runs as the active balancer on a namespace testbed
// (internal/testbed) and the tests check that `l2lb status --json`, the
// Prometheus metrics and the status page (in headless Chromium) show the
// traffic the test sends, that `l2lb drain --wait` quiesces a member under
// load without cutting its connections, and that `l2lb reload` and SIGHUP
// refuse a broken VIP file and apply a good one without resetting anything.
// It also checks the deploy files in contrib/.
package ops

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/l2lb/l2lb/internal/e2e"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/testbed"
)

// Shared state built by TestMain.
var (
	suite   e2e.Suite
	modRoot string // the module's root directory (for contrib/)
)

// Ports the frontends' name servers listen on, on every VIP.
const (
	tcpPort = 80
	udpPort = 5060 // SIP over UDP, seed step 6
)

// metricsAddr is where `l2lb run` serves the metrics and the status page by
// default (metrics.DefaultListen); it is inside f1's namespace, so tests
// reach it from there.
const metricsAddr = "127.0.0.1:9781"

func TestMain(m *testing.M) {
	var err error
	if modRoot, err = e2e.ModuleRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e/ops:", err)
		os.Exit(1)
	}
	// Source ports handed out by uniquePort start at a random place so that
	// repeated runs (-count) do not reuse the previous run's 4-tuples.
	portSeq.Store(rand.Uint32N(portSpan))
	os.Exit(suite.Run(m, e2e.SuiteOptions{Name: "e2e/ops", Tools: []string{"ip"}, SharedBed: true,
		Setup: e2e.ServeNames([]uint16{tcpPort}, []uint16{udpPort})}))
}

// needBed fails (CI=true) or skips when the testbed is unavailable.
func needBed(t *testing.T) {
	t.Helper()
	suite.NeedBed(t, "the operations tests")
}

func vip() netip.Addr { return suite.Bed.VIPs[0] }

func f1() *testbed.Host { return suite.Bed.Frontends[0] }

// source is one client address connections are made from.
type source = e2e.Source

// sources returns both addresses of every client.
func sources() []source { return e2e.Sources(suite.Bed) }

// Explicit client source ports come from [portBase, portBase+portSpan),
// below the clients' ephemeral range (the kernel default 32768-60999), so
// they never collide with ports the kernel picks.
const (
	portBase = 20000
	portSpan = 12000
)

var portSeq atomic.Uint32

// uniquePort returns a source port no other connection of this run uses
// (until portSpan ports have been handed out). Tests that count frames per
// flow, or that must tell new connections from old ones, need this: the
// balancer keeps a reused 4-tuple on the member of its old flow entry, as
// IPVS in direct-routing mode does for a SYN on a FIN_WAIT entry
// (conn_reuse_mode=1 reschedules only TIME_WAIT/CLOSE entries, which DR's
// input-only state table never reaches).
func uniquePort() uint16 { return uint16(portBase + portSeq.Add(1)%portSpan) }

// balancer is a running `l2lb run` on f1.
type balancer struct {
	*e2e.Balancer
	dir     string // its temporary directory
	vipFile string // the VIP file it reads (and re-reads on reload)
	ctl     string // its control socket
}

// writeVIPs replaces the balancer's VIP file with lines.
func (b *balancer) writeVIPs(t *testing.T, lines ...string) {
	t.Helper()
	if err := os.WriteFile(b.vipFile, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// startBalancer runs l2lb on f1 with every frontend as a member plus extra
// flags, the control socket in a temporary directory and the metrics on
// their default address inside f1. It waits until l2lb is ready, knows
// every member's MAC and answers ARP for the VIP, and stops it with SIGTERM
// when the test ends.
func startBalancer(t *testing.T, extra ...string) *balancer {
	t.Helper()
	b := launchBalancer(t, extra...)
	b.waitUsable(t)
	return b
}

// launchBalancer starts l2lb as startBalancer does and returns at once, without waiting for
// anything; it stops it with SIGTERM when the test ends.
func launchBalancer(t *testing.T, extra ...string) *balancer {
	t.Helper()
	dir := t.TempDir()
	b := &balancer{dir: dir, vipFile: filepath.Join(dir, "vipaddrs"), ctl: filepath.Join(dir, "ctl.sock")}
	b.writeVIPs(t, "# e2e/ops VIPs (seed step 4 format)", vip().String())
	// Clients may still cache the VIP's MAC from an earlier balancer.
	for _, c := range suite.Bed.Clients {
		if err := c.FlushNeigh(); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"run", "-i", "eth0", "-f", b.vipFile, "--control", b.ctl, "--metrics", metricsAddr}
	for _, f := range suite.Bed.Frontends {
		args = append(args, "--member", f.Addr.String())
	}
	args = append(args, extra...)
	b.Balancer = e2e.StartBalancer(t, f1(), suite.Bin, args)
	t.Cleanup(func() { stopBalancer(t, b) })
	return b
}

// waitUsable waits until the balancer is ready, knows every member's MAC and answers ARP for the
// VIP.
func (b *balancer) waitUsable(t *testing.T) {
	t.Helper()
	b.WaitReady(t)
	// Every member must be usable (a learned MAC, or local) before traffic
	// is counted, or the first frames would be dropped for want of a MAC.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := b.tryStatus()
		usable := 0
		for _, m := range st.Members {
			if m.MAC != "" || m.Local {
				usable++
			}
		}
		if err == nil && usable == len(suite.Bed.Frontends) {
			break
		}
		if time.Now().After(deadline) || !b.Running() {
			t.Fatalf("l2lb status never listed %d usable members (last: %+v, err %v)\nlog:\n%s",
				len(suite.Bed.Frontends), st.Members, err, b.LogText())
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.ResolveVIP(t, suite.Bed.Clients[0], vip(), deadline)
}

// stopBalancer sends SIGTERM and expects a clean exit.
func stopBalancer(t *testing.T, b *balancer) {
	b.Stop(t, append(slices.Clone(suite.Bed.Clients), suite.Bed.Frontends...)...)
	if t.Failed() {
		t.Logf("l2lb log:\n%s", b.LogText())
	}
}

// cli runs an l2lb client command against the balancer's control socket and
// returns its standard output, standard error and exit code. The control
// socket is a path in the file system, so the client needs no namespace.
func (b *balancer) cli(args ...string) (stdout, stderr string, code int, err error) {
	args = append([]string{args[0], "--control", b.ctl}, args[1:]...)
	cmd := exec.Command(suite.Bin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return o.String(), e.String(), ee.ExitCode(), nil
	}
	if err != nil {
		return o.String(), e.String(), -1, err
	}
	return o.String(), e.String(), 0, nil
}

// tryStatus runs `l2lb status --json`.
func (b *balancer) tryStatus() (control.Status, error) {
	var st control.Status
	out, errOut, code, err := b.cli("status", "--json")
	if err != nil {
		return st, err
	}
	if code != 0 {
		return st, fmt.Errorf("l2lb status --json exited %d: %s", code, errOut)
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return st, fmt.Errorf("parsing l2lb status --json: %v\n%s", err, out)
	}
	return st, nil
}

// status runs `l2lb status --json` and fails the test if it does not work.
func (b *balancer) status(t *testing.T) control.Status {
	t.Helper()
	st, err := b.tryStatus()
	if err != nil {
		t.Fatalf("%v\nlog:\n%s", err, b.LogText())
	}
	return st
}

// member returns the member with address addr of st, failing the test if
// there is none.
func member(t *testing.T, st control.Status, addr netip.Addr) control.Member {
	t.Helper()
	m, ok := st.FindMember(addr)
	if !ok {
		t.Fatalf("status lists no member %v: %+v", addr, st.Members)
	}
	return m
}

// nsHTTPClient returns an HTTP client whose connections are made inside h's
// namespace, so that it reaches the metrics listener on h's loopback.
func nsHTTPClient(h *testbed.Host) *http.Client {
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
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// httpGet fetches url from inside h's namespace.
func httpGet(h *testbed.Host, url string) ([]byte, http.Header, error) {
	resp, err := nsHTTPClient(h).Get(url)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return body, resp.Header, nil
}

// metrics scrapes /metrics and returns every sample keyed by its series, as
// written in the exposition format: `name{label="value",...}` or `name`.
func (b *balancer) metrics(t *testing.T) map[string]float64 {
	t.Helper()
	body, _, err := httpGet(f1(), "http://"+metricsAddr+"/metrics")
	if err != nil {
		t.Fatalf("scraping the metrics in %s: %v", f1().NS, err)
	}
	out, err := e2e.ParseMetrics(body)
	if err != nil {
		t.Fatalf("parsing the metrics: %v", err)
	}
	return out
}

// series names a sample with one label, as the exposition format writes it.
func series(name, label, value string) string {
	return fmt.Sprintf("%s{%s=%q}", name, label, value)
}

// served returns the answers each frontend's name servers have given so far.
func served() map[string]testbed.Served {
	out := map[string]testbed.Served{}
	for _, f := range suite.Bed.Frontends {
		out[f.Name] = f.Served()
	}
	return out
}

// frontendByName returns the frontend called name (f1, f2, ...).
func frontendByName(name string) *testbed.Host {
	for _, f := range suite.Bed.Frontends {
		if f.Name == name {
			return f
		}
	}
	return nil
}

// askOnce makes one NAME connection from s (with an explicit, never reused
// source port) to raddr and returns the local address and the answer.
func askOnce(s source, raddr netip.AddrPort) (netip.AddrPort, string, error) {
	local := netip.AddrPortFrom(s.Addr, uniquePort())
	c, err := s.Host.DialTCP(local, raddr, 5*time.Second)
	if err != nil {
		return local, "", err
	}
	defer c.Close()
	name, err := testbed.AskNameOver(c, 5*time.Second)
	if err != nil {
		return local, "", fmt.Errorf("%v -> %v: %w", local, raddr, err)
	}
	return local, name, nil
}

// download is a DOWNLOAD over the VIP read slowly until release is closed,
// so that the connection stays established as long as a test needs it,
// then at full speed; its outcome arrives on done.
type download struct {
	src     source
	local   netip.AddrPort
	size    int64
	release chan struct{}
	done    chan error // one value: nil when all bytes arrived with the right SHA-256
	read    atomic.Int64
	ended   atomic.Int64 // UnixNano of the end, once done has its value
}

// startDownload connects from s to raddr, asks for size bytes and starts
// reading; it returns once the first bytes have arrived.
func startDownload(s source, raddr netip.AddrPort, size int64) (*download, error) {
	d := &download{src: s, local: netip.AddrPortFrom(s.Addr, uniquePort()), size: size,
		release: make(chan struct{}), done: make(chan error, 1)}
	c, err := s.Host.DialTCP(d.local, raddr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	if _, err := fmt.Fprintf(c, "DOWNLOAD %d\n", size); err != nil {
		c.Close()
		return nil, err
	}
	first := make(chan struct{})
	go func() {
		defer c.Close()
		err := d.readAll(c, first)
		d.ended.Store(time.Now().UnixNano())
		d.done <- err
	}()
	select {
	case <-first:
		return d, nil
	case err := <-d.done:
		d.done <- err
		return nil, fmt.Errorf("download %v -> %v: %v", d.local, raddr, err)
	}
}

// slowChunk and slowPause set the slow reading rate (160 KB/s): the
// client's ACKs and window updates keep crossing the balancer while the
// server stays blocked on a full socket.
const (
	slowChunk = 16 << 10
	slowPause = 100 * time.Millisecond
)

func (d *download) readAll(c net.Conn, first chan struct{}) error {
	sum := sha256.New()
	buf := make([]byte, 64<<10)
	var n int64
	signalled := false
	for n < d.size+1 { // one byte more than asked for, to notice excess data
		slow := true
		select {
		case <-d.release:
			slow = false
		default:
		}
		want := len(buf)
		if slow {
			want = slowChunk
		}
		// Every read must make progress within the idle bound, as the
		// testbed's helpers require.
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		m, err := c.Read(buf[:want])
		sum.Write(buf[:m])
		n += int64(m)
		d.read.Store(n)
		if m > 0 && !signalled {
			signalled = true
			close(first)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", n, d.size, err)
		}
		if slow {
			select {
			case <-d.release:
			case <-time.After(slowPause):
			}
		}
	}
	if n != d.size {
		return fmt.Errorf("got %d bytes, want %d", n, d.size)
	}
	want := sha256.New()
	io.Copy(want, testbed.Stream(d.size))
	if !bytes.Equal(sum.Sum(nil), want.Sum(nil)) {
		return fmt.Errorf("sha256 of %d bytes is %x, want %x", n, sum.Sum(nil), want.Sum(nil))
	}
	return nil
}

// wait releases the download and waits up to timeout for its end.
func (d *download) finish(timeout time.Duration) error {
	select {
	case <-d.release:
	default:
		close(d.release)
	}
	select {
	case err := <-d.done:
		d.done <- err
		return err
	case <-time.After(timeout):
		return fmt.Errorf("download %v not finished %v after its release (%d of %d bytes)", d.local, timeout, d.read.Load(), d.size)
	}
}

// connsOf runs `l2lb conns` with args and returns the rows as
// client address -> state.
func (b *balancer) connsOf(t *testing.T, args ...string) map[string]string {
	t.Helper()
	out, errOut, code, err := b.cli(append([]string{"conns"}, args...)...)
	if err != nil || code != 0 {
		t.Fatalf("l2lb conns %v: exit %d, %v: %s", args, code, err, errOut)
	}
	rows := map[string]string{}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "pro") {
		t.Fatalf("l2lb conns: no header line in %q", out)
	}
	for _, l := range lines[1:] {
		// pro expire state source virtual destination (ipvsadm -Lnc columns)
		f := strings.Fields(l)
		if len(f) != 6 {
			t.Fatalf("l2lb conns: bad row %q", l)
		}
		rows[f[3]] = f[2]
	}
	return rows
}
