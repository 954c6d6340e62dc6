package cgphelper_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l2lb/l2lb/cgphelper"
	"github.com/l2lb/l2lb/helperproto"
	"github.com/l2lb/l2lb/hostcfg"
	"github.com/l2lb/l2lb/scheduler"
)

// fakeHost is a Host without sockets or /proc: it returns what the test sets
// and records what the helper asked.
type fakeHost struct {
	local    map[netip.Addr]bool
	mac      net.HardwareAddr
	macErr   error
	findings []hostcfg.Finding

	mu          sync.Mutex
	doctorCalls []hostcfg.DoctorInput
	macCalls    []string
}

func (f *fakeHost) LocalAddrs() map[netip.Addr]bool { return f.local }

func (f *fakeHost) InterfaceMAC(name string) (net.HardwareAddr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.macCalls = append(f.macCalls, name)
	return f.mac, f.macErr
}

func (f *fakeHost) Doctor(iface string, vips []netip.Addr) []hostcfg.Finding {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.doctorCalls = append(f.doctorCalls, hostcfg.DoctorInput{Iface: iface, VIPs: vips})
	return f.findings
}

// infoLog collects the helper's "* " lines.
type infoLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *infoLog) info(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

// take returns the lines logged since the last take.
func (l *infoLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.lines
	l.lines = nil
	return out
}

// Addresses from TEST-NET-1 (RFC 5737), as the namespace testbed uses.
var (
	vipA  = netip.MustParseAddr("192.0.2.200")
	vipB  = netip.MustParseAddr("192.0.2.201")
	self  = netip.MustParseAddr("192.0.2.11")
	peer2 = netip.MustParseAddr("192.0.2.12")
	peer3 = netip.MustParseAddr("192.0.2.13")
)

// vmac is a locally administered MAC (IEEE 802: bit 1 of the first octet), as
// the helper derives from -s.
var vmac = net.HardwareAddr{0x02, 0x6c, 0x32, 0x62, 0x00, 0x07}

func writeVIPs(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vipaddrs")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func options(vipFile string, dry bool) cgphelper.Options {
	return cgphelper.Options{
		Persistence: 15 * time.Second, Interface: "eth0", SyncID: 7, VIPFile: vipFile,
		SelfWeight: 50, DryRun: dry, Scheduler: scheduler.KindMaglev, VirtualMAC: vmac,
	}
}

func newDry(t *testing.T) (*cgphelper.Helper, *fakeHost, *infoLog) {
	t.Helper()
	host := &fakeHost{local: map[netip.Addr]bool{self: true, vipA: true, vipB: true}}
	log := &infoLog{}
	h := cgphelper.New(options(writeVIPs(t, "# two VIPs\n192.0.2.200\n192.0.2.201\n"), true), host, log.info, nil)
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return h, host, log
}

// statusField returns the value of key=value in a STATUS summary.
func statusField(t *testing.T, status, key string) string {
	t.Helper()
	m := regexp.MustCompile(`(?:^| )` + regexp.QuoteMeta(key) + `=(\S*)`).FindStringSubmatch(status)
	if m == nil {
		t.Fatalf("STATUS %q has no %s=", status, key)
	}
	return m[1]
}

func hasLine(lines []string, substr string) bool {
	for _, l := range lines {
		if strings.Contains(l, substr) {
			return true
		}
	}
	return false
}

func TestStartReportsHostChecksAndDryRun(t *testing.T) {
	h, host, log := newDry(t)
	host.findings = []hostcfg.Finding{
		{Check: hostcfg.CheckARPIgnore, OK: false, Have: "net.ipv4.conf.eth0.arp_ignore=0",
			Want: "net.ipv4.conf.eth0.arp_ignore>=1", Fix: "sysctl -w net.ipv4.conf.eth0.arp_ignore=1"},
		{Check: hostcfg.CheckRPFilter, OK: true, Have: "net.ipv4.conf.all.rp_filter=2"},
		{Check: hostcfg.CheckVIPOnLo, OK: false, Have: "192.0.2.201 missing", Want: "192.0.2.201/32 on lo"},
	}
	if err := h.Start(); err != nil {
		t.Fatalf("Start with -m: %v", err)
	}
	lines := log.take()
	want := []string{
		"host check arp_ignore: have net.ipv4.conf.eth0.arp_ignore=0, want net.ipv4.conf.eth0.arp_ignore>=1; fix: sysctl -w net.ipv4.conf.eth0.arp_ignore=1",
		"host check vip_on_lo: have 192.0.2.201 missing, want 192.0.2.201/32 on lo",
	}
	for _, w := range want {
		found := false
		for _, l := range lines {
			if l == w {
				found = true
			}
		}
		if !found {
			t.Errorf("Start logged %q, want a line %q", lines, w)
		}
	}
	if hasLine(lines, "rp_filter") {
		t.Errorf("a passing check was reported: %q", lines)
	}
	if !hasLine(lines, "-m:") {
		t.Errorf("Start with DryRun did not say that nothing is opened: %q", lines)
	}
	if len(host.doctorCalls) != 1 {
		t.Fatalf("Doctor called %d times, want 1", len(host.doctorCalls))
	}
	in := host.doctorCalls[0]
	if in.Iface != "eth0" || len(in.VIPs) != 2 || in.VIPs[0] != vipA || in.VIPs[1] != vipB {
		t.Errorf("Doctor asked about %+v, want eth0 and both VIPs", in)
	}
	if len(host.macCalls) != 0 {
		t.Errorf("DryRun Start looked up the interface %v: it must open nothing", host.macCalls)
	}
}

func TestActiveDryRun(t *testing.T) {
	h, host, log := newDry(t)
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	log.take()
	st := h.Status()
	if got := statusField(t, st, "role"); got != "standby" {
		t.Errorf("before ACTIVE role=%s, want standby (contract: standby until the first ACTIVE)", got)
	}
	since0 := statusField(t, st, "since")

	time.Sleep(1100 * time.Millisecond) // since= has whole seconds: make a role change visible
	if err := h.Active([]netip.Addr{self, peer2, peer3}); err != nil {
		t.Fatalf("Active with -m: %v", err)
	}
	lines := log.take()
	if !hasLine(lines, "would answer ARP for 192.0.2.200, 192.0.2.201 on eth0 with "+vmac.String()) {
		t.Errorf("ACTIVE -m lines %q do not describe answering ARP for both VIPs with the virtual MAC", lines)
	}
	if !hasLine(lines, "would forward VIP traffic to members 192.0.2.11 (self, weight 50) 192.0.2.12 192.0.2.13") {
		t.Errorf("ACTIVE -m lines %q do not describe forwarding to the members with self's -r weight", lines)
	}
	st = h.Status()
	for k, want := range map[string]string{
		"role": "active", "iface": "eth0", "vips": "192.0.2.200,192.0.2.201",
		"members": "192.0.2.11,192.0.2.12,192.0.2.13",
	} {
		if got := statusField(t, st, k); got != want {
			t.Errorf("STATUS %s=%s, want %s (status %q)", k, got, want, st)
		}
	}
	since1 := statusField(t, st, "since")
	if since1 == since0 {
		t.Errorf("since= did not change with the role: %s", since1)
	}
	if _, err := time.Parse(time.RFC3339, since1); err != nil {
		t.Errorf("since=%s is not RFC 3339: %v", since1, err)
	}
	if !strings.HasSuffix(st, " dry-run") {
		t.Errorf("STATUS %q does not say dry-run", st)
	}
	if strings.ContainsAny(st, "\n\r") {
		t.Errorf("STATUS %q is not one line", st)
	}
	if len(host.macCalls) != 0 {
		t.Errorf("DryRun ACTIVE looked up the interface %v", host.macCalls)
	}

	// Repeating the same ACTIVE changes nothing (CGP re-sends pending
	// commands after a restart): same summary, role start unchanged.
	time.Sleep(1100 * time.Millisecond)
	if err := h.Active([]netip.Addr{self, peer2, peer3}); err != nil {
		t.Fatalf("repeated Active: %v", err)
	}
	if again := h.Status(); again != st {
		t.Errorf("repeated ACTIVE changed STATUS:\n before %q\n after  %q", st, again)
	}

	// A different list is a change of membership, still active.
	if err := h.Active([]netip.Addr{self, peer3}); err != nil {
		t.Fatalf("Active with a changed list: %v", err)
	}
	st = h.Status()
	if got := statusField(t, st, "members"); got != "192.0.2.11,192.0.2.13" {
		t.Errorf("after the membership change members=%s, want 192.0.2.11,192.0.2.13", got)
	}
	if got := statusField(t, st, "since"); got != since1 {
		t.Errorf("a membership change restarted the role: since %s -> %s", since1, got)
	}
}

func TestStandbyDryRun(t *testing.T) {
	h, _, log := newDry(t)
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	if err := h.Standby(netip.Addr{}); err != nil {
		t.Fatalf("Standby before any ACTIVE: %v", err)
	}
	if lines := log.take(); hasLine(lines, "stop answering ARP") {
		t.Errorf("STANDBY while standby claims to stop something: %q", lines)
	}
	if err := h.Active([]netip.Addr{self, peer2}); err != nil {
		t.Fatal(err)
	}
	log.take()
	if err := h.Standby(peer2); err != nil {
		t.Fatalf("Standby: %v", err)
	}
	if lines := log.take(); !hasLine(lines, "would stop answering ARP for 192.0.2.200, 192.0.2.201 and stop forwarding") {
		t.Errorf("STANDBY after ACTIVE with -m logged %q, want the ARP/forwarding stop described", lines)
	}
	st := h.Status()
	if got := statusField(t, st, "role"); got != "standby" {
		t.Errorf("after STANDBY role=%s", got)
	}
	if strings.Contains(st, "members=") {
		t.Errorf("a standby still lists members: %q", st)
	}
	// Repeating STANDBY is harmless and says nothing more.
	if err := h.Standby(peer2); err != nil {
		t.Fatal(err)
	}
	if lines := log.take(); hasLine(lines, "stop answering ARP") {
		t.Errorf("repeated STANDBY logged %q", lines)
	}
}

func TestMissingVIPFile(t *testing.T) {
	host := &fakeHost{local: map[netip.Addr]bool{self: true}}
	log := &infoLog{}
	missing := filepath.Join(t.TempDir(), "no-such-vipaddrs")
	for _, dry := range []bool{false, true} {
		t.Run(fmt.Sprintf("dry=%v", dry), func(t *testing.T) {
			h := cgphelper.New(options(missing, dry), host, log.info, nil)
			defer h.Close()
			if err := h.Start(); err != nil {
				t.Fatalf("Start must not fail on a missing VIP file (STANDBY works without VIPs): %v", err)
			}
			if lines := log.take(); !hasLine(lines, "VIP file: ") || !hasLine(lines, missing) {
				t.Errorf("Start logged %q, want a VIP file line naming %s", lines, missing)
			}
			err := h.Active([]netip.Addr{self, peer2})
			if err == nil {
				t.Fatal("ACTIVE without a readable VIP file answered OK")
			}
			if !errors.Is(err, cgphelper.ErrNoVIPs) || !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("ACTIVE error %v: want ErrNoVIPs wrapping the file's not-exist error", err)
			}
			if err := h.Standby(netip.Addr{}); err != nil {
				t.Errorf("STANDBY without VIPs: %v", err)
			}
			st := h.Status()
			if got := statusField(t, st, "role"); got != "standby" {
				t.Errorf("role=%s after a failed ACTIVE, want standby", got)
			}
			if !strings.Contains(st, "vips=error(") {
				t.Errorf("STATUS %q does not report the VIP error", st)
			}
		})
	}
	if len(host.doctorCalls) != 0 {
		t.Errorf("Doctor was run without VIPs: %+v", host.doctorCalls)
	}
}

func TestEmptyVIPFile(t *testing.T) {
	host := &fakeHost{}
	h := cgphelper.New(options(writeVIPs(t, "# nothing yet\n\n"), true), host, (&infoLog{}).info, nil)
	defer h.Close()
	if err := h.Active([]netip.Addr{self}); !errors.Is(err, cgphelper.ErrNoVIPs) {
		t.Errorf("ACTIVE with an empty VIP file: %v, want ErrNoVIPs", err)
	}
}

func TestStartFailsWithoutInterface(t *testing.T) {
	vips := writeVIPs(t, "192.0.2.200\n")
	t.Run("InterfaceMAC fails", func(t *testing.T) {
		host := &fakeHost{local: map[netip.Addr]bool{self: true}, macErr: errors.New("no such network interface")}
		log := &infoLog{}
		opt := options(vips, false)
		opt.Interface = "l2lbnone0"
		h := cgphelper.New(opt, host, log.info, nil)
		err := h.Start()
		if !errors.Is(err, cgphelper.ErrNoInterface) || !strings.Contains(err.Error(), "l2lbnone0") {
			t.Fatalf("Start on a missing interface: %v, want ErrNoInterface naming it", err)
		}
		checkNotStarted(t, h, err)
		if len(host.macCalls) < 2 {
			t.Errorf("ACTIVE did not retry opening the fast path (interface asked %d times)", len(host.macCalls))
		}
	})
	t.Run("interface lookup fails", func(t *testing.T) {
		// The Host knows a MAC, but the interface does not exist here, so
		// the dataplane refuses it before any socket is opened.
		host := &fakeHost{local: map[netip.Addr]bool{self: true}, mac: net.HardwareAddr{0x02, 0, 0, 0, 0, 1}}
		opt := options(vips, false)
		opt.Interface = "l2lbnone0"
		h := cgphelper.New(opt, host, (&infoLog{}).info, nil)
		err := h.Start()
		if !errors.Is(err, cgphelper.ErrNoInterface) {
			t.Fatalf("Start: %v, want ErrNoInterface", err)
		}
		checkNotStarted(t, h, err)
	})
}

func checkNotStarted(t *testing.T, h *cgphelper.Helper, startErr error) {
	t.Helper()
	st := h.Status()
	if !strings.Contains(st, fmt.Sprintf("error=%q", startErr.Error())) {
		t.Errorf("STATUS %q does not report the start error %q", st, startErr)
	}
	if err := h.Active([]netip.Addr{self, peer2}); !errors.Is(err, cgphelper.ErrNoInterface) {
		t.Errorf("ACTIVE without an interface: %v, want ErrNoInterface", err)
	}
	if got := statusField(t, h.Status(), "role"); got != "standby" {
		t.Errorf("role=%s after a failed ACTIVE", got)
	}
	if err := h.Standby(netip.Addr{}); err != nil {
		t.Errorf("STANDBY: %v", err)
	}
	h.Periodic() // nothing running: must neither block nor panic
	for i := 0; i < 2; i++ {
		if err := h.Close(); err != nil {
			t.Errorf("Close #%d: %v", i+1, err)
		}
	}
}

func TestCloseTwice(t *testing.T) {
	h, _, log := newDry(t)
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	if err := h.Active([]netip.Addr{self}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := h.Close(); err != nil {
			t.Errorf("Close #%d: %v", i+1, err)
		}
	}
	h.Periodic()
	if lines := log.take(); hasLine(lines, "fast path stopped") {
		t.Errorf("Periodic after Close reported a fast path that was never started: %q", lines)
	}
}

// TestSession drives the helper through the protocol session exactly as the
// binary does, and checks the answers CGP would read.
func TestSession(t *testing.T) {
	for _, tc := range []struct {
		name    string
		vips    string
		in      string
		want    []string // regexps, one per output line in order
		wantErr bool
	}{
		{
			name: "dry run",
			vips: "192.0.2.200\n",
			in:   "1 INTF 3\n2 STANDBY 192.0.2.12\n3 ACTIVE 192.0.2.11,192.0.2.12\n4 ACTIVE 192.0.2.11 192.0.2.12\n5 STATUS\n6 STANDBY\n7 QUIT\n",
			want: []string{
				`^\* -m: `,
				`^1 INTF 1$`,
				`^2 OK$`,
				`^\* would answer ARP for 192\.0\.2\.200 on eth0 with 02:6c:32:62:00:07 and announce them$`,
				`^\* would forward VIP traffic to members 192\.0\.2\.11 \(self, weight 50\) 192\.0\.2\.12$`,
				`^3 OK$`,
				`^\* would answer ARP`,
				`^\* would forward`,
				`^4 OK$`,
				`^5 OK role=active since=\S+ iface=eth0 vips=192\.0\.2\.200 members=192\.0\.2\.11,192\.0\.2\.12 dry-run$`,
				`^\* would stop answering ARP for 192\.0\.2\.200 and stop forwarding$`,
				`^6 OK$`,
				`^7 OK$`,
			},
		},
		{
			name: "no VIP file",
			in:   "1 INTF 1\n2 ACTIVE 192.0.2.11\n3 STANDBY\n4 STATUS\n",
			want: []string{
				`^\* VIP file: `,
				`^\* -m: `,
				`^1 INTF 1$`,
				`^2 ERROR no VIP could be read: .*no such file or directory$`,
				`^3 OK$`,
				`^4 OK role=standby .* vips=error\(`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vipFile := filepath.Join(t.TempDir(), "absent")
			if tc.vips != "" {
				vipFile = writeVIPs(t, tc.vips)
			}
			var out bytes.Buffer
			var sess *helperproto.Session
			h := cgphelper.New(options(vipFile, true), &fakeHost{local: map[netip.Addr]bool{self: true}},
				func(f string, a ...any) { sess.Info(f, a...) }, nil)
			sess = helperproto.NewSession(helperproto.Config{In: strings.NewReader(tc.in), Out: &out,
				Handler: h, Timeout: time.Second})
			if err := h.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- sess.Run() }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("session did not end within 5 s of the end of its input")
			}
			got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			if len(got) != len(tc.want) {
				t.Fatalf("got %d lines, want %d:\n%s", len(got), len(tc.want), out.String())
			}
			for i, re := range tc.want {
				if !regexp.MustCompile(re).MatchString(got[i]) {
					t.Errorf("line %d %q does not match %s", i+1, got[i], re)
				}
			}
		})
	}
}
