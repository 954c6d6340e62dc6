package hostcfg

import (
	"errors"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
)

// goodHost returns sysctls that satisfy every check for eth0.
func goodHost() *fakeSysctl {
	return &fakeSysctl{vals: map[string]string{
		"net.ipv4.conf.all.arp_ignore":    "1",
		"net.ipv4.conf.eth0.arp_ignore":   "1",
		"net.ipv4.conf.all.arp_announce":  "2",
		"net.ipv4.conf.eth0.arp_announce": "2",
		"net.ipv4.conf.all.rp_filter":     "0",
		"net.ipv4.conf.lo.rp_filter":      "0",
		"net.ipv4.conf.eth0.rp_filter":    "2",
		"net.ipv4.conf.lo.arp_ignore":     "0",
		"net.ipv4.conf.lo.arp_announce":   "0",
		portRangeKey:                      "50000\t54000",
	}}
}

// byKey finds the finding whose Have or Want names key.
func byKey(t *testing.T, fs []Finding, check, key string) Finding {
	t.Helper()
	for _, f := range fs {
		if f.Check == check && (strings.HasPrefix(f.Want, key) || strings.HasPrefix(f.Have, key)) {
			return f
		}
	}
	t.Fatalf("no %s finding for %s in %v", check, key, fs)
	return Finding{}
}

func failed(fs []Finding) []Finding {
	var out []Finding
	for _, f := range fs {
		if !f.OK {
			out = append(out, f)
		}
	}
	return out
}

func TestDoctorAllGood(t *testing.T) {
	sys := goodHost()
	addrs := newFakeAddrs("127.0.0.1/8", "192.0.2.200/32", "192.0.2.201/32")
	in := DoctorInput{Iface: "eth0", VIPs: ips("192.0.2.200", "192.0.2.201"),
		OtherPortRanges: []PortRange{{55000, 59000}}}
	fs := Doctor(sys, addrs, in)
	if bad := failed(fs); len(bad) != 0 {
		t.Fatalf("unexpected failures: %v", bad)
	}
	var checks []string
	for _, f := range fs {
		checks = append(checks, f.Check)
		if f.Fix != "" {
			t.Errorf("OK finding %v carries a fix", f)
		}
	}
	want := []string{"arp_ignore", "arp_ignore", "arp_announce", "arp_announce",
		"rp_filter", "rp_filter", "rp_filter", "vip_on_lo", "vip_on_lo", "port_range"}
	if !slices.Equal(checks, want) {
		t.Fatalf("checks = %v, want %v", checks, want)
	}
	if err := Apply(fs); err != nil {
		t.Fatalf("Apply on a healthy host: %v", err)
	}
	if len(sys.sets) != 0 || len(addrs.calls) != 1 {
		t.Fatalf("Apply changed something: sets %v calls %v", sys.sets, addrs.calls)
	}
}

func TestDoctorSysctlRules(t *testing.T) {
	tests := []struct {
		key, val string
		ok       bool
		fix      string
	}{
		// arp_ignore: 1 or stricter is fine (ip-sysctl.rst: 2, 3, 8 only add restrictions).
		{"net.ipv4.conf.all.arp_ignore", "0", false, "sysctl -w net.ipv4.conf.all.arp_ignore=1"},
		{"net.ipv4.conf.eth0.arp_ignore", "0", false, "sysctl -w net.ipv4.conf.eth0.arp_ignore=1"},
		{"net.ipv4.conf.eth0.arp_ignore", "2", true, ""},
		{"net.ipv4.conf.all.arp_ignore", "8", true, ""},
		{"net.ipv4.conf.all.arp_ignore", "junk", false, "sysctl -w net.ipv4.conf.all.arp_ignore=1"},
		// arp_announce: exactly 2.
		{"net.ipv4.conf.all.arp_announce", "1", false, "sysctl -w net.ipv4.conf.all.arp_announce=2"},
		{"net.ipv4.conf.eth0.arp_announce", "0", false, "sysctl -w net.ipv4.conf.eth0.arp_announce=2"},
		// rp_filter: 0 or 2; strict 1 is fixed to loose 2.
		{"net.ipv4.conf.all.rp_filter", "1", false, "sysctl -w net.ipv4.conf.all.rp_filter=2"},
		{"net.ipv4.conf.lo.rp_filter", "1", false, "sysctl -w net.ipv4.conf.lo.rp_filter=2"},
		{"net.ipv4.conf.eth0.rp_filter", "1", false, "sysctl -w net.ipv4.conf.eth0.rp_filter=2"},
		{"net.ipv4.conf.lo.rp_filter", "2", true, ""},
		{"net.ipv4.conf.all.rp_filter", "2", true, ""},
		{"net.ipv4.conf.eth0.rp_filter", "0", true, ""},
		{"net.ipv4.conf.all.rp_filter", "3", false, "sysctl -w net.ipv4.conf.all.rp_filter=2"},
	}
	for _, tc := range tests {
		t.Run(tc.key+"="+tc.val, func(t *testing.T) {
			sys := goodHost()
			sys.vals[tc.key] = tc.val
			fs := Doctor(sys, newFakeAddrs(), DoctorInput{Iface: "eth0"})
			check := tc.key[strings.LastIndexByte(tc.key, '.')+1:]
			f := byKey(t, fs, check, tc.key)
			if f.OK != tc.ok || f.Fix != tc.fix {
				t.Fatalf("finding %+v: want OK=%v Fix=%q", f, tc.ok, tc.fix)
			}
			if f.Have != tc.key+"="+tc.val {
				t.Fatalf("Have = %q", f.Have)
			}
			if n := len(failed(fs)); n != map[bool]int{true: 0, false: 1}[tc.ok] {
				t.Fatalf("%d failures, want exactly this one: %v", n, failed(fs))
			}
			if !tc.ok {
				if err := Apply(fs); err != nil {
					t.Fatal(err)
				}
				want := tc.fix[len("sysctl -w "):]
				if !slices.Equal(sys.sets, []string{want}) {
					t.Fatalf("Apply set %v, want [%s]", sys.sets, want)
				}
				if bad := failed(Doctor(sys, newFakeAddrs(), DoctorInput{Iface: "eth0"})); len(bad) != 0 {
					t.Fatalf("still failing after Apply: %v", bad)
				}
			}
		})
	}
}

func TestDoctorWants(t *testing.T) {
	fs := Doctor(goodHost(), newFakeAddrs(), DoctorInput{Iface: "eth0"})
	for key, want := range map[string]string{
		"net.ipv4.conf.all.arp_ignore":    "net.ipv4.conf.all.arp_ignore>=1",
		"net.ipv4.conf.eth0.arp_announce": "net.ipv4.conf.eth0.arp_announce=2",
		"net.ipv4.conf.lo.rp_filter":      "net.ipv4.conf.lo.rp_filter in {0, 2}",
	} {
		check := key[strings.LastIndexByte(key, '.')+1:]
		if f := byKey(t, fs, check, key); f.Want != want {
			t.Errorf("Want = %q, want %q", f.Want, want)
		}
	}
}

func TestDoctorInterfaceNames(t *testing.T) {
	t.Run("VLAN device uses slash form", func(t *testing.T) {
		sys := goodHost()
		sys.vals["net.ipv4.conf.eth0/100.arp_ignore"] = "0"
		sys.vals["net.ipv4.conf.eth0/100.arp_announce"] = "2"
		sys.vals["net.ipv4.conf.eth0/100.rp_filter"] = "0"
		fs := Doctor(sys, newFakeAddrs(), DoctorInput{Iface: "eth0.100"})
		bad := failed(fs)
		if len(bad) != 1 || bad[0].Fix != "sysctl -w net.ipv4.conf.eth0/100.arp_ignore=1" {
			t.Fatalf("failures = %v", bad)
		}
	})
	t.Run("missing interface is unreadable, not fixable", func(t *testing.T) {
		fs := Doctor(goodHost(), newFakeAddrs(), DoctorInput{Iface: "eth9"})
		bad := failed(fs)
		if len(bad) != 3 {
			t.Fatalf("want 3 failures for eth9, got %v", bad)
		}
		for _, f := range bad {
			if f.Fix != "" || !strings.HasPrefix(f.Have, "unreadable: ") || !strings.Contains(f.Have, "eth9") {
				t.Errorf("finding %+v", f)
			}
		}
		err := Apply(fs)
		if !errors.Is(err, ErrManualFix) || !strings.Contains(err.Error(), "eth9") {
			t.Fatalf("Apply = %v, want ErrManualFix naming eth9", err)
		}
	})
	t.Run("no interface given", func(t *testing.T) {
		fs := Doctor(goodHost(), newFakeAddrs(), DoctorInput{})
		bad := failed(fs)
		if len(bad) != 3 {
			t.Fatalf("want 3 failures, got %v", bad)
		}
		for _, f := range bad {
			if f.Have != "no interface given" || f.Fix != "" {
				t.Errorf("finding %+v", f)
			}
		}
	})
	t.Run("Iface lo is checked once", func(t *testing.T) {
		fs := Doctor(goodHost(), newFakeAddrs(), DoctorInput{Iface: "lo"})
		n := 0
		for _, f := range fs {
			if f.Check == CheckRPFilter {
				n++
			}
		}
		if n != 2 {
			t.Fatalf("%d rp_filter findings for Iface lo, want 2 (all, lo)", n)
		}
	})
}

func TestDoctorVIPs(t *testing.T) {
	sys := goodHost()
	addrs := newFakeAddrs("127.0.0.1/8", "192.0.2.200/32", "192.0.2.201/24")
	fs := Doctor(sys, addrs, DoctorInput{Iface: "eth0", VIPs: ips("192.0.2.200", "192.0.2.201", "192.0.2.201")})
	bad := failed(fs)
	if len(bad) != 1 {
		t.Fatalf("failures = %v, want one for 192.0.2.201", bad)
	}
	f := bad[0]
	if f.Check != CheckVIPOnLo || f.Have != "192.0.2.201/32 missing from lo" || f.Want != "192.0.2.201/32 on lo" ||
		f.Fix != "ip address add 192.0.2.201/32 dev lo" {
		t.Fatalf("finding %+v", f)
	}
	if err := Apply(fs); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(addrs.calls[len(addrs.calls)-1:], []string{"add lo 192.0.2.201/32"}) {
		t.Fatalf("calls %v", addrs.calls)
	}
	if bad := failed(Doctor(sys, addrs, DoctorInput{Iface: "eth0", VIPs: ips("192.0.2.200", "192.0.2.201")})); len(bad) != 0 {
		t.Fatalf("still failing: %v", bad)
	}

	addrs.listErr = errors.New("netlink gone")
	fs = Doctor(sys, addrs, DoctorInput{Iface: "eth0", VIPs: ips("192.0.2.200")})
	bad = failed(fs)
	if len(bad) != 1 || !strings.Contains(bad[0].Have, "netlink gone") || bad[0].Fix != "" {
		t.Fatalf("failures = %v", bad)
	}
	if err := Apply(fs); !errors.Is(err, ErrManualFix) {
		t.Fatalf("Apply = %v, want ErrManualFix", err)
	}

	fs = Doctor(sys, newFakeAddrs(), DoctorInput{Iface: "eth0", VIPs: []netip.Addr{{}}})
	if bad := failed(fs); len(bad) != 1 || bad[0].Check != CheckVIPOnLo || bad[0].Fix != "" {
		t.Fatalf("invalid VIP: failures = %v", bad)
	}
}

// goodHost6 is goodHost with the IPv6 settings an IPv6 VIP needs.
func goodHost6() *fakeSysctl {
	sys := goodHost()
	for k, v := range map[string]string{
		"net.ipv6.conf.all.proxy_ndp":     "0",
		"net.ipv6.conf.eth0.proxy_ndp":    "0",
		"net.ipv6.conf.lo.proxy_ndp":      "1", // not looked at: solicitations arrive on eth0
		"net.ipv6.conf.lo.disable_ipv6":   "0",
		"net.ipv6.conf.eth0.disable_ipv6": "0",
		"net.ipv6.conf.all.disable_ipv6":  "1", // not looked at: the per-device values apply
		"net.ipv6.conf.all.forwarding":    "1", // allowed: without proxy_ndp, forwarding answers nothing
		"net.ipv6.conf.lo.accept_dad":     "1", // allowed: lo does no DAD
	} {
		sys.vals[k] = v
	}
	return sys
}

func TestDoctorIPv6(t *testing.T) {
	addrs := newFakeAddrs("127.0.0.1/8", "::1/128", "192.0.2.200/32", "2001:db8::200/128")
	in := DoctorInput{Iface: "eth0", VIPs: ips("192.0.2.200", "2001:db8::200")}
	fs := Doctor(goodHost6(), addrs, in)
	if bad := failed(fs); len(bad) != 0 {
		t.Fatalf("unexpected failures: %v", bad)
	}
	var checks []string
	for _, f := range fs {
		checks = append(checks, f.Check)
	}
	want := []string{"arp_ignore", "arp_ignore", "arp_announce", "arp_announce", "rp_filter", "rp_filter", "rp_filter",
		"disable_ipv6", "disable_ipv6", "proxy_ndp", "proxy_ndp", "vip_on_lo", "vip_on_lo", "port_range"}
	if !slices.Equal(checks, want) {
		t.Fatalf("checks = %v, want %v", checks, want)
	}
	if f := byKey(t, fs, CheckVIPOnLo, "2001:db8::200/128"); !f.OK || f.Have != "2001:db8::200/128 on lo" {
		t.Fatalf("IPv6 VIP finding %+v", f)
	}
	// Without an IPv6 VIP the IPv6 settings are not looked at (TestDoctorAllGood
	// checks the list), so a host with IPv6 disabled passes.
	sys := goodHost()
	sys.vals["net.ipv6.conf.lo.disable_ipv6"] = "1"
	if bad := failed(Doctor(sys, addrs, DoctorInput{Iface: "eth0", VIPs: ips("192.0.2.200")})); len(bad) != 0 {
		t.Fatalf("IPv4-only VIPs: failures %v", bad)
	}
	// No IPv6 at all (ipv6.disable=1): unreadable, fixed by hand.
	fs = Doctor(goodHost(), addrs, in)
	bad := failed(fs)
	if len(bad) != 4 {
		t.Fatalf("without /proc/sys/net/ipv6: failures %v, want 4", bad)
	}
	for _, f := range bad {
		if f.Fix != "" || !strings.HasPrefix(f.Have, "unreadable: ") {
			t.Errorf("finding %+v", f)
		}
	}
	if err := Apply(fs); !errors.Is(err, ErrManualFix) {
		t.Fatalf("Apply = %v, want ErrManualFix", err)
	}
}

func TestDoctorIPv6Rules(t *testing.T) {
	tests := []struct {
		key, val string
		ok       bool
		fix      string
	}{
		{"net.ipv6.conf.all.proxy_ndp", "1", false, "sysctl -w net.ipv6.conf.all.proxy_ndp=0"},
		{"net.ipv6.conf.eth0.proxy_ndp", "1", false, "sysctl -w net.ipv6.conf.eth0.proxy_ndp=0"},
		{"net.ipv6.conf.eth0.proxy_ndp", "junk", false, "sysctl -w net.ipv6.conf.eth0.proxy_ndp=0"},
		{"net.ipv6.conf.lo.disable_ipv6", "1", false, "sysctl -w net.ipv6.conf.lo.disable_ipv6=0"},
		{"net.ipv6.conf.eth0.disable_ipv6", "1", false, "sysctl -w net.ipv6.conf.eth0.disable_ipv6=0"},
		{"net.ipv6.conf.eth0.disable_ipv6", "0", true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.key+"="+tc.val, func(t *testing.T) {
			sys := goodHost6()
			sys.vals[tc.key] = tc.val
			addrs := newFakeAddrs("2001:db8::200/128")
			in := DoctorInput{Iface: "eth0", VIPs: ips("2001:db8::200")}
			fs := Doctor(sys, addrs, in)
			check := tc.key[strings.LastIndexByte(tc.key, '.')+1:]
			f := byKey(t, fs, check, tc.key)
			if f.OK != tc.ok || f.Fix != tc.fix || f.Have != tc.key+"="+tc.val {
				t.Fatalf("finding %+v: want OK=%v Fix=%q", f, tc.ok, tc.fix)
			}
			if n := len(failed(fs)); n != map[bool]int{true: 0, false: 1}[tc.ok] {
				t.Fatalf("%d failures, want exactly this one: %v", n, failed(fs))
			}
			if tc.ok {
				return
			}
			if err := Apply(fs); err != nil {
				t.Fatal(err)
			}
			if want := tc.fix[len("sysctl -w "):]; !slices.Equal(sys.sets, []string{want}) {
				t.Fatalf("Apply set %v, want [%s]", sys.sets, want)
			}
			if bad := failed(Doctor(sys, addrs, in)); len(bad) != 0 {
				t.Fatalf("still failing after Apply: %v", bad)
			}
		})
	}
	t.Run("Iface lo checks disable_ipv6 once", func(t *testing.T) {
		fs := Doctor(goodHost6(), newFakeAddrs(), DoctorInput{Iface: "lo", VIPs: ips("2001:db8::200")})
		n := 0
		for _, f := range fs {
			if f.Check == CheckDisableIPv6 {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d disable_ipv6 findings for Iface lo, want 1", n)
		}
	})
	t.Run("VLAN device uses slash form", func(t *testing.T) {
		sys := goodHost6()
		sys.vals["net.ipv4.conf.eth0/100.arp_ignore"] = "1"
		sys.vals["net.ipv4.conf.eth0/100.arp_announce"] = "2"
		sys.vals["net.ipv4.conf.eth0/100.rp_filter"] = "2"
		sys.vals["net.ipv6.conf.eth0/100.disable_ipv6"] = "0"
		sys.vals["net.ipv6.conf.eth0/100.proxy_ndp"] = "1"
		fs := Doctor(sys, newFakeAddrs("2001:db8::200/128"), DoctorInput{Iface: "eth0.100", VIPs: ips("2001:db8::200")})
		if bad := failed(fs); len(bad) != 1 || bad[0].Fix != "sysctl -w net.ipv6.conf.eth0/100.proxy_ndp=0" {
			t.Fatalf("failures = %v", bad)
		}
	})
}

func TestDoctorIPv6VIPMissing(t *testing.T) {
	addrs := newFakeAddrs("127.0.0.1/8", "::1/128", "2001:db8::201/64")
	fs := Doctor(goodHost6(), addrs, DoctorInput{Iface: "eth0", VIPs: ips("2001:db8::201")})
	bad := failed(fs)
	if len(bad) != 1 {
		t.Fatalf("failures = %v, want one for 2001:db8::201", bad)
	}
	if f := bad[0]; f.Check != CheckVIPOnLo || f.Have != "2001:db8::201/128 missing from lo" || f.Want != "2001:db8::201/128 on lo" ||
		f.Fix != "ip address add 2001:db8::201/128 dev lo nodad" {
		t.Fatalf("finding %+v", f)
	}
	if err := Apply(fs); err != nil {
		t.Fatal(err)
	}
	if got := addrs.calls[len(addrs.calls)-1]; got != "add lo 2001:db8::201/128" {
		t.Fatalf("last call %q", got)
	}
}

func TestDoctorPortRange(t *testing.T) {
	tests := []struct {
		name   string
		have   string
		others []PortRange
		ok     bool
		fix    string
		inHave string
	}{
		{"no others: anything goes", "32768\t60999", nil, true, "", ""},
		{"disjoint", "50000\t54000", []PortRange{{55000, 59000}}, true, "", ""},
		{"adjacent is disjoint", "50000\t54999", []PortRange{{55000, 59000}}, true, "", ""},
		{"overlap by one port", "50000\t55000", []PortRange{{55000, 59000}}, false,
			`sysctl -w net.ipv4.ip_local_port_range="32768 36767"`, "overlaps 55000-59000"},
		{"default range overlaps seed ranges", "32768\t60999", []PortRange{{50000, 54000}, {55000, 59000}}, false,
			`sysctl -w net.ipv4.ip_local_port_range="32768 36767"`, "overlaps 50000-54000, 55000-59000"},
		{"default range, no overlap, still warned", "32768\t60999", []PortRange{{10000, 14000}}, false,
			`sysctl -w net.ipv4.ip_local_port_range="32768 36767"`, "kernel default"},
		{"unreadable value", "banana", []PortRange{{10000, 14000}}, false, "", "unreadable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sys := goodHost()
			sys.vals[portRangeKey] = tc.have
			fs := Doctor(sys, newFakeAddrs(), DoctorInput{Iface: "eth0", OtherPortRanges: tc.others})
			f := fs[len(fs)-1]
			if f.Check != CheckPortRange || f.OK != tc.ok || f.Fix != tc.fix || !strings.Contains(f.Have, tc.inHave) {
				t.Fatalf("finding %+v, want OK=%v Fix=%q Have containing %q", f, tc.ok, tc.fix, tc.inHave)
			}
			if !tc.ok {
				err := Apply(fs)
				if !errors.Is(err, ErrManualFix) {
					t.Fatalf("Apply = %v, want ErrManualFix", err)
				}
				if tc.fix != "" && !strings.Contains(err.Error(), "Port Allocation TCP") {
					t.Fatalf("Apply error %q does not mention CGP's setting", err)
				}
				if len(sys.sets) != 0 {
					t.Fatalf("Apply changed the port range: %v", sys.sets)
				}
			}
		})
	}
}

func TestApplyContinuesPastErrors(t *testing.T) {
	sys := goodHost()
	sys.vals["net.ipv4.conf.all.arp_ignore"] = "0"
	sys.vals["net.ipv4.conf.eth0.arp_ignore"] = "0"
	boom := errors.New("read-only /proc")
	sys.failSet = map[string]error{"net.ipv4.conf.all.arp_ignore": boom}
	fs := Doctor(sys, newFakeAddrs(), DoctorInput{Iface: "eth0"})
	err := Apply(fs)
	if !errors.Is(err, boom) || errors.Is(err, ErrManualFix) {
		t.Fatalf("Apply = %v, want only %v", err, boom)
	}
	if !strings.Contains(err.Error(), "sysctl -w net.ipv4.conf.all.arp_ignore=1") {
		t.Fatalf("error %q does not name the fix", err)
	}
	if sys.vals["net.ipv4.conf.eth0.arp_ignore"] != "1" {
		t.Fatal("Apply stopped at the first error")
	}
}

func TestFindingString(t *testing.T) {
	ok := Finding{Check: "arp_ignore", OK: true, Have: "net.ipv4.conf.all.arp_ignore=1"}
	if s := ok.String(); s != "ok   arp_ignore: net.ipv4.conf.all.arp_ignore=1" {
		t.Errorf("String = %q", s)
	}
	bad := Finding{Check: "rp_filter", Have: "net.ipv4.conf.lo.rp_filter=1", Want: "net.ipv4.conf.lo.rp_filter in {0, 2}",
		Fix: "sysctl -w net.ipv4.conf.lo.rp_filter=2"}
	want := "FAIL rp_filter: have net.ipv4.conf.lo.rp_filter=1, want net.ipv4.conf.lo.rp_filter in {0, 2}; fix: sysctl -w net.ipv4.conf.lo.rp_filter=2"
	if s := bad.String(); s != want {
		t.Errorf("String = %q, want %q", s, want)
	}
}

func TestParsePortRange(t *testing.T) {
	good := map[string]PortRange{
		"50000-54000":    {50000, 54000},
		"32768\t60999":   {32768, 60999},
		" 1024 65535 \n": {1024, 65535},
		"5 - 5":          {5, 5},
	}
	for s, want := range good {
		if got, err := ParsePortRange(s); err != nil || got != want {
			t.Errorf("ParsePortRange(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "1", "1-2-3", "2-1", "0-10", "-5 10", "1 2 3", "70000-70001", "a-b", "+1-2", "1-"} {
		if got, err := ParsePortRange(s); !errors.Is(err, ErrBadPortRange) {
			t.Errorf("ParsePortRange(%q) = %v, %v; want ErrBadPortRange", s, got, err)
		}
	}
}

func TestLocalPortRange(t *testing.T) {
	sys := goodHost()
	if r, err := LocalPortRange(sys); err != nil || r != (PortRange{50000, 54000}) {
		t.Fatalf("LocalPortRange = %v, %v", r, err)
	}
	delete(sys.vals, portRangeKey)
	if _, err := LocalPortRange(sys); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want ErrNotExist", err)
	}
}

func TestPortRangeOverlaps(t *testing.T) {
	a := PortRange{100, 200}
	for _, tc := range []struct {
		b    PortRange
		want bool
	}{
		{PortRange{200, 300}, true}, {PortRange{201, 300}, false}, {PortRange{1, 99}, false},
		{PortRange{1, 100}, true}, {PortRange{150, 160}, true}, {PortRange{1, 1000}, true},
	} {
		if a.Overlaps(tc.b) != tc.want || tc.b.Overlaps(a) != tc.want {
			t.Errorf("%v overlaps %v: want %v", a, tc.b, tc.want)
		}
	}
}

func TestFreePortRange(t *testing.T) {
	tests := []struct {
		name  string
		taken []PortRange
		width int
		want  PortRange
		ok    bool
	}{
		{"nothing taken", nil, 4000, PortRange{32768, 36767}, true},
		{"seed ranges", []PortRange{{50000, 54000}, {55000, 59000}}, 4000, PortRange{32768, 36767}, true},
		{"start of area taken", []PortRange{{32768, 40000}}, 4000, PortRange{40002, 44001}, true},
		{"gap between others", []PortRange{{32768, 40000}, {44003, 65535}}, 4000, PortRange{40002, 44001}, true},
		{"gap one too small", []PortRange{{32768, 40000}, {44001, 65535}}, 4000, PortRange{1024, 5023}, true},
		{"unsorted input", []PortRange{{44001, 65535}, {1024, 2000}, {32768, 40000}}, 4000, PortRange{2002, 6001}, true},
		{"tail of area", []PortRange{{32768, 61000}}, 4000, PortRange{61002, 65001}, true},
		{"everything taken", []PortRange{{1, 65535}}, 2, PortRange{}, false},
		{"too wide", nil, 70000, PortRange{}, false},
		{"zero width", nil, 0, PortRange{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := FreePortRange(tc.taken, tc.width)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("FreePortRange = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
			if !ok {
				return
			}
			if int(got.Hi)-int(got.Lo)+1 != tc.width || got.Lo < 1024 {
				t.Fatalf("range %v has wrong width or is privileged", got)
			}
			for _, r := range tc.taken {
				if got.Overlaps(r) {
					t.Fatalf("range %v overlaps taken %v", got, r)
				}
			}
		})
	}
}
