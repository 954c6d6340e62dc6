package services

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// briefExample is the format as specified in issue 13.
const briefExample = `# global
probe-source 192.0.2.250        # IPv4 source
probe-source 2001:db8::250      # IPv6 source
quorum 2

service imap 143/tcp
    check imap
    interval 2s
    timeout 1s
    rise 2
    fall 3
    idle-timeout 30m
    vip 192.0.2.10
service sip 5060/udp
    check sip
    idle-timeout 2h
    affinity call-id
service sips 5061/tcp
    check tls
    tls-server-name sip.example.com
service web 80/tcp
    check http
    http-path /healthz
    http-host mail.example.com
    http-expect 200-399
service smtp 25/tcp
	check smtp
	smtp-helo l2lb.example.com
service siptcp 5060/tcp
    check sip
service plain 8080/tcp
`

func TestParseExample(t *testing.T) {
	f, err := Parse(strings.NewReader(briefExample), "test.conf")
	if err != nil {
		t.Fatal(err)
	}
	def := func(kind string) Check {
		return Check{Kind: kind, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}
	}
	imap := def(KindIMAP)
	tls := def(KindTLS)
	tls.TLSServerName = "sip.example.com"
	web := def(KindHTTP)
	web.HTTPPath, web.HTTPHost, web.HTTPExpectLo, web.HTTPExpectHi = "/healthz", "mail.example.com", 200, 399
	smtp := def(KindSMTP)
	smtp.SMTPHelo = "l2lb.example.com"
	want := &File{
		Path:         "test.conf",
		ProbeSource4: netip.MustParseAddr("192.0.2.250"),
		ProbeSource6: netip.MustParseAddr("2001:db8::250"),
		Quorum:       2,
		Services: []Service{
			{Name: "imap", Line: 6, Port: 143, Proto: "tcp", IdleTimeout: 30 * time.Minute, VIP: netip.MustParseAddr("192.0.2.10"), Check: imap},
			{Name: "sip", Line: 14, Port: 5060, Proto: "udp", IdleTimeout: 2 * time.Hour, Affinity: AffinityCallID, Check: def(KindSIP)},
			{Name: "sips", Line: 18, Port: 5061, Proto: "tcp", Check: tls},
			{Name: "web", Line: 21, Port: 80, Proto: "tcp", Check: web},
			{Name: "smtp", Line: 26, Port: 25, Proto: "tcp", Check: smtp},
			{Name: "siptcp", Line: 29, Port: 5060, Proto: "tcp", Check: def(KindSIP)},
			{Name: "plain", Line: 31, Port: 8080, Proto: "tcp"},
		},
	}
	if !reflect.DeepEqual(f, want) {
		t.Fatalf("got\n%+v\nwant\n%+v", f, want)
	}
	if k := f.Services[1].Key(); k != "5060/udp" {
		t.Fatalf("Key = %q", k)
	}
}

func TestDefaults(t *testing.T) {
	f, err := Parse(strings.NewReader("service w 80/tcp\n check http\nservice s 25/tcp\n check smtp\nservice q 1/tcp\n check tcp\n interval 500ms\n"), "d")
	if err != nil {
		t.Fatal(err)
	}
	h := f.Services[0].Check
	if h.HTTPPath != "/" || h.HTTPExpectLo != 200 || h.HTTPExpectHi != 399 || h.HTTPHost != "" {
		t.Errorf("http defaults: %+v", h)
	}
	if s := f.Services[1].Check; s.SMTPHelo != "l2lb" {
		t.Errorf("smtp default helo: %q", s.SMTPHelo)
	}
	// An interval at or below the default timeout halves it rather than failing.
	if q := f.Services[2].Check; q.Timeout != 250*time.Millisecond {
		t.Errorf("timeout for interval 500ms: %s", q.Timeout)
	}
	if f.Quorum != 0 || f.ProbeSource4.IsValid() || f.ProbeSource6.IsValid() {
		t.Errorf("globals: %+v", f)
	}
}

func TestLoadContribExample(t *testing.T) {
	path := filepath.Join("..", "contrib", "services.conf")
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if f.Path != path || f.Quorum != 2 || len(f.Services) < 8 {
		t.Fatalf("unexpected contents: %+v", f)
	}
	kinds := map[string]bool{}
	for _, s := range f.Services {
		kinds[s.Check.Kind] = true
	}
	for _, k := range []string{KindTCP, KindSMTP, KindIMAP, KindPOP3, KindHTTP, KindSIP, KindTLS, ""} {
		if k == KindTCP {
			continue // the example shows the protocol checks; tcp is the trivial one
		}
		if !kinds[k] {
			t.Errorf("contrib/services.conf shows no service with check %q", k)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	const src4 = "probe-source 192.0.2.250\n"
	cases := []struct {
		name, in string
		line     int
		kind     error
		msg      string
	}{
		{"unknown global", "frobnicate 1\n", 1, ErrUnknownKeyword, "unknown keyword"},
		{"stanza key before service", "check tcp\n", 1, ErrUnknownKeyword, "belongs in a service stanza"},
		{"global in stanza", "service a 1/tcp\nquorum 2\n", 2, ErrUnknownKeyword, "global setting"},
		{"unknown in stanza", "service a 1/tcp\n  chek tcp\n", 2, ErrUnknownKeyword, "unknown keyword \"chek\""},
		{"duplicate key", "service a 1/tcp\ncheck tcp\ncheck tcp\n", 3, ErrDuplicate, "first on line 2"},
		{"duplicate port", "service a 25/tcp\nservice b 25/tcp\n", 2, ErrDuplicate, "already service a"},
		{"same port other proto ok then dup name", "service a 25/tcp\nservice a 25/udp\n", 2, ErrDuplicate, "name a"},
		{"duplicate quorum", "quorum 1\nquorum 2\n", 2, ErrDuplicate, "quorum given twice"},
		{"two v4 sources", "probe-source 192.0.2.1\nprobe-source 192.0.2.2\n", 2, ErrDuplicate, "IPv4 probe-source"},
		{"bad source", "probe-source 192.0.2\n", 1, ErrBadValue, "probe-source"},
		{"loopback source", "probe-source 127.0.0.1\n", 1, ErrBadValue, "unicast"},
		{"bad quorum", "quorum -1\n", 1, ErrBadValue, "quorum"},
		{"quorum args", "quorum\n", 1, ErrSyntax, "exactly one value"},
		{"service args", "service a\n", 1, ErrSyntax, "service NAME PORT/PROTO"},
		{"no slash", "service a 25\n", 1, ErrSyntax, "PORT/PROTO"},
		{"port 0", "service a 0/tcp\n", 1, ErrBadValue, "port"},
		{"port big", "service a 65536/tcp\n", 1, ErrBadValue, "port"},
		{"proto", "service a 25/sctp\n", 1, ErrBadValue, "protocol"},
		{"name", "service -a 25/tcp\n", 1, ErrBadValue, "service name"},
		{"check kind", "service a 25/tcp\ncheck ftp\n", 2, ErrBadValue, "check \"ftp\""},
		{"two values", "service a 25/tcp\ncheck tcp smtp\n", 2, ErrSyntax, "exactly one value"},
		{"interval", "service a 25/tcp\ncheck tcp\ninterval 2\n", 3, ErrBadValue, "interval"},
		{"interval small", "service a 25/tcp\ncheck tcp\ninterval 1ms\n", 3, ErrBadValue, "outside"},
		{"timeout not below interval", "service a 25/tcp\ncheck tcp\ninterval 1s\ntimeout 1s\n", 4, ErrConflict, "shorter than interval"},
		{"rise", "service a 25/tcp\ncheck tcp\nrise 0\n", 3, ErrBadValue, "rise"},
		{"fall", "service a 25/tcp\ncheck tcp\nfall x\n", 3, ErrBadValue, "fall"},
		{"idle", "service a 25/tcp\nidle-timeout -1s\n", 2, ErrBadValue, "idle-timeout"},
		{"affinity value", "service a 5060/udp\naffinity src\n", 2, ErrBadValue, "affinity"},
		{"affinity tcp", "service a 5060/tcp\naffinity call-id\n", 2, ErrConflict, "needs a udp service"},
		{"check on udp", "service a 53/udp\ncheck tcp\n", 2, ErrConflict, "needs a tcp service"},
		{"interval without check", "service a 25/tcp\ninterval 1s\n", 2, ErrConflict, "without a check"},
		{"http key on smtp", "service a 25/tcp\ncheck smtp\nhttp-path /x\n", 3, ErrConflict, "applies to check http"},
		{"first misplaced key wins", "service a 25/tcp\ncheck smtp\ntls-verify yes\nhttp-path /x\n", 3, ErrConflict, "tls-verify"},
		{"http path", "service a 80/tcp\ncheck http\nhttp-path healthz\n", 3, ErrBadValue, "http-path"},
		{"http host", "service a 80/tcp\ncheck http\nhttp-host a/b\n", 3, ErrBadValue, "http-host"},
		{"http expect order", "service a 80/tcp\ncheck http\nhttp-expect 399-200\n", 3, ErrBadValue, "http-expect"},
		{"http expect range", "service a 80/tcp\ncheck http\nhttp-expect 200-600\n", 3, ErrBadValue, "http-expect"},
		{"tls verify", "service a 443/tcp\ncheck tls\ntls-verify maybe\n", 3, ErrBadValue, "tls-verify"},
		{"vip", "service a 25/tcp\ncheck tcp\nvip 0.0.0.0\n", 3, ErrBadValue, "vip"},
		{"vip without source", src4 + "service a 25/tcp\ncheck tcp\nvip 2001:db8::1\n", 4, ErrConflict, "no IPv6 probe-source"},
		{"vip without check", src4 + "service a 25/tcp\nvip 192.0.2.1\n", 3, ErrConflict, "without a check"},
		{"long line", strings.Repeat("#", maxLine+10) + "\n", 1, ErrSyntax, "longer than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse(strings.NewReader(tc.in), "x.conf")
			if err == nil {
				t.Fatalf("no error; got %+v", f)
			}
			if !errors.Is(err, tc.kind) {
				t.Errorf("error %q does not wrap %v", err, tc.kind)
			}
			prefix := "x.conf:" + strconv.Itoa(tc.line) + ": "
			if !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error %q does not start with %q", err, prefix)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not mention %q", err, tc.msg)
			}
		})
	}
}

func TestSourceForDefaultVIPNotRequired(t *testing.T) {
	// Without an explicit vip the family is only known at run time, where
	// the integrator reports a missing source.
	if _, err := Parse(strings.NewReader("service a 25/tcp\ncheck smtp\n"), "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := Parse(strings.NewReader("probe-source 2001:db8::9\nservice a 25/tcp\ncheck smtp\nvip 2001:db8::1\n"), "x"); err != nil {
		t.Fatal(err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(briefExample)
	f.Add("service a 1/udp\ncheck sip\naffinity call-id\n")
	f.Add("quorum 3\nprobe-source ::1\n")
	f.Add("service a 80/tcp\ncheck http\nhttp-expect 200\n")
	f.Fuzz(func(t *testing.T, in string) {
		file, err := Parse(strings.NewReader(in), "fuzz")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz:") {
				t.Fatalf("error without position: %v", err)
			}
			return
		}
		// Every accepted file satisfies the documented invariants.
		seen := map[string]bool{}
		for _, s := range file.Services {
			if seen[s.Key()] || s.Port == 0 || (s.Proto != ProtoTCP && s.Proto != ProtoUDP) {
				t.Fatalf("bad service %+v", s)
			}
			seen[s.Key()] = true
			c := s.Check
			if s.Affinity != "" && s.Proto != ProtoUDP {
				t.Fatalf("affinity on %s", s.Key())
			}
			if c.Kind == "" {
				continue
			}
			if c.Timeout <= 0 || c.Timeout >= c.Interval || c.Rise < 1 || c.Fall < 1 {
				t.Fatalf("bad check %+v", c)
			}
			if c.Kind == KindHTTP && (c.HTTPExpectLo < 100 || c.HTTPExpectHi > 599 || c.HTTPPath == "") {
				t.Fatalf("bad http check %+v", c)
			}
		}
	})
}
