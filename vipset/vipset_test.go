package vipset

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func addrs(t testing.TB, ss ...string) []netip.Addr {
	t.Helper()
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// rangeAddrs returns n consecutive addresses starting at first.
func rangeAddrs(first string, n int) []netip.Addr {
	a := netip.MustParseAddr(first)
	out := make([]netip.Addr, 0, n)
	for i := 0; i < n; i++ {
		out = append(out, a)
		a = a.Next()
	}
	return out
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []netip.Addr
	}{
		{"empty file", "", nil},
		{"only comments and blanks", "# a\n\n   \n\t# b\n", nil},
		{"single address", "72.20.112.45\n", addrs(t, "72.20.112.45")},
		{"no final newline", "72.20.112.45", addrs(t, "72.20.112.45")},
		{"seed example", "# single addresses\n72.20.112.45\n72.20.112.46\n# a subnetwork\n72.20.112.48/29\n",
			append(addrs(t, "72.20.112.45", "72.20.112.46"), rangeAddrs("72.20.112.48", 8)...)},
		{"slash 29 is 8 addresses incl network and broadcast", "192.0.2.8/29", rangeAddrs("192.0.2.8", 8)},
		{"slash 24 is 256 addresses", "198.51.100.0/24", rangeAddrs("198.51.100.0", 256)},
		{"slash 32 subnet", "192.0.2.7/32", addrs(t, "192.0.2.7")},
		{"slash 31", "192.0.2.6/31", addrs(t, "192.0.2.6", "192.0.2.7")},
		{"top of address space does not wrap", "255.255.255.252/30",
			addrs(t, "255.255.255.252", "255.255.255.253", "255.255.255.254", "255.255.255.255")},
		{"surrounding whitespace", "  \t192.0.2.1 \t\r\n", addrs(t, "192.0.2.1")},
		{"CRLF line ends", "192.0.2.1\r\n192.0.2.2\r\n", addrs(t, "192.0.2.1", "192.0.2.2")},
		{"trailing comment", "192.0.2.1   # web\n192.0.2.2# tight\n192.0.2.4/30 #net\n",
			addrs(t, "192.0.2.1", "192.0.2.2", "192.0.2.4", "192.0.2.5", "192.0.2.6", "192.0.2.7")},
		{"indented comment", "   # 10.0.0.0/8 would be wrong but is commented\n192.0.2.1", addrs(t, "192.0.2.1")},
		{"duplicates and overlaps merge", "192.0.2.3\n192.0.2.0/30\n192.0.2.3\n",
			addrs(t, "192.0.2.0", "192.0.2.1", "192.0.2.2", "192.0.2.3")},
		{"sorted regardless of file order", "198.51.100.1\n192.0.2.9\n192.0.2.1\n",
			addrs(t, "192.0.2.1", "192.0.2.9", "198.51.100.1")},
		{"ipv6 address", "2001:db8::200\n", addrs(t, "2001:db8::200")},
		{"ipv6 /128", "2001:db8::200/128", addrs(t, "2001:db8::200")},
		{"ipv6 /127", "2001:db8::200/127", addrs(t, "2001:db8::200", "2001:db8::201")},
		{"ipv6 /124 is 16 addresses", "2001:db8::300/124", rangeAddrs("2001:db8::300", 16)},
		{"ipv6 /120 is 256 addresses", "2001:db8:0:1::ff00/120", rangeAddrs("2001:db8:0:1::ff00", 256)},
		{"ipv6 top of address space does not carry", "fe00::ffff:ffff:ffff:ff00/120",
			rangeAddrs("fe00::ffff:ffff:ffff:ff00", 256)},
		{"ipv6 spellings of one address merge", "2001:DB8::200\n2001:0db8:0:0:0:0:0:200 # long form\n",
			addrs(t, "2001:db8::200")},
		{"ipv6 with embedded dotted quad", "64:ff9b::192.0.2.1", addrs(t, "64:ff9b::c000:201")},
		{"ipv6 trailing comment", "2001:db8::1#x\n2001:db8::2   # y\n", addrs(t, "2001:db8::1", "2001:db8::2")},
		{"mixed: IPv4 first, each family ascending", "2001:db8::2\n192.0.2.9\n2001:db8::1\n192.0.2.1\n",
			addrs(t, "192.0.2.1", "192.0.2.9", "2001:db8::1", "2001:db8::2")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse(strings.NewReader(tc.in), "vipaddrs")
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := s.Addrs(); !slices.Equal(got, tc.want) {
				t.Fatalf("Addrs = %v, want %v", got, tc.want)
			}
			if s.Len() != len(tc.want) {
				t.Fatalf("Len = %d, want %d", s.Len(), len(tc.want))
			}
			if !s.Equal(New(tc.want...)) {
				t.Fatalf("not Equal to New(%v)", tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		line     int
		sentinel error
		msg      string // must appear in Error()
	}{
		{"mask /23", "192.0.2.1\n10.0.0.0/23\n", 2, ErrIncorrectMask, "vipaddrs:2: Incorrect mask: 10.0.0.0/23"},
		{"mask /16", "10.0.0.0/16", 1, ErrIncorrectMask, "Incorrect mask"},
		{"mask /0", "0.0.0.0/0", 1, ErrIncorrectMask, "Incorrect mask"},
		{"mask /33", "192.0.2.0/33", 1, ErrIncorrectMask, "Incorrect mask"},
		{"mask /100", "192.0.2.0/100", 1, ErrIncorrectMask, "Incorrect mask"},
		{"host bits", "# x\n\n10.0.0.5/29\n", 3, ErrHostBits, "vipaddrs:3: subnet address has host bits set: 10.0.0.5/29 (the network address would be 10.0.0.0/29)"},
		{"host bits /24", "192.0.2.1/24", 1, ErrHostBits, "would be 192.0.2.0/24"},
		{"ipv6 /119", "2001:db8::1\n2001:db8::/119\n", 2, ErrIncorrectMask, "vipaddrs:2: Incorrect mask: 2001:db8::/119 (mask must be /120 to /128)"},
		{"ipv6 /64", "2001:db8::/64", 1, ErrIncorrectMask, "Incorrect mask"},
		{"ipv6 /0", "::/0", 1, ErrIncorrectMask, "Incorrect mask"},
		{"ipv6 /129", "2001:db8::1/129", 1, ErrIncorrectMask, "Incorrect mask"},
		{"ipv6 /200", "2001:db8::1/200", 1, ErrIncorrectMask, "Incorrect mask"},
		{"ipv4 mask /64 on ipv4", "192.0.2.0/64", 1, ErrIncorrectMask, "(mask must be /24 to /32)"},
		{"ipv6 host bits", "2001:db8::201/120", 1, ErrHostBits, "vipaddrs:1: subnet address has host bits set: 2001:db8::201/120 (the network address would be 2001:db8::200/120)"},
		{"ipv6 host bits /127", "2001:db8::1/127", 1, ErrHostBits, "would be 2001:db8::/127"},
		{"ipv4-mapped ipv6", "::ffff:192.0.2.1", 1, ErrMapped, "vipaddrs:1: IPv4-mapped IPv6 address: ::ffff:192.0.2.1 (write it as IPv4: 192.0.2.1)"},
		{"ipv4-mapped ipv6 prefix", "::ffff:192.0.2.0/120", 1, ErrMapped, "(write it as IPv4: 192.0.2.0/24)"},
		{"ipv4-mapped ipv6 hex", "::ffff:c000:201", 1, ErrMapped, "write it as IPv4: 192.0.2.1"},
		{"ipv4-mapped ipv6 bad mask", "::ffff:192.0.2.0/x", 1, ErrMapped, "(write it as IPv4)"},
		{"ipv6 with zone", "fe80::1%lo", 1, ErrSyntax, "a VIP has no zone"},
		{"global ipv6 with zone", "2001:db8::1%eth0", 1, ErrSyntax, "a VIP has no zone"},
		{"ipv6 link-local", "fe80::1", 1, ErrNotUnicast, "vipaddrs:1: not a unicast address usable as a VIP: fe80::1"},
		{"ipv6 multicast", "ff02::1", 1, ErrNotUnicast, "not a unicast"},
		{"ipv6 multicast prefix", "ff05::100/120", 1, ErrNotUnicast, "not a unicast"},
		{"ipv6 loopback", "::1", 1, ErrNotUnicast, "not a unicast"},
		{"ipv6 unspecified", "::", 1, ErrNotUnicast, "not a unicast"},
		{"ipv6 unspecified prefix", "::/120", 1, ErrNotUnicast, "not a unicast"},
		{"ipv6 garbage", "2001:db8:::1", 1, ErrSyntax, "is not an IPv4 or IPv6 address or subnet"},
		{"ipv6 in brackets", "[2001:db8::1]", 1, ErrSyntax, "syntax error"},
		{"ipv6 two entries", "2001:db8::1 2001:db8::2", 1, ErrSyntax, "one address or subnet per line"},
		{"ipv6 leading zero mask", "2001:db8::/0120", 1, ErrSyntax, "syntax error"},
		{"ipv6 empty mask", "2001:db8::1/", 1, ErrSyntax, "syntax error"},
		{"garbage", "hello", 1, ErrSyntax, "vipaddrs:1: syntax error"},
		{"two entries on a line", "192.0.2.1 192.0.2.2", 1, ErrSyntax, "one address or subnet per line"},
		{"short address", "192.0.2", 1, ErrSyntax, "syntax error"},
		{"octet too big", "192.0.2.256", 1, ErrSyntax, "syntax error"},
		{"leading zero octet", "192.0.2.010", 1, ErrSyntax, "syntax error"},
		{"empty mask", "192.0.2.0/", 1, ErrSyntax, "syntax error"},
		{"signed mask", "192.0.2.0/+24", 1, ErrSyntax, "syntax error"},
		{"leading zero mask", "192.0.2.0/024", 1, ErrSyntax, "syntax error"},
		{"hex mask", "192.0.2.0/0x18", 1, ErrSyntax, "syntax error"},
		{"netmask form", "192.0.2.0/255.255.255.0", 1, ErrSyntax, "syntax error"},
		{"two slashes", "192.0.2.0/24/24", 1, ErrSyntax, "syntax error"},
		{"range form", "192.0.2.1-192.0.2.5", 1, ErrSyntax, "syntax error"},
		{"error after valid lines", "192.0.2.1\n192.0.2.2\n# c\nbad\n192.0.2.3\n", 4, ErrSyntax, "vipaddrs:4:"},
		{"overlong line", "192.0.2.1\n" + strings.Repeat("#", maxLineBytes+10) + "\n", 2, ErrSyntax, "vipaddrs:2: syntax error: line longer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse(strings.NewReader(tc.in), "vipaddrs")
			if err == nil {
				t.Fatalf("Parse succeeded with %v, want error", s)
			}
			if s != nil {
				t.Fatalf("Parse returned a partial set %v with the error", s)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T %v is not a *ParseError", err, err)
			}
			if pe.File != "vipaddrs" || pe.Line != tc.line {
				t.Fatalf("error at %s:%d, want vipaddrs:%d (%v)", pe.File, pe.Line, tc.line, err)
			}
			if !errors.Is(err, tc.sentinel) {
				t.Fatalf("error %v does not match %v", err, tc.sentinel)
			}
			for _, other := range sentinels {
				if other != tc.sentinel && errors.Is(err, other) {
					t.Fatalf("error %v also matches %v", err, other)
				}
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Error() = %q, want it to contain %q", err.Error(), tc.msg)
			}
			if !strings.HasPrefix(err.Error(), fmt.Sprintf("vipaddrs:%d: ", tc.line)) {
				t.Fatalf("Error() = %q does not start with file:line", err.Error())
			}
		})
	}
}

var sentinels = []error{ErrIncorrectMask, ErrSyntax, ErrMapped, ErrNotUnicast, ErrHostBits}

func TestParseErrorText(t *testing.T) {
	_, err := Parse(strings.NewReader("\n   10.0.0.0/16   # too wide\n"), "f")
	var pe *ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("got %v, want *ParseError", err)
	}
	if pe.Text != "10.0.0.0/16   # too wide" {
		t.Fatalf("Text = %q", pe.Text)
	}
	if errors.Unwrap(err) != pe.Err {
		t.Fatalf("Unwrap = %v, want %v", errors.Unwrap(err), pe.Err)
	}
}

func TestParseReadError(t *testing.T) {
	boom := errors.New("disk on fire")
	s, err := Parse(&errAfter{r: strings.NewReader("192.0.2.1\n"), err: boom}, "f")
	if s != nil || !errors.Is(err, boom) {
		t.Fatalf("Parse = %v, %v; want nil, error wrapping %v", s, err, boom)
	}
	var pe *ParseError
	if !errors.As(err, &pe) || pe.File != "f" || pe.Line != 2 {
		t.Fatalf("error %v: want a ParseError at f:2", err)
	}
}

// errAfter yields r's data and then err instead of io.EOF.
type errAfter struct {
	r   io.Reader
	err error
}

func (e *errAfter) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil {
		err = e.err
	}
	return n, err
}

func TestParseFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "vipaddrs")
	if err := os.WriteFile(good, []byte("192.0.2.200\n192.0.2.201 # second\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := ParseFile(good)
	if err != nil {
		t.Fatal(err)
	}
	if s.String() != "192.0.2.200, 192.0.2.201" {
		t.Fatalf("String = %q", s.String())
	}

	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("192.0.2.200\n10.0.0.0/8\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = ParseFile(bad)
	if err == nil || !strings.HasPrefix(err.Error(), bad+":2: Incorrect mask") {
		t.Fatalf("ParseFile(bad) error = %v, want it to start with %q", err, bad+":2: Incorrect mask")
	}

	if _, err := ParseFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v, want ErrNotExist", err)
	}
}

func TestNewAndQueries(t *testing.T) {
	s := New(addrs(t, "198.51.100.1", "192.0.2.2", "::ffff:192.0.2.1", "192.0.2.2")...)
	s = New(append(s.Addrs(), netip.Addr{})...) // invalid address is dropped
	want := addrs(t, "192.0.2.1", "192.0.2.2", "198.51.100.1")
	if got := s.Addrs(); !slices.Equal(got, want) {
		t.Fatalf("Addrs = %v, want %v", got, want)
	}
	got := s.Addrs()
	got[0] = netip.MustParseAddr("203.0.113.1")
	if s.Contains(netip.MustParseAddr("203.0.113.1")) {
		t.Fatal("Addrs did not return a copy")
	}
	for _, a := range want {
		if !s.Contains(a) {
			t.Errorf("Contains(%v) = false", a)
		}
		if !s.Contains(netip.AddrFrom16(a.As16())) {
			t.Errorf("Contains(mapped %v) = false", a)
		}
	}
	for _, a := range addrs(t, "192.0.2.0", "192.0.2.3", "198.51.100.0", "198.51.100.2", "0.0.0.0", "255.255.255.255", "2001:db8::1") {
		if s.Contains(a) {
			t.Errorf("Contains(%v) = true", a)
		}
	}
	if s.Contains(netip.Addr{}) {
		t.Error("Contains(zero Addr) = true")
	}
	if s.String() != "192.0.2.1, 192.0.2.2, 198.51.100.1" {
		t.Errorf("String = %q", s.String())
	}
}

func TestContainsU32MatchesPacketBytes(t *testing.T) {
	s := New(addrs(t, "192.0.2.200", "198.51.100.7")...)
	// Destination address field of an IPv4 header (RFC 791), as bytes on the wire.
	hdrDst := []byte{192, 0, 2, 200}
	if !s.ContainsU32(binary.BigEndian.Uint32(hdrDst)) {
		t.Fatal("ContainsU32 misses 192.0.2.200 read big-endian from packet bytes")
	}
	if s.ContainsU32(binary.LittleEndian.Uint32(hdrDst)) {
		t.Fatal("ContainsU32 matched a byte-swapped address")
	}
	if s.ContainsU32(0xC00002C9) { // 192.0.2.201
		t.Fatal("ContainsU32(192.0.2.201) = true")
	}
}

func TestContainsU32AgainstLinearScan(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, 7, 8, 100, 513} {
		var in []netip.Addr
		// Spread addresses with gaps so that misses fall between members.
		a := netip.MustParseAddr("192.0.2.0")
		for i := 0; i < n; i++ {
			in = append(in, a)
			a = a.Next().Next().Next()
		}
		s := New(in...)
		probe := netip.MustParseAddr("192.0.1.250")
		for i := 0; i < 3*n+20; i++ {
			want := slices.Contains(in, probe)
			if got := s.ContainsU32(addrToU32(probe)); got != want {
				t.Fatalf("n=%d ContainsU32(%v) = %v, want %v", n, probe, got, want)
			}
			probe = probe.Next()
		}
	}
}

func TestNilAndEmpty(t *testing.T) {
	var nilSet *Set
	empty, err := Parse(strings.NewReader("# nothing\n"), "f")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Set{nilSet, empty, New(), {}} {
		if s.Len() != 0 || s.Len4() != 0 || s.Len6() != 0 || s.Contains(netip.MustParseAddr("192.0.2.1")) ||
			s.Contains(netip.MustParseAddr("2001:db8::1")) || s.ContainsU32(0) || s.Contains16([16]byte{}) ||
			s.IndexU32(0) != -1 || s.Index16([16]byte{}) != -1 || s.String() != "" ||
			len(s.Addrs()) != 0 || len(s.Addrs4()) != 0 || len(s.Addrs6()) != 0 {
			t.Fatalf("%#v is not an empty set", s)
		}
		if !s.Equal(nilSet) || !nilSet.Equal(s) {
			t.Fatalf("%#v not Equal to nil set", s)
		}
	}
}

func TestEqual(t *testing.T) {
	a := New(addrs(t, "192.0.2.1", "192.0.2.2")...)
	b := New(addrs(t, "192.0.2.2", "192.0.2.1", "192.0.2.1")...)
	c := New(addrs(t, "192.0.2.1")...)
	d := New(addrs(t, "192.0.2.1", "192.0.2.3")...)
	if !a.Equal(b) || !b.Equal(a) {
		t.Error("a != b")
	}
	if a.Equal(c) || c.Equal(a) || a.Equal(d) || a.Equal(nil) {
		t.Error("unequal sets compare equal")
	}
	e := New(addrs(t, "192.0.2.1", "192.0.2.2", "2001:db8::1")...)
	f := New(addrs(t, "2001:db8::1", "192.0.2.2", "192.0.2.1", "2001:db8::1")...)
	g := New(addrs(t, "192.0.2.1", "192.0.2.2", "2001:db8::2")...)
	if !e.Equal(f) || !f.Equal(e) {
		t.Error("e != f")
	}
	if e.Equal(a) || a.Equal(e) || e.Equal(g) || New(addrs(t, "2001:db8::1")...).Equal(nil) {
		t.Error("sets differing in IPv6 compare equal")
	}
}

func TestBothFamilies(t *testing.T) {
	in := "# mail and SIP\n2001:db8::300/126\n192.0.2.200\n2001:db8::200 # v6 VIP\n192.0.2.208/30\n"
	s, err := Parse(strings.NewReader(in), "vipaddrs")
	if err != nil {
		t.Fatal(err)
	}
	want4 := append(addrs(t, "192.0.2.200"), rangeAddrs("192.0.2.208", 4)...)
	want6 := append(addrs(t, "2001:db8::200"), rangeAddrs("2001:db8::300", 4)...)
	if got := s.Addrs4(); !slices.Equal(got, want4) {
		t.Fatalf("Addrs4 = %v, want %v", got, want4)
	}
	if got := s.Addrs6(); !slices.Equal(got, want6) {
		t.Fatalf("Addrs6 = %v, want %v", got, want6)
	}
	all := append(slices.Clone(want4), want6...)
	if got := s.Addrs(); !slices.Equal(got, all) {
		t.Fatalf("Addrs = %v, want %v", got, all)
	}
	if !slices.IsSortedFunc(all, netip.Addr.Compare) {
		t.Fatalf("Addrs %v not in netip.Addr.Compare order", all)
	}
	if s.Len() != 10 || s.Len4() != 5 || s.Len6() != 5 {
		t.Fatalf("Len %d Len4 %d Len6 %d, want 10 5 5", s.Len(), s.Len4(), s.Len6())
	}
	if !s.Equal(New(all...)) || !s.Equal(New(append(want6, want4...)...)) {
		t.Fatal("not Equal to New of the same addresses")
	}
	if want := "192.0.2.200, 192.0.2.208, 192.0.2.209, 192.0.2.210, 192.0.2.211, 2001:db8::200, 2001:db8::300, " +
		"2001:db8::301, 2001:db8::302, 2001:db8::303"; s.String() != want {
		t.Fatalf("String = %q, want %q", s.String(), want)
	}
	// The documented index relations: IndexU32 into Addrs4 (= Addrs), Index16
	// into Addrs6, Len4()+Index16 into Addrs.
	for i, a := range want4 {
		if got := s.IndexU32(addrToU32(a)); got != i || all[got] != a {
			t.Errorf("IndexU32(%v) = %d, want %d", a, got, i)
		}
	}
	for i, a := range want6 {
		got := s.Index16(a.As16())
		if got != i || all[s.Len4()+got] != a {
			t.Errorf("Index16(%v) = %d, want %d", a, got, i)
		}
		if !s.Contains(a) || !s.Contains16(a.As16()) {
			t.Errorf("%v not contained", a)
		}
	}
	// Copies.
	got := s.Addrs6()
	got[0] = netip.MustParseAddr("2001:db8::9999")
	if s.Contains(got[0]) {
		t.Fatal("Addrs6 did not return a copy")
	}
	got = s.Addrs4()
	got[0] = netip.MustParseAddr("203.0.113.1")
	if s.Contains(got[0]) {
		t.Fatal("Addrs4 did not return a copy")
	}
	for _, a := range addrs(t, "2001:db8::201", "2001:db8::304", "2001:db8::2ff", "2001:db8:1::200", "::ffff:192.0.2.200") {
		if a.Is4In6() {
			// Contains unmaps (as New does); Contains16 takes packet bytes
			// and an IPv6 packet to a mapped address is not IPv4 traffic.
			if !s.Contains(a) || s.Contains16(a.As16()) || s.Index16(a.As16()) != -1 {
				t.Errorf("mapped %v: Contains %v Contains16 %v", a, s.Contains(a), s.Contains16(a.As16()))
			}
			continue
		}
		if s.Contains(a) || s.Contains16(a.As16()) || s.Index16(a.As16()) != -1 {
			t.Errorf("%v reported as a member", a)
		}
	}
	if s.Contains(netip.MustParseAddr("2001:db8::200%eth0")) {
		t.Error("zoned address reported as a member")
	}
}

func TestNewIPv6(t *testing.T) {
	s := New(addrs(t, "2001:db8::2", "192.0.2.1", "2001:db8::1", "fe80::1%lo", "2001:db8::2", "::ffff:192.0.2.3")...)
	want := addrs(t, "192.0.2.1", "192.0.2.3", "2001:db8::1", "2001:db8::2")
	if got := s.Addrs(); !slices.Equal(got, want) {
		t.Fatalf("Addrs = %v, want %v (zoned dropped, mapped unmapped)", got, want)
	}
	if s.Len4() != 2 || s.Len6() != 2 {
		t.Fatalf("Len4 %d Len6 %d", s.Len4(), s.Len6())
	}
	// Only IPv4: no IPv6 part at all, as before.
	if v4 := New(addrs(t, "192.0.2.1")...); v4.Len6() != 0 || len(v4.Addrs6()) != 0 || v4.Len() != 1 {
		t.Fatalf("IPv4-only set has IPv6 members: %v", v4)
	}
}

func TestContains16MatchesPacketBytes(t *testing.T) {
	s := New(addrs(t, "2001:db8::200", "2001:db8:0:1::7")...)
	// Destination address field of an IPv6 header (RFC 8200), bytes 24..40, as on the wire.
	hdr := make([]byte, 40)
	hdr[0] = 0x60
	copy(hdr[24:], []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x00})
	if !s.Contains16([16]byte(hdr[24:40])) || s.Index16([16]byte(hdr[24:40])) != 0 {
		t.Fatal("Contains16 misses 2001:db8::200 taken from packet bytes")
	}
	swapped := [16]byte(hdr[24:40])
	slices.Reverse(swapped[:])
	if s.Contains16(swapped) {
		t.Fatal("Contains16 matched a byte-reversed address")
	}
	hdr[39] = 1 // 2001:db8::201
	if s.Contains16([16]byte(hdr[24:40])) {
		t.Fatal("Contains16(2001:db8::201) = true")
	}
	// The halves are compared separately: same low half, other high half.
	if s.Contains16(netip.MustParseAddr("2001:db8:0:2::200").As16()) {
		t.Fatal("Contains16 matched on the low 64 bits only")
	}
}

func TestIndex16AgainstLinearScan(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, 7, 8, 100, 513} {
		var in []netip.Addr
		// Gaps so that misses fall between members; cross a 64-bit boundary
		// of the low half to exercise the high-half comparison.
		a := netip.MustParseAddr("2001:db8:0:1:ffff:ffff:ffff:ff00")
		for i := 0; i < n; i++ {
			in = append(in, a)
			a = a.Next().Next().Next()
		}
		s := New(in...)
		probe := netip.MustParseAddr("2001:db8:0:1:ffff:ffff:ffff:fef0")
		for i := 0; i < 3*n+40; i++ {
			want := slices.Index(in, probe)
			if got := s.Index16(probe.As16()); got != want {
				t.Fatalf("n=%d Index16(%v) = %d, want %d", n, probe, got, want)
			}
			if got := s.Contains16(probe.As16()); got != (want >= 0) {
				t.Fatalf("n=%d Contains16(%v) = %v", n, probe, got)
			}
			probe = probe.Next()
		}
	}
}

func TestContains16DoesNotAllocate(t *testing.T) {
	s := New(rangeAddrs("2001:db8::100", 256)...)
	ip := netip.MustParseAddr("2001:db8::177").As16()
	miss := netip.MustParseAddr("2001:db8::1").As16()
	if n := testing.AllocsPerRun(1000, func() { _ = s.Contains16(ip) }); n != 0 {
		t.Fatalf("Contains16 allocates %v times per call", n)
	}
	if n := testing.AllocsPerRun(1000, func() { _ = s.Index16(miss) }); n != 0 {
		t.Fatalf("Index16 allocates %v times per call", n)
	}
	s4 := New(append(rangeAddrs("2001:db8::100", 16), rangeAddrs("192.0.2.0", 16)...)...)
	ip4 := addrToU32(netip.MustParseAddr("192.0.2.7"))
	if n := testing.AllocsPerRun(1000, func() { _ = s4.IndexU32(ip4) }); n != 0 {
		t.Fatalf("IndexU32 on a mixed set allocates %v times per call", n)
	}
}

func BenchmarkContains16(b *testing.B) {
	for _, n := range []int{1, 8, 256, 4096} {
		in := rangeAddrs("2001:db8::", n)
		s := New(in...)
		hit := in[n/2].As16()
		miss := netip.MustParseAddr("2001:db8:1::1").As16()
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			found := 0
			for i := 0; b.Loop(); i++ {
				ip := hit
				if i&1 == 1 {
					ip = miss
				}
				if s.Contains16(ip) {
					found++
				}
			}
			if found == 0 {
				b.Fatal("no hits")
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "72.20.112.45\n", "# c\n72.20.112.48/29\n", "192.0.2.1 # x\n192.0.2.0/30",
		"10.0.0.0/16", "10.0.0.5/29", "2001:db8::1", "a b", "255.255.255.255/24", "1.2.3.4/032",
		"\xef\xbb\xbf192.0.2.1", "192.0.2.0/24\r\n\t#\n",
		"2001:db8::200\n", "2001:db8::300/124 # x\n192.0.2.1", "2001:db8::/119", "2001:db8::1/120",
		"::ffff:192.0.2.1", "fe80::1%lo", "ff02::1", "::", "::/120", "2001:db8::ff00/120\n2001:db8::ff80/121",
		"64:ff9b::192.0.2.1/128", "2001:db8::1/0128",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := Parse(strings.NewReader(in), "fuzz")
		if err != nil {
			if s != nil {
				t.Fatalf("set %v returned with error %v", s, err)
			}
			var pe *ParseError
			if !errors.As(err, &pe) || pe.File != "fuzz" || pe.Line < 1 {
				t.Fatalf("error %v is not a ParseError with a line", err)
			}
			n := 0
			for _, e := range sentinels {
				if errors.Is(err, e) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("error %v matches %d sentinels, want exactly one", err, n)
			}
			if !strings.HasPrefix(err.Error(), fmt.Sprintf("fuzz:%d: ", pe.Line)) {
				t.Fatalf("Error() = %q lacks file:line", err.Error())
			}
			return
		}
		list := s.Addrs()
		if len(list) != s.Len() {
			t.Fatalf("Len %d != len(Addrs) %d", s.Len(), len(list))
		}
		if s.Len4()+s.Len6() != s.Len() {
			t.Fatalf("Len4 %d + Len6 %d != Len %d", s.Len4(), s.Len6(), s.Len())
		}
		// Every line expands to at most 256 addresses.
		if lines := strings.Count(in, "\n") + 1; s.Len() > 256*lines {
			t.Fatalf("%d addresses from %d lines", s.Len(), lines)
		}
		if !slices.Equal(list, append(s.Addrs4(), s.Addrs6()...)) {
			t.Fatalf("Addrs %v is not Addrs4 then Addrs6", list)
		}
		for i, a := range list {
			switch {
			case a.Is4():
				if i >= s.Len4() || s.IndexU32(addrToU32(a)) != i || !s.ContainsU32(addrToU32(a)) {
					t.Fatalf("IPv4 member %v at %d: IndexU32 %d", a, i, s.IndexU32(addrToU32(a)))
				}
			case a.Is6():
				if a.Is4In6() || a.Zone() != "" || a.IsMulticast() || a.IsLinkLocalUnicast() || a.IsLoopback() || a.IsUnspecified() {
					t.Fatalf("unusable IPv6 %v in set", a)
				}
				if i < s.Len4() || s.Len4()+s.Index16(a.As16()) != i || !s.Contains16(a.As16()) {
					t.Fatalf("IPv6 member %v at %d: Index16 %d", a, i, s.Index16(a.As16()))
				}
			default:
				t.Fatalf("invalid address %v in set", a)
			}
			if i > 0 && list[i-1].Compare(a) >= 0 {
				t.Fatalf("Addrs not strictly ascending at %d: %v", i, list)
			}
			if !s.Contains(a) {
				t.Fatalf("member %v not found", a)
			}
			one, err := Parse(strings.NewReader(a.String()+"\n"), "roundtrip")
			if err != nil {
				t.Fatalf("address %v does not re-parse: %v", a, err)
			}
			if one.Len() != 1 || one.Addrs()[0] != a {
				t.Fatalf("address %v re-parses as %v", a, one)
			}
		}
		// The whole set written one address a line parses back to itself.
		var b strings.Builder
		for _, a := range list {
			b.WriteString(a.String() + "\n")
		}
		again, err := Parse(strings.NewReader(b.String()), "roundtrip")
		if err != nil || !again.Equal(s) {
			t.Fatalf("set %v does not round-trip: %v, %v", s, again, err)
		}
	})
}

func BenchmarkContainsU32(b *testing.B) {
	for _, n := range []int{1, 8, 256, 4096} {
		in := rangeAddrs("198.51.100.0", n)
		s := New(in...)
		hit := addrToU32(in[n/2])
		miss := addrToU32(netip.MustParseAddr("192.0.2.1"))
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			found := 0
			for i := 0; b.Loop(); i++ {
				ip := hit
				if i&1 == 1 {
					ip = miss
				}
				if s.ContainsU32(ip) {
					found++
				}
			}
			if found == 0 {
				b.Fatal("no hits")
			}
		})
	}
}

func TestContainsU32DoesNotAllocate(t *testing.T) {
	s := New(rangeAddrs("198.51.100.0", 256)...)
	ip := addrToU32(netip.MustParseAddr("198.51.100.77"))
	if n := testing.AllocsPerRun(1000, func() { _ = s.ContainsU32(ip) }); n != 0 {
		t.Fatalf("ContainsU32 allocates %v times per call", n)
	}
}
