package bench

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/e2e"
	"golang.org/x/sys/unix"
)

// haproxyInNamespace lists the pids of processes named haproxy whose
// network namespace is the named one.
func haproxyInNamespace(t *testing.T, ns string) []string {
	t.Helper()
	var target unix.Stat_t
	if err := unix.Stat(filepath.Join("/run/netns", ns), &target); err != nil {
		t.Fatal(err)
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range procs {
		comm, err := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "haproxy" {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc", p.Name(), "ns", "net"), &st) == nil && st.Dev == target.Dev && st.Ino == target.Ino {
			out = append(out, p.Name())
		}
	}
	return out
}

// TestHAProxyLeg runs the tcp scenario's HAProxy leg with short phases on a
// real testbed and checks that both directions carry data, that HAProxy
// spread them over the backends, and that neither the process nor its
// directory outlives the leg.
func TestHAProxyLeg(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("haproxy"); err != nil {
		e2e.Prereq(t, "haproxy (Debian package haproxy) for the tcp scenario's HAProxy comparison")
	}
	e := newTestEnv(t, Options{Scenarios: []string{"tcp"}, Duration: 300 * time.Millisecond, Logf: t.Logf})
	if err := e.startServers(); err != nil {
		t.Fatal(err)
	}
	res, err := e.viaHAProxy(t.Context(), haproxySplice)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("via HAProxy (%d threads): download %.2f Gbit/s by %s, upload %.2f Gbit/s by %s", res.threads, res.down/1e9, res.downBy, res.up/1e9, res.upBy)
	if !(res.down > 0) || !(res.up > 0) {
		t.Errorf("download %v, upload %v bit/s: want both positive", res.down, res.up)
	}
	names := map[string]bool{}
	for _, h := range e.backends {
		names[h.Name] = true
	}
	if !names[res.downBy] || !names[res.upBy] {
		t.Errorf("served by %q and %q: want one backend of %v each", res.downBy, res.upBy, names)
	}
	if res.pid <= 0 {
		t.Fatalf("pid %d", res.pid)
	}
	if err := syscall.Kill(res.pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("haproxy pid %d still exists after the leg (kill 0: %v)", res.pid, err)
	}
	if left := haproxyInNamespace(t, e.lb.NS); len(left) > 0 {
		t.Errorf("haproxy processes left in %s: %v", e.lb.NS, left)
	}
	if _, err := os.Stat(res.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s still there (stat: %v)", res.dir, err)
	}
}

// TestParseHAProxyStat checks the `show stat` parser on HAProxy 2.6's
// layout (columns trimmed after stot; the parser finds columns by name).
func TestParseHAProxyStat(t *testing.T) {
	in := "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin\n" +
		"bench,FRONTEND,,,0,1,1000,3,100\n" +
		"members,f2,0,0,0,1,,2,50\n" +
		"members,f3,0,0,0,1,,1,50\n" +
		"members,BACKEND,0,0,0,1,100,3,100\n\n"
	got, err := parseHAProxyStat(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["f2"] != 2 || got["f3"] != 1 {
		t.Errorf("got %v, want f2:2 f3:1", got)
	}
	for _, bad := range []string{"", "# pxname,svname\nmembers,f2\n", "# pxname,svname,stot\nbench,FRONTEND,1\n", "# pxname,svname,stot\nmembers,f2,x\n"} {
		if _, err := parseHAProxyStat(bad); !errors.Is(err, ErrHAProxy) {
			t.Errorf("parse %q: err %v, want ErrHAProxy", bad, err)
		}
	}
}
