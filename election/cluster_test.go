package election

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// lineLog collects log records, as slog's text handler writes them, from
// memberlist goroutines, which may outlive a test's own goroutine.
type lineLog struct {
	mu    sync.Mutex
	lines []string
}

// Write stores one record (the text handler writes each in one call).
func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.lines = append(l.lines, string(p))
	l.mu.Unlock()
	return len(p), nil
}

// logger returns a logger that writes every record, Debug included, to l.
func (l *lineLog) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testLogger returns a logger that writes every record, Debug included, to
// the test's log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func (l *lineLog) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, x := range l.lines {
		if strings.Contains(x, s) {
			return true
		}
	}
	return false
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

func clusterMeta(i int) NodeMeta {
	return NodeMeta{
		Addr:     netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}),
		MAC:      net.HardwareAddr{0x02, 0, 0, 0, 0, byte(i)},
		PortLo:   uint16(50000 + 5000*i),
		PortHi:   uint16(54000 + 5000*i),
		Weight:   100,
		Priority: uint8(i),
		Healthy:  true,
		Capable:  true,
	}
}

// aliveSet returns the names of alive members in c's view.
func aliveSet(c *Cluster) map[string]Member {
	out := map[string]Member{}
	for _, m := range c.View().Members {
		if m.Alive {
			out[m.Name] = m
		}
	}
	return out
}

func startCluster(t *testing.T, n int, logs *lineLog) []*Cluster {
	t.Helper()
	// Unique names so that parallel test binaries never merge groups.
	prefix := fmt.Sprintf("t%d-%d-", os.Getpid(), time.Now().UnixNano()%1e6)
	var cs []*Cluster
	var seed []string
	for i := range n {
		c, err := Join(ClusterConfig{
			Name:  fmt.Sprintf("%sn%d", prefix, i),
			Bind:  netip.MustParseAddrPort("127.0.0.1:0"),
			Peers: seed,
			Meta:  clusterMeta(i),
			Log:   logs.logger(),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Shutdown() })
		cs = append(cs, c)
		seed = []string{c.LocalAddr().String()}
	}
	return cs
}

func TestClusterMembership(t *testing.T) {
	logs := &lineLog{}
	cs := startCluster(t, 3, logs)
	for _, c := range cs {
		waitFor(t, c.cfg.Name+" sees 3 members", 5*time.Second, func() bool { return len(aliveSet(c)) == 3 })
	}
	for _, c := range cs {
		for i, o := range cs {
			got := aliveSet(c)[o.cfg.Name]
			want := clusterMeta(i)
			want.Name = o.cfg.Name
			if !reflect.DeepEqual(got.NodeMeta, want) {
				t.Fatalf("%s sees %s as %+v, want %+v", c.cfg.Name, o.cfg.Name, got.NodeMeta, want)
			}
		}
	}

	// UpdateMeta propagates, and Updated fires.
	m := clusterMeta(1)
	m.Active = []netip.Addr{netip.MustParseAddr("198.51.100.7")}
	m.Healthy = false
	drain(cs[0].Updated())
	if err := cs[1].UpdateMeta(m); err != nil {
		t.Fatal(err)
	}
	d := waitFor(t, "metadata update", 2*time.Second, func() bool {
		got := aliveSet(cs[0])[cs[1].cfg.Name]
		return !got.Healthy && len(got.Active) == 1
	})
	t.Logf("metadata update seen after %s", d)
	select {
	case <-cs[0].Updated():
	default:
		t.Fatal("Updated not signalled")
	}

	// Crash (no leave): the others must see it dead within 2 s.
	crashed := cs[2].cfg.Name
	start := time.Now()
	if err := cs[2].Shutdown(); err != nil {
		t.Fatal(err)
	}
	for _, c := range cs[:2] {
		waitFor(t, "crash detection", 2*time.Second-time.Since(start), func() bool {
			_, ok := aliveSet(c)[crashed]
			return !ok
		})
	}
	t.Logf("crash of one of 3 nodes detected by both others after %s (computed bound %s)",
		time.Since(start), DetectionBound(3, DefaultProbeInterval))
	if v := cs[0].View(); len(v.Members) != 3 {
		t.Fatalf("dead member dropped from the view: %+v", v.Members)
	}

	// Leave: announced, so it is seen at once rather than after probing.
	left := cs[1].cfg.Name
	start = time.Now()
	if err := cs[1].Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "leave", time.Second, func() bool {
		_, ok := aliveSet(cs[0])[left]
		return !ok
	})
	t.Logf("Leave returned and was seen after %s", time.Since(start))
	if err := cs[1].UpdateMeta(m); !errors.Is(err, ErrClosed) {
		t.Fatalf("UpdateMeta after Leave: %v", err)
	}
	if !logs.contains("memberlist") {
		t.Fatal("memberlist's log was not routed to Log")
	}
}

func TestClusterRejoinAndKey(t *testing.T) {
	key := []byte("0123456789abcdef")
	logs := &lineLog{}
	prefix := fmt.Sprintf("k%d-%d-", os.Getpid(), time.Now().UnixNano()%1e6)
	// Reserve a port for the second node, which starts after the first
	// already tries to reach it: the rejoin loop must bring them together.
	ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := netip.MustParseAddrPort(ln.LocalAddr().String())
	ln.Close()
	a, err := Join(ClusterConfig{
		Name: prefix + "a", Bind: netip.MustParseAddrPort("127.0.0.1:0"),
		Peers: []string{port.String()}, Meta: clusterMeta(0), Log: logs.logger(),
		SecretKey: key, rejoinInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Shutdown() })
	b, err := Join(ClusterConfig{
		Name: prefix + "b", Bind: port, Meta: clusterMeta(1), Log: logs.logger(), SecretKey: key,
	})
	if err != nil {
		// Not a missing prerequisite: another process took the port between reserving and
		// binding it, which no retry here can undo.
		t.Skipf("reserved port %s was taken meanwhile: %v", port, err)
	}
	t.Cleanup(func() { _ = b.Shutdown() })
	d := waitFor(t, "rejoin", 5*time.Second, func() bool { return len(aliveSet(b)) == 2 && len(aliveSet(a)) == 2 })
	t.Logf("late peer merged by the rejoin loop after %s", d)
	if !logs.contains("joining") {
		t.Fatal("the failed initial join was not logged")
	}
}

// The rejoin loop runs while memberlist applies a member's metadata updates
// (each one an alive message that rewrites memberlist's record of the node):
// under -race this shows the loop never reads memberlist's node records
// outside memberlist's lock.
func TestRejoinDuringUpdates(t *testing.T) {
	prefix := fmt.Sprintf("u%d-%d-", os.Getpid(), time.Now().UnixNano()%1e6)
	b, err := Join(ClusterConfig{Name: prefix + "b", Bind: netip.MustParseAddrPort("127.0.0.1:0"), Meta: clusterMeta(1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown() })
	// Every round of a's rejoin loop looks at the membership, also when no
	// peer is missing.
	a, err := Join(ClusterConfig{
		Name: prefix + "a", Bind: netip.MustParseAddrPort("127.0.0.1:0"), Meta: clusterMeta(0),
		Peers: []string{b.LocalAddr().String()}, rejoinInterval: time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Shutdown() })
	waitFor(t, "join", 5*time.Second, func() bool { return len(aliveSet(a)) == 2 })
	m := clusterMeta(1)
	for i := range 10 {
		m.Weight = uint32(100 + i)
		_ = b.UpdateMeta(m)
	}
	// Gossip, or at the latest the next push/pull (every 5 s), brings it.
	waitFor(t, "last update", 10*time.Second, func() bool { return aliveSet(a)[prefix+"b"].Weight == m.Weight })
}

func TestJoinConfigErrors(t *testing.T) {
	if _, err := Join(ClusterConfig{Bind: netip.MustParseAddrPort("127.0.0.1:0")}); !errors.Is(err, ErrNoName) {
		t.Fatalf("no name: %v", err)
	}
	if _, err := Join(ClusterConfig{Name: "x"}); !errors.Is(err, ErrBadBind) {
		t.Fatalf("no bind: %v", err)
	}
	bad := clusterMeta(0)
	bad.PortLo, bad.PortHi = 9, 1
	if _, err := Join(ClusterConfig{Name: "x", Bind: netip.MustParseAddrPort("127.0.0.1:0"), Meta: bad}); !errors.Is(err, ErrMetaInvalid) {
		t.Fatalf("bad meta: %v", err)
	}
}

func TestDetectionBound(t *testing.T) {
	for n, want := range map[int]time.Duration{3: 1300 * time.Millisecond, 4: 1700 * time.Millisecond} {
		if got := DetectionBound(n, DefaultProbeInterval); got != want {
			t.Errorf("DetectionBound(%d) = %s, want %s", n, got, want)
		}
		if DetectionBound(n, DefaultProbeInterval) >= 2*time.Second {
			t.Errorf("bound for %d nodes exceeds the 2 s failover budget", n)
		}
	}
}

func drain(ch <-chan struct{}) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// TestWireNameIsNotAnAddress: memberlist carries the node's name with namePrefix, so a name that
// is a bare IP address (l2lb's default) never matches memberlist's lookup by address, which reads
// a node record outside memberlist's lock (see namePrefix); the view shows the name unchanged.
func TestWireNameIsNotAnAddress(t *testing.T) {
	a, err := Join(ClusterConfig{Name: "127.0.0.1", Bind: netip.MustParseAddrPort("127.0.0.1:0"), Meta: clusterMeta(0)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown()
	if got := a.ml.LocalNode().Name; got != "l2lb/127.0.0.1" {
		t.Fatalf("memberlist name %q, want the prefixed l2lb/127.0.0.1", got)
	}
	b, err := Join(ClusterConfig{Name: "127.0.0.2", Bind: netip.MustParseAddrPort("127.0.0.1:0"), Meta: clusterMeta(1),
		Peers: []string{a.LocalAddr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown()
	waitFor(t, "a to see b", 5*time.Second, func() bool { _, ok := aliveSet(a)["127.0.0.2"]; return ok })
	if m := aliveSet(a)["127.0.0.2"]; m.Name != "127.0.0.2" {
		t.Errorf("a sees b as %q", m.Name)
	}
}
