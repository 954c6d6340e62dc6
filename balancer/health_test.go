package balancer

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dsrprobe"
	"github.com/l2lb/l2lb/healthcheck"
	"github.com/l2lb/l2lb/services"
)

// fakeProbe is a ProbeStack whose dialers succeed for the MACs marked up and fail otherwise.
type fakeProbe struct {
	mu     sync.Mutex
	up     map[string]bool
	opened int
	closed int
	cfg    dsrprobe.Config
}

func (f *fakeProbe) open(cfg dsrprobe.Config) (ProbeStack, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.opened++
	f.cfg = cfg
	return f, nil
}

func (f *fakeProbe) set(mac net.HardwareAddr, up bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.up[mac.String()] = up
}

func (f *fakeProbe) Dialer(mac net.HardwareAddr) healthcheck.Dialer {
	return fakeDialer{f, mac.String()}
}

func (f *fakeProbe) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed++
	return nil
}

type fakeDialer struct {
	f   *fakeProbe
	mac string
}

func (d fakeDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d.f.mu.Lock()
	up := d.f.up[d.mac]
	d.f.mu.Unlock()
	if !up {
		return nil, errors.New("connection refused (fake)")
	}
	c, s := net.Pipe()
	go s.Close()
	return c, nil
}

func servicesFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "services")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const tcpCheck = "probe-source 192.0.2.250\nservice smtp 25/tcp\n  check tcp\n  interval 20ms\n  timeout 15ms\n  rise 1\n  fall 1\n"

// TestHealthChecksGateMembers: with a services file, the active balancer probes its members
// through the probe stack (opened with the virtual MAC and the probe source); a member failing
// its check gets weight 0 and shows the failing check; it comes back when the check passes.
func TestHealthChecksGateMembers(t *testing.T) {
	fp := &fakeProbe{up: map[string]bool{}}
	b, _ := newTest(t, writeFile(t, "192.0.2.200\n"), func(c *Config) {
		c.ServicesFile = servicesFile(t, tcpCheck)
		c.OpenProbe = fp.open
	})
	if err := b.SetMembers([]Member{{Addr: peer2, Weight: 100}, {Addr: peer3, Weight: 100}}); err != nil {
		t.Fatal(err)
	}
	start(t, b)
	mac2, mac3 := ownMAC(t, b, peer2, 2), ownMAC(t, b, peer3, 3)
	fp.set(mac2, true)
	fp.set(mac3, true)
	if err := b.SetRole(RoleActive); err != nil {
		t.Fatal(err)
	}
	healthyIs := func(a netip.Addr, want bool) func() bool {
		return func() bool {
			m, ok := member(b.Status(), a)
			return ok && m.Healthy == want && len(m.Checks) == 1 && m.Checks[0].Healthy == want && (m.Weight > 0) == want
		}
	}
	waitFor(t, "both members healthy", func() bool { return healthyIs(peer2, true)() && healthyIs(peer3, true)() })
	fp.mu.Lock()
	cfg := fp.cfg
	fp.mu.Unlock()
	if cfg.MAC.String() != vmac.String() || cfg.Source4 != netip.MustParseAddr("192.0.2.250") || cfg.Interface != "lo" {
		t.Errorf("probe stack opened with %+v, want the virtual MAC, the probe source and the interface", cfg)
	}
	fp.set(mac3, false)
	waitFor(t, "peer3 unhealthy at weight 0", healthyIs(peer3, false))
	m, _ := member(b.Status(), peer3)
	if !strings.Contains(m.Checks[0].Error, "refused") || m.Checks[0].Service != "smtp" {
		t.Errorf("failing check %+v, want the smtp check with the dial error", m.Checks[0])
	}
	if st := b.Status(); len(st.Members) != 2 {
		t.Fatalf("members %+v", st.Members)
	}
	fp.set(mac3, true)
	waitFor(t, "peer3 healthy again", healthyIs(peer3, true))
	// Standby: the probing stops and the stack is closed.
	if err := b.SetRole(RoleStandby); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the probe stack closed", func() bool { fp.mu.Lock(); defer fp.mu.Unlock(); return fp.closed == fp.opened })
}

// TestHealthHelperModeLeavingOnly: in helper mode CGP's list is the authority for listed members,
// but a leaving member whose checks fail is let go.
func TestHealthHelperModeLeavingOnly(t *testing.T) {
	fp := &fakeProbe{up: map[string]bool{}}
	b, _ := newTest(t, writeFile(t, "192.0.2.200\n"), func(c *Config) {
		c.Mode = control.ModeHelper
		c.ServicesFile = servicesFile(t, tcpCheck)
		c.OpenProbe = fp.open
	})
	if err := b.SetMembers([]Member{{Addr: peer2, Weight: 100}, {Addr: peer3, Weight: 100}}); err != nil {
		t.Fatal(err)
	}
	start(t, b)
	ownMAC(t, b, peer2, 2)
	mac3 := ownMAC(t, b, peer3, 3)
	fp.set(mac3, true)
	if err := b.SetRole(RoleActive); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "peer3's check passing and peer2's failing", func() bool {
		m2, _ := member(b.Status(), peer2)
		m3, _ := member(b.Status(), peer3)
		return len(m2.Checks) == 1 && m2.Checks[0].Error != "" && len(m3.Checks) == 1 && m3.Checks[0].Healthy
	})
	if m, _ := member(b.Status(), peer2); m.Weight != 100 {
		t.Errorf("helper mode: a listed member failing its check has weight %d, want CGP's 100", m.Weight)
	}
	// peer3 leaves with a flow, then fails its check: it is let go.
	id, _ := b.Engine().MemberID(peer3)
	if err := b.Engine().Table().Insert(flowKey(1000), id, 0x02, b.Engine().Tick()); err != nil {
		t.Fatal(err)
	}
	if err := b.SetMembers([]Member{{Addr: peer2, Weight: 100}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "peer3 leaving", func() bool { m, ok := member(b.Status(), peer3); return ok && m.Leaving })
	fp.set(mac3, false)
	waitFor(t, "the failing leaving member let go", func() bool { _, ok := member(b.Status(), peer3); return !ok })
}

// TestHealthViewRestored: a standby adopts the active node's view from a MsgHealth payload; a
// malformed one changes nothing.
func TestHealthViewRestored(t *testing.T) {
	fp := &fakeProbe{up: map[string]bool{}}
	b, _ := newTest(t, writeFile(t, "192.0.2.200\n"), func(c *Config) {
		c.ServicesFile = servicesFile(t, tcpCheck)
		c.OpenProbe = fp.open
	})
	b.Engine().SetMAC(peer2, net.HardwareAddr{2, 0, 0, 0, 0, 2})
	if err := b.SetMembers([]Member{{Addr: peer2, Weight: 100}}); err != nil {
		t.Fatal(err)
	}
	start(t, b)
	waitFor(t, "peer2 a target", func() bool { m, _ := member(b.Status(), peer2); return len(m.Checks) == 1 })
	view := healthcheck.Snapshot{Targets: []healthcheck.TargetHealth{{Addr: peer2, Healthy: true,
		Services: []healthcheck.ServiceHealth{{Port: 25, Proto: services.ProtoTCP, Healthy: true}}}}}
	payload, err := view.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	b.onHealthView([]byte{0xff, 1, 2})
	if m, _ := member(b.Status(), peer2); m.Checks[0].Healthy {
		t.Fatal("a malformed view made peer2's check healthy")
	}
	b.onHealthView(payload)
	waitFor(t, "the restored view", func() bool {
		m, _ := member(b.Status(), peer2)
		return m.Healthy && m.Checks[0].Healthy && m.Weight == 100
	})
	// A view that says peer2 fails: weight 0 on this standby too, the same view as the active.
	view.Targets[0].Healthy, view.Targets[0].Services[0].Healthy = false, false
	if payload, err = view.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	b.onHealthView(payload)
	waitFor(t, "the restored failing view", func() bool { m, _ := member(b.Status(), peer2); return !m.Healthy && m.Weight == 0 })
	if fp.opened != 0 {
		t.Errorf("a standby opened the probe stack %d times", fp.opened)
	}
}

// flowKey is an IPv4 TCP flow from 198.51.100.1:sport to the test VIP's port 25.
func flowKey(sport uint16) conntrack.Key {
	return conntrack.Key{Src: 0xc6336401, Dst: 0xc00002c8, SPort: sport, DPort: 25, Proto: 6}
}

// ownMAC waits for the fake resolver's first answer for a (the same MAC for every address),
// then gives a a MAC of its own ending in last, which holds until the next refresh (10 s).
func ownMAC(t *testing.T, b *Balancer, a netip.Addr, last byte) net.HardwareAddr {
	t.Helper()
	waitFor(t, "the MAC of "+a.String(), func() bool {
		m, _ := member(b.Status(), a)
		return m.MAC != ""
	})
	mac := net.HardwareAddr{2, 0, 0, 0, 0xaa, last}
	if err := b.Engine().SetMAC(a, mac); err != nil {
		t.Fatal(err)
	}
	return mac
}
