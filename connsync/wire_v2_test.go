package connsync

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/l2lb/l2lb/conntrack"
)

// vectorRecords6 are the records of the version 2 vectors, one of each
// address-flag combination and a template: an IPv6 flow to an IPv6 member
// (flags 0), an IPv4 flow to an IPv6 member (1), a unique-local IPv6 ICMPv6
// flow to an IPv4 member (2), an IPv6 template (0).
func vectorRecords6() []Record {
	return []Record{
		{Kind: RecordFlow, Src: addr("2001:db8:c::7"), Dst: addr("2001:db8:f::200"), SPort: 40001, DPort: 443, Proto: conntrack.ProtoTCP,
			Member: addr("2001:db8::12"), State: conntrack.StateEstablished, TTL: 3 * time.Second},
		{Kind: RecordFlow, Src: addr("198.51.100.7"), Dst: addr("192.0.2.200"), SPort: 5353, DPort: 53, Proto: conntrack.ProtoUDP,
			Member: addr("2001:db8::13"), State: conntrack.StateUDP, TTL: 7500 * time.Millisecond},
		{Kind: RecordFlow, Src: addr("fd00:1::7"), Dst: addr("fd00:2::200"), Proto: protoICMPv6,
			Member: addr("192.0.2.12"), State: conntrack.StateICMP, TTL: 9 * time.Second},
		{Kind: RecordTemplate, Src: addr("2001:db8:c::7"), Dst: addr("2001:db8:f::200"), Member: addr("2001:db8::12"), TTL: MaxTTL},
	}
}

// TestWireVectorsV2 pins the version 2 encoding. The bytes were built
// independently of this package, by a short Python script from the layout
// in the package documentation (the MACs with Python's hmac module).
func TestWireVectorsV2(t *testing.T) {
	upd := Header{Type: MsgUpdate, SyncID: 0x1234, Sender: testSender, Seq: 0xdeadbeef}
	for _, tc := range []struct {
		name string
		key  []byte
		want string
	}{
		{"update, no key", nil,
			"4c3253590200010012340004c000020bdeadbeef0101060020010db8000c0000000000000000000720010db8000f0000" +
				"00000000000002009c4101bb20010db800000000000000000000001200000bb80104110100000000000000000000ffff" +
				"c633640700000000000000000000ffffc00002c814e9003520010db800000000000000000000001300001d4c01053a02" +
				"fd000001000000000000000000000007fd0000020000000000000000000002000000000000000000000000000000ffff" +
				"c000020c000023280200000020010db8000c0000000000000000000720010db8000f0000000000000000020000000000" +
				"20010db8000000000000000000000012ffffffff"},
		{"update, key", testKey,
			"4c3253590201010012340004c000020bdeadbeef0101060020010db8000c0000000000000000000720010db8000f0000" +
				"00000000000002009c4101bb20010db800000000000000000000001200000bb80104110100000000000000000000ffff" +
				"c633640700000000000000000000ffffc00002c814e9003520010db800000000000000000000001300001d4c01053a02" +
				"fd000001000000000000000000000007fd0000020000000000000000000002000000000000000000000000000000ffff" +
				"c000020c000023280200000020010db8000c0000000000000000000720010db8000f0000000000000000020000000000" +
				"20010db8000000000000000000000012ffffffff4bd672510940bb1addb0b5ab751327845fdfedfb4d2e8d2271cf08a5" +
				"cc95708d"},
		{"update, 100-byte key (hashed first)", make([]byte, 100),
			"4c3253590201010012340004c000020bdeadbeef0101060020010db8000c0000000000000000000720010db8000f0000" +
				"00000000000002009c4101bb20010db800000000000000000000001200000bb80104110100000000000000000000ffff" +
				"c633640700000000000000000000ffffc00002c814e9003520010db800000000000000000000001300001d4c01053a02" +
				"fd000001000000000000000000000007fd0000020000000000000000000002000000000000000000000000000000ffff" +
				"c000020c000023280200000020010db8000c0000000000000000000720010db8000f0000000000000000020000000000" +
				"20010db8000000000000000000000012ffffffff283ad4347a5e5c086dcc6f21c1197d0712b4a29b36086c0137d7b127" +
				"cff88624"},
	} {
		want, err := hex.DecodeString(tc.want)
		if err != nil {
			t.Fatal(err)
		}
		recs := vectorRecords6()
		got, err := Encode(nil, upd, recs, tc.key)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %x\nwant %x", tc.name, got, want)
		}
		h, dec, err := Decode(want, tc.key, upd.SyncID, nil)
		if err != nil || !reflect.DeepEqual(h, upd) || !reflect.DeepEqual(dec, recs) {
			t.Errorf("%s: decoded %+v %v, %v", tc.name, h, dec, err)
		}
	}
}

// Offsets in a version 2 record.
const (
	v2Kind, v2State, v2Proto, v2FlagsOff = 0, 1, 2, 3
	v2Src, v2Dst, v2SPort, v2DPort       = 4, 20, 36, 38
	v2Member, v2TTL                      = 40, 56
)

func TestDecodeErrorsV2(t *testing.T) {
	h := Header{Type: MsgUpdate, SyncID: 7, Sender: testSender, Seq: 1}
	// Records 0 and 3 have flags 0, record 1 flags v2FlowIPv4, record 2
	// flags v2MemberIPv4.
	recs := vectorRecords6()
	at := func(i, off int) int { return HeaderLen + i*RecordLenV2 + off }
	set := func(i, off int, v ...byte) func([]byte) []byte {
		return func(b []byte) []byte { copy(b[at(i, off):], v); return b }
	}
	setAddr := func(i, off int, s string) func([]byte) []byte {
		a := addr(s).As16() // IPv4 comes out IPv4-mapped
		return set(i, off, a[:]...)
	}
	both := func(fs ...func([]byte) []byte) func([]byte) []byte {
		return func(b []byte) []byte {
			for _, f := range fs {
				b = f(b)
			}
			return b
		}
	}
	same := func(b []byte) []byte { return b }
	for _, tc := range []struct {
		name   string
		key    []byte
		want   uint16
		edit   func([]byte) []byte
		fixMAC bool
		err    error
	}{
		// Header and length, as in version 1 but with version 2's record size.
		{"header cut", nil, 7, func(b []byte) []byte { return b[:HeaderLen-1] }, false, ErrShort},
		{"magic", nil, 7, func(b []byte) []byte { b[3] = 'Z'; return b }, false, ErrMagic},
		{"unknown flag", nil, 7, func(b []byte) []byte { b[5] |= 0x02; return b }, false, ErrHeader},
		{"reserved byte", nil, 7, func(b []byte) []byte { b[7] = 0x80; return b }, false, ErrHeader},
		{"type 9", nil, 7, func(b []byte) []byte { b[6] = 9; return b }, false, ErrHeader},
		{"labelled version 1", nil, 7, func(b []byte) []byte { b[4] = Version1; return b }, false, ErrCount},
		{"count beyond payload", nil, 7, func(b []byte) []byte { b[11]++; return b }, false, ErrCount},
		{"count below payload", nil, 7, func(b []byte) []byte { b[11]--; return b }, false, ErrCount},
		{"trailing byte", nil, 7, func(b []byte) []byte { return append(b, 0) }, false, ErrCount},
		{"truncated record", nil, 7, func(b []byte) []byte { return b[:len(b)-1] }, false, ErrCount},
		{"version 1 record size", nil, 7, func(b []byte) []byte { return b[:HeaderLen+4*RecordLenV1] }, false, ErrCount},
		{"count above MaxRecordsV2", nil, 7, func(b []byte) []byte {
			b[11] = MaxRecordsV2 + 1
			return append(b, make([]byte, (MaxRecordsV2+1-4)*RecordLenV2)...)
		}, false, ErrCount},
		{"no records", nil, 7, func(b []byte) []byte { b[11] = 0; return b[:HeaderLen] }, false, ErrCount},
		{"dump request without records", testKey, 7, func(b []byte) []byte { b[6], b[11] = byte(MsgDumpRequest), 0; return b[:HeaderLen+MACLen] }, true, ErrCount},
		{"dump end with records", testKey, 7, func(b []byte) []byte { b[6] = byte(MsgDumpEnd); return b }, true, ErrCount},
		{"other SyncID", nil, 8, same, false, ErrSyncID},
		{"MAC byte flipped", testKey, 7, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }, false, ErrAuth},
		{"record byte flipped under MAC", testKey, 7, func(b []byte) []byte { b[at(2, v2Member)] ^= 1; return b }, false, ErrAuth},

		// Address flags and forms.
		{"reserved flag bit 2", nil, 7, set(0, v2FlagsOff, 0x04), false, ErrRecord},
		{"reserved flag bit 7", testKey, 7, set(1, v2FlagsOff, v2FlowIPv4|0x80), true, ErrRecord},
		{"both flags, all mapped (a version 1 record)", nil, 7, both(setAddr(1, v2Member, "192.0.2.12"), set(1, v2FlagsOff, v2Flags)), false, ErrRecord},
		{"IPv4 flow flag on IPv6 client and VIP", nil, 7, set(0, v2FlagsOff, v2FlowIPv4), false, ErrRecord},
		{"IPv4 member flag on an IPv6 member", nil, 7, set(0, v2FlagsOff, v2MemberIPv4), false, ErrRecord},
		{"mapped client and VIP without flag", nil, 7, set(1, v2FlagsOff, 0), false, ErrRecord},
		{"mapped member without flag", nil, 7, set(2, v2FlagsOff, 0), false, ErrRecord},
		{"mapped client, native VIP", nil, 7, setAddr(0, v2Src, "198.51.100.7"), false, ErrRecord},
		{"mapped VIP, native client", nil, 7, setAddr(3, v2Dst, "192.0.2.200"), false, ErrRecord},
		{"IPv4 flag, native VIP", nil, 7, setAddr(1, v2Dst, "2001:db8::200"), false, ErrRecord},
		{"IPv4 flag, member not mapped", nil, 7, set(2, v2Member+10, 0), false, ErrRecord},
		{"IPv4 flag, client IPv4-compatible", nil, 7, set(1, v2Src+11, 0), false, ErrRecord},

		// Addresses.
		{"unspecified client", nil, 7, setAddr(0, v2Src, "::"), false, ErrRecord},
		{"unspecified VIP", nil, 7, setAddr(3, v2Dst, "::"), false, ErrRecord},
		{"unspecified member", nil, 7, setAddr(1, v2Member, "::"), false, ErrRecord},
		{"loopback client", nil, 7, setAddr(0, v2Src, "::1"), false, ErrRecord},
		{"loopback member", nil, 7, setAddr(0, v2Member, "::1"), false, ErrRecord},
		{"link-local client", nil, 7, setAddr(0, v2Src, "fe80::7"), false, ErrRecord},
		{"link-local VIP", nil, 7, setAddr(2, v2Dst, "fe80::200"), false, ErrRecord},
		{"link-local member", testKey, 7, setAddr(3, v2Member, "fe80::12"), true, ErrRecord},
		{"multicast VIP", nil, 7, setAddr(0, v2Dst, "ff02::1"), false, ErrRecord},
		{"multicast member", nil, 7, setAddr(1, v2Member, "ff05::2"), false, ErrRecord},
		{"zero IPv4 client", nil, 7, setAddr(1, v2Src, "0.0.0.0"), false, ErrRecord},
		{"broadcast IPv4 member", nil, 7, setAddr(2, v2Member, "255.255.255.255"), false, ErrRecord},
		{"loopback IPv4 member", nil, 7, setAddr(2, v2Member, "127.0.0.1"), false, ErrRecord},
		{"multicast IPv4 member", nil, 7, setAddr(2, v2Member, "239.255.108.50"), false, ErrRecord},

		// Kind, state, protocol, template fields.
		{"kind 0", nil, 7, set(0, v2Kind, 0), false, ErrRecord},
		{"kind 3", nil, 7, set(1, v2Kind, 3), false, ErrRecord},
		{"state beyond OTHER", nil, 7, set(0, v2State, byte(conntrack.StateOther)+1), false, ErrRecord},
		{"TCP state on UDP", nil, 7, set(1, v2State, byte(conntrack.StateEstablished)), false, ErrRecord},
		{"ICMP state, ICMPv4 protocol, IPv6 flow", nil, 7, set(2, v2Proto, conntrack.ProtoICMP), false, ErrRecord},
		{"OTHER state, ICMPv6 protocol, IPv6 flow", nil, 7, set(2, v2State, byte(conntrack.StateOther)), false, ErrRecord},
		{"ICMP state, ICMPv6 protocol, IPv4 flow", nil, 7, set(1, v2State, byte(conntrack.StateICMP), protoICMPv6), false, ErrRecord},
		{"template with state", nil, 7, set(3, v2State, byte(conntrack.StateEstablished)), false, ErrRecord},
		{"template with protocol", nil, 7, set(3, v2Proto, conntrack.ProtoTCP), false, ErrRecord},
		{"template with source port", nil, 7, set(3, v2SPort, 0, 1), false, ErrRecord},
		{"template with destination port", nil, 7, set(3, v2DPort+1, 1), false, ErrRecord},
	} {
		b := craft(t, h, recs, tc.key, tc.edit, tc.fixMAC)
		out := make([]Record, 0, MaxRecords)
		gh, got, err := Decode(b, tc.key, tc.want, out)
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.err)
		}
		if len(got) != 0 || !reflect.DeepEqual(gh, Header{}) {
			t.Errorf("%s: rejected message returned header %+v and %d records", tc.name, gh, len(got))
		}
	}
	// The unedited message is accepted, so each rejection above is its edit's.
	if _, _, err := Decode(craft(t, h, recs, nil, same, false), nil, 7, nil); err != nil {
		t.Fatalf("unedited message: %v", err)
	}
}

// TestEncodeRejectsV2 is TestEncodeRejects for what only version 2 can
// express.
func TestEncodeRejectsV2(t *testing.T) {
	h := Header{Type: MsgUpdate, Sender: testSender}
	good := vectorRecords6()
	for name, f := range map[string]func(*Record){
		"zoned client":             func(r *Record) { r.Src = addr("2001:db8:c::7%eth0") },
		"zoned member":             func(r *Record) { r.Member = addr("2001:db8::12%1") },
		"link-local member":        func(r *Record) { r.Member = addr("fe80::12") },
		"link-local client":        func(r *Record) { r.Src = addr("fe80::7") },
		"loopback VIP":             func(r *Record) { r.Dst = addr("::1") },
		"multicast member":         func(r *Record) { r.Member = addr("ff02::2") },
		"unspecified VIP":          func(r *Record) { r.Dst = addr("::") },
		"IPv4-mapped client":       func(r *Record) { r.Src = addr("::ffff:198.51.100.7") },
		"IPv4-mapped member":       func(r *Record) { r.Member = addr("::ffff:192.0.2.12") },
		"IPv6 client, IPv4 VIP":    func(r *Record) { r.Dst = addr("192.0.2.200") },
		"ICMPv4 on an IPv6 flow":   func(r *Record) { r.Proto, r.State = conntrack.ProtoICMP, conntrack.StateICMP },
		"OTHER for ICMPv6":         func(r *Record) { r.Proto, r.State = protoICMPv6, conntrack.StateOther },
		"UDP state on TCP":         func(r *Record) { r.State = conntrack.StateUDP },
		"negative TTL":             func(r *Record) { r.TTL = -time.Millisecond },
		"TTL too long":             func(r *Record) { r.TTL = MaxTTL + time.Millisecond },
		"template fields":          func(r *Record) { r.Kind = RecordTemplate },
		"no kind":                  func(r *Record) { r.Kind = 0 },
		"IPv4 client, no VIP":      func(r *Record) { r.Src, r.Dst = addr("198.51.100.7"), netip.Addr{} },
		"IPv4 client, zero member": func(r *Record) { r.Src, r.Dst, r.Member = addr("198.51.100.7"), addr("192.0.2.200"), addr("::") },
	} {
		r := good[0]
		f(&r)
		dst := make([]byte, 1, MaxMessage)
		b, err := Encode(dst, h, []Record{r}, nil)
		if !errors.Is(err, ErrRecord) || len(b) != 1 {
			t.Errorf("%s: err %v and %d bytes, want ErrRecord and dst unchanged", name, err, len(b))
		}
	}
}

// specValid restates the record rules of the package documentation with
// prefixes, independently of validRecord, for FuzzRecord to compare with.
func specValid(r Record) bool {
	in := func(a netip.Addr, prefixes ...string) bool {
		for _, p := range prefixes {
			if netip.MustParsePrefix(p).Contains(a) {
				return true
			}
		}
		return false
	}
	badV6 := func(a netip.Addr) bool {
		return a.Zone() != "" || in(a, "::/128", "::1/128", "ff00::/8", "fe80::/10", "::ffff:0:0/96")
	}
	switch {
	case r.TTL < 0 || r.TTL > MaxTTL:
		return false
	case r.Member.Is4() && in(r.Member, "0.0.0.0/32", "127.0.0.0/8", "224.0.0.0/4", "255.255.255.255/32"):
		return false
	case r.Member.Is6() && badV6(r.Member), !r.Member.IsValid():
		return false
	}
	ipv6 := false
	switch {
	case r.Src.Is4() && r.Dst.Is4():
		if in(r.Src, "0.0.0.0/32") || in(r.Dst, "0.0.0.0/32") {
			return false
		}
	case r.Src.Is6() && r.Dst.Is6():
		if badV6(r.Src) || badV6(r.Dst) {
			return false
		}
		ipv6 = true
	default:
		return false
	}
	if r.Kind == RecordTemplate {
		return r.State == 0 && r.Proto == 0 && r.SPort == 0 && r.DPort == 0
	}
	if r.Kind != RecordFlow {
		return false
	}
	icmp := uint8(1)
	if ipv6 {
		icmp = 58
	}
	switch r.Proto {
	case 6:
		return r.State <= conntrack.StateClose
	case 17:
		return r.State == conntrack.StateUDP
	case icmp:
		return r.State == conntrack.StateICMP
	}
	return r.State == conntrack.StateOther
}

// FuzzRecord builds a record from arbitrary fields and checks that Encode
// accepts it exactly when the documented rules do, in the version its
// addresses call for, and that Decode gives it back.
func FuzzRecord(f *testing.F) {
	for _, r := range append(append(everyKind(), everyKind6()...), vectorRecords6()...) {
		var fam uint8
		if r.Src.Is4() {
			fam |= 1
		}
		if r.Member.Is4() {
			fam |= 4
		}
		s, d, m := r.Src.As16(), r.Dst.As16(), r.Member.As16()
		f.Add(uint8(r.Kind), uint8(r.State), r.Proto, fam, s[:], d[:], m[:], r.SPort, r.DPort, int64(r.TTL))
	}
	f.Fuzz(func(t *testing.T, kind, state, proto, fam uint8, src, dst, member []byte, sport, dport uint16, ttl int64) {
		// fam bit 0: Src as IPv4 (its last 4 bytes), else as 16 bytes
		// (which may be IPv4-mapped); bit 2 the same for Member; Dst
		// follows Src unless bit 3 is set, then bit 1 says.
		mk := func(b []byte, v4 bool) netip.Addr {
			var a [16]byte
			copy(a[:], b)
			if v4 {
				return netip.AddrFrom4([4]byte(a[12:]))
			}
			return netip.AddrFrom16(a)
		}
		r := Record{Kind: RecordKind(kind), State: conntrack.State(state), Proto: proto,
			Src: mk(src, fam&1 != 0), Dst: mk(dst, fam&1 != 0),
			SPort: sport, DPort: dport, Member: mk(member, fam&4 != 0), TTL: time.Duration(ttl)}
		if fam&8 != 0 {
			r.Dst = mk(dst, fam&2 != 0)
		}
		b, err := Encode(nil, Header{Type: MsgUpdate, Sender: testSender}, []Record{r}, nil)
		if want := specValid(r); (err == nil) != want {
			t.Fatalf("%+v: Encode err %v, rules say valid=%v", r, err, want)
		}
		if err != nil {
			return
		}
		wantV := Version1
		if !r.Src.Is4() || !r.Member.Is4() {
			wantV = Version2
		}
		if int(b[4]) != wantV {
			t.Fatalf("%+v: version %d, want %d", r, b[4], wantV)
		}
		_, got, err := Decode(b, nil, 0, nil)
		r.TTL = r.TTL.Truncate(time.Millisecond)
		if err != nil || len(got) != 1 || got[0] != r {
			t.Fatalf("%+v: decoded %+v, %v", r, got, err)
		}
	})
}
