package ops

import (
	"bufio"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/l2lb/l2lb/hostcfg"
	"github.com/l2lb/l2lb/vipset"
)

// contrib returns the path of a file in contrib/.
func contrib(name string) string { return filepath.Join(modRoot, "contrib", name) }

// parseSysctlConf parses a sysctl.d(5) file: "key = value" lines, comments
// starting with # or ;, and an optional leading "-" (ignore a failure to set).
func parseSysctlConf(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "-"), "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("%s:%d: want key = value: %q", path, n, line)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("%s:%d: %s set twice", path, n, k)
		}
		out[k] = v
	}
	return out, sc.Err()
}

// errNoKey is what the fake sysctl answers for a key it does not have.
var errNoKey = errors.New("no such sysctl")

// mapSysctl is a hostcfg.Sysctl over a map that records the keys read.
type mapSysctl struct {
	vals map[string]string
	read map[string]bool
}

func (m *mapSysctl) Get(key string) (string, error) {
	m.read[key] = true
	v, ok := m.vals[key]
	if !ok {
		return "", fmt.Errorf("%w: %s", errNoKey, key)
	}
	return v, nil
}

func (m *mapSysctl) Set(key, value string) error { return errors.New("read-only") }

// sysctlChecks are the doctor's checks that 99-l2lb.conf is for; the others
// (VIPs on lo, the per-frontend port range) are not host-wide constants.
var sysctlChecks = []string{hostcfg.CheckARPIgnore, hostcfg.CheckARPAnnounce, hostcfg.CheckRPFilter}

// doctorSysctls runs l2lb doctor's checks on vals for interface eth0 and
// returns the failed sysctl findings and the keys the doctor read.
func doctorSysctls(vals map[string]string) (failed []string, read map[string]bool) {
	sys := &mapSysctl{vals: vals, read: map[string]bool{}}
	// No VIPs: the doctor then needs no address manager.
	for _, f := range hostcfg.Doctor(sys, nil, hostcfg.DoctorInput{Iface: "eth0"}) {
		if slices.Contains(sysctlChecks, f.Check) && !f.OK {
			failed = append(failed, f.String())
		}
	}
	return failed, sys.read
}

// contrib/99-l2lb.conf sets exactly the sysctls `l2lb doctor` checks
// (hostcfg.Doctor), to values it accepts, and each of its lines is needed.
func TestSysctlFileMatchesDoctor(t *testing.T) {
	vals, err := parseSysctlConf(contrib("99-l2lb.conf"))
	if err != nil {
		t.Fatal(err)
	}
	failed, read := doctorSysctls(vals)
	for _, f := range failed {
		t.Errorf("with 99-l2lb.conf applied, l2lb doctor reports: %s", f)
	}
	// The doctor also reads ip_local_port_range, which differs per frontend
	// (seed step 7) and so has no place in a shared file.
	delete(read, "net.ipv4.ip_local_port_range")
	if got, want := slices.Sorted(maps.Keys(vals)), slices.Sorted(maps.Keys(read)); !slices.Equal(got, want) {
		t.Errorf("99-l2lb.conf sets %v; l2lb doctor checks %v", got, want)
	}
	for k := range vals {
		without := maps.Clone(vals)
		delete(without, k)
		if failed, _ := doctorSysctls(without); len(failed) == 0 {
			t.Errorf("without %s the doctor still passes: the line is not needed", k)
		}
	}
}

// The file applies in a fresh network namespace (every key exists in the
// kernel and takes its value), and afterwards, with the example VIPs put on
// lo by `l2lb vip up`, `l2lb doctor` passes there. The values are written
// through /proc/sys like systemd-sysctl does, from a thread inside the
// namespace (network sysctls are per namespace).
func TestSysctlFileAppliesInNamespace(t *testing.T) {
	if suite.Missing != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but %s are unavailable: applying 99-l2lb.conf needs a network namespace", suite.Missing)
		}
		t.Skipf("needs %s for a network namespace", suite.Missing)
	}
	vals, err := parseSysctlConf(contrib("99-l2lb.conf"))
	if err != nil {
		t.Fatal(err)
	}
	ns := fmt.Sprintf("l2lb-%d-%04x-sysctl", os.Getpid(), rand.Uint32N(1<<16))
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
			t.Errorf("removing namespace %s: %v\n%s", ns, err, out)
		}
	})
	// An eth0 inside the namespace, as on a frontend.
	run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	if err := inNamespace(ns, func() error {
		sys := hostcfg.ProcSysctl()
		for _, k := range slices.Sorted(maps.Keys(vals)) {
			if err := sys.Set(k, vals[k]); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("applying 99-l2lb.conf in %s: %v", ns, err)
	}
	run("ip", "netns", "exec", ns, suite.Bin, "vip", "up", "-f", contrib("vipaddrs.example"))
	out := run("ip", "netns", "exec", ns, suite.Bin, "doctor", "-i", "eth0", "-f", contrib("vipaddrs.example"))
	t.Logf("l2lb doctor in %s:\n%s", ns, out)
	for _, c := range sysctlChecks {
		if !strings.Contains(out, "ok   "+c) {
			t.Errorf("l2lb doctor output has no passed %s check", c)
		}
	}
}

// inNamespace runs fn on an OS thread switched into the named network
// namespace; the thread is returned to the Go scheduler only once it is
// back in its own namespace (runtime.LockOSThread).
func inNamespace(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = fn()
		if rerr := netns.Set(orig); rerr != nil {
			// Still locked: the runtime ends this thread with the goroutine.
			errc <- errors.Join(err, rerr)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// The example VIP file parses in the seed's format.
func TestVIPExampleParses(t *testing.T) {
	s, err := vipset.ParseFile(contrib("vipaddrs.example"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() == 0 {
		t.Fatal("vipaddrs.example lists no VIP")
	}
}

// The sample environment file holds flags `l2lb run` accepts: the flag set
// parses every one of them before reaching the final -h.
func TestEnvFileFlagsParse(t *testing.T) {
	data, err := os.ReadFile(contrib("l2lb.env"))
	if err != nil {
		t.Fatal(err)
	}
	var opts string
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "L2LB_OPTS="); ok {
			opts = strings.Trim(v, `"`)
		}
	}
	if opts == "" {
		t.Fatal("l2lb.env sets no L2LB_OPTS")
	}
	args := append(append([]string{"run"}, strings.Fields(opts)...), "-h")
	out, err := exec.Command(suite.Bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("l2lb %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// contrib/l2lb.service has what an operator relies on, and systemd accepts
// it. .ci/run installs systemd-analyze; outside CI the syntax check is
// skipped without it.
func TestSystemdUnit(t *testing.T) {
	data, err := os.ReadFile(contrib("l2lb.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := string(data)
	for _, want := range []string{
		"\nExecStart=/usr/local/sbin/l2lb run $L2LB_OPTS\n",
		"\nExecReload=/bin/kill -HUP $MAINPID\n",
		"\nRestart=on-failure\n",
		"\nEnvironmentFile=/etc/l2lb/l2lb.env\n",
		"\nCapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN CAP_SYS_NICE\n",
		"\nAmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN CAP_SYS_NICE\n",
		"\nRuntimeDirectory=l2lb\n",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("l2lb.service lacks the line %q", strings.TrimSpace(want))
		}
	}
	if strings.Contains(unit, "PrivateNetwork=yes") || !strings.Contains(unit, "AF_PACKET") || !strings.Contains(unit, "AF_NETLINK") {
		t.Errorf("l2lb.service must leave the host network, AF_PACKET and netlink usable")
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but systemd-analyze (Debian package systemd) is missing: it verifies contrib/l2lb.service")
		}
		t.Skip("systemd-analyze is not installed; the unit's syntax is not verified")
	}
	// verify insists that ExecStart's program exists; point it at the
	// binary just built.
	path := filepath.Join(t.TempDir(), "l2lb.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(unit, "/usr/local/sbin/l2lb", suite.Bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err != nil {
		t.Fatalf("systemd-analyze verify l2lb.service: %v\n%s", err, out)
	} else if len(strings.TrimSpace(string(out))) > 0 {
		t.Logf("systemd-analyze verify:\n%s", out)
	}
}
