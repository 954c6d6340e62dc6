package healthcheck

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l2lb/l2lb/services"
)

// fakeNet answers probes from a table: per target address, per service
// name, whether the probe passes.
type fakeNet struct {
	mu   sync.Mutex
	up   map[string]bool // "target/service"
	runs int
}

func (f *fakeNet) set(target, svc string, ok bool) {
	f.mu.Lock()
	f.up[target+"/"+svc] = ok
	f.mu.Unlock()
}

func (f *fakeNet) spec(name string, port uint16, rise, fall int) Spec {
	c := services.Check{Kind: services.KindTCP, Interval: time.Second, Timeout: 500 * time.Millisecond, Rise: rise, Fall: fall}
	return Spec{
		Service: services.Service{Name: name, Port: port, Proto: "tcp", Check: c},
		Addr:    netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), port),
		Probe: func(_ context.Context, d Dialer, _ netip.AddrPort, _ services.Check) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.runs++
			if f.up[d.(*nsDialerStub).name+"/"+name] {
				return nil
			}
			return ErrExchange
		},
	}
}

// nsDialerStub is a Dialer that only carries a name for the fake probes.
type nsDialerStub struct {
	Dialer
	name string
}

func TestMonitorSteps(t *testing.T) {
	f := &fakeNet{up: map[string]bool{}}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil))
	m, err := NewMonitor(Config{
		Specs:    []Spec{f.spec("smtp", 25, 2, 2), f.spec("imap", 143, 1, 3)},
		Quorum:   2,
		Logger:   log,
		NoJitter: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	a, b := netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("192.0.2.12")
	for _, tg := range []string{"a", "b"} {
		f.set(tg, "smtp", true)
		f.set(tg, "imap", true)
	}
	m.SetTargets(map[netip.Addr]Dialer{a: &nsDialerStub{name: "a"}, b: &nsDialerStub{name: "b"}})
	<-m.Changes()
	ctx := context.Background()
	t0 := time.Unix(1000, 0)
	step := func(i int) { m.RunOnce(ctx, t0.Add(time.Duration(i)*time.Second)) }

	if m.Healthy(a) || m.Healthy(b) {
		t.Fatal("new targets start healthy")
	}
	if strings.Contains(logs.String(), "quorum") {
		t.Fatalf("quorum alarm while targets warm up:\n%s", logs.String())
	}
	step(0) // imap rise 1: healthy; smtp 1 of 2
	if m.Healthy(a) {
		t.Fatal("healthy after one smtp success with rise 2")
	}
	step(0) // same instant: nothing due
	if f.runs != 4 {
		t.Fatalf("%d probes, want 4 (nothing due twice at one instant)", f.runs)
	}
	step(1)
	if !m.Healthy(a) || !m.Healthy(b) {
		t.Fatalf("not healthy after rise: %+v", m.Status())
	}
	select {
	case <-m.Changes():
	default:
		t.Fatal("no change notification")
	}

	// b's smtp fails: fall 2 takes two probes, then b and the quorum go.
	f.set("b", "smtp", false)
	step(2)
	if !m.Healthy(b) {
		t.Fatal("unhealthy after one failure with fall 2")
	}
	step(3)
	if m.Healthy(b) || !m.Healthy(a) {
		t.Fatalf("after fall: a %v b %v", m.Healthy(a), m.Healthy(b))
	}
	st := m.Status()
	if len(st) != 2 || st[1].Addr != b || st[1].Services[0].Healthy || !errors.Is(st[1].Services[0].LastErr, ErrExchange) ||
		!st[1].Services[0].Since.Equal(t0.Add(3*time.Second)) || !st[1].Services[1].Healthy || st[1].Services[0].Probes != 4 {
		t.Fatalf("status: %+v", st)
	}
	if h, q, ok := m.Quorum(); h != 1 || q != 2 || ok {
		t.Fatalf("quorum %d/%d %v", h, q, ok)
	}
	if n := strings.Count(logs.String(), "level=ERROR msg=\"fewer healthy frontends"); n != 1 {
		t.Fatalf("%d quorum errors, want 1:\n%s", n, logs.String())
	}
	step(4) // still below, not yet QuorumRepeat (1 min) later: no repeat
	step(64)
	if n := strings.Count(logs.String(), "fewer healthy frontends"); n != 2 {
		t.Fatalf("%d quorum errors after a minute, want 2", n)
	}

	// The standby view: a fresh monitor adopts the snapshot.
	snap := m.Snapshot()
	enc, err := snap.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var dec Snapshot
	if err := dec.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	m2, _ := NewMonitor(Config{Specs: []Spec{f.spec("smtp", 25, 2, 2), f.spec("imap", 143, 1, 3)}, NoJitter: true})
	m2.SetTargets(map[netip.Addr]Dialer{a: &nsDialerStub{name: "a"}, b: &nsDialerStub{name: "b"}})
	m2.Restore(dec)
	if !m2.Healthy(a) || m2.Healthy(b) {
		t.Fatalf("restored view: a %v b %v", m2.Healthy(a), m2.Healthy(b))
	}
	if got := m2.Snapshot(); !equalSnap(got, snap) {
		t.Fatalf("restored snapshot %+v, want %+v", got, snap)
	}

	// Recovery is logged once; replacing the targets keeps a's state and
	// drops b.
	f.set("b", "smtp", true)
	step(65)
	step(66)
	if !m.Healthy(b) || strings.Count(logs.String(), "back at quorum") != 1 {
		t.Fatalf("no recovery: %v\n%s", m.Healthy(b), logs.String())
	}
	c := netip.MustParseAddr("192.0.2.13")
	m.SetTargets(map[netip.Addr]Dialer{a: &nsDialerStub{name: "a"}, c: &nsDialerStub{name: "c"}})
	if !m.Healthy(a) || m.Healthy(c) || m.Healthy(b) {
		t.Fatalf("after SetTargets: a %v b %v c %v", m.Healthy(a), m.Healthy(b), m.Healthy(c))
	}
	if got := len(m.Snapshot().Targets); got != 2 {
		t.Fatalf("%d targets in snapshot", got)
	}
}

func equalSnap(a, b Snapshot) bool {
	x, _ := a.MarshalBinary()
	y, _ := b.MarshalBinary()
	return bytes.Equal(x, y)
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func TestMonitorNoChecks(t *testing.T) {
	m, err := NewMonitor(Config{})
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr("192.0.2.11")
	m.SetTargets(map[netip.Addr]Dialer{a: nil})
	if !m.Healthy(a) {
		t.Fatal("a target with nothing to check is not healthy")
	}
}

func TestNewMonitorRejects(t *testing.T) {
	f := &fakeNet{up: map[string]bool{}}
	bad := f.spec("x", 1, 0, 1)
	if _, err := NewMonitor(Config{Specs: []Spec{bad}}); !errors.Is(err, ErrBadThreshold) {
		t.Errorf("rise 0: %v", err)
	}
	noAddr := f.spec("x", 1, 1, 1)
	noAddr.Addr = netip.AddrPort{}
	if _, err := NewMonitor(Config{Specs: []Spec{noAddr}}); !errors.Is(err, ErrNoVIP) {
		t.Errorf("no address: %v", err)
	}
	kind := f.spec("x", 1, 1, 1)
	kind.Probe, kind.Service.Check.Kind = nil, "ftp"
	if _, err := NewMonitor(Config{Specs: []Spec{kind}}); !errors.Is(err, ErrUnknownKind) {
		t.Errorf("unknown kind: %v", err)
	}
}

func TestSpecsFor(t *testing.T) {
	f, err := services.Parse(strings.NewReader(`probe-source 192.0.2.250
service smtp 25/tcp
  check smtp
service sip 5060/udp
  check sip
service pinned 143/tcp
  check imap
  vip 192.0.2.99
service nocheck 80/tcp
`), "t.conf")
	if err != nil {
		t.Fatal(err)
	}
	specs, err := SpecsFor(f, netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"192.0.2.10:25", "192.0.2.10:5060", "192.0.2.99:143"}
	if len(specs) != len(want) {
		t.Fatalf("%d specs", len(specs))
	}
	for i, s := range specs {
		if s.Addr.String() != want[i] || s.Probe == nil {
			t.Errorf("spec %d: %v", i, s.Addr)
		}
	}
	// Only an IPv6 VIP but no IPv6 probe source: nothing to probe.
	if _, err := SpecsFor(f, netip.Addr{}, netip.MustParseAddr("2001:db8::10")); !errors.Is(err, ErrNoVIP) || !strings.HasPrefix(err.Error(), "t.conf:2:") {
		t.Errorf("no usable VIP: %v", err)
	}
}

func TestRunRealTime(t *testing.T) {
	f := &fakeNet{up: map[string]bool{"a/smtp": true}}
	sp := f.spec("smtp", 25, 1, 1)
	sp.Service.Check.Interval, sp.Service.Check.Timeout = 20*time.Millisecond, 10*time.Millisecond
	m, err := NewMonitor(Config{Specs: []Spec{sp}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	a := netip.MustParseAddr("192.0.2.11")
	m.SetTargets(map[netip.Addr]Dialer{a: &nsDialerStub{name: "a"}}) // after Run started: wakes it
	if !waitFor(5*time.Second, func() bool { return m.Healthy(a) }) {
		t.Fatal("Run never made the target healthy")
	}
	f.set("a", "smtp", false)
	if !waitFor(5*time.Second, func() bool { return !m.Healthy(a) }) {
		t.Fatal("Run never noticed the failure")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
}
