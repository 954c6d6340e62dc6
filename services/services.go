// Package services reads the l2lb services file: the per-port settings of
// the balanced services (flow idle timeout, SIP Call-ID affinity) and their
// health checks (TCP connect, SMTP, IMAP, POP3, HTTP, SIP OPTIONS, TLS).
//
// The format is line oriented: '#' starts a comment, blank lines are
// ignored, tokens are separated by blanks. Settings before the first
// "service NAME PORT/PROTO" line are global; a service line starts a stanza
// that runs to the next service line. docs/services.md is the reference and
// contrib/services.conf a documented example. Every error names FILE:LINE:
// and wraps one of the sentinel errors below, so callers can test for the
// class of mistake with errors.Is.
package services

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// Check kinds, the values of the "check" keyword and of Check.Kind.
const (
	KindTCP  = "tcp"  // TCP three-way handshake completes
	KindSMTP = "smtp" // 220 greeting, EHLO answered with 250, QUIT (RFC 5321)
	KindIMAP = "imap" // "* OK" or "* PREAUTH" greeting, LOGOUT (RFC 9051 §7.1)
	KindPOP3 = "pop3" // "+OK" greeting, QUIT (RFC 1939 §4)
	KindHTTP = "http" // GET answered with a status in the expected range (RFC 9110)
	KindSIP  = "sip"  // OPTIONS answered with any final response (RFC 3261 §11)
	KindTLS  = "tls"  // TLS handshake completes (RFC 8446)
)

// Protocols of a service line.
const (
	ProtoTCP = "tcp"
	ProtoUDP = "udp"
)

// AffinityCallID pins all packets of one SIP dialog (same Call-ID header,
// RFC 3261 §8.1.1.4) to one frontend; UDP only, where the 5-tuple does not
// identify a call.
const AffinityCallID = "call-id"

// Defaults of the check settings.
const (
	DefaultInterval = 2 * time.Second
	DefaultTimeout  = time.Second
	DefaultRise     = 2
	DefaultFall     = 3
	DefaultHTTPPath = "/"
	// DefaultHTTPExpectLo and DefaultHTTPExpectHi accept the 2xx and 3xx
	// classes (RFC 9110 §15): a redirect still proves the server works.
	DefaultHTTPExpectLo = 200
	DefaultHTTPExpectHi = 399
	DefaultSMTPHelo     = "l2lb"
)

// Limits that catch typos without getting in an operator's way.
const (
	// MaxServices bounds the number of stanzas (and so of probes per
	// frontend and of entries in a healthcheck snapshot).
	MaxServices = 1024
	// MaxThreshold bounds rise and fall.
	MaxThreshold = 100
	// MinInterval keeps a probe from hammering a service.
	MinInterval = 10 * time.Millisecond
	// MaxInterval is an hour: a check that runs less often detects nothing.
	MaxInterval = time.Hour
	// MaxQuorum bounds the quorum setting (a cluster has far fewer frontends).
	MaxQuorum = 4096
	// maxName is the longest service name (a DNS label, RFC 1035 §2.3.4).
	maxName = 63
	// maxLine bounds a line so a binary file fed by mistake fails fast.
	maxLine = 4096
)

// Sentinel errors; every error from Parse and Load wraps one of them.
var (
	// ErrSyntax reports a line that does not tokenize into a known shape:
	// wrong number of arguments, an overlong line.
	ErrSyntax = errors.New("services: syntax error")
	// ErrUnknownKeyword reports a keyword the format does not have, or a
	// global keyword inside a stanza.
	ErrUnknownKeyword = errors.New("services: unknown keyword")
	// ErrDuplicate reports a key given twice in one stanza or globally, a
	// second service with the same PORT/PROTO or name.
	ErrDuplicate = errors.New("services: duplicate")
	// ErrBadValue reports a value that does not parse or is out of range.
	ErrBadValue = errors.New("services: bad value")
	// ErrConflict reports settings that are valid alone but not together,
	// such as call-id affinity on a TCP service.
	ErrConflict = errors.New("services: conflicting settings")
)

// File is a parsed services file.
type File struct {
	// Path is the name the file was read under, as used in error messages.
	Path string
	// ProbeSource4 and ProbeSource6 are the source addresses of health
	// probes to IPv4 and IPv6 VIPs; zero when not configured.
	ProbeSource4, ProbeSource6 netip.Addr
	// Quorum is the number of frontends that should pass all their checks;
	// while fewer do, the health monitor logs loudly. 0 turns it off.
	Quorum int
	// Services are the stanzas in file order.
	Services []Service
}

// Service is one "service" stanza.
type Service struct {
	// Name labels the service in logs and metrics.
	Name string
	// Line is the line number of the service line, for messages that point
	// the operator back to the file.
	Line int
	// Port and Proto are the balanced destination port; Proto is ProtoTCP
	// or ProtoUDP.
	Port  uint16
	Proto string
	// IdleTimeout is the flow idle timeout of this port; 0 means the
	// balancer's default for the protocol.
	IdleTimeout time.Duration
	// Affinity is "" or AffinityCallID.
	Affinity string
	// VIP is the address the health probe connects to; zero means the
	// first VIP of the probe's family in the VIP file.
	VIP netip.Addr
	// Check is the health check; Check.Kind is "" when there is none.
	Check Check
}

// Key returns "PORT/PROTO", the identity of the service.
func (s Service) Key() string { return strconv.Itoa(int(s.Port)) + "/" + s.Proto }

// Check is the health check of a service. Parse fills every default, so a
// Check with a Kind is ready to run.
type Check struct {
	// Kind is one of the Kind constants, or "" for no check.
	Kind string
	// Interval is the time between probe starts; Timeout bounds each probe
	// and is shorter than Interval.
	Interval, Timeout time.Duration
	// Rise consecutive successes make an unhealthy service healthy; Fall
	// consecutive failures make a healthy one unhealthy.
	Rise, Fall int
	// HTTPPath and HTTPHost are the request target and Host header of an
	// http check; an empty HTTPHost means the VIP.
	HTTPPath, HTTPHost string
	// HTTPExpectLo and HTTPExpectHi bound the accepted status codes,
	// inclusive.
	HTTPExpectLo, HTTPExpectHi int
	// TLSServerName is the SNI name of a tls check; TLSVerify makes the
	// probe verify the certificate chain and name against the system roots.
	TLSServerName string
	TLSVerify     bool
	// SMTPHelo is the name an smtp check sends in EHLO.
	SMTPHelo string
}

// Load reads and parses the services file at path.
func Load(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("services: %w", err)
	}
	defer f.Close()
	return Parse(f, path)
}

// Parse parses a services file read from r; name is used in error messages
// and as File.Path. It returns the first error found.
func Parse(r io.Reader, name string) (*File, error) {
	p := parser{file: &File{Path: name}, name: name, ports: map[string]int{}, names: map[string]int{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 512), maxLine)
	for sc.Scan() {
		p.line++
		if err := p.parseLine(sc.Text()); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, p.errf(p.line+1, ErrSyntax, "line longer than %d bytes", maxLine)
		}
		return nil, fmt.Errorf("services: read %s: %w", name, err)
	}
	if err := p.finish(); err != nil {
		return nil, err
	}
	return p.file, nil
}

// stanza is a service being parsed, with the line of every key seen so far.
type stanza struct {
	svc  Service
	keys map[string]int
}

type parser struct {
	file   *File
	name   string
	line   int
	cur    *stanza
	global map[string]int
	ports  map[string]int // PORT/PROTO -> line
	names  map[string]int // name -> line
}

func (p *parser) errf(line int, kind error, format string, args ...any) error {
	return fmt.Errorf("%s:%d: %s: %w", p.name, line, fmt.Sprintf(format, args...), kind)
}

// globalKeys are valid only before the first service line.
var globalKeys = map[string]bool{"probe-source": true, "quorum": true}

// stanzaKeys maps each stanza keyword to the check kind it needs: "" for
// keys that need no check, "*" for keys that need any check.
var stanzaKeys = map[string]string{
	"check":           "",
	"idle-timeout":    "",
	"affinity":        "",
	"vip":             "*",
	"interval":        "*",
	"timeout":         "*",
	"rise":            "*",
	"fall":            "*",
	"http-path":       KindHTTP,
	"http-host":       KindHTTP,
	"http-expect":     KindHTTP,
	"tls-server-name": KindTLS,
	"tls-verify":      KindTLS,
	"smtp-helo":       KindSMTP,
}

func (p *parser) parseLine(text string) error {
	if i := strings.IndexByte(text, '#'); i >= 0 {
		text = text[:i]
	}
	tok := strings.Fields(text)
	if len(tok) == 0 {
		return nil
	}
	key, args := tok[0], tok[1:]
	if key == "service" {
		return p.startService(args)
	}
	if p.cur == nil {
		if !globalKeys[key] {
			if _, ok := stanzaKeys[key]; ok {
				return p.errf(p.line, ErrUnknownKeyword, "%q belongs in a service stanza, not before the first service line", key)
			}
			return p.errf(p.line, ErrUnknownKeyword, "unknown keyword %q", key)
		}
		return p.parseGlobal(key, args)
	}
	if globalKeys[key] {
		return p.errf(p.line, ErrUnknownKeyword, "%q is a global setting; move it before the first service line", key)
	}
	if _, ok := stanzaKeys[key]; !ok {
		return p.errf(p.line, ErrUnknownKeyword, "unknown keyword %q in service %s", key, p.cur.svc.Name)
	}
	if prev, dup := p.cur.keys[key]; dup {
		return p.errf(p.line, ErrDuplicate, "%q given twice in service %s (first on line %d)", key, p.cur.svc.Name, prev)
	}
	p.cur.keys[key] = p.line
	if len(args) != 1 {
		return p.errf(p.line, ErrSyntax, "%q takes exactly one value, got %d", key, len(args))
	}
	return p.parseStanzaKey(key, args[0])
}

func (p *parser) parseGlobal(key string, args []string) error {
	if len(args) != 1 {
		return p.errf(p.line, ErrSyntax, "%q takes exactly one value, got %d", key, len(args))
	}
	v := args[0]
	switch key {
	case "probe-source":
		a, err := netip.ParseAddr(v)
		if err != nil || a.Zone() != "" || a.Is4In6() {
			return p.errf(p.line, ErrBadValue, "probe-source %q is not an IPv4 or IPv6 address", v)
		}
		if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
			return p.errf(p.line, ErrBadValue, "probe-source %s must be a unicast address of the frontends' network", a)
		}
		fam, slot := "probe-source4", &p.file.ProbeSource4
		if a.Is6() {
			fam, slot = "probe-source6", &p.file.ProbeSource6
		}
		if err := p.once(fam, "a second "+family(a)+" probe-source"); err != nil {
			return err
		}
		*slot = a
	case "quorum":
		if err := p.once(key, "quorum given twice"); err != nil {
			return err
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > MaxQuorum {
			return p.errf(p.line, ErrBadValue, "quorum %q is not a number from 0 to %d", v, MaxQuorum)
		}
		p.file.Quorum = n
	}
	return nil
}

func (p *parser) once(key, what string) error {
	if p.global == nil {
		p.global = map[string]int{}
	}
	if prev, dup := p.global[key]; dup {
		return p.errf(p.line, ErrDuplicate, "%s (first on line %d)", what, prev)
	}
	p.global[key] = p.line
	return nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func validName(s string) bool {
	if s == "" || len(s) > maxName {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case (c == '-' || c == '_' || c == '.') && i > 0:
		default:
			return false
		}
	}
	return true
}

func (p *parser) startService(args []string) error {
	if err := p.closeStanza(); err != nil {
		return err
	}
	if len(args) != 2 {
		return p.errf(p.line, ErrSyntax, "want \"service NAME PORT/PROTO\", got %d values", len(args))
	}
	name, pp := args[0], args[1]
	if !validName(name) {
		return p.errf(p.line, ErrBadValue, "service name %q: use up to %d letters, digits, '-', '_', '.', starting with a letter or digit", name, maxName)
	}
	portS, proto, ok := strings.Cut(pp, "/")
	if !ok {
		return p.errf(p.line, ErrSyntax, "%q is not PORT/PROTO", pp)
	}
	port, err := strconv.ParseUint(portS, 10, 16)
	if err != nil || port == 0 {
		return p.errf(p.line, ErrBadValue, "port %q is not a number from 1 to 65535", portS)
	}
	if proto != ProtoTCP && proto != ProtoUDP {
		return p.errf(p.line, ErrBadValue, "protocol %q is not tcp or udp", proto)
	}
	if len(p.file.Services) >= MaxServices {
		return p.errf(p.line, ErrBadValue, "more than %d services", MaxServices)
	}
	svc := Service{Name: name, Line: p.line, Port: uint16(port), Proto: proto}
	if prev, dup := p.ports[svc.Key()]; dup {
		return p.errf(p.line, ErrDuplicate, "%s is already service %s (line %d)", svc.Key(), p.file.Services[p.svcIndex(prev)].Name, prev)
	}
	if prev, dup := p.names[name]; dup {
		return p.errf(p.line, ErrDuplicate, "service name %s already used on line %d", name, prev)
	}
	p.ports[svc.Key()] = p.line
	p.names[name] = p.line
	p.cur = &stanza{svc: svc, keys: map[string]int{}}
	return nil
}

// svcIndex finds the already closed service that started on line.
func (p *parser) svcIndex(line int) int {
	for i, s := range p.file.Services {
		if s.Line == line {
			return i
		}
	}
	return 0
}

func parseDuration(v string) (time.Duration, bool) {
	d, err := time.ParseDuration(v)
	return d, err == nil && d > 0
}

func (p *parser) parseStanzaKey(key, v string) error {
	s := &p.cur.svc
	c := &s.Check
	switch key {
	case "check":
		switch v {
		case KindTCP, KindSMTP, KindIMAP, KindPOP3, KindHTTP, KindSIP, KindTLS:
			c.Kind = v
		default:
			return p.errf(p.line, ErrBadValue, "check %q is not one of tcp, smtp, imap, pop3, http, sip, tls", v)
		}
	case "idle-timeout":
		d, ok := parseDuration(v)
		if !ok {
			return p.errf(p.line, ErrBadValue, "idle-timeout %q is not a positive Go duration such as 30m", v)
		}
		s.IdleTimeout = d
	case "affinity":
		if v != AffinityCallID {
			return p.errf(p.line, ErrBadValue, "affinity %q is not %s", v, AffinityCallID)
		}
		s.Affinity = v
	case "vip":
		a, err := netip.ParseAddr(v)
		if err != nil || a.Zone() != "" || a.Is4In6() || a.IsUnspecified() || a.IsMulticast() {
			return p.errf(p.line, ErrBadValue, "vip %q is not a unicast IPv4 or IPv6 address", v)
		}
		s.VIP = a
	case "interval", "timeout":
		d, ok := parseDuration(v)
		if !ok {
			return p.errf(p.line, ErrBadValue, "%s %q is not a positive Go duration such as 2s", key, v)
		}
		if key == "interval" {
			if d < MinInterval || d > MaxInterval {
				return p.errf(p.line, ErrBadValue, "interval %s is outside %s..%s", d, MinInterval, MaxInterval)
			}
			c.Interval = d
		} else {
			c.Timeout = d
		}
	case "rise", "fall":
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxThreshold {
			return p.errf(p.line, ErrBadValue, "%s %q is not a number from 1 to %d", key, v, MaxThreshold)
		}
		if key == "rise" {
			c.Rise = n
		} else {
			c.Fall = n
		}
	case "http-path":
		// The request target of a GET in origin form (RFC 9112 §3.2.1).
		if !strings.HasPrefix(v, "/") || strings.ContainsAny(v, "\x00\r\n") {
			return p.errf(p.line, ErrBadValue, "http-path %q must start with /", v)
		}
		c.HTTPPath = v
	case "http-host":
		if strings.ContainsAny(v, "/@\x00\r\n") {
			return p.errf(p.line, ErrBadValue, "http-host %q is not a host[:port]", v)
		}
		c.HTTPHost = v
	case "http-expect":
		lo, hi, ok := parseStatusRange(v)
		if !ok {
			return p.errf(p.line, ErrBadValue, "http-expect %q is not a status or LO-HI range within 100-599", v)
		}
		c.HTTPExpectLo, c.HTTPExpectHi = lo, hi
	case "tls-server-name":
		if strings.ContainsAny(v, "/@:\x00") {
			return p.errf(p.line, ErrBadValue, "tls-server-name %q is not a host name", v)
		}
		c.TLSServerName = v
	case "tls-verify":
		switch v {
		case "yes":
			c.TLSVerify = true
		case "no":
			c.TLSVerify = false
		default:
			return p.errf(p.line, ErrBadValue, "tls-verify %q is not yes or no", v)
		}
	case "smtp-helo":
		// An EHLO domain or address literal (RFC 5321 §4.1.1.1); it must
		// not carry anything that ends the command line.
		if strings.ContainsAny(v, "\x00\r\n") {
			return p.errf(p.line, ErrBadValue, "smtp-helo %q is not a domain", v)
		}
		c.SMTPHelo = v
	}
	return nil
}

// parseStatusRange parses "200" or "200-399"; status codes are three digits
// from 100 to 599 (RFC 9110 §15).
func parseStatusRange(v string) (lo, hi int, ok bool) {
	los, his, isRange := strings.Cut(v, "-")
	lo, err := strconv.Atoi(los)
	if err != nil {
		return 0, 0, false
	}
	hi = lo
	if isRange {
		if hi, err = strconv.Atoi(his); err != nil {
			return 0, 0, false
		}
	}
	if lo < 100 || hi > 599 || lo > hi {
		return 0, 0, false
	}
	return lo, hi, true
}

// closeStanza runs the checks that need the whole stanza, fills defaults
// and appends the service.
func (p *parser) closeStanza() error {
	st := p.cur
	if st == nil {
		return nil
	}
	p.cur = nil
	s := &st.svc
	c := &s.Check
	at := func(key string) int { return st.keys[key] }
	if s.Affinity == AffinityCallID && s.Proto != ProtoUDP {
		return p.errf(at("affinity"), ErrConflict, "affinity call-id needs a udp service; %s is %s (SIP over TCP keeps a call on its connection)", s.Name, s.Key())
	}
	// Report the first misplaced key in file order, not map order.
	var first error
	firstLine := 0
	for key, line := range st.keys {
		kind := stanzaKeys[key]
		var err error
		switch {
		case kind == "":
		case c.Kind == "":
			err = p.errf(line, ErrConflict, "%q without a check line in service %s", key, s.Name)
		case kind != "*" && kind != c.Kind:
			err = p.errf(line, ErrConflict, "%q applies to check %s, service %s has check %s", key, kind, s.Name, c.Kind)
		}
		if err != nil && (first == nil || line < firstLine) {
			first, firstLine = err, line
		}
	}
	if first != nil {
		return first
	}
	if c.Kind != "" {
		if c.Kind != KindSIP && s.Proto != ProtoTCP {
			return p.errf(at("check"), ErrConflict, "check %s needs a tcp service; %s is %s (only sip runs over udp)", c.Kind, s.Name, s.Key())
		}
		fillDefaults(c)
		if c.Timeout >= c.Interval {
			line := at("timeout")
			if line == 0 {
				line = at("interval")
			}
			return p.errf(line, ErrConflict, "timeout %s must be shorter than interval %s in service %s", c.Timeout, c.Interval, s.Name)
		}
		if s.VIP.IsValid() {
			src := p.file.ProbeSource4
			if s.VIP.Is6() {
				src = p.file.ProbeSource6
			}
			if !src.IsValid() {
				return p.errf(at("vip"), ErrConflict, "vip %s of service %s is %s but there is no %s probe-source", s.VIP, s.Name, family(s.VIP), family(s.VIP))
			}
		}
	}
	p.file.Services = append(p.file.Services, *s)
	return nil
}

func fillDefaults(c *Check) {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
		// A short interval alone should not need a timeout line too.
		if c.Timeout >= c.Interval {
			c.Timeout = c.Interval / 2
		}
	}
	if c.Rise == 0 {
		c.Rise = DefaultRise
	}
	if c.Fall == 0 {
		c.Fall = DefaultFall
	}
	if c.Kind == KindHTTP {
		if c.HTTPPath == "" {
			c.HTTPPath = DefaultHTTPPath
		}
		if c.HTTPExpectLo == 0 {
			c.HTTPExpectLo, c.HTTPExpectHi = DefaultHTTPExpectLo, DefaultHTTPExpectHi
		}
	}
	if c.Kind == KindSMTP && c.SMTPHelo == "" {
		c.SMTPHelo = DefaultSMTPHelo
	}
}

func (p *parser) finish() error {
	return p.closeStanza()
}
