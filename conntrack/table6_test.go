package conntrack

import (
	"errors"
	"hash/maphash"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// ip6 is 2001:db8::n, a documentation address (RFC 3849).
func ip6(n uint32) [16]byte {
	a := netip.MustParseAddr("2001:db8::").As16()
	a[12], a[13], a[14], a[15] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	return a
}

// vip6 is the VIP of the IPv6 tests.
var vip6 = netip.MustParseAddr("2001:db8:ffff::80").As16()

func tcpKey6(n uint32) Key6 {
	return Key6{Src: ip6(n & 0xff), Dst: vip6, SPort: uint16(40000 + n), DPort: 443, Proto: ProtoTCP}
}

func entry6(t *testing.T, tb *Table, k Key6) (Entry, bool) {
	t.Helper()
	var got Entry
	found := false
	tb.Range6(func(rk Key6, e Entry) bool {
		if rk == k {
			got, found = e, true
			return false
		}
		return true
	})
	return got, found
}

func mustInsert6(t *testing.T, tb *Table, k Key6, member uint32, flags uint8, now int64) {
	t.Helper()
	if err := tb.Insert6(k, member, flags, now); err != nil {
		t.Fatalf("Insert6(%+v, %d): %v", k, member, err)
	}
}

// expectLife6 is expectLife for an IPv6 flow.
func expectLife6(t *testing.T, tb *Table, k Key6, want State, now int64, d time.Duration) {
	t.Helper()
	e, ok := entry6(t, tb, k)
	if !ok {
		t.Fatalf("%+v missing", k)
	}
	if e.State != want {
		t.Fatalf("state = %v, want %v", e.State, want)
	}
	if e.Expires < now+int64(d) || e.Expires > now+int64(d)+tickNs {
		t.Fatalf("Expires = now+%v, want now+%v (within a tick)", time.Duration(e.Expires-now), d)
	}
}

// The blank pad of flowKey6 must not take part in == or in the hash, or
// two packings of one key could miss each other.
func TestFlowKey6Padding(t *testing.T) {
	a := tcpKey6(7).pack()
	b := a
	pad := (*uint64)(unsafe.Add(unsafe.Pointer(&b), unsafe.Offsetof(b.ports)+8))
	*pad = 0xdeadbeefcafef00d
	if a != b {
		t.Fatal("keys differing only in the pad compare unequal")
	}
	seed := maphash.MakeSeed()
	if maphash.Comparable(seed, a) != maphash.Comparable(seed, b) {
		t.Fatal("keys differing only in the pad hash differently")
	}
	// Every real field does count, in == and in the hash.
	for i, k := range []Key6{
		{Src: ip6(7), Dst: vip6, SPort: 40007, DPort: 443, Proto: ProtoUDP},
		{Src: ip6(7), Dst: vip6, SPort: 40007, DPort: 444, Proto: ProtoTCP},
		{Src: ip6(7), Dst: vip6, SPort: 40008, DPort: 443, Proto: ProtoTCP},
		{Src: ip6(8), Dst: vip6, SPort: 40007, DPort: 443, Proto: ProtoTCP},
		{Src: ip6(7), Dst: ip6(9), SPort: 40007, DPort: 443, Proto: ProtoTCP},
	} {
		c := k.pack()
		if c == a || maphash.Comparable(seed, c) == maphash.Comparable(seed, a) {
			t.Errorf("%d: %+v packs or hashes like %+v", i, k, tcpKey6(7))
		}
	}
	// So does the first byte of either address (the high half of the key).
	k := tcpKey6(7)
	k.Src[0] ^= 1
	if k.pack() == a {
		t.Error("first byte of Src ignored")
	}
	k = tcpKey6(7)
	k.Dst[0] ^= 1
	if k.pack() == a {
		t.Error("first byte of Dst ignored")
	}
}

func TestKey6PackRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 1000; i++ {
		var k Key6
		for j := range k.Src {
			k.Src[j], k.Dst[j] = byte(r.Uint32()), byte(r.Uint32())
		}
		k.SPort, k.DPort, k.Proto = uint16(r.Uint32()), uint16(r.Uint32()), uint8(r.Uint32())
		if got := k.pack().unpack(); got != k {
			t.Fatalf("pack/unpack %+v -> %+v", k, got)
		}
	}
}

// TestTCPLifecycle6 is TestTCPLifecycleFIN and TestTCPRSTAndReopen for an
// IPv6 flow.
func TestTCPLifecycle6(t *testing.T) {
	tb := New(Config{})
	to := DefaultTimeouts()
	k := tcpKey6(1)
	now := t0
	mustInsert6(t, tb, k, 3, FlagSYN, now)
	expectLife6(t, tb, k, StateSynRecv, now, to.TCPSynRecv)
	now += sec
	if m, ok := tb.Touch6(k, FlagSYN, now); !ok || m != 3 {
		t.Fatalf("Touch6(retransmitted SYN) = %d, %v", m, ok)
	}
	expectLife6(t, tb, k, StateSynRecv, now, to.TCPSynRecv)
	now += sec
	if m, ok := tb.Touch6(k, FlagACK, now); !ok || m != 3 {
		t.Fatalf("Touch6(ACK) = %d, %v", m, ok)
	}
	expectLife6(t, tb, k, StateEstablished, now, to.TCPEstablished)
	now += int64(to.TCPSynRecv) + sec
	if _, ok := tb.Touch6(k, FlagACK, now); !ok {
		t.Fatal("established flow lost after SYN_RECV timeout")
	}
	tb.Touch6(k, FlagSYN, now)
	expectLife6(t, tb, k, StateEstablished, now, to.TCPEstablished)
	now += sec
	tb.Touch6(k, FlagFIN|FlagACK, now)
	expectLife6(t, tb, k, StateClosing, now, to.TCPClosing)
	tb.Touch6(k, FlagSYN, now) // 4-tuple reused
	expectLife6(t, tb, k, StateSynRecv, now, to.TCPSynRecv)
	tb.Touch6(k, FlagRST|FlagACK, now)
	expectLife6(t, tb, k, StateClose, now, to.TCPClose)
	tb.Touch6(k, FlagFIN, now)
	expectLife6(t, tb, k, StateClose, now, to.TCPClose)

	if f, _ := tb.Expire(now + int64(to.TCPClose) - 1); f != 0 {
		t.Fatalf("Expire before timeout removed %d flows", f)
	}
	end := now + int64(to.TCPClose) + tickNs
	if _, ok := tb.Touch6(k, FlagACK, end); ok {
		t.Fatal("Touch6 found an expired flow")
	}
	if f, _ := tb.Expire(end); f != 1 {
		t.Fatalf("Expire removed %d flows, want 1", f)
	}
	if f, _ := tb.Len(); f != 0 || tb.Active(3) != 0 {
		t.Fatalf("after expiry Len = %d, Active = %d", f, tb.Active(3))
	}
	checkInvariants(t, tb)
}

// TestFirstFrameState6 checks the first state and the timeout of each kind
// of IPv6 flow: ICMPv6 is IPv6's ICMP, and IPv4's ICMP number is just
// another protocol there.
func TestFirstFrameState6(t *testing.T) {
	tb := New(Config{Timeouts: Timeouts{UDP: 5 * time.Second}})
	tests := []struct {
		proto uint8
		flags uint8
		want  State
	}{
		{ProtoTCP, FlagSYN, StateSynRecv},
		{ProtoTCP, FlagACK, StateEstablished},
		{ProtoTCP, FlagFIN | FlagACK, StateClosing},
		{ProtoTCP, FlagRST, StateClose},
		{ProtoUDP, FlagSYN, StateUDP},
		{ProtoICMPv6, 0, StateICMP},
		{ProtoICMP, 0, StateOther},
		{47, 0, StateOther},
		{132, 0, StateOther},
	}
	for i, tc := range tests {
		k := Key6{Src: ip6(uint32(i)), Dst: vip6, SPort: 3, DPort: 4, Proto: tc.proto}
		mustInsert6(t, tb, k, 1, tc.flags, t0)
		expectLife6(t, tb, k, tc.want, t0, time.Duration(tb.timeouts[0][tc.want]))
	}
	// The IPv4 side is unchanged: ICMPv6's number is another protocol there.
	k := Key{Src: 1, Dst: 2, Proto: ProtoICMPv6}
	mustInsert(t, tb, k, 1, 0, t0)
	expectLife(t, tb, k, StateOther, t0, DefaultTimeouts().Other)
	if f, _ := tb.Expire(t0 + int64(DefaultTimeouts().TCPEstablished) + tickNs); f != len(tests)+1 {
		t.Fatalf("Expire removed %d, want %d", f, len(tests)+1)
	}
	checkInvariants(t, tb)
}

func TestInsertExistsAndReplace6(t *testing.T) {
	tb := New(Config{})
	k := Key6{Src: ip6(1), Dst: vip6, SPort: 3, DPort: 4, Proto: ProtoUDP}
	mustInsert6(t, tb, k, 1, 0, t0)
	if err := tb.Insert6(k, 2, 0, t0+sec); !errors.Is(err, ErrExists) {
		t.Fatalf("second Insert6 = %v, want ErrExists", err)
	}
	if m, _ := tb.Touch6(k, 0, t0+sec); m != 1 {
		t.Fatalf("member changed to %d by a refused Insert6", m)
	}
	// The IPv4 key with the same ports is another flow.
	if _, ok := tb.Touch(Key{SPort: 3, DPort: 4, Proto: ProtoUDP}, 0, t0+sec); ok {
		t.Fatal("IPv4 lookup found an IPv6 flow")
	}
	later := t0 + sec + int64(DefaultTimeouts().UDP) + tickNs
	mustInsert6(t, tb, k, 2, 0, later)
	if m, ok := tb.Touch6(k, 0, later); !ok || m != 2 {
		t.Fatalf("Touch6 after replace = %d, %v", m, ok)
	}
	if f, _ := tb.Len(); f != 1 || tb.Active(1) != 0 || tb.Active(2) != 1 {
		t.Fatalf("Len %d Active(1) %d Active(2) %d", f, tb.Active(1), tb.Active(2))
	}
	if err := tb.Insert6(Key6{Src: ip6(9)}, MaxMember+1, 0, t0); !errors.Is(err, ErrBadMember) {
		t.Fatalf("Insert6(bad member) = %v", err)
	}
	checkInvariants(t, tb)
}

// TestPersistence6 is TestPersistence for IPv6, with clients and VIPs that
// differ only in one half of their addresses, to show templates key on all
// 128 bits of each.
func TestPersistence6(t *testing.T) {
	const p = 15 * time.Second
	tb := New(Config{Persistence: p})
	client := ip6(0x201)
	clientHi := client
	clientHi[0] ^= 0x40 // same low 64 bits, other high half
	vipLo := vip6
	vipLo[15] ^= 1
	k1 := Key6{Src: client, Dst: vip6, SPort: 1000, DPort: 80, Proto: ProtoTCP}
	k2 := Key6{Src: client, Dst: vip6, SPort: 1001, DPort: 443, Proto: ProtoTCP}
	other := Key6{Src: clientHi, Dst: vip6, SPort: 1000, DPort: 80, Proto: ProtoTCP}

	if _, ok := tb.Template6(client, vip6, t0); ok {
		t.Fatal("template before any flow")
	}
	now := t0
	mustInsert6(t, tb, k1, 4, FlagSYN, now)
	mustInsert6(t, tb, other, 5, FlagSYN, now)
	if m, ok := tb.Template6(client, vip6, now+sec); !ok || m != 4 {
		t.Fatalf("Template6 = %d, %v; want 4", m, ok)
	}
	if m, ok := tb.Template6(clientHi, vip6, now+sec); !ok || m != 5 {
		t.Fatalf("Template6(other client) = %d, %v; want 5", m, ok)
	}
	if _, ok := tb.Template6(client, vipLo, now); ok {
		t.Fatal("template leaked to another VIP")
	}
	// The IPv4 templates are another map.
	if _, ok := tb.Template(0, 0, now); ok {
		t.Fatal("IPv4 template found")
	}
	mustInsert6(t, tb, k2, 4, FlagSYN, now+sec)
	if _, tm := tb.Len(); tm != 2 {
		t.Fatalf("templates = %d, want 2", tm)
	}
	checkInvariants(t, tb)

	// A long flow keeps the template alive far beyond p.
	tb.Delete6(k2)
	for i := 0; i < 20; i++ {
		now += 50 * sec
		tb.Touch6(k1, FlagACK, now)
		tb.Expire(now)
		if m, ok := tb.Template6(client, vip6, now); !ok || m != 4 {
			t.Fatalf("template lost at +%ds while its flow lives", (now-t0)/sec)
		}
	}
	tb.Touch6(k1, FlagFIN, now)
	flowEnd := now + int64(DefaultTimeouts().TCPClosing)
	f, tm := tb.Expire(flowEnd + tickNs)
	if f != 1 || tm != 0 {
		t.Fatalf("Expire at flow end removed %d flows, %d templates", f, tm)
	}
	if m, ok := tb.Template6(client, vip6, flowEnd+int64(p)-sec); !ok || m != 4 {
		t.Fatal("template gone within p of its last flow's end")
	}
	if _, ok := tb.Template6(client, vip6, flowEnd+int64(p)+2*tickNs); ok {
		t.Fatal("template alive after p idle with no flows")
	}
	if _, tm := tb.Expire(flowEnd + int64(p) + 2*tickNs); tm != 1 {
		t.Fatalf("Expire removed %d templates, want 1", tm)
	}
	// A dead template is replaced, not resurrected with its old member.
	later := flowEnd + 1000*sec
	mustInsert6(t, tb, k2, 9, FlagSYN, later)
	if m, ok := tb.Template6(client, vip6, later); !ok || m != 9 {
		t.Fatalf("Template6 = %d, %v; want 9", m, ok)
	}
	if !tb.Delete6(k2) || tb.Delete6(k2) {
		t.Fatal("Delete6 did not remove the flow exactly once")
	}
	if _, ok := tb.Template6(client, vip6, later+int64(p)-sec); !ok {
		t.Fatal("template gone before p after Delete6")
	}
	checkInvariants(t, tb)
}

// TestMixedLimit fills the shared MaxEntries with flows and templates of
// both families.
func TestMixedLimit(t *testing.T) {
	const max = 100
	tb := New(Config{MaxEntries: max, shards: 4, Persistence: time.Minute})
	// Established flows, which a full table never evicts (evict.go).
	for i := 0; i < max; i++ {
		var err error
		if i%2 == 0 {
			err = tb.Insert(Key{Src: uint32(i), Dst: 1, Proto: ProtoTCP}, uint32(i%3), 0, t0)
		} else {
			err = tb.Insert6(Key6{Src: ip6(uint32(i)), Dst: vip6, Proto: ProtoTCP}, uint32(i%3), 0, t0)
		}
		if err != nil {
			t.Fatalf("flow %d: %v", i, err)
		}
	}
	if err := tb.Insert6(Key6{Src: ip6(max), Dst: vip6, Proto: ProtoTCP}, 0, 0, t0); !errors.Is(err, ErrFull) {
		t.Fatalf("Insert6 beyond MaxEntries = %v, want ErrFull", err)
	}
	if err := tb.Insert(Key{Src: max, Dst: 1, Proto: ProtoTCP}, 0, 0, t0); !errors.Is(err, ErrFull) {
		t.Fatalf("Insert beyond MaxEntries = %v, want ErrFull", err)
	}
	if err := tb.Import6(Key6{Src: ip6(max), Dst: vip6, Proto: ProtoTCP}, 0, StateEstablished, t0+sec, t0); !errors.Is(err, ErrFull) {
		t.Fatalf("Import6 beyond MaxEntries = %v, want ErrFull", err)
	}
	if err := tb.ImportTemplate6(ip6(max), vip6, 0, t0+sec, t0); !errors.Is(err, ErrFull) {
		t.Fatalf("ImportTemplate6 beyond MaxEntries = %v, want ErrFull", err)
	}
	if _, ok := tb.Template6(ip6(max), vip6, t0); ok {
		t.Fatal("refused flow created a template")
	}
	if f, tm := tb.Len(); f != max || tm != max {
		t.Fatalf("Len = %d, %d; want %d, %d", f, tm, max, max)
	}
	checkInvariants(t, tb)
	// An IPv4 flow's room serves an IPv6 flow; with every template slot
	// taken it has no persistence.
	tb.Delete(Key{Src: 0, Dst: 1, Proto: ProtoTCP})
	mustInsert6(t, tb, Key6{Src: ip6(5000), Dst: vip6, Proto: ProtoTCP}, 1, 0, t0)
	if _, ok := tb.Template6(ip6(5000), vip6, t0); ok {
		t.Fatal("template created beyond MaxEntries")
	}
	checkInvariants(t, tb)
	// Templates freed by either family serve the other: once every flow and
	// template lapsed, a full table's worth of IPv4 templates fits again.
	tb.Expire(t0 + 3600*sec)
	if f, tm := tb.Len(); f != 0 || tm != 0 {
		t.Fatalf("after expiry Len = %d, %d", f, tm)
	}
	for i := 0; i < max; i++ {
		if err := tb.ImportTemplate(uint32(i), 1, 0, t0+3601*sec, t0+3600*sec); err != nil {
			t.Fatalf("template %d: %v", i, err)
		}
	}
	checkInvariants(t, tb)
}

// TestMixedActiveExpireLen counts both families in Active and Len and
// expires both in one Expire.
func TestMixedActiveExpireLen(t *testing.T) {
	tb := New(Config{Persistence: time.Minute})
	now := t0
	for i := uint32(0); i < 300; i++ {
		mustInsert(t, tb, Key{Src: i, Dst: 100, SPort: uint16(i), Proto: ProtoTCP}, i%3, FlagSYN, now)
		mustInsert6(t, tb, Key6{Src: ip6(i), Dst: vip6, SPort: uint16(i), Proto: ProtoTCP}, i%3, FlagSYN, now)
	}
	for m := uint32(0); m < 3; m++ {
		if a := tb.Active(m); a != 200 {
			t.Fatalf("Active(%d) = %d, want 200", m, a)
		}
	}
	if f, tm := tb.Len(); f != 600 || tm != 600 {
		t.Fatalf("Len = %d, %d; want 600, 600", f, tm)
	}
	k := Key6{Src: ip6(0), Dst: vip6, SPort: 0, Proto: ProtoTCP}
	if !tb.SetMember6(k, 1) || tb.Active(0) != 199 || tb.Active(1) != 201 {
		t.Fatal("SetMember6 did not move the Active count")
	}
	if m, _ := tb.Touch6(k, FlagACK, now); m != 1 {
		t.Fatalf("Touch6 after SetMember6 = %d", m)
	}
	if tb.SetMember6(Key6{Src: ip6(77)}, 1) || tb.SetMember6(k, MaxMember+1) {
		t.Fatal("SetMember6 accepted a missing key or bad member")
	}
	if !tb.Delete6(k) || tb.Delete6(k) || tb.Active(1) != 200 {
		t.Fatal("Delete6 did not adjust Active once")
	}
	checkInvariants(t, tb)
	// Half the flows become established and outlive SYN_RECV.
	for i := uint32(1); i < 300; i += 2 {
		tb.Touch(Key{Src: i, Dst: 100, SPort: uint16(i), Proto: ProtoTCP}, FlagACK, now)
		tb.Touch6(Key6{Src: ip6(i), Dst: vip6, SPort: uint16(i), Proto: ProtoTCP}, FlagACK, now)
	}
	// The flow Delete6 removed left its template unheld: it lapses a minute
	// later, with the SYN_RECV flows; theirs are held until they end.
	f, tm := tb.Expire(now + int64(DefaultTimeouts().TCPSynRecv) + tickNs)
	if f != 299 || tm != 1 {
		t.Fatalf("Expire removed %d flows, %d templates; want 299, 1", f, tm)
	}
	if n, _ := tb.Len(); n != 300 {
		t.Fatalf("Len = %d after expiring the SYN_RECV flows, want 300", n)
	}
	checkInvariants(t, tb)
	f, tm = tb.Expire(now + 3600*sec)
	if f != 300 || tm != 599 {
		t.Fatalf("Expire removed %d flows, %d templates; want 300, 599", f, tm)
	}
	for m := uint32(0); m < 3; m++ {
		if tb.Active(m) != 0 {
			t.Fatalf("Active(%d) = %d after expiring everything", m, tb.Active(m))
		}
	}
	checkInvariants(t, tb)
}

// An IPv4-only table never allocates IPv6 slots or templates.
func TestIPv4OnlyAllocatesNoIPv6(t *testing.T) {
	tb := New(Config{shards: 8, Persistence: time.Minute})
	for i := uint32(0); i < 5000; i++ {
		mustInsert(t, tb, Key{Src: i, Dst: 1, SPort: uint16(i), Proto: ProtoTCP}, 1, FlagSYN, t0)
	}
	tb.Touch6(tcpKey6(1), FlagACK, t0)
	tb.Template6(ip6(1), vip6, t0)
	tb.Delete6(tcpKey6(1))
	tb.Prefetch6(tcpKey6(1))
	tb.Expire(t0 + sec)
	for i := range tb.shards {
		s := &tb.shards[i]
		if s.v6.flows.slots != nil || s.v6.tmpls != nil {
			t.Fatalf("shard %d holds IPv6 slots or templates", i)
		}
	}
}

func TestAllocs6(t *testing.T) {
	tb := New(Config{Persistence: time.Second})
	n := 0
	tb.SetOnInsert6(func(Key6, uint32, State) { n++ })
	k := tcpKey6(5)
	mustInsert6(t, tb, k, 1, FlagSYN, t0)
	tb.Delete6(k)
	now := t0
	allocs := testing.AllocsPerRun(1000, func() {
		now += tickNs
		if err := tb.Insert6(k, 1, FlagSYN, now); err != nil {
			t.Fatal(err)
		}
		tb.Prefetch6(k)
		tb.Touch6(k, FlagACK, now)
		tb.Touch6(tcpKey6(6), FlagACK, now) // a miss
		tb.Template6(k.Src, k.Dst, now)
		tb.Delete6(k)
	})
	if allocs != 0 {
		t.Fatalf("Insert6/Touch6/Template6/Prefetch6/Delete6 allocate %v times per run", allocs)
	}
	if n != 1002 {
		t.Fatalf("hook called %d times, want 1002", n)
	}
}

// TestConcurrentStressMixed is TestConcurrentStress with IPv4 and IPv6
// flows of the same clients in one table: both hooks must see each of their
// family's successful inserts exactly once, and the shared accounting must
// hold at the end.
func TestConcurrentStressMixed(t *testing.T) {
	tb := New(Config{shards: 8, MaxEntries: 3000, Persistence: 2 * time.Second,
		Timeouts: Timeouts{TCPSynRecv: time.Second, TCPEstablished: 5 * time.Second,
			TCPClosing: 2 * time.Second, UDP: 3 * time.Second}})
	var inserted, hooked, inserted6, hooked6 atomic.Int64
	tb.SetOnInsert(func(k Key, member uint32, state State) {
		if member >= 8 || !validState(k.Proto, state) {
			t.Errorf("hook got member %d state %v for %+v", member, state, k)
		}
		hooked.Add(1)
	})
	tb.SetOnInsert6(func(k Key6, member uint32, state State) {
		if member >= 8 || !validState6(k.Proto, state) {
			t.Errorf("hook6 got member %d state %v for %+v", member, state, k)
		}
		hooked6.Add(1)
	})
	var clock sync.Mutex
	now := t0
	tick := func() int64 {
		clock.Lock()
		defer clock.Unlock()
		now += int64(time.Millisecond)
		return now
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	dur := 2 * time.Second
	if testing.Short() {
		dur = 300 * time.Millisecond
	}
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 8))
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := tick()
				src, sport := r.Uint32N(64), uint16(r.Uint32N(64))
				proto := []uint8{ProtoTCP, ProtoUDP, ProtoICMPv6}[r.IntN(3)]
				flags := []uint8{FlagSYN, FlagACK, FlagFIN, FlagRST}[r.IntN(4)]
				member := r.Uint32N(8)
				if r.IntN(2) == 0 {
					if proto == ProtoICMPv6 {
						proto = ProtoICMP
					}
					k := Key{Src: src, Dst: 1, SPort: sport, Proto: proto}
					if _, ok := tb.Touch(k, flags, n); !ok {
						if m, ok := tb.Template(k.Src, k.Dst, n); ok {
							member = m
						}
						err := tb.Insert(k, member, flags, n)
						if err != nil && !errors.Is(err, ErrExists) && !errors.Is(err, ErrFull) {
							t.Errorf("Insert: %v", err)
							return
						}
						if err == nil {
							inserted.Add(1)
						}
					}
					switch r.IntN(100) {
					case 0:
						tb.Delete(k)
					case 1:
						tb.SetMember(k, r.Uint32N(8))
					case 2, 3:
						st := firstState(k.Proto, flags)
						if err := tb.Import(k, r.Uint32N(8), st, n+int64(r.IntN(20))*int64(500*time.Millisecond)-sec, n); err != nil && !errors.Is(err, ErrFull) {
							t.Errorf("Import: %v", err)
							return
						}
					}
					continue
				}
				k := Key6{Src: ip6(src), Dst: vip6, SPort: sport, Proto: proto}
				tb.Prefetch6(k)
				if _, ok := tb.Touch6(k, flags, n); !ok {
					if m, ok := tb.Template6(k.Src, k.Dst, n); ok {
						member = m
					}
					err := tb.Insert6(k, member, flags, n)
					if err != nil && !errors.Is(err, ErrExists) && !errors.Is(err, ErrFull) {
						t.Errorf("Insert6: %v", err)
						return
					}
					if err == nil {
						inserted6.Add(1)
					}
				}
				switch r.IntN(100) {
				case 0:
					tb.Delete6(k)
				case 1:
					tb.SetMember6(k, r.Uint32N(8))
				case 2, 3, 4, 5:
					st := firstState6(k.Proto, flags)
					exp := n + int64(r.IntN(20))*int64(500*time.Millisecond) - sec
					if err := tb.Import6(k, r.Uint32N(8), st, exp, n); err != nil && !errors.Is(err, ErrFull) {
						t.Errorf("Import6: %v", err)
						return
					}
				case 6:
					exp := n + int64(r.IntN(8))*int64(500*time.Millisecond)
					if err := tb.ImportTemplate6(k.Src, k.Dst, r.Uint32N(8), exp, n); err != nil && !errors.Is(err, ErrFull) {
						t.Errorf("ImportTemplate6: %v", err)
						return
					}
				}
			}
		}(uint64(w))
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			tb.Expire(tick())
			tb.Range(func(Key, Entry) bool { return true })
			tb.Range6(func(Key6, Entry) bool { return true })
			tb.RangeTemplates(func(_, _ uint32, e Entry) bool { return e.Member < 8 })
			tb.RangeTemplates6(func(_, _ [16]byte, e Entry) bool {
				if e.Member >= 8 {
					t.Errorf("template of member %d", e.Member)
				}
				return true
			})
			time.Sleep(time.Millisecond)
		}
	}()
	time.Sleep(dur)
	close(stop)
	wg.Wait()
	checkInvariants(t, tb)
	if inserted.Load() != hooked.Load() || inserted6.Load() != hooked6.Load() {
		t.Fatalf("successful Inserts %d, Insert6s %d; hooks called %d, %d times",
			inserted.Load(), inserted6.Load(), hooked.Load(), hooked6.Load())
	}
	f, _ := tb.Len()
	t.Logf("flows at end: %d; %d inserts, %d IPv6", f, inserted.Load(), inserted6.Load())
	tb.Expire(tick() + 3600*sec)
	if f, tm := tb.Len(); f != 0 || tm != 0 {
		t.Fatalf("after expiring everything Len = %d, %d", f, tm)
	}
	checkInvariants(t, tb)
}

// FuzzOps6 is FuzzOps for a table holding both families: each operation
// takes three bytes, the third choosing IPv4 (even) or IPv6 (odd) keys, so
// the shared limit, Active counters and Expire see both.
func FuzzOps6(f *testing.F) {
	f.Add([]byte{0, 1, 1, 2, 3, 1, 4, 5, 0, 6, 7, 1, 8, 9, 1, 10, 11, 0})
	f.Add([]byte{0, 0x12, 1, 0, 0x34, 1, 5, 0x56, 0, 6, 0x78, 1, 7, 0x9a, 1, 0, 0xbc, 0, 0xde, 6, 1, 0xff, 0, 1})
	f.Add([]byte{8, 0x21, 1, 9, 0x41, 1, 98, 0x21, 1, 0, 0x21, 0, 6, 0x40, 1, 5, 0, 1, 248, 0x35, 1, 9, 0x13, 1, 169, 0x62, 0, 6, 0xff, 1, 5, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		tb := New(Config{shards: 2, MaxEntries: 12, Persistence: 5 * time.Second,
			Timeouts:     Timeouts{TCPSynRecv: 2 * time.Second, TCPClose: time.Second},
			PortTimeouts: fuzzPortTimeouts})
		var inserted, hooked int
		tb.SetOnInsert(func(Key, uint32, State) { hooked++ })
		tb.SetOnInsert6(func(Key6, uint32, State) { hooked++ })
		now := t0
		for i := 0; i+2 < len(ops); i += 3 {
			op, arg, is6 := ops[i], ops[i+1], ops[i+2]&1 != 0
			k := Key{Src: uint32(arg & 3), Dst: 1, SPort: uint16(arg >> 2 & 3), Proto: []uint8{ProtoTCP, ProtoUDP}[arg>>4&1]}
			k6 := Key6{Src: ip6(k.Src), Dst: ip6(k.Dst), SPort: k.SPort, Proto: k.Proto}
			member := uint32(arg >> 5)
			sel := op / 10
			flags := []uint8{FlagSYN, FlagACK, FlagFIN, FlagRST, 0, FlagSYN | FlagACK, FlagFIN | FlagACK, FlagRST | FlagACK}[sel&7]
			life := []int64{-sec, sec, 4 * sec, 1 << 60}[sel>>3&3]
			template := func(c uint32) (uint32, bool) {
				if is6 {
					return tb.Template6(ip6(c), ip6(1), now)
				}
				return tb.Template(c, 1, now)
			}
			switch op % 10 {
			case 0:
				var err error
				if is6 {
					err = tb.Insert6(k6, member, flags, now)
				} else {
					err = tb.Insert(k, member, flags, now)
				}
				if err != nil && !errors.Is(err, ErrFull) && !errors.Is(err, ErrExists) {
					t.Fatal(err)
				}
				if err == nil {
					inserted++
					m, ok := tb.Touch(k, 0, now)
					if is6 {
						m, ok = tb.Touch6(k6, 0, now)
					}
					if !ok || m != member {
						t.Fatalf("inserted flow reads back as %d, %v", m, ok)
					}
				}
			case 1:
				if is6 {
					tb.Touch6(k6, flags, now)
				} else {
					tb.Touch(k, flags, now)
				}
			case 2:
				if is6 {
					tb.Delete6(k6)
				} else {
					tb.Delete(k)
				}
			case 3:
				if is6 {
					tb.SetMember6(k6, member)
				} else {
					tb.SetMember(k, member)
				}
			case 4:
				// Active counts the member's flows of both families.
				n := int64(0)
				tb.Range(func(_ Key, e Entry) bool {
					if e.Member == member {
						n++
					}
					return true
				})
				tb.Range6(func(_ Key6, e Entry) bool {
					if e.Member == member {
						n++
					}
					return true
				})
				if got := tb.Active(member); got != n {
					t.Fatalf("Active(%d) = %d, Range and Range6 hold %d", member, got, n)
				}
			case 5:
				tb.Expire(now)
				check := func(e Entry) {
					if e.Expires <= now-tickNs {
						t.Fatalf("flow survived Expire: expires %d, now %d", e.Expires, now)
					}
				}
				tb.Range(func(_ Key, e Entry) bool { check(e); return true })
				tb.Range6(func(_ Key6, e Entry) bool { check(e); return true })
				got := map[uint32]Entry{}
				got6 := map[uint32]Entry{}
				tb.RangeTemplates(func(client, vip uint32, e Entry) bool {
					if vip != 1 || client > 3 {
						t.Fatalf("template %d/%d never made", client, vip)
					}
					got[client] = e
					return true
				})
				tb.RangeTemplates6(func(client, vip [16]byte, e Entry) bool {
					c := uint32(client[15])
					if vip != ip6(1) || client != ip6(c) || c > 3 {
						t.Fatalf("template %v/%v never made", client, vip)
					}
					got6[c] = e
					return true
				})
				for c := uint32(0); c < 4; c++ {
					for _, fam := range []struct {
						got  map[uint32]Entry
						tmpl func(c uint32) (uint32, bool)
					}{
						{got, func(c uint32) (uint32, bool) { return tb.Template(c, 1, now) }},
						{got6, func(c uint32) (uint32, bool) { return tb.Template6(ip6(c), ip6(1), now) }},
					} {
						m, ok := fam.tmpl(c)
						e, reported := fam.got[c]
						if ok != reported || ok && (e.Member != m || e.Expires <= now) {
							t.Fatalf("client %d: Template %d, %v; RangeTemplates %+v, %v", c, m, ok, e, reported)
						}
					}
				}
			case 6:
				now += int64(arg) * sec / 8
			case 7:
				template(k.Src)
			case 8:
				st := State(sel & 7)
				if k.Proto == ProtoUDP {
					st = []State{StateUDP, StateEstablished, State(numStates)}[min(sel&7, 2)]
				}
				if is6 {
					fuzzImport6(t, tb, k6, member, st, now+life, now)
				} else {
					fuzzImport(t, tb, k, member, st, now+life, now)
				}
			case 9:
				before, wasLive := template(k.Src)
				var err error
				if is6 {
					err = tb.ImportTemplate6(k6.Src, k6.Dst, member, now+life, now)
				} else {
					err = tb.ImportTemplate(k.Src, k.Dst, member, now+life, now)
				}
				if err != nil {
					t.Fatalf("ImportTemplate: %v", err)
				}
				m, ok := template(k.Src)
				if life > 0 && (!ok || m != member) || life <= 0 && (ok != wasLive || m != before) {
					t.Fatalf("ImportTemplate(%d, life %d): Template %d, %v (was %d, %v)", member, life, m, ok, before, wasLive)
				}
			}
			checkMembers(t, tb, 8)
			if f, tm := tb.Len(); f > 12 || tm > 12 {
				t.Fatalf("Len %d, %d beyond MaxEntries", f, tm)
			}
		}
		checkInvariants(t, tb)
		if hooked != inserted {
			t.Fatalf("%d successful inserts, hooks called %d times", inserted, hooked)
		}
	})
}

// fuzzImport6 is fuzzImport for an IPv6 flow. The fuzzed keys make at most
// four templates per family, eight in all, so the table never runs out of
// templates and a recorded flow's template must point at member afterwards.
func fuzzImport6(t *testing.T, tb *Table, k Key6, member uint32, st State, expires, now int64) {
	t.Helper()
	prev, had := entry6(t, tb, k)
	had = had && prev.Expires > now
	err := tb.Import6(k, member, st, expires, now)
	if !validState6(k.Proto, st) {
		if !errors.Is(err, ErrBadState) {
			t.Fatalf("Import6(%v for proto %d) = %v, want ErrBadState", st, k.Proto, err)
		}
		return
	}
	if errors.Is(err, ErrFull) {
		if f, _ := tb.Len(); f < 12 {
			t.Fatalf("Import6: ErrFull with %d flows", f)
		}
		return
	}
	if err != nil {
		t.Fatalf("Import6: %v", err)
	}
	e, ok := entry6(t, tb, k)
	if expires <= now {
		if ok != had && !(ok && e.Expires <= now) || ok && had && e != prev {
			t.Fatalf("Import6 of an ended flow changed %+v to %+v", prev, e)
		}
		return
	}
	limit := now + tb.timeouts[tb.classOf(k.Proto, k.DPort)][st]
	if !ok || e.Member != member || e.State != st {
		t.Fatalf("imported %+v reads back as %+v, %v", k, e, ok)
	}
	hi := limit + tickNs
	if had {
		hi = max(hi, prev.Expires)
	}
	if e.Expires < min(expires, limit) || e.Expires > hi {
		t.Fatalf("imported expiry now%+d (asked now%+d, limit now%+d, had %v now%+d)",
			e.Expires-now, expires-now, limit-now, had, prev.Expires-now)
	}
	if m, ok := tb.Template6(k.Src, k.Dst, now); !ok || m != member {
		t.Fatalf("template after Import6 = %d, %v; want %d", m, ok, member)
	}
}
