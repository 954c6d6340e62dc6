package hostcfg

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/l2lb/l2lb/internal/nstest"
	"github.com/vishvananda/netlink"
)

func hasPrefix(list []netip.Prefix, s string) bool {
	return slices.Contains(list, netip.MustParsePrefix(s))
}

// hostState is what the test must leave untouched in the original namespace.
type hostState struct {
	lo   []netip.Prefix
	vals map[string]string
}

var watchedKeys = []string{
	"net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce", "net.ipv4.conf.all.rp_filter",
	"net.ipv4.conf.lo.arp_ignore", "net.ipv4.conf.lo.arp_announce", "net.ipv4.conf.lo.rp_filter",
	portRangeKey,
	"net.ipv6.conf.all.proxy_ndp", "net.ipv6.conf.lo.disable_ipv6", "net.ipv6.conf.lo.proxy_ndp",
}

func readHost(t *testing.T) hostState {
	t.Helper()
	lo, err := NetlinkAddrs().List("lo")
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(lo, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
	st := hostState{lo: lo, vals: map[string]string{}}
	for _, k := range watchedKeys {
		v, err := ProcSysctl().Get(k)
		if err != nil {
			t.Fatal(err)
		}
		st.vals[k] = v
	}
	return st
}

// TestInNetns checks VIPsUp/VIPsDown/VIPsList, DryRun, ProcSysctl and Doctor
// against the real kernel inside a fresh network namespace, and that the
// host namespace is untouched.
func TestInNetns(t *testing.T) {
	ns := nstest.New(t, "hostcfg")
	host := readHost(t)
	t.Cleanup(func() {
		after := readHost(t)
		if !slices.Equal(after.lo, host.lo) {
			t.Errorf("host lo addresses changed: %v -> %v", host.lo, after.lo)
		}
		for k, v := range host.vals {
			if after.vals[k] != v {
				t.Errorf("host sysctl %s changed: %q -> %q", k, v, after.vals[k])
			}
		}
	})

	h, err := netlink.NewHandleAt(ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	m := NetlinkAddrsAt(h)

	t.Run("addresses", func(t *testing.T) {
		list, err := m.List("lo")
		if err != nil || !hasPrefix(list, "127.0.0.1/8") {
			t.Fatalf("List(lo) = %v, %v; want 127.0.0.1/8 in it", list, err)
		}
		other := netip.MustParsePrefix("198.51.100.9/32")
		if err := m.Add("lo", other); err != nil {
			t.Fatal(err)
		}
		// The kernel refuses duplicates and deleting what is not there, which
		// is what the fake of the unit tests mimics.
		if err := m.Add("lo", other); !errors.Is(err, syscall.EEXIST) {
			t.Fatalf("second Add = %v, want EEXIST", err)
		}
		if err := m.Del("lo", netip.MustParsePrefix("198.51.100.10/32")); !errors.Is(err, syscall.EADDRNOTAVAIL) {
			t.Fatalf("Del of a missing address = %v, want EADDRNOTAVAIL", err)
		}
		if _, err := m.List("nosuchdev0"); err == nil {
			t.Fatal("List of a missing device succeeded")
		}

		vips := ips("192.0.2.200", "192.0.2.201")
		present, missing, err := VIPsList(m, vips)
		if err != nil || len(present) != 0 || !slices.Equal(missing, vips) {
			t.Fatalf("VIPsList before = %v, %v, %v", present, missing, err)
		}
		got, err := VIPsUp(m, vips)
		if err != nil || !slices.Equal(got, changes("add", "192.0.2.200", "add", "192.0.2.201")) {
			t.Fatalf("VIPsUp = %v, %v", got, err)
		}
		got, err = VIPsUp(m, vips)
		if err != nil || !slices.Equal(got, changes("keep", "192.0.2.200", "keep", "192.0.2.201")) {
			t.Fatalf("second VIPsUp = %v, %v", got, err)
		}
		present, missing, err = VIPsList(m, vips)
		if err != nil || !slices.Equal(present, vips) || len(missing) != 0 {
			t.Fatalf("VIPsList after = %v, %v, %v", present, missing, err)
		}

		// NetlinkAddrs follows the calling thread's namespace.
		err = ns.Run(func() error {
			l, err := NetlinkAddrs().List("lo")
			if err != nil {
				return err
			}
			if !hasPrefix(l, "192.0.2.200/32") || !hasPrefix(l, "198.51.100.9/32") {
				return fmt.Errorf("in-namespace List(lo) = %v", l)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if l, err := NetlinkAddrs().List("lo"); err != nil || hasPrefix(l, "192.0.2.200/32") {
			t.Fatalf("host List(lo) = %v, %v: VIP leaked into the host namespace", l, err)
		}

		// Dry run reads the real state and changes nothing.
		var logged []string
		got, err = VIPsUp(DryRun(m, func(s string) { logged = append(logged, s) }), ips("192.0.2.200", "192.0.2.202"))
		if err != nil || !slices.Equal(got, changes("keep", "192.0.2.200", "add", "192.0.2.202")) ||
			!slices.Equal(logged, []string{"would add 192.0.2.202/32 to lo"}) {
			t.Fatalf("dry VIPsUp = %v, %v, log %q", got, err, logged)
		}

		got, err = VIPsDown(m, ips("192.0.2.200", "192.0.2.201", "192.0.2.202"))
		if err != nil || !slices.Equal(got, changes("del", "192.0.2.200", "del", "192.0.2.201", "absent", "192.0.2.202")) {
			t.Fatalf("VIPsDown = %v, %v", got, err)
		}
		list, err = m.List("lo")
		if err != nil {
			t.Fatal(err)
		}
		if hasPrefix(list, "192.0.2.200/32") || hasPrefix(list, "192.0.2.201/32") || hasPrefix(list, "192.0.2.202/32") ||
			!hasPrefix(list, "198.51.100.9/32") || !hasPrefix(list, "127.0.0.1/8") {
			t.Fatalf("lo after VIPsDown = %v; want only the VIPs gone", list)
		}
	})

	t.Run("ipv6 addresses", func(t *testing.T) {
		vips := ips("2001:db8::200", "192.0.2.220", "2001:db8::201")
		got, err := VIPsUp(m, vips)
		if err != nil || !slices.Equal(got, changes("add", "2001:db8::200", "add", "192.0.2.220", "add", "2001:db8::201")) {
			t.Fatalf("VIPsUp = %v, %v", got, err)
		}
		got, err = VIPsUp(m, vips)
		if err != nil || !slices.Equal(got, changes("keep", "2001:db8::200", "keep", "192.0.2.220", "keep", "2001:db8::201")) {
			t.Fatalf("second VIPsUp = %v, %v", got, err)
		}
		// Added with IFA_F_NODAD, not tentative, as `ip address add ... nodad`.
		out, err := exec.Command("ip", "-n", ns.Name, "-6", "addr", "show", "dev", "lo").CombinedOutput()
		if err != nil {
			t.Fatalf("ip addr: %v: %s", err, out)
		}
		for _, v := range []string{"2001:db8::200/128", "2001:db8::201/128"} {
			i := strings.Index(string(out), "inet6 "+v)
			if i < 0 {
				t.Fatalf("%s not on lo: %s", v, out)
			}
			line, _, _ := strings.Cut(string(out[i:]), "\n")
			if !strings.Contains(line, "nodad") || strings.Contains(line, "tentative") {
				t.Errorf("lo: %q, want nodad and not tentative", line)
			}
		}
		var logged []string
		got, err = VIPsUp(DryRun(m, func(s string) { logged = append(logged, s) }), ips("2001:db8::200", "2001:db8::202"))
		if err != nil || !slices.Equal(got, changes("keep", "2001:db8::200", "add", "2001:db8::202")) ||
			!slices.Equal(logged, []string{"would add 2001:db8::202/128 to lo (nodad)"}) {
			t.Fatalf("dry VIPsUp = %v, %v, log %q", got, err, logged)
		}
		present, missing, err := VIPsList(m, ips("2001:db8::201", "2001:db8::202"))
		if err != nil || !slices.Equal(present, ips("2001:db8::201")) || !slices.Equal(missing, ips("2001:db8::202")) {
			t.Fatalf("VIPsList = %v, %v, %v", present, missing, err)
		}
		got, err = VIPsDown(m, append(vips, netip.MustParseAddr("2001:db8::202")))
		if err != nil || !slices.Equal(got, changes("del", "2001:db8::200", "del", "192.0.2.220", "del", "2001:db8::201", "absent", "2001:db8::202")) {
			t.Fatalf("VIPsDown = %v, %v", got, err)
		}
		list, err := m.List("lo")
		if err != nil || !hasPrefix(list, "::1/128") || hasPrefix(list, "2001:db8::200/128") {
			t.Fatalf("lo after VIPsDown = %v, %v; want ::1 kept, VIPs gone", list, err)
		}
	})

	t.Run("sysctl", func(t *testing.T) {
		sys := ProcSysctl()
		// A new namespace has only its own devices under conf: proof that the
		// thread, not the process, selects the namespace.
		var nsConf []string
		err := ns.Run(func() error {
			ents, err := os.ReadDir("/proc/sys/net/ipv4/conf")
			for _, e := range ents {
				nsConf = append(nsConf, e.Name())
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(nsConf, []string{"all", "default", "lo"}) {
			t.Fatalf("conf entries in the namespace = %v, want [all default lo]", nsConf)
		}

		key := "net.ipv4.conf.all.arp_ignore"
		want := "1"
		if host.vals[key] == "1" {
			want = "2"
		}
		var inside string
		err = ns.Run(func() error {
			if err := sys.Set(key, want); err != nil {
				return err
			}
			if err := sys.Set(portRangeKey, "50000 54000"); err != nil {
				return err
			}
			var err error
			inside, err = sys.Get(key)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if inside != want {
			t.Fatalf("in-namespace %s = %q after setting %q", key, inside, want)
		}
		if v, err := sys.Get(key); err != nil || v != host.vals[key] {
			t.Fatalf("host %s = %q, %v; want unchanged %q", key, v, err, host.vals[key])
		}

		// An open file keeps the namespace it was opened in: read from a host
		// thread, a file opened inside still shows the namespace's value.
		var f *os.File
		err = ns.Run(func() error {
			var err error
			f, err = os.Open("/proc/sys/net/ipv4/ip_local_port_range")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(f)
		f.Close()
		if err != nil || strings.Join(strings.Fields(string(b)), " ") != "50000 54000" {
			t.Fatalf("file opened in the namespace reads %q, %v", b, err)
		}
		if v, err := sys.Get(portRangeKey); err != nil || v != host.vals[portRangeKey] {
			t.Fatalf("host %s = %q, %v; want unchanged %q", portRangeKey, v, err, host.vals[portRangeKey])
		}
	})

	t.Run("doctor", func(t *testing.T) {
		in := DoctorInput{Iface: "lo", VIPs: ips("192.0.2.210", "192.0.2.211", "2001:db8::210"), OtherPortRanges: []PortRange{{55000, 59000}}}
		var before, after []Finding
		var applyErr error
		err := ns.Run(func() error {
			// Strict rp_filter on lo, as on hosts that ship with it, must be found and fixed.
			if err := ProcSysctl().Set("net.ipv4.conf.lo.rp_filter", "1"); err != nil {
				return err
			}
			// And proxy NDP, which would let the kernel answer for a VIP.
			if err := ProcSysctl().Set("net.ipv6.conf.all.proxy_ndp", "1"); err != nil {
				return err
			}
			before = Doctor(ProcSysctl(), NetlinkAddrs(), in)
			applyErr = Apply(before)
			after = Doctor(ProcSysctl(), NetlinkAddrs(), in)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		rp := byKey(t, before, CheckRPFilter, "net.ipv4.conf.lo.rp_filter")
		if rp.OK || rp.Fix != "sysctl -w net.ipv4.conf.lo.rp_filter=2" {
			t.Fatalf("rp_filter finding %+v", rp)
		}
		if f := byKey(t, before, CheckProxyNDP, "net.ipv6.conf.all.proxy_ndp"); f.OK || f.Fix != "sysctl -w net.ipv6.conf.all.proxy_ndp=0" {
			t.Fatalf("proxy_ndp finding %+v", f)
		}
		if n := len(failed(before)); n < 5 { // rp_filter lo, proxy_ndp, the three missing VIPs at least
			t.Fatalf("only %d failures before Apply: %v", n, before)
		}
		if applyErr != nil {
			t.Fatalf("Apply: %v", applyErr)
		}
		if bad := failed(after); len(bad) != 0 {
			t.Fatalf("failures after Apply: %v", bad)
		}
	})
}
