package conntrack

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"
)

// protoSIPDialog stands for a protocol number a caller reserves for keys of
// its own (RFC 3692 reserves 253 and 254 for experimentation), as the SIP
// dialog entries keyed by a Call-ID hash do.
const protoSIPDialog = 253

// mailVoIP is the port-timeout configuration of a mail/VoIP cluster: IMAP
// at the 30 minutes RFC 2177 section 3 asks of IDLE clients (29 + margin),
// SIP over UDP longer than registrations' refresh interval (RFC 3261
// section 10.2.1: 3600 s by default), and dialog entries of a caller's own
// protocol.
var mailVoIP = []PortTimeout{
	{Proto: ProtoTCP, Port: 143, Timeout: 1800 * time.Second},
	{Proto: ProtoTCP, Port: 993, Timeout: 1800 * time.Second},
	{Proto: ProtoUDP, Port: 5060, Timeout: 2 * time.Hour},
	{Proto: protoSIPDialog, Port: 5060, Timeout: 45 * time.Minute},
}

func portKey4(n uint32, proto uint8, port uint16) Key {
	return Key{Src: 0xc0000200 | n, Dst: 0xc6336401, SPort: uint16(40000 + n), DPort: port, Proto: proto}
}

func portKey6(n uint32, proto uint8, port uint16) Key6 {
	return Key6{Src: ip6(n), Dst: vip6, SPort: uint16(40000 + n), DPort: port, Proto: proto}
}

// The acceptance case of issue 13 and its neighbours: an IMAP flow idle for
// 20 minutes survives with a 30-minute port timeout, an SMTP flow with the
// default 900 s does not, and the handshake and closing states of the long
// port keep their IPVS timeouts.
func TestPortTimeoutIMAP(t *testing.T) {
	tb := New(Config{PortTimeouts: mailVoIP, Persistence: time.Minute})
	imap := portKey4(1, ProtoTCP, 143)
	smtp := portKey4(2, ProtoTCP, 25)
	half := portKey4(3, ProtoTCP, 143) // a SYN and nothing more
	closing := portKey4(4, ProtoTCP, 143)
	mustInsert(t, tb, imap, 1, FlagSYN, t0)
	mustInsert(t, tb, smtp, 1, FlagSYN, t0)
	mustInsert(t, tb, half, 1, FlagSYN, t0)
	mustInsert(t, tb, closing, 1, FlagSYN, t0)
	expectLife(t, tb, half, StateSynRecv, t0, 60*time.Second)
	now := t0 + sec
	for _, k := range []Key{imap, smtp, closing} {
		if _, ok := tb.Touch(k, FlagACK, now); !ok {
			t.Fatalf("%+v lost before its handshake completed", k)
		}
	}
	expectLife(t, tb, imap, StateEstablished, now, 1800*time.Second)
	expectLife(t, tb, smtp, StateEstablished, now, 900*time.Second)
	if _, ok := tb.Touch(closing, FlagFIN|FlagACK, now); !ok {
		t.Fatal("closing flow lost")
	}
	expectLife(t, tb, closing, StateClosing, now, 120*time.Second)
	checkInvariants(t, tb)

	if _, ok := tb.Touch(half, FlagACK, t0+61*sec); ok {
		t.Fatal("a SYN_RECV flow on port 143 outlived the SYN_RECV timeout")
	}
	idle := now + int64(20*time.Minute)
	if m, ok := tb.Touch(imap, FlagACK, idle); !ok || m != 1 {
		t.Fatalf("IMAP flow idle for 20 minutes: Touch = %d, %v; want 1, true", m, ok)
	}
	if _, ok := tb.Touch(smtp, FlagACK, idle); ok {
		t.Fatal("SMTP flow idle for 20 minutes survived the 900 s default")
	}
	// The refresh restarted the long timeout: 29 minutes of silence more
	// (an IMAP IDLE client's re-issue interval) are fine, 30 plus a tick
	// are not.
	if _, ok := tb.Touch(imap, FlagACK, idle+int64(29*time.Minute)); !ok {
		t.Fatal("IMAP flow lost after a second 29-minute idle period")
	}
	if _, ok := tb.Touch(imap, FlagACK, idle+int64(59*time.Minute)+tickNs); ok {
		t.Fatal("IMAP flow outlived its 30-minute timeout")
	}
	// Misses do not remove flows; Expire removes all four.
	if f, _ := tb.Expire(idle + int64(2*time.Hour)); f != 4 {
		t.Fatalf("Expire removed %d flows, want 4", f)
	}
	checkInvariants(t, tb)
}

// Every protocol's single state takes its port's timeout; other ports,
// protocols and VIP-side source ports keep the defaults.
func TestPortTimeoutProtocols(t *testing.T) {
	tb := New(Config{PortTimeouts: mailVoIP})
	d := DefaultTimeouts()
	cases := []struct {
		k    Key
		want State
		life time.Duration
	}{
		{portKey4(1, ProtoUDP, 5060), StateUDP, 2 * time.Hour},
		{portKey4(2, ProtoUDP, 53), StateUDP, d.UDP},
		{portKey4(3, protoSIPDialog, 5060), StateOther, 45 * time.Minute},
		{portKey4(4, protoSIPDialog, 5061), StateOther, d.Other},
		{portKey4(5, ProtoTCP, 993), StateEstablished, 1800 * time.Second},
		{portKey4(6, ProtoTCP, 5060), StateEstablished, d.TCPEstablished}, // only UDP 5060 is long
		{portKey4(7, ProtoICMP, 0), StateICMP, d.ICMP},
		// A flow from port 143 to another port is not IMAP: only the
		// VIP's port counts.
		{Key{Src: 1, Dst: 2, SPort: 143, DPort: 40000, Proto: ProtoTCP}, StateEstablished, d.TCPEstablished},
	}
	for i, c := range cases {
		mustInsert(t, tb, c.k, uint32(i), FlagACK, t0)
		expectLife(t, tb, c.k, c.want, t0, c.life)
	}
	// UDP 5060 stays after 1 h 59 min of silence; DNS is long gone.
	now := t0 + int64(119*time.Minute)
	if _, ok := tb.Touch(cases[0].k, 0, now); !ok {
		t.Fatal("SIP/UDP flow lost before 2 h")
	}
	if _, ok := tb.Touch(cases[1].k, 0, now); ok {
		t.Fatal("DNS flow outlived the UDP default")
	}
	checkInvariants(t, tb)
}

// IPv6 flows take the same port timeouts by the same protocol number and
// port; a PortTimeout for ProtoICMP means protocol 1, which in IPv6 is an
// "other" flow, and one for ProtoICMPv6 applies to IPv6 ICMP.
func TestPortTimeout6(t *testing.T) {
	pts := append([]PortTimeout{{Proto: ProtoICMPv6, Timeout: 90 * time.Second}}, mailVoIP...)
	tb := New(Config{PortTimeouts: pts})
	d := DefaultTimeouts()
	imap := portKey6(1, ProtoTCP, 143)
	mustInsert6(t, tb, imap, 1, FlagSYN, t0)
	expectLife6(t, tb, imap, StateSynRecv, t0, d.TCPSynRecv)
	if _, ok := tb.Touch6(imap, FlagACK, t0); !ok {
		t.Fatal("IMAP flow lost")
	}
	expectLife6(t, tb, imap, StateEstablished, t0, 1800*time.Second)
	if _, ok := tb.Touch6(imap, FlagACK, t0+int64(20*time.Minute)); !ok {
		t.Fatal("IPv6 IMAP flow idle for 20 minutes was lost")
	}
	smtp := portKey6(2, ProtoTCP, 25)
	mustInsert6(t, tb, smtp, 1, FlagACK, t0)
	if _, ok := tb.Touch6(smtp, FlagACK, t0+int64(20*time.Minute)); ok {
		t.Fatal("IPv6 SMTP flow idle for 20 minutes survived the default")
	}
	sip := portKey6(3, ProtoUDP, 5060)
	mustInsert6(t, tb, sip, 1, 0, t0)
	expectLife6(t, tb, sip, StateUDP, t0, 2*time.Hour)
	icmp6 := portKey6(4, ProtoICMPv6, 0)
	mustInsert6(t, tb, icmp6, 1, 0, t0)
	expectLife6(t, tb, icmp6, StateICMP, t0, 90*time.Second)
	checkInvariants(t, tb)
}

// Imported flows get the port timeouts too: the remaining lifetime an active
// node reports for a long-lived flow is not clamped to the default, but to
// the port's timeout; handshake states are still clamped to theirs.
func TestImportPortTimeout(t *testing.T) {
	tb := New(Config{PortTimeouts: mailVoIP, Persistence: time.Minute})
	imap := portKey4(1, ProtoTCP, 143)
	now := t0
	if err := tb.Import(imap, 2, StateEstablished, now+1700*sec, now); err != nil {
		t.Fatal(err)
	}
	expectLife(t, tb, imap, StateEstablished, now, 1700*time.Second)
	// A bogus lifetime is clamped to the port's timeout, not to 900 s.
	if err := tb.Import(imap, 2, StateEstablished, now+1<<60, now); err != nil {
		t.Fatal(err)
	}
	expectLife(t, tb, imap, StateEstablished, now, 1800*time.Second)
	if _, ok := tb.Touch(imap, FlagACK, now+int64(20*time.Minute)); !ok {
		t.Fatal("imported IMAP flow idle for 20 minutes was lost")
	}
	half := portKey4(2, ProtoTCP, 143)
	if err := tb.Import(half, 2, StateSynRecv, now+1800*sec, now); err != nil {
		t.Fatal(err)
	}
	expectLife(t, tb, half, StateSynRecv, now, 60*time.Second)
	sip := portKey4(3, ProtoUDP, 5060)
	if err := tb.Import(sip, 2, StateUDP, now+3*int64(time.Hour), now); err != nil {
		t.Fatal(err)
	}
	expectLife(t, tb, sip, StateUDP, now, 2*time.Hour)

	imap6 := portKey6(1, ProtoTCP, 143)
	if err := tb.Import6(imap6, 3, StateEstablished, now+1<<60, now); err != nil {
		t.Fatal(err)
	}
	expectLife6(t, tb, imap6, StateEstablished, now, 1800*time.Second)
	if _, ok := tb.Touch6(imap6, FlagACK, now+int64(20*time.Minute)); !ok {
		t.Fatal("imported IPv6 IMAP flow idle for 20 minutes was lost")
	}
	checkInvariants(t, tb)
}

// A flow with the longest timeout the expiry encoding can hold lives
// exactly that long: the serial-number comparison does not see it as
// expired at once, nor keep it after.
func TestMaxTimeoutFitsExpiry(t *testing.T) {
	if ticks := (int64(MaxTimeout) + tickNs) >> tickShift; ticks >= 1<<31 {
		t.Fatalf("MaxTimeout is %d ticks, beyond the serial-number range", ticks)
	}
	tb := New(Config{PortTimeouts: []PortTimeout{{Proto: ProtoUDP, Port: 5060, Timeout: MaxTimeout}},
		Timeouts: Timeouts{TCPEstablished: MaxTimeout}})
	sip := portKey4(1, ProtoUDP, 5060)
	tcp := portKey4(2, ProtoTCP, 25)
	mustInsert(t, tb, sip, 1, 0, t0)
	mustInsert(t, tb, tcp, 1, FlagACK, t0)
	for _, k := range []Key{sip, tcp} {
		expectLife(t, tb, k, firstState(k.Proto, FlagACK), t0, MaxTimeout)
		if _, ok := tb.Touch(k, 0, t0+int64(MaxTimeout)-1); !ok {
			t.Fatalf("%+v lost before MaxTimeout", k)
		}
		if _, ok := tb.Touch(k, 0, t0+2*int64(MaxTimeout)+tickNs); ok {
			t.Fatalf("%+v outlived MaxTimeout", k)
		}
	}
	// New clamps a per-state timeout beyond the range rather than let it
	// wrap (Validate reports it).
	tb = New(Config{Timeouts: Timeouts{UDP: 10 * MaxTimeout}})
	mustInsert(t, tb, sip, 1, 0, t0)
	expectLife(t, tb, sip, StateUDP, t0, MaxTimeout)
}

func TestValidate(t *testing.T) {
	long := make([]PortTimeout, maxClasses)
	for i := range long {
		long[i] = PortTimeout{Proto: ProtoTCP, Port: uint16(i), Timeout: time.Duration(i+1) * time.Second}
	}
	cases := []struct {
		name string
		cfg  Config
		want error
	}{
		{"empty", Config{}, nil},
		{"mail and VoIP", Config{PortTimeouts: mailVoIP}, nil},
		{"max", Config{PortTimeouts: []PortTimeout{{ProtoTCP, 1, MaxTimeout}}}, nil},
		{"255 distinct", Config{PortTimeouts: long[:maxClasses-1]}, nil},
		{"zero", Config{PortTimeouts: []PortTimeout{{ProtoTCP, 143, 0}}}, ErrBadTimeout},
		{"negative", Config{PortTimeouts: []PortTimeout{{ProtoUDP, 5060, -time.Second}}}, ErrBadTimeout},
		{"too long", Config{PortTimeouts: []PortTimeout{{ProtoTCP, 143, MaxTimeout + 1}}}, ErrBadTimeout},
		{"256 distinct", Config{PortTimeouts: long}, ErrBadTimeout},
		{"state too long", Config{Timeouts: Timeouts{TCPEstablished: MaxTimeout + time.Hour}}, ErrBadTimeout},
		{"duplicate", Config{PortTimeouts: []PortTimeout{{ProtoTCP, 143, time.Hour}, {ProtoTCP, 143, 2 * time.Hour}}},
			ErrDuplicatePortTimeout},
	}
	for _, c := range cases {
		err := c.cfg.Validate()
		if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s: Validate = %v, want %v", c.name, err, c.want)
		}
	}
	// Same protocol and port numbers in another protocol are no duplicate.
	ok := Config{PortTimeouts: []PortTimeout{{ProtoTCP, 5060, time.Hour}, {ProtoUDP, 5060, time.Hour}}}
	if err := ok.Validate(); err != nil {
		t.Errorf("TCP and UDP 5060: %v", err)
	}
}

// New leaves out what Validate rejects: invalid entries are ignored and the
// first of duplicates wins.
func TestNewDropsInvalidPortTimeouts(t *testing.T) {
	tb := New(Config{PortTimeouts: []PortTimeout{
		{ProtoTCP, 143, 0},
		{ProtoTCP, 993, 1800 * time.Second},
		{ProtoTCP, 993, time.Second},
		{ProtoTCP, 110, MaxTimeout + 1},
	}})
	for _, c := range []struct {
		port uint16
		life time.Duration
	}{{143, 900 * time.Second}, {993, 1800 * time.Second}, {110, 900 * time.Second}} {
		k := portKey4(uint32(c.port), ProtoTCP, c.port)
		mustInsert(t, tb, k, 1, FlagACK, t0)
		expectLife(t, tb, k, StateEstablished, t0, c.life)
	}
}

// Ports with the same timeout share one class, so the class byte bounds
// distinct values only; every port maps to a row holding its timeout.
func TestPortClasses(t *testing.T) {
	var pts []PortTimeout
	for p := range 1000 {
		pts = append(pts, PortTimeout{Proto: uint8(p % 7), Port: uint16(p * 61), Timeout: time.Duration(1+p%100) * time.Minute})
	}
	cfg := Config{PortTimeouts: pts}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	tb := New(cfg)
	classes := map[uint8]bool{}
	for _, pt := range pts {
		c := tb.classOf(pt.Proto, pt.Port)
		if c == 0 || tb.timeouts[c][StateEstablished] != int64(pt.Timeout) || tb.timeouts[c][StateOther] != int64(pt.Timeout) {
			t.Fatalf("%+v: class %d, row %v", pt, c, tb.timeouts[c])
		}
		if tb.timeouts[c][StateSynRecv] != tb.timeouts[0][StateSynRecv] {
			t.Fatalf("class %d changed the SYN_RECV timeout", c)
		}
		classes[c] = true
	}
	if len(classes) != 100 {
		t.Fatalf("%d classes for 100 distinct timeouts", len(classes))
	}
	if c := tb.classOf(ProtoTCP, 1); c != 0 {
		t.Fatalf("unconfigured port has class %d", c)
	}
}

// Port timeouts cost the hot path no allocation.
func TestPortTimeoutAllocs(t *testing.T) {
	tb := New(Config{PortTimeouts: mailVoIP})
	k := portKey4(1, ProtoTCP, 143)
	k6 := portKey6(1, ProtoTCP, 143)
	mustInsert(t, tb, k, 1, FlagSYN, t0)
	mustInsert6(t, tb, k6, 1, FlagSYN, t0)
	now := t0
	n := testing.AllocsPerRun(1000, func() {
		now += 1000
		tb.Touch(k, FlagACK, now)
		tb.Touch6(k6, FlagACK, now)
		tb.Import(k, 1, StateEstablished, now+sec, now)
		tb.Delete(portKey4(2, ProtoUDP, 5060))
		tb.Insert(portKey4(2, ProtoUDP, 5060), 1, 0, now)
	})
	if n != 0 {
		t.Fatalf("%v allocations per run, want 0", n)
	}
}

// FuzzPortTimeouts checks Validate against New on arbitrary port-timeout
// lists: New never panics, each entry Validate accepts (the first for its
// protocol and port) is looked up to its own timeout, and Validate fails
// exactly when some entry is left out.
func FuzzPortTimeouts(f *testing.F) {
	f.Add([]byte{6, 0, 143, 0, 0, 0, 0x1a, 0xd2})
	f.Add([]byte{17, 0x13, 0xc4, 0, 0, 0, 0, 0x1c, 17, 0x13, 0xc4, 0, 0, 0, 0, 0x1d})
	f.Add([]byte{6, 0, 25, 0x80, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var pts []PortTimeout
		for ; len(b) >= 8; b = b[8:] {
			// Seconds, signed, with the top byte scaling into and beyond
			// MaxTimeout's range.
			secs := int64(int32(binary.BigEndian.Uint32(b[4:])))
			pts = append(pts, PortTimeout{Proto: b[0], Port: binary.BigEndian.Uint16(b[1:]),
				Timeout: time.Duration(secs) * time.Second * time.Duration(1+b[3]%16)})
		}
		cfg := Config{PortTimeouts: pts}
		err := cfg.Validate()
		tb := New(cfg)
		used := map[uint32]bool{}
		all := true
		for _, pt := range pts {
			key := portKey(pt.Proto, pt.Port)
			c := tb.classOf(pt.Proto, pt.Port)
			valid := pt.Timeout > 0 && pt.Timeout <= MaxTimeout
			switch {
			case !valid || used[key]:
				all = false
			case c == 0:
				all = false // out of classes
			default:
				used[key] = true
				if got := tb.timeouts[c][StateUDP]; got != int64(pt.Timeout) {
					t.Fatalf("%+v: class %d holds %v", pt, c, time.Duration(got))
				}
			}
		}
		if (err == nil) != all {
			t.Fatalf("Validate = %v, but every entry used = %v", err, all)
		}
	})
}
