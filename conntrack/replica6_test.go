package conntrack

import (
	"errors"
	"math"
	"testing"
	"time"
)

// TestImport6 is TestImportNewFlow, TestImportClampsAndIgnoresEnded,
// TestImportBadArgs and TestImportUpdatesLiveFlow for IPv6 flows.
func TestImport6(t *testing.T) {
	tb := New(Config{})
	hooked := 0
	tb.SetOnInsert(func(Key, uint32, State) { hooked++ })
	tb.SetOnInsert6(func(Key6, uint32, State) { hooked++ })
	to := DefaultTimeouts()
	k := tcpKey6(1)
	now := t0
	if err := tb.Import6(k, 4, StateEstablished, now+100*sec, now); err != nil {
		t.Fatal(err)
	}
	e, ok := entry6(t, tb, k)
	if !ok || e.Member != 4 || e.State != StateEstablished {
		t.Fatalf("imported flow reads back as %+v, %v", e, ok)
	}
	within(t, "Expires", e.Expires, now+100*sec)
	if f, _ := tb.Len(); f != 1 || tb.Active(4) != 1 {
		t.Fatalf("Len %d, Active(4) %d", f, tb.Active(4))
	}
	if _, ok := tb.Touch6(k, 0, now+99*sec); !ok {
		t.Fatal("imported flow gone before its expiry")
	}

	// Clamped to the state's timeout; ended flows ignored.
	udp := Key6{Src: ip6(7), Dst: vip6, SPort: 53, DPort: 53, Proto: ProtoUDP}
	if err := tb.Import6(udp, 1, StateUDP, math.MaxInt64, now); err != nil {
		t.Fatal(err)
	}
	expectLife6(t, tb, udp, StateUDP, now, to.UDP)
	for _, exp := range []int64{now, now - sec, math.MinInt64} {
		if err := tb.Import6(tcpKey6(9), 2, StateEstablished, exp, now); err != nil {
			t.Fatalf("Import6(ended at now%+d) = %v", exp-now, err)
		}
	}
	if _, ok := entry6(t, tb, tcpKey6(9)); ok {
		t.Fatal("an ended flow was recorded")
	}

	// States must fit the protocol, with ICMPv6 as IPv6's ICMP.
	icmp6 := Key6{Src: ip6(1), Dst: vip6, Proto: ProtoICMPv6}
	icmp4 := Key6{Src: ip6(1), Dst: vip6, Proto: ProtoICMP}
	bad := []struct {
		k  Key6
		st State
	}{
		{udp, StateEstablished}, {k, StateUDP}, {icmp6, StateOther}, {icmp4, StateICMP}, {k, numStates},
	}
	for _, c := range bad {
		if err := tb.Import6(c.k, 1, c.st, now+sec, now); !errors.Is(err, ErrBadState) {
			t.Errorf("Import6(proto %d, %v) = %v, want ErrBadState", c.k.Proto, c.st, err)
		}
	}
	if err := tb.Import6(k, MaxMember+1, StateEstablished, now+sec, now); !errors.Is(err, ErrBadMember) {
		t.Errorf("Import6(bad member) = %v", err)
	}
	for _, c := range []struct {
		k  Key6
		st State
	}{{icmp6, StateICMP}, {icmp4, StateOther}} {
		if err := tb.Import6(c.k, MaxMember, c.st, now+sec, now); err != nil {
			t.Errorf("Import6(proto %d, %v) = %v", c.k.Proto, c.st, err)
		}
	}
	if f, _ := tb.Len(); f != 4 || tb.Active(MaxMember) != 2 {
		t.Fatalf("Len %d, Active(MaxMember) %d; want 4, 2", f, tb.Active(MaxMember))
	}

	// A live flow is updated in place: member and state follow, the later
	// expiry stays.
	if err := tb.Import6(k, 2, StateClosing, now+60*sec, now+sec); err != nil {
		t.Fatal(err)
	}
	e, _ = entry6(t, tb, k)
	if e.Member != 2 || e.State != StateClosing || tb.Active(4) != 0 || tb.Active(2) != 1 {
		t.Fatalf("updated flow reads %+v; Active(4) %d, Active(2) %d", e, tb.Active(4), tb.Active(2))
	}
	within(t, "Expires", e.Expires, now+99*sec+int64(to.TCPEstablished)) // the Touch6 above
	if hooked != 0 {
		t.Fatalf("Import6 called an insert hook %d times", hooked)
	}
	checkInvariants(t, tb)
}

func TestImportFull6(t *testing.T) {
	const max = 8
	tb := New(Config{MaxEntries: max, shards: 2, Persistence: time.Minute})
	// Established flows, which a full table never evicts (evict.go).
	for i := uint32(0); i < max/2; i++ {
		mustInsert(t, tb, Key{Src: i, Dst: 1, Proto: ProtoTCP}, 0, 0, t0)
		mustInsert6(t, tb, Key6{Src: ip6(i), Dst: vip6, Proto: ProtoTCP}, 0, 0, t0)
	}
	newKey := Key6{Src: ip6(100), Dst: vip6, Proto: ProtoTCP}
	if err := tb.Import6(newKey, 1, StateEstablished, t0+sec, t0); !errors.Is(err, ErrFull) {
		t.Fatalf("Import6 into a full table = %v, want ErrFull", err)
	}
	if _, ok := tb.Template6(newKey.Src, vip6, t0); ok {
		t.Fatal("a refused import created a template")
	}
	// Refreshing a flow the table holds needs no room.
	held := Key6{Src: ip6(3), Dst: vip6, Proto: ProtoTCP}
	if err := tb.Import6(held, 5, StateEstablished, t0+10*sec, t0+sec); err != nil {
		t.Fatalf("refresh in a full table = %v", err)
	}
	if m, _ := tb.Template6(held.Src, vip6, t0+sec); m != 5 || tb.Active(5) != 1 {
		t.Fatalf("refresh did not move flow and template: template %d, Active(5) %d", m, tb.Active(5))
	}
	// Room made by an IPv4 Delete serves an IPv6 import.
	tb.Delete(Key{Src: 0, Dst: 1, Proto: ProtoTCP})
	if err := tb.Import6(newKey, 1, StateEstablished, t0+sec, t0); err != nil {
		t.Fatalf("Import6 after a Delete made room = %v", err)
	}
	checkInvariants(t, tb)
}

// TestImportPersistence6 is TestImportPersistence for IPv6 flows.
func TestImportPersistence6(t *testing.T) {
	const p = 15 * time.Second
	tb := New(Config{Persistence: p})
	client := ip6(0x201)
	k1 := Key6{Src: client, Dst: vip6, SPort: 1000, DPort: 80, Proto: ProtoTCP}
	k2 := Key6{Src: client, Dst: vip6, SPort: 1001, DPort: 80, Proto: ProtoTCP}
	now := t0
	if err := tb.Import6(k1, 3, StateEstablished, now+100*sec, now); err != nil {
		t.Fatal(err)
	}
	if m, ok := tb.Template6(client, vip6, now); !ok || m != 3 {
		t.Fatalf("Template6 after Import6 = %d, %v; want 3", m, ok)
	}
	if err := tb.Import6(k2, 4, StateEstablished, now+50*sec, now); err != nil {
		t.Fatal(err)
	}
	if m, _ := tb.Template6(client, vip6, now); m != 4 {
		t.Fatalf("Template6 = %d, want 4", m)
	}
	checkInvariants(t, tb) // two references on one template
	if err := tb.Import6(k1, 5, StateEstablished, now+100*sec, now+sec); err != nil {
		t.Fatal(err)
	}
	if m, _ := tb.Template6(client, vip6, now+sec); m != 5 {
		t.Fatalf("Template6 after update = %d, want 5", m)
	}
	if _, tm := tb.Len(); tm != 1 {
		t.Fatalf("templates = %d, want 1", tm)
	}
	tb.Delete6(k2)
	if f, _ := tb.Expire(now + 100*sec + tickNs); f != 1 {
		t.Fatalf("Expire removed %d flows, want 1", f)
	}
	if m, ok := tb.Template6(client, vip6, now+100*sec+int64(p)-sec); !ok || m != 5 {
		t.Fatal("template gone within p of its last imported flow")
	}
	if _, tm := tb.Expire(now + 100*sec + int64(p) + 2*tickNs); tm != 1 {
		t.Fatalf("Expire removed %d templates, want 1", tm)
	}
	checkInvariants(t, tb)
}

// TestImportTemplate6 is TestImportTemplate and TestRangeTemplates for IPv6
// templates.
func TestImportTemplate6(t *testing.T) {
	if err := New(Config{}).ImportTemplate6(ip6(1), vip6, 3, t0+sec, t0); !errors.Is(err, ErrNoPersistence) {
		t.Fatalf("ImportTemplate6 without persistence = %v", err)
	}
	New(Config{}).RangeTemplates6(func(_, _ [16]byte, _ Entry) bool {
		t.Fatal("template reported without persistence")
		return false
	})
	const p = 30 * time.Second
	tb := New(Config{Persistence: p, MaxEntries: 4, shards: 2})
	now := t0
	if err := tb.ImportTemplate6(ip6(1), vip6, MaxMember+1, now+sec, now); !errors.Is(err, ErrBadMember) {
		t.Fatalf("ImportTemplate6(bad member) = %v", err)
	}
	if err := tb.ImportTemplate6(ip6(1), vip6, 7, now+10*sec, now); err != nil {
		t.Fatal(err)
	}
	if m, ok := tb.Template6(ip6(1), vip6, now+10*sec-1); !ok || m != 7 {
		t.Fatalf("Template6 = %d, %v; want 7", m, ok)
	}
	if _, ok := tb.Template6(ip6(1), vip6, now+10*sec+tickNs); ok {
		t.Fatal("imported template outlived its expiry")
	}
	// An earlier expiry does not shorten it; a member change re-points it.
	if err := tb.ImportTemplate6(ip6(1), vip6, 8, now+sec, now); err != nil {
		t.Fatal(err)
	}
	if m, ok := tb.Template6(ip6(1), vip6, now+10*sec-1); !ok || m != 8 {
		t.Fatalf("Template6 = %d, %v; want 8 until the later expiry", m, ok)
	}
	// A bogus expiry is clamped to p; a lapsed one is not recorded.
	if err := tb.ImportTemplate6(ip6(2), vip6, 1, math.MaxInt64, now); err != nil {
		t.Fatal(err)
	}
	if _, ok := tb.Template6(ip6(2), vip6, now+int64(p)+tickNs); ok {
		t.Fatal("imported template outlived p")
	}
	if err := tb.ImportTemplate6(ip6(3), vip6, 1, now, now); err != nil {
		t.Fatal(err)
	}
	// An IPv4 template and a held IPv6 one share the bound of 4.
	if err := tb.ImportTemplate(1, 9, 1, now+sec, now); err != nil {
		t.Fatal(err)
	}
	mustInsert6(t, tb, Key6{Src: ip6(4), Dst: vip6, SPort: 5, Proto: ProtoTCP}, 2, FlagACK, now)
	if err := tb.ImportTemplate6(ip6(5), vip6, 1, now+sec, now); !errors.Is(err, ErrFull) {
		t.Fatalf("ImportTemplate6 beyond MaxEntries = %v, want ErrFull", err)
	}
	checkInvariants(t, tb)
}

// TestRangeTemplates6 is TestRangeTemplates for IPv6 templates, in a table
// that holds an IPv4 one too.
func TestRangeTemplates6(t *testing.T) {
	const p = 20 * time.Second
	tb := New(Config{Persistence: p})
	now := t0
	held := Key6{Src: ip6(4), Dst: vip6, SPort: 5, Proto: ProtoTCP}
	mustInsert6(t, tb, held, 2, FlagACK, now) // template 4 held
	for _, c := range []struct {
		client, member uint32
		life           int64
	}{{1, 8, 10 * sec}, {2, 1, 5 * sec}, {3, 3, sec}} {
		if err := tb.ImportTemplate6(ip6(c.client), vip6, c.member, now+c.life, now); err != nil {
			t.Fatal(err)
		}
	}
	if err := tb.ImportTemplate(1, 9, 1, now+10*sec, now); err != nil {
		t.Fatal(err)
	}
	// Template 3 lapses; the Touch6 shows the table the new time.
	now += 2 * sec
	tb.Touch6(held, FlagACK, now)
	got := map[[16]byte]Entry{}
	tb.RangeTemplates6(func(client, vip [16]byte, e Entry) bool {
		if vip != vip6 {
			t.Fatalf("vip = %v", vip)
		}
		got[client] = e
		return true
	})
	if len(got) != 3 {
		t.Fatalf("RangeTemplates6 reported %v, want clients 1, 2 and 4", got)
	}
	if e := got[ip6(4)]; e.Member != 2 || e.State != 0 || e.Expires < now+int64(p) {
		t.Fatalf("held template: %+v, want member 2 and Expires at least now+p", e)
	}
	within(t, "idle template Expires", got[ip6(1)].Expires, t0+10*sec)
	if got[ip6(1)].Member != 8 {
		t.Fatalf("idle template member %d", got[ip6(1)].Member)
	}
	n := 0
	tb.RangeTemplates6(func(_, _ [16]byte, _ Entry) bool { n++; return false })
	if n != 1 {
		t.Fatalf("RangeTemplates6 went on for %d calls after false", n)
	}
	// RangeTemplates reports the IPv4 one only.
	n = 0
	tb.RangeTemplates(func(client, vip uint32, _ Entry) bool {
		if client != 1 || vip != 9 {
			t.Fatalf("RangeTemplates reported %d/%d", client, vip)
		}
		n++
		return true
	})
	if n != 1 {
		t.Fatalf("RangeTemplates reported %d templates, want 1", n)
	}
}

// TestSyncRoundTripMixed is TestSyncRoundTrip for a table holding both
// families: everything the sender's four Range calls report, imported into
// a receiver whose clock is about to wrap the tick counter, gives the same
// flows, templates and Active counts.
func TestSyncRoundTripMixed(t *testing.T) {
	const p = 15 * time.Second
	src := New(Config{Persistence: p})
	dst := New(Config{Persistence: p})
	nowA := t0
	for i := uint32(0); i < 50; i++ {
		flags := []uint8{FlagSYN, FlagACK, FlagFIN, FlagRST}[i%4]
		mustInsert(t, src, Key{Src: 0xc0000200 + i%7, Dst: 0xc6336401, SPort: uint16(1000 + i), DPort: 443, Proto: ProtoTCP}, i%5, flags, nowA+int64(i)*sec)
		mustInsert6(t, src, Key6{Src: ip6(0x200 + i%7), Dst: vip6, SPort: uint16(1000 + i), DPort: 443, Proto: ProtoTCP}, (i+1)%5, flags, nowA+int64(i)*sec)
	}
	mustInsert6(t, src, Key6{Src: ip6(77), Dst: vip6, Proto: ProtoICMPv6}, 4, 0, nowA+50*sec)
	src.Delete6(Key6{Src: ip6(77), Dst: vip6, Proto: ProtoICMPv6}) // an idle template
	nowA += 55 * sec
	src.Expire(nowA)

	nowB := (int64(1)<<32)<<tickShift - 100*sec
	flows := map[Key]Entry{}
	src.Range(func(k Key, e Entry) bool { flows[k] = e; return true })
	flows6 := map[Key6]Entry{}
	src.Range6(func(k Key6, e Entry) bool { flows6[k] = e; return true })
	if len(flows) == 0 || len(flows6) == 0 {
		t.Fatalf("replicating %d IPv4 and %d IPv6 flows", len(flows), len(flows6))
	}
	for k, e := range flows {
		if err := dst.Import(k, e.Member, e.State, nowB+(e.Expires-nowA), nowB); err != nil {
			t.Fatal(err)
		}
	}
	for k, e := range flows6 {
		if err := dst.Import6(k, e.Member, e.State, nowB+(e.Expires-nowA), nowB); err != nil {
			t.Fatal(err)
		}
	}
	type tmpl6 struct{ client, vip [16]byte }
	tmpls := map[[2]uint32]Entry{}
	src.RangeTemplates(func(client, vip uint32, e Entry) bool { tmpls[[2]uint32{client, vip}] = e; return true })
	tmpls6 := map[tmpl6]Entry{}
	src.RangeTemplates6(func(client, vip [16]byte, e Entry) bool { tmpls6[tmpl6{client, vip}] = e; return true })
	if _, ok := tmpls6[tmpl6{ip6(77), vip6}]; !ok {
		t.Fatal("idle IPv6 template not reported")
	}
	for tk, e := range tmpls {
		if err := dst.ImportTemplate(tk[0], tk[1], e.Member, nowB+(e.Expires-nowA), nowB); err != nil {
			t.Fatal(err)
		}
	}
	for tk, e := range tmpls6 {
		if err := dst.ImportTemplate6(tk.client, tk.vip, e.Member, nowB+(e.Expires-nowA), nowB); err != nil {
			t.Fatal(err)
		}
	}
	same := func(what string, got, want Entry) {
		t.Helper()
		if got.Member != want.Member || got.State != want.State {
			t.Fatalf("%s replicated as %+v, want %+v", what, got, want)
		}
		if d := (got.Expires - nowB) - (want.Expires - nowA); d < -tickNs || d > tickNs {
			t.Fatalf("%s lifetime off by %v", what, time.Duration(d))
		}
	}
	n := 0
	dst.Range(func(k Key, e Entry) bool { n++; same("IPv4 flow", e, flows[k]); return true })
	dst.Range6(func(k Key6, e Entry) bool { n++; same("IPv6 flow", e, flows6[k]); return true })
	if n != len(flows)+len(flows6) {
		t.Fatalf("replica holds %d flows, want %d", n, len(flows)+len(flows6))
	}
	for tk, e := range tmpls6 {
		if m, ok := dst.Template6(tk.client, tk.vip, nowB); !ok || m != e.Member {
			t.Fatalf("template %v replicated as %d, %v; want %d", tk, m, ok, e.Member)
		}
	}
	for m := uint32(0); m < 5; m++ {
		if src.Active(m) != dst.Active(m) {
			t.Fatalf("Active(%d): source %d, replica %d", m, src.Active(m), dst.Active(m))
		}
	}
	sf, st := src.Len()
	if df, dt := dst.Len(); df != sf || dt != st {
		t.Fatalf("Len: source %d, %d; replica %d, %d", sf, st, df, dt)
	}
	checkInvariants(t, dst)
	dst.Expire(nowB + 1000*sec)
	if f, tm := dst.Len(); f != 0 || tm != 0 {
		t.Fatalf("replica left %d flows, %d templates after all expired", f, tm)
	}
}

// TestOnInsertHook6 checks that SetOnInsert6's hook sees exactly the
// successful Insert6 calls, and the two families' hooks stay apart.
func TestOnInsertHook6(t *testing.T) {
	tb := New(Config{MaxEntries: 3, Persistence: time.Second})
	type call struct {
		k      Key6
		member uint32
		state  State
		tmpl   uint32
	}
	var calls []call
	v4calls := 0
	tb.SetOnInsert(func(Key, uint32, State) { v4calls++ })
	tb.SetOnInsert6(func(k Key6, member uint32, state State) {
		// Locks are released, so the hook may look at the table.
		m, _ := tb.Template6(k.Src, k.Dst, t0)
		calls = append(calls, call{k, member, state, m})
	})
	k := tcpKey6(1)
	mustInsert6(t, tb, k, 3, FlagSYN, t0)
	if len(calls) != 1 || calls[0] != (call{k, 3, StateSynRecv, 3}) {
		t.Fatalf("hook calls %+v", calls)
	}
	tb.Insert6(k, 4, FlagSYN, t0)                    // ErrExists
	tb.Insert6(tcpKey6(2), MaxMember+1, FlagSYN, t0) // ErrBadMember
	icmp := Key6{Src: ip6(3), Dst: vip6, Proto: ProtoICMPv6}
	mustInsert6(t, tb, icmp, 1, 0, t0)
	mustInsert(t, tb, tcpKey(1), 1, FlagACK, t0)
	if len(calls) != 2 || calls[1].k != icmp || calls[1].state != StateICMP || v4calls != 1 {
		t.Fatalf("hook calls %+v, IPv4 hook %d", calls, v4calls)
	}
	// Fill the table with established flows, which are never evicted, so
	// the next Insert6 is refused whatever shards the keys hash to.
	tb.Touch6(k, FlagACK, t0)
	tb.Delete6(icmp)
	mustInsert6(t, tb, tcpKey6(6), 1, FlagACK, t0)
	tb.Insert6(tcpKey6(4), 1, FlagSYN, t0)                  // ErrFull
	tb.Import6(tcpKey6(5), 1, StateEstablished, t0+sec, t0) // never hooked
	if len(calls) != 3 || calls[2].k != tcpKey6(6) || v4calls != 1 {
		t.Fatalf("hook calls %+v, IPv4 hook %d", calls, v4calls)
	}
	tb.SetOnInsert6(nil)
	tb.Delete6(k)
	mustInsert6(t, tb, k, 3, FlagSYN, t0)
	if len(calls) != 3 {
		t.Fatal("hook called after SetOnInsert6(nil)")
	}
}
