package helperproto

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"unicode"
)

func addrList(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func TestParseLineValid(t *testing.T) {
	// A line of exactly MaxLineBytes: "1 STATUS" padded with blanks.
	maxLine := "1 STATUS" + strings.Repeat(" ", MaxLineBytes-len("1 STATUS"))
	tests := []struct {
		name  string
		in    string
		seq   string
		verb  string
		kind  VerbKind
		args  []string
		addrs []netip.Addr
	}{
		{"intf", "1 INTF 3", "1", "INTF", KindIntf, []string{"3"}, nil},
		{"intf with newline", "1 INTF 3\n", "1", "INTF", KindIntf, []string{"3"}, nil},
		{"intf with CRLF", "1 INTF 3\r\n", "1", "INTF", KindIntf, []string{"3"}, nil},
		{"lower case verb", "12 intf 1", "12", "INTF", KindIntf, []string{"1"}, nil},
		{"mixed case verb", "12 Quit", "12", "QUIT", KindQuit, nil, nil},
		{"leading zeros in seq kept", "007 STATUS", "007", "STATUS", KindStatus, nil, nil},
		{"big seq", "123456789012345678901234567890 QUIT", "123456789012345678901234567890", "QUIT", KindQuit, nil, nil},
		{"tabs and runs of blanks", " \t3\t\tACTIVE  10.0.0.11 \t10.0.0.12 ", "3", "ACTIVE", KindActive,
			[]string{"10.0.0.11", "10.0.0.12"}, addrList("10.0.0.11", "10.0.0.12")},
		{"active spaces", "3 ACTIVE 10.0.0.11 10.0.0.12 10.0.0.13", "3", "ACTIVE", KindActive,
			[]string{"10.0.0.11", "10.0.0.12", "10.0.0.13"}, addrList("10.0.0.11", "10.0.0.12", "10.0.0.13")},
		{"active commas", "4 ACTIVE 10.0.0.11,10.0.0.13", "4", "ACTIVE", KindActive,
			[]string{"10.0.0.11", "10.0.0.13"}, addrList("10.0.0.11", "10.0.0.13")},
		{"active commas and spaces", "4 ACTIVE 10.0.0.11, 10.0.0.12 ,10.0.0.13,,", "4", "ACTIVE", KindActive,
			[]string{"10.0.0.11", "10.0.0.12", "10.0.0.13"}, addrList("10.0.0.11", "10.0.0.12", "10.0.0.13")},
		{"active duplicates collapsed, first order kept", "5 ACTIVE 192.0.2.2 192.0.2.1,192.0.2.2 192.0.2.1", "5", "ACTIVE", KindActive,
			[]string{"192.0.2.2", "192.0.2.1", "192.0.2.2", "192.0.2.1"}, addrList("192.0.2.2", "192.0.2.1")},
		{"active single", "6 ACTIVE 198.51.100.7", "6", "ACTIVE", KindActive, []string{"198.51.100.7"}, addrList("198.51.100.7")},
		{"standby without address", "2 STANDBY", "2", "STANDBY", KindStandby, nil, nil},
		{"standby with address", "2 STANDBY 10.0.0.11", "2", "STANDBY", KindStandby, []string{"10.0.0.11"}, addrList("10.0.0.11")},
		{"standby with trailing comma", "2 STANDBY 10.0.0.11,", "2", "STANDBY", KindStandby, []string{"10.0.0.11"}, addrList("10.0.0.11")},
		{"line of exactly MaxLineBytes", maxLine, "1", "STATUS", KindStatus, nil, nil},
		{"line of exactly MaxLineBytes plus CRLF", maxLine + "\r\n", "1", "STATUS", KindStatus, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseLine(tt.in)
			if err != nil {
				t.Fatalf("ParseLine(%q): %v", tt.in, err)
			}
			if c.Seq != tt.seq || c.Verb != tt.verb || c.Kind != tt.kind {
				t.Errorf("got seq %q verb %q kind %v, want %q %q %v", c.Seq, c.Verb, c.Kind, tt.seq, tt.verb, tt.kind)
			}
			if !slices.Equal(c.Args, tt.args) {
				t.Errorf("args %q, want %q", c.Args, tt.args)
			}
			if !slices.Equal(c.Addrs, tt.addrs) {
				t.Errorf("addrs %v, want %v", c.Addrs, tt.addrs)
			}
			if want := strings.TrimSuffix(strings.TrimSuffix(tt.in, "\n"), "\r"); c.Raw != want {
				t.Errorf("raw %q, want %q", c.Raw, want)
			}
		})
	}
}

func TestParseLineErrors(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    error
		seq     string // the sequence number that must survive the error
		msgPart string // a piece of the error text CGP will see
	}{
		{"empty", "", ErrEmpty, "", "empty"},
		{"blanks", " \t \r\n", ErrEmpty, "", "empty"},
		{"no seq, bare verb", "QUIT", ErrNoSeq, "", "no sequence"},
		{"no seq, info line", "* hello", ErrNoSeq, "", "no sequence"},
		{"non-numeric seq", "1a QUIT", ErrBadSeq, "", "1a"},
		{"negative seq", "-1 QUIT", ErrBadSeq, "", "-1"},
		{"seq with dot", "1.5 QUIT", ErrBadSeq, "", "1.5"},
		{"seq only", "9", ErrNoVerb, "9", "missing"},
		{"seq only with blanks", "9  \r\n", ErrNoVerb, "9", "missing"},
		{"unknown verb", "3 FROBNICATE x", ErrUnknownVerb, "3", "unknown command FROBNICATE"},
		{"verb with control char", "3 QUIT\x00", ErrUnknownVerb, "3", "unknown command"},
		{"CR inside line is not a blank", "3 QUIT\r \r", ErrUnknownVerb, "3", "unknown command"},
		{"intf without number", "1 INTF", ErrArgs, "1", "INTF takes 1 argument"},
		{"intf not a number", "1 INTF x", ErrArgs, "1", "decimal"},
		{"intf negative", "1 INTF -1", ErrArgs, "1", "decimal"},
		{"intf two numbers", "1 INTF 1 2", ErrArgs, "1", "INTF"},
		{"quit with argument", "5 QUIT now", ErrArgs, "5", "QUIT"},
		{"status with argument", "5 STATUS x", ErrArgs, "5", "STATUS"},
		{"empty active", "3 ACTIVE", ErrArgs, "3", "at least 1"},
		{"active only commas", "3 ACTIVE , ,,", ErrArgs, "3", "at least 1"},
		{"standby two addresses", "2 STANDBY 10.0.0.1,10.0.0.2", ErrArgs, "2", "0 to 1"},
		{"active bad address", "3 ACTIVE 10.0.0.11 10.0.0.256", ErrBadAddr, "3", "10.0.0.256"},
		{"active bad address first", "3 ACTIVE bogus,10.0.0.12", ErrBadAddr, "3", "bogus"},
		{"active IPv6", "3 ACTIVE 2001:db8::1", ErrBadAddr, "3", "IPv4"},
		{"active IPv4-mapped IPv6", "3 ACTIVE ::ffff:192.0.2.1", ErrBadAddr, "3", "IPv4"},
		{"active leading zero octet", "3 ACTIVE 192.0.2.010", ErrBadAddr, "3", "192.0.2.010"},
		{"active CIDR", "3 ACTIVE 192.0.2.0/24", ErrBadAddr, "3", "192.0.2.0/24"},
		{"active unspecified", "3 ACTIVE 0.0.0.0", ErrBadAddr, "3", "unspecified"},
		{"active loopback", "3 ACTIVE 127.0.0.1", ErrBadAddr, "3", "loopback"},
		{"active multicast", "3 ACTIVE 224.0.0.18", ErrBadAddr, "3", "multicast"},
		{"active broadcast", "3 ACTIVE 255.255.255.255", ErrBadAddr, "3", "broadcast"},
		{"standby bad address", "2 STANDBY 10.0.0", ErrBadAddr, "2", "10.0.0"},
		{"too long with seq", "7 ACTIVE " + strings.Repeat("1", MaxLineBytes), ErrTooLong, "7", "line too long"},
		{"too long by one byte", "7 STATUS" + strings.Repeat(" ", MaxLineBytes-len("7 STATUS")+1), ErrTooLong, "7", "line too long"},
		{"too long without seq", strings.Repeat("x", MaxLineBytes+1), ErrTooLong, "", "line too long"},
		{"too long, seq is the whole prefix", strings.Repeat("1", MaxLineBytes+1), ErrTooLong, "", "line too long"},
		{"too long, bad seq", "1x " + strings.Repeat("y", MaxLineBytes), ErrTooLong, "", "line too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseLine(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("ParseLine(%.60q) error %v, want %v", tt.in, err, tt.want)
			}
			if c.Seq != tt.seq {
				t.Errorf("seq %q, want %q", c.Seq, tt.seq)
			}
			if !strings.Contains(err.Error(), tt.msgPart) {
				t.Errorf("error %q does not mention %q", err, tt.msgPart)
			}
			if c.Addrs != nil {
				t.Errorf("failed parse returned addresses %v", c.Addrs)
			}
		})
	}
}

func TestVocabulary(t *testing.T) {
	kinds := map[VerbKind]int{}
	words := map[string]bool{}
	for _, v := range Vocabulary {
		kinds[v.Kind]++
		if v.Word == "" || v.Word != strings.ToUpper(v.Word) || strings.IndexFunc(v.Word, unicode.IsSpace) >= 0 {
			t.Errorf("word %q must be one upper-case word", v.Word)
		}
		if words[v.Word] {
			t.Errorf("word %q appears twice", v.Word)
		}
		words[v.Word] = true
		if v.MinArgs < 0 || (v.MaxArgs != NoLimit && v.MaxArgs < v.MinArgs) {
			t.Errorf("%s: bad argument counts %d..%d", v.Word, v.MinArgs, v.MaxArgs)
		}
		if v.Args == ArgNone && (v.MinArgs != 0 || v.MaxArgs != 0) {
			t.Errorf("%s: ArgNone with argument counts %d..%d", v.Word, v.MinArgs, v.MaxArgs)
		}
		for _, w := range []string{v.Word, strings.ToLower(v.Word)} {
			got, ok := Lookup(w)
			if !ok || got.Kind != v.Kind {
				t.Errorf("Lookup(%q) = %v, %v", w, got, ok)
			}
		}
	}
	for _, k := range []VerbKind{KindIntf, KindQuit, KindActive, KindStandby, KindStatus} {
		if kinds[k] != 1 {
			t.Errorf("kind %v has %d words, want exactly 1", k, kinds[k])
		}
	}
	if _, ok := Lookup("NOPE"); ok {
		t.Error("Lookup found an unknown word")
	}
}

func TestParseAddr(t *testing.T) {
	good := []string{"10.0.0.11", "192.0.2.1", "198.51.100.255", "169.254.1.1", "223.255.255.254", "1.0.0.0"}
	for _, s := range good {
		a, err := ParseAddr(s)
		if err != nil || a.String() != s {
			t.Errorf("ParseAddr(%q) = %v, %v", s, a, err)
		}
	}
	bad := []string{"", "10.0.0", "10.0.0.1.2", "256.0.0.1", "01.2.3.4", "0.0.0.0", "127.1.2.3",
		"239.255.255.250", "255.255.255.255", "::1", "fe80::1%eth0", "10.0.0.1%eth0", " 10.0.0.1", "10.0.0.1,"}
	for _, s := range bad {
		if a, err := ParseAddr(s); !errors.Is(err, ErrBadAddr) {
			t.Errorf("ParseAddr(%q) = %v, %v; want ErrBadAddr", s, a, err)
		}
	}
}

func TestCommandStringRoundTrip(t *testing.T) {
	for _, in := range []string{"1 intf 3", " 3 ACTIVE 10.0.0.11,10.0.0.12\t10.0.0.11", "2 standby", "2 STANDBY 10.0.0.1,", "9 status"} {
		c, err := ParseLine(in)
		if err != nil {
			t.Fatalf("ParseLine(%q): %v", in, err)
		}
		s := c.String()
		c2, err := ParseLine(s)
		if err != nil {
			t.Fatalf("re-parse of %q (from %q): %v", s, in, err)
		}
		if !sameCommand(c, c2) {
			t.Errorf("%q -> %q -> %+v, want %+v", in, s, c2, c)
		}
	}
	if got := (Command{Seq: "4", Verb: "ACTIVE", Args: []string{"10.0.0.11", "10.0.0.13"}}).String(); got != "4 ACTIVE 10.0.0.11 10.0.0.13" {
		t.Errorf("String = %q", got)
	}
}

// sameCommand compares everything but Raw.
func sameCommand(a, b Command) bool {
	return a.Seq == b.Seq && a.Verb == b.Verb && a.Kind == b.Kind &&
		slices.Equal(a.Args, b.Args) && slices.Equal(a.Addrs, b.Addrs)
}

func FuzzParseLine(f *testing.F) {
	for _, s := range []string{"1 INTF 3", "1 INTF 3\r\n", "3 ACTIVE 10.0.0.11 10.0.0.12 10.0.0.13", "4 ACTIVE 10.0.0.11,10.0.0.13",
		"2 STANDBY 10.0.0.11", "2 STANDBY", "5 QUIT", "6 status", "", "QUIT", "1x QUIT", "7 NOPE", "3 ACTIVE 0.0.0.0",
		"8 ACTIVE ,,192.0.2.1,", "9\tSTANDBY\t198.51.100.1", strings.Repeat("9", MaxLineBytes+3)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		c, err := ParseLine(line)
		if err != nil {
			if c.Seq != "" && !isDecimal(c.Seq) {
				t.Fatalf("error result carries bad seq %q", c.Seq)
			}
			if c.Addrs != nil {
				t.Fatalf("error result carries addresses")
			}
			return
		}
		if !isDecimal(c.Seq) || c.Verb == "" || c.Kind == 0 {
			t.Fatalf("parsed %q into incomplete %+v", line, c)
		}
		if c.Kind == KindActive && len(c.Addrs) == 0 {
			t.Fatalf("ACTIVE without members from %q", line)
		}
		for i, a := range c.Addrs {
			if !a.Is4() || slices.Contains(c.Addrs[:i], a) {
				t.Fatalf("bad or duplicate member %v from %q", a, line)
			}
		}
		s := c.String()
		c2, err := ParseLine(s)
		if err != nil {
			t.Fatalf("re-parse of %q (from %q): %v", s, line, err)
		}
		if !sameCommand(c, c2) {
			t.Fatalf("round trip %q -> %q: %+v != %+v", line, s, c2, c)
		}
	})
}
