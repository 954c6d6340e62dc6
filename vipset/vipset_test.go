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
		{"ipv6", "2001:db8::1", 1, ErrNotIPv4, "vipaddrs:1: not an IPv4 address"},
		{"ipv6 subnet", "2001:db8::/120", 1, ErrNotIPv4, "not an IPv4"},
		{"ipv4-mapped ipv6", "::ffff:192.0.2.1", 1, ErrNotIPv4, "not an IPv4"},
		{"ipv6 with zone", "fe80::1%lo", 1, ErrNotIPv4, "not an IPv4"},
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
			for _, other := range []error{ErrIncorrectMask, ErrSyntax, ErrNotIPv4, ErrHostBits} {
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
	s := New(addrs(t, "198.51.100.1", "192.0.2.2", "::ffff:192.0.2.1", "2001:db8::1", "192.0.2.2")...)
	s = New(append(s.Addrs(), netip.Addr{})...) // invalid address is dropped too
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
		if s.Len() != 0 || s.Contains(netip.MustParseAddr("192.0.2.1")) || s.ContainsU32(0) || s.String() != "" || len(s.Addrs()) != 0 {
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
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "72.20.112.45\n", "# c\n72.20.112.48/29\n", "192.0.2.1 # x\n192.0.2.0/30",
		"10.0.0.0/16", "10.0.0.5/29", "2001:db8::1", "a b", "255.255.255.255/24", "1.2.3.4/032",
		"\xef\xbb\xbf192.0.2.1", "192.0.2.0/24\r\n\t#\n",
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
			if !errors.Is(err, ErrSyntax) && !errors.Is(err, ErrIncorrectMask) && !errors.Is(err, ErrNotIPv4) && !errors.Is(err, ErrHostBits) {
				t.Fatalf("error %v matches no sentinel", err)
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
		for i, a := range list {
			if !a.Is4() {
				t.Fatalf("non-IPv4 %v in set", a)
			}
			if i > 0 && list[i-1].Compare(a) >= 0 {
				t.Fatalf("Addrs not strictly ascending at %d: %v", i, list)
			}
			if !s.Contains(a) || !s.ContainsU32(addrToU32(a)) {
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
