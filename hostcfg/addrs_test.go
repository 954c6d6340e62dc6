package hostcfg

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func ips(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func changes(pairs ...string) []Change {
	var out []Change
	for i := 0; i < len(pairs); i += 2 {
		out = append(out, Change{Action: pairs[i], Addr: netip.MustParseAddr(pairs[i+1])})
	}
	return out
}

func TestVIPsUp(t *testing.T) {
	// 192.0.2.201 is on lo, but as a /24: like the seed's ifvip-utils, only /32
	// aliases count, so the /32 is still added.
	f := newFakeAddrs("127.0.0.1/8", "::1/128", "192.0.2.200/32", "192.0.2.201/24")
	vips := ips("192.0.2.200", "192.0.2.201", "192.0.2.202", "192.0.2.200", "::ffff:192.0.2.203")
	got, err := VIPsUp(f, vips)
	if err != nil {
		t.Fatal(err)
	}
	want := changes("keep", "192.0.2.200", "add", "192.0.2.201", "add", "192.0.2.202", "add", "192.0.2.203")
	if !slices.Equal(got, want) {
		t.Fatalf("changes = %v, want %v", got, want)
	}
	wantLo := prefixes("127.0.0.1/8", "::1/128", "192.0.2.200/32", "192.0.2.201/24", "192.0.2.201/32", "192.0.2.202/32", "192.0.2.203/32")
	if !slices.Equal(f.ifs["lo"], wantLo) {
		t.Fatalf("lo = %v, want %v", f.ifs["lo"], wantLo)
	}

	// Idempotent: a second run only keeps.
	f.calls = nil
	got, err = VIPsUp(f, vips)
	if err != nil {
		t.Fatal(err)
	}
	want = changes("keep", "192.0.2.200", "keep", "192.0.2.201", "keep", "192.0.2.202", "keep", "192.0.2.203")
	if !slices.Equal(got, want) {
		t.Fatalf("second run changes = %v, want %v", got, want)
	}
	if !slices.Equal(f.calls, []string{"list lo"}) {
		t.Fatalf("second run made calls %v, want only a list", f.calls)
	}
}

func TestVIPsUpIPv6(t *testing.T) {
	// 2001:db8::201 is on lo as a /64: only /128s count, as /32s for IPv4.
	f := newFakeAddrs("127.0.0.1/8", "::1/128", "2001:db8::200/128", "2001:db8::201/64", "192.0.2.200/32")
	vips := ips("192.0.2.200", "2001:db8::200", "2001:db8::201", "192.0.2.201", "2001:db8::202", "2001:db8::200")
	got, err := VIPsUp(f, vips)
	if err != nil {
		t.Fatal(err)
	}
	want := changes("keep", "192.0.2.200", "keep", "2001:db8::200", "add", "2001:db8::201", "add", "192.0.2.201", "add", "2001:db8::202")
	if !slices.Equal(got, want) {
		t.Fatalf("changes = %v, want %v", got, want)
	}
	if !slices.Equal(f.calls, []string{"list lo", "add lo 2001:db8::201/128", "add lo 192.0.2.201/32", "add lo 2001:db8::202/128"}) {
		t.Fatalf("calls = %v", f.calls)
	}
	f.calls = nil
	if got, err := VIPsUp(f, vips); err != nil || len(f.calls) != 1 || got[2].Action != "keep" {
		t.Fatalf("second VIPsUp = %v, %v, calls %v; want only keeps", got, err, f.calls)
	}
	present, missing, err := VIPsList(f, ips("2001:db8::203", "2001:db8::201", "192.0.2.200"))
	if err != nil || !slices.Equal(present, ips("2001:db8::201", "192.0.2.200")) || !slices.Equal(missing, ips("2001:db8::203")) {
		t.Fatalf("VIPsList = %v, %v, %v", present, missing, err)
	}
	got, err = VIPsDown(f, ips("2001:db8::200", "2001:db8::203", "192.0.2.201"))
	if err != nil || !slices.Equal(got, changes("del", "2001:db8::200", "absent", "2001:db8::203", "del", "192.0.2.201")) {
		t.Fatalf("VIPsDown = %v, %v", got, err)
	}
	wantLo := prefixes("127.0.0.1/8", "::1/128", "2001:db8::201/64", "192.0.2.200/32", "2001:db8::201/128", "2001:db8::202/128")
	if !slices.Equal(f.ifs["lo"], wantLo) {
		t.Fatalf("lo = %v, want %v", f.ifs["lo"], wantLo)
	}
}

func TestVIPsUpErrors(t *testing.T) {
	t.Run("zoned IPv6 VIP rejected before any change", func(t *testing.T) {
		f := newFakeAddrs()
		_, err := VIPsUp(f, ips("192.0.2.1", "2001:db8::1", "fe80::1%eth0"))
		if !errors.Is(err, ErrBadVIP) {
			t.Fatalf("err = %v, want ErrBadVIP", err)
		}
		if len(f.calls) != 0 {
			t.Fatalf("calls %v made despite invalid input", f.calls)
		}
	})
	t.Run("invalid zero address", func(t *testing.T) {
		if _, err := VIPsDown(newFakeAddrs(), []netip.Addr{{}}); !errors.Is(err, ErrBadVIP) {
			t.Fatalf("err = %v, want ErrBadVIP", err)
		}
	})
	t.Run("list failure", func(t *testing.T) {
		f := newFakeAddrs()
		boom := errors.New("netlink down")
		f.listErr = boom
		got, err := VIPsUp(f, ips("192.0.2.1"))
		if !errors.Is(err, boom) || got != nil {
			t.Fatalf("VIPsUp = %v, %v; want nil, %v", got, err, boom)
		}
	})
	t.Run("add failure returns changes so far", func(t *testing.T) {
		f := newFakeAddrs()
		f.failAdd = netip.MustParsePrefix("192.0.2.2/32")
		got, err := VIPsUp(f, ips("192.0.2.1", "192.0.2.2", "192.0.2.3"))
		if !errors.Is(err, errFakeAdd) {
			t.Fatalf("err = %v, want %v", err, errFakeAdd)
		}
		if want := changes("add", "192.0.2.1"); !slices.Equal(got, want) {
			t.Fatalf("changes = %v, want %v", got, want)
		}
		if slices.Contains(f.calls, "add lo 192.0.2.3/32") {
			t.Fatal("continued after a failed add")
		}
	})
}

func TestVIPsDown(t *testing.T) {
	f := newFakeAddrs("127.0.0.1/8", "::1/128", "192.0.2.200/32", "192.0.2.201/24", "198.51.100.9/32", "192.0.2.202/32")
	got, err := VIPsDown(f, ips("192.0.2.200", "192.0.2.201", "192.0.2.202", "192.0.2.203", "192.0.2.202"))
	if err != nil {
		t.Fatal(err)
	}
	want := changes("del", "192.0.2.200", "absent", "192.0.2.201", "del", "192.0.2.202", "absent", "192.0.2.203")
	if !slices.Equal(got, want) {
		t.Fatalf("changes = %v, want %v", got, want)
	}
	// Unlisted aliases, loopback and other prefix lengths stay.
	wantLo := prefixes("127.0.0.1/8", "::1/128", "192.0.2.201/24", "198.51.100.9/32")
	if !slices.Equal(f.ifs["lo"], wantLo) {
		t.Fatalf("lo = %v, want %v", f.ifs["lo"], wantLo)
	}
	got, err = VIPsDown(f, ips("192.0.2.200"))
	if err != nil || !slices.Equal(got, changes("absent", "192.0.2.200")) {
		t.Fatalf("second VIPsDown = %v, %v", got, err)
	}
}

func TestVIPsList(t *testing.T) {
	f := newFakeAddrs("127.0.0.1/8", "192.0.2.200/32", "192.0.2.201/24", "192.0.2.203/32")
	present, missing, err := VIPsList(f, ips("192.0.2.203", "192.0.2.200", "192.0.2.201", "192.0.2.202", "192.0.2.200"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(present, ips("192.0.2.203", "192.0.2.200")) {
		t.Fatalf("present = %v", present)
	}
	if !slices.Equal(missing, ips("192.0.2.201", "192.0.2.202")) {
		t.Fatalf("missing = %v", missing)
	}
	if _, _, err := VIPsList(f, []netip.Addr{{}}); !errors.Is(err, ErrBadVIP) {
		t.Fatalf("err = %v, want ErrBadVIP", err)
	}
	f.listErr = errors.New("x")
	if _, _, err := VIPsList(f, ips("192.0.2.1")); !errors.Is(err, f.listErr) {
		t.Fatalf("err = %v, want list error", err)
	}
}

func TestDryRun(t *testing.T) {
	f := newFakeAddrs("127.0.0.1/8", "192.0.2.200/32")
	var logged []string
	d := DryRun(f, func(s string) { logged = append(logged, s) })

	got, err := VIPsUp(d, ips("192.0.2.200", "192.0.2.201"))
	if err != nil {
		t.Fatal(err)
	}
	if want := changes("keep", "192.0.2.200", "add", "192.0.2.201"); !slices.Equal(got, want) {
		t.Fatalf("dry-run changes = %v, want %v", got, want)
	}
	got, err = VIPsDown(d, ips("192.0.2.200", "192.0.2.202"))
	if err != nil {
		t.Fatal(err)
	}
	if want := changes("del", "192.0.2.200", "absent", "192.0.2.202"); !slices.Equal(got, want) {
		t.Fatalf("dry-run changes = %v, want %v", got, want)
	}
	got, err = VIPsUp(d, ips("2001:db8::200"))
	if err != nil || !slices.Equal(got, changes("add", "2001:db8::200")) {
		t.Fatalf("dry-run IPv6 changes = %v, %v", got, err)
	}
	wantLog := []string{"would add 192.0.2.201/32 to lo", "would delete 192.0.2.200/32 from lo", "would add 2001:db8::200/128 to lo (nodad)"}
	if !slices.Equal(logged, wantLog) {
		t.Fatalf("log = %q, want %q", logged, wantLog)
	}
	if !slices.Equal(f.ifs["lo"], prefixes("127.0.0.1/8", "192.0.2.200/32")) {
		t.Fatalf("dry run changed lo: %v", f.ifs["lo"])
	}
	for _, c := range f.calls {
		if c != "list lo" {
			t.Fatalf("dry run reached the real manager with %q", c)
		}
	}
	// A nil log is allowed.
	if err := DryRun(f, nil).Add("lo", netip.MustParsePrefix("192.0.2.9/32")); err != nil {
		t.Fatal(err)
	}
}

func TestAddFlags(t *testing.T) {
	for p, want := range map[string]int{
		"192.0.2.200/32": 0, "2001:db8::200/128": unix.IFA_F_NODAD, "::ffff:192.0.2.1/128": 0,
	} {
		if got := addFlags(netip.MustParsePrefix(p)); got != want {
			t.Errorf("addFlags(%s) = %#x, want %#x", p, got, want)
		}
	}
}

func TestIPNetConversion(t *testing.T) {
	for _, s := range []string{"192.0.2.200/32", "127.0.0.1/8", "::1/128", "2001:db8::1/64"} {
		p := netip.MustParsePrefix(s)
		n := prefixToIPNet(p)
		back, ok := ipNetToPrefix(n)
		if !ok || back != p {
			t.Errorf("%s -> %v -> %v, %v", s, n, back, ok)
		}
	}
	// netlink may report IPv4 addresses in 16-byte form.
	n := &net.IPNet{IP: net.ParseIP("192.0.2.7"), Mask: net.CIDRMask(32, 32)}
	if p, ok := ipNetToPrefix(n); !ok || p != netip.MustParsePrefix("192.0.2.7/32") {
		t.Errorf("16-byte IPv4: %v, %v", p, ok)
	}
	if _, ok := ipNetToPrefix(nil); ok {
		t.Error("nil IPNet converted")
	}
	if _, ok := ipNetToPrefix(&net.IPNet{IP: net.ParseIP("192.0.2.7"), Mask: net.CIDRMask(64, 128)}); ok {
		t.Error("IPv4 address with an IPv6 mask converted")
	}
}
