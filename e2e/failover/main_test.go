// Package failover holds the acceptance tests of issue 4: three standalone
// l2lb nodes (`l2lb run --peers ...`) on a namespace testbed
// (internal/testbed), each both balancer-capable and a frontend, with long-lived
// TCP connections streaming both ways through the VIP and persistent clients
// opening new connections all along, through a planned hand-over, a crash, a
// restart, a partition and injected sync messages; and issue 12's failover with IPv6 VIPs
// (ipv6_test.go: the same, dual stack, over the IPv6 VIP).
package failover

import (
	"bufio"
	"encoding/json"
	"fmt"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/testbed"
)

// suite is what TestMain prepared: the binary and the prerequisites.
var suite e2e.Suite

// Ports the frontends serve on the VIP.
const (
	namePort = 80   // testbed name server: one answer per connection
	echoPort = 7000 // echo server for the long-lived streams
)

// membershipPort is memberlist's customary port, which `l2lb run` binds by
// default (election.DefaultPort).
const membershipPort = 7946

// Node priorities: f1 is active first.
var priorities = map[string]int{"f1": 200, "f2": 150, "f3": 100}

func TestMain(m *testing.M) {
	os.Exit(suite.Run(m, e2e.SuiteOptions{Name: "e2e/failover", Tools: []string{"ip"}}))
}

// newBed fails (CI=true) or skips when namespaces cannot be built, and
// otherwise returns a bed that is removed when the test ends.
func newBed(t *testing.T) *testbed.Bed {
	t.Helper()
	return suite.NewBed(t, "the failover tests", testbed.Options{Frontends: 3, Clients: 2})
}

// snapshot is the status l2lb writes with --stats-file (the schema of `l2lb status --json`),
// with the fields these tests read most.
type snapshot struct {
	control.Status
	Active           bool `json:"-"`
	Flows, Templates int  `json:"-"`
}

// logLine is one line of a node's standard error and when it was read.
type logLine struct {
	at   time.Time
	text string
}

// node is one `l2lb run --peers` process on a frontend; a restart replaces
// the process but keeps the node.
type node struct {
	t         *testing.T
	host      *testbed.Host
	args      []string
	statsPath string

	mu      sync.Mutex
	log     []logLine // lines of the current process
	oldLogs []logLine // lines of earlier processes
	cmd     *exec.Cmd
	done    chan struct{} // closed when the current process has been reaped
	waitErr error         // valid after done
}

// cluster is the three nodes and what they share.
type cluster struct {
	t     *testing.T
	bed   *testbed.Bed
	nodes []*node // f1, f2, f3
}

// startCluster starts l2lb on every frontend with extra flags, waits for each
// to report ready on its control socket and for exactly one node (f1, the highest priority) to be
// active.
func startCluster(t *testing.T, bed *testbed.Bed, extra ...string) *cluster {
	t.Helper()
	return startClusterVIPs(t, bed, bed.VIPs[:1], extra...)
}

// startClusterVIPs is startCluster with the VIP file listing vips (of either family).
func startClusterVIPs(t *testing.T, bed *testbed.Bed, vips []netip.Addr, extra ...string) *cluster {
	t.Helper()
	c := newClusterVIPs(t, bed, vips, extra...)
	// f1 first, until it holds the role: nodes started together may elect
	// among themselves before f1's membership reaches them, and without
	// --preempt f1 would then stay a standby.
	f1 := c.nodes[0]
	f1.start()
	f1.waitReady(10 * time.Second)
	if _, _, ok := c.waitRoleActive(time.Time{}, 5*time.Second, ""); !ok {
		t.Fatalf("f1 did not take the active role within 5 s of starting alone\nlog:\n%s", f1.logText(50))
	}
	for _, n := range c.nodes[1:] {
		n.start()
	}
	for _, n := range c.nodes[1:] {
		n.waitReady(10 * time.Second)
	}
	if got := c.waitSingleActive(10*time.Second, time.Second); got != "f1" {
		t.Fatalf("after start the active node is %q, want f1 (highest priority)", got)
	}
	return c
}

// newCluster prepares a node on every frontend (the VIP file, each node's flags with extra at
// the end, its stats file and its control socket at <stats file>.sock) and stops them all when
// the test ends; it starts none.
func newCluster(t *testing.T, bed *testbed.Bed, extra ...string) *cluster {
	t.Helper()
	return newClusterVIPs(t, bed, bed.VIPs[:1], extra...)
}

// newClusterVIPs is newCluster with the VIP file listing vips, one a line.
func newClusterVIPs(t *testing.T, bed *testbed.Bed, vips []netip.Addr, extra ...string) *cluster {
	t.Helper()
	dir := t.TempDir()
	vipFile := filepath.Join(dir, "vipaddrs")
	text := "# failover e2e VIPs (seed step 4 format)\n"
	for _, v := range vips {
		text += v.String() + "\n"
	}
	if err := os.WriteFile(vipFile, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	var peers []string
	for _, f := range bed.Frontends {
		peers = append(peers, netip.AddrPortFrom(f.Addr, membershipPort).String())
	}
	c := &cluster{t: t, bed: bed}
	for _, f := range bed.Frontends {
		n := &node{t: t, host: f, statsPath: filepath.Join(dir, f.Name+".json")}
		n.args = append([]string{"run", "-i", "eth0", "-f", vipFile, "-p", "60",
			"--peers", strings.Join(peers, ","), "--priority", fmt.Sprint(priorities[f.Name]),
			"--stats-file", n.statsPath, "--control", n.statsPath + ".sock"}, extra...)
		c.nodes = append(c.nodes, n)
	}
	// Clean-ups run last-registered first: stop the nodes before the bed goes.
	t.Cleanup(func() {
		for _, n := range c.nodes {
			n.stop()
		}
		if t.Failed() {
			for _, n := range c.nodes {
				t.Logf("%s log:\n%s", n.host.Name, n.logText(120))
			}
		}
	})
	return c
}

func (c *cluster) node(name string) *node {
	for _, n := range c.nodes {
		if n.host.Name == name {
			return n
		}
	}
	c.t.Fatalf("no node %s", name)
	return nil
}

// start runs l2lb in the node's namespace; waitReady waits until its control socket reports
// it ready.
func (n *node) start() {
	n.t.Helper()
	n.mu.Lock()
	n.oldLogs = append(n.oldLogs, n.log...)
	n.log = nil
	n.mu.Unlock()
	os.Remove(n.statsPath) // a restarted node must not be judged by its predecessor's file
	cmd := n.host.Command(suite.Bin, n.args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Logf("%s: starting l2lb %s", n.host.Name, strings.Join(n.args, " "))
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("%s: starting l2lb: %v", n.host.Name, err)
	}
	done := make(chan struct{})
	n.mu.Lock()
	n.cmd, n.done = cmd, done
	n.mu.Unlock()
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			n.mu.Lock()
			if n.cmd == cmd {
				n.log = append(n.log, logLine{time.Now(), sc.Text()})
			}
			n.mu.Unlock()
		}
	}()
	go func() {
		<-logDone // Wait closes the pipe: read it to the end first (os/exec)
		err := cmd.Wait()
		n.mu.Lock()
		if n.cmd == cmd {
			n.waitErr = err
		}
		n.mu.Unlock()
		close(done)
	}()
}

func (n *node) waitReady(limit time.Duration) {
	n.t.Helper()
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	if err := e2e.WaitReady(n.statsPath+".sock", limit, done); err != nil {
		n.t.Fatalf("%s: %v: %v\nlog:\n%s", n.host.Name, err, n.err(), n.logText(50))
	}
}

func (n *node) running() bool {
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

func (n *node) err() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.waitErr
}

// signal sends sig to the l2lb process. `ip netns exec` execs the program
// in place (it does not fork), so the child's pid is l2lb's.
func (n *node) signal(sig syscall.Signal) time.Time {
	n.t.Helper()
	n.mu.Lock()
	cmd := n.cmd
	n.mu.Unlock()
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid))
	if got := strings.TrimSpace(string(comm)); got != "l2lb" {
		n.t.Fatalf("%s: pid %d is %q, not l2lb", n.host.Name, cmd.Process.Pid, got)
	}
	at := time.Now()
	if err := cmd.Process.Signal(sig); err != nil {
		n.t.Fatalf("%s: %v to l2lb: %v", n.host.Name, sig, err)
	}
	return at
}

// waitExit waits for the current process to be reaped.
func (n *node) waitExit(limit time.Duration) bool {
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	select {
	case <-done:
		return true
	case <-time.After(limit):
		return false
	}
}

// stop ends a still running process with SIGTERM (SIGKILL after 10 s).
func (n *node) stop() {
	if !n.running() {
		return
	}
	n.mu.Lock()
	cmd := n.cmd
	n.mu.Unlock()
	cmd.Process.Signal(syscall.SIGTERM)
	if !n.waitExit(10 * time.Second) {
		cmd.Process.Kill()
		n.waitExit(5 * time.Second)
		n.t.Errorf("%s: l2lb still running 10 s after SIGTERM; killed", n.host.Name)
	}
	if race := e2e.RaceReport(n.logText(1 << 20)); race != "" {
		n.t.Errorf("%s: the race detector reported in l2lb:\n%s", n.host.Name, race)
	}
}

// findLog returns the first line of the current process at or after since
// that contains every one of subs.
func (n *node) findLog(since time.Time, subs ...string) (logLine, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
next:
	for _, l := range n.log {
		if l.at.Before(since) {
			continue
		}
		for _, s := range subs {
			if !strings.Contains(l.text, s) {
				continue next
			}
		}
		return l, true
	}
	return logLine{}, false
}

// logText returns the last max lines of every process of the node.
func (n *node) logText(max int) string {
	n.mu.Lock()
	lines := append(append([]logLine(nil), n.oldLogs...), n.log...)
	n.mu.Unlock()
	if len(lines) > max {
		lines = lines[len(lines)-max:]
	}
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "%s %s\n", l.at.Format("15:04:05.000"), l.text)
	}
	return b.String()
}

// stats reads the node's stats file.
func (n *node) stats() (snapshot, error) {
	var s snapshot
	b, err := os.ReadFile(n.statsPath)
	if err != nil {
		return s, err
	}
	err = json.Unmarshal(b, &s.Status)
	s.Active, s.Flows, s.Templates = s.Role == control.RoleActive, s.Table.Flows, s.Table.Templates
	return s, err
}

// roleActive is what the node logs when it takes the active role.
var roleActive = []string{`msg="role change"`, "active=true"}

// waitRoleActive waits until some node other than except logs taking the
// active role at or after since; it returns the node and when the line was
// read.
func (c *cluster) waitRoleActive(since time.Time, limit time.Duration, except string) (*node, time.Time, bool) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		var best *node
		var at time.Time
		for _, n := range c.nodes {
			if n.host.Name == except {
				continue
			}
			if l, ok := n.findLog(since, roleActive...); ok && (best == nil || l.at.Before(at)) {
				best, at = n, l.at
			}
		}
		if best != nil {
			return best, at, true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil, time.Time{}, false
}

// activeNodes reads every running node's stats file (written once a second)
// and returns the names of those reporting "active": true.
func (c *cluster) activeNodes() ([]string, error) {
	var act []string
	for _, n := range c.nodes {
		if !n.running() {
			continue
		}
		s, err := n.stats()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n.host.Name, err)
		}
		if time.Since(s.Time) > 3*time.Second {
			return nil, fmt.Errorf("%s: stats file is %v old", n.host.Name, time.Since(s.Time).Round(time.Millisecond))
		}
		if s.Active {
			act = append(act, n.host.Name)
		}
	}
	return act, nil
}

// waitSingleActive waits until exactly one running node reports active,
// continuously for stable, and returns its name ("" and a test error if that
// does not happen within limit).
func (c *cluster) waitSingleActive(limit, stable time.Duration) string {
	c.t.Helper()
	deadline := time.Now().Add(limit)
	var last []string
	var lastErr error
	var since time.Time
	cur := ""
	for time.Now().Before(deadline) {
		act, err := c.activeNodes()
		last, lastErr = act, err
		if err == nil && len(act) == 1 {
			if act[0] != cur {
				cur, since = act[0], time.Now()
			}
			if time.Since(since) >= stable {
				return cur
			}
		} else {
			cur = ""
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Errorf("no single active node for %v within %v: last active set %v (err %v)", stable, limit, last, lastErr)
	return ""
}

// waitSynced waits until every standby's table holds at least want flows
// (the streams, replicated by the active node).
func (c *cluster) waitSynced(want int, limit time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok := true
		var got []string
		for _, n := range c.nodes {
			s, err := n.stats()
			got = append(got, fmt.Sprintf("%s:%d", n.host.Name, s.Flows))
			if err != nil || s.Flows < want {
				ok = false
			}
		}
		if ok {
			c.t.Logf("flow tables synced: %v", got)
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("flow tables not synced within %v: flows %v, want >= %d each", limit, got, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ctlPath is the node's control socket.
func (n *node) ctlPath() string { return n.statsPath + ".sock" }

// cli runs an l2lb client command (status, weight, ...) against the node's control socket and
// returns its standard output; it fails the test unless the command exits 0. The socket is a
// path in the file system, so the client needs no namespace.
func (n *node) cli(args ...string) string {
	n.t.Helper()
	args = append([]string{args[0], "--control", n.ctlPath()}, args[1:]...)
	var o, e strings.Builder
	cmd := exec.Command(suite.Bin, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		n.t.Fatalf("%s: l2lb %s: %v: %s\nlog:\n%s", n.host.Name, strings.Join(args, " "), err, e.String(), n.logText(50))
	}
	return o.String()
}

// status runs `l2lb status --json` against the node.
func (n *node) status() control.Status {
	n.t.Helper()
	var st control.Status
	out := n.cli("status", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		n.t.Fatalf("%s: parsing l2lb status --json: %v\n%s", n.host.Name, err, out)
	}
	return st
}

// waitStatus polls the node's `l2lb status --json` every 100 ms until ok accepts it and returns
// it; after limit it fails the test with why, ok's explanation of the last status.
func (n *node) waitStatus(limit time.Duration, ok func(control.Status) (bool, string)) control.Status {
	n.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		st := n.status()
		good, why := ok(st)
		if good {
			return st
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s: not within %v: %s\nmembers: %+v\nproblems: %q", n.host.Name, limit, why, st.Members, st.Problems)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
