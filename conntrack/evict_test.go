package conntrack

import (
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// In these tests the table has one shard and at most 12 flows, so a
// family's slot array has 16 slots and the eviction window (16 flows)
// covers it all: which flow goes is then decided by the order alone.

func mustGone(t *testing.T, tb *Table, k Key) {
	t.Helper()
	if _, ok := entry(t, tb, k); ok {
		t.Fatalf("%+v still tracked, want it evicted", k)
	}
}

func mustHave(t *testing.T, tb *Table, k Key, now int64) {
	t.Helper()
	if _, ok := tb.Touch(k, 0, now); !ok {
		t.Fatalf("%+v lost", k)
	}
}

func keyN(n uint32, proto uint8) Key {
	return Key{Src: 0x0a000000 | n, Dst: 0xc6336401, SPort: uint16(1000 + n), DPort: 25, Proto: proto}
}

// A full table of established, half-open and UDP flows makes room for new
// flows by evicting the non-established flow that expires first, never an
// established one, and refuses new flows once only established ones are
// left.
func TestEvictOrder(t *testing.T) {
	tb := New(Config{MaxEntries: 12, shards: 1, Persistence: time.Minute})
	var est, victims []Key
	// Two UDP flows idle for 250 s (50 s left of 300), then four SYN_RECV
	// flows from t0 on (60 s each): the order they must go in.
	for i := range uint32(2) {
		k := keyN(100+i, ProtoUDP)
		mustInsert(t, tb, k, 1, 0, t0-250*sec+int64(i)*sec)
		victims = append(victims, k)
	}
	for i := range uint32(4) {
		k := keyN(200+i, ProtoTCP)
		mustInsert(t, tb, k, 2, FlagSYN, t0+int64(i)*sec)
		victims = append(victims, k)
	}
	for i := range uint32(6) {
		k := keyN(i, ProtoTCP)
		mustInsert(t, tb, k, 3, FlagACK, t0-800*sec) // 100 s left, less than any victim
		est = append(est, k)
	}
	now := t0 + 10*sec
	var fresh []Key
	for i, v := range victims {
		now += sec
		k := keyN(300+uint32(i), ProtoTCP)
		mustInsert(t, tb, k, 4, FlagSYN, now)
		mustGone(t, tb, v)
		for _, w := range victims[i+1:] {
			if _, ok := entry(t, tb, w); !ok {
				t.Fatalf("insert %d evicted %+v before %+v", i, w, v)
			}
		}
		fresh = append(fresh, k)
		checkInvariants(t, tb)
	}
	if ev := tb.Evictions(); ev != (EvictStats{Live: 6}) {
		t.Fatalf("Evictions = %+v, want 6 live", ev)
	}
	for _, k := range est {
		mustHave(t, tb, k, now)
	}
	// Complete the new flows' handshakes: with only established flows left
	// the table refuses, and keeps every flow.
	for _, k := range fresh {
		if _, ok := tb.Touch(k, FlagACK, now); !ok {
			t.Fatalf("%+v lost", k)
		}
	}
	if err := tb.Insert(keyN(999, ProtoTCP), 1, FlagSYN, now); !errors.Is(err, ErrFull) {
		t.Fatalf("Insert into a table of established flows = %v, want ErrFull", err)
	}
	if err := tb.Import(keyN(998, ProtoUDP), 1, StateUDP, now+sec, now); !errors.Is(err, ErrFull) {
		t.Fatalf("Import into a table of established flows = %v, want ErrFull", err)
	}
	if _, ok := tb.Template(keyN(999, ProtoTCP).Src, keyN(999, ProtoTCP).Dst, now); ok {
		t.Fatal("a refused flow created a template")
	}
	for _, k := range append(est, fresh...) {
		mustHave(t, tb, k, now)
	}
	if f, _ := tb.Len(); f != 12 || tb.Evictions().Live != 6 {
		t.Fatalf("Len %d, Evictions %+v", f, tb.Evictions())
	}
	checkInvariants(t, tb)
}

// Expired flows that Expire has not yet removed go before any live one, an
// expired established flow included, and are counted apart.
func TestEvictExpiredFirst(t *testing.T) {
	tb := New(Config{MaxEntries: 12, shards: 1, Persistence: time.Minute})
	var old, est, half []Key
	for i := range uint32(3) {
		k := keyN(i, ProtoTCP)
		mustInsert(t, tb, k, 1, FlagACK, t0) // expires at t0+900 s
		old = append(old, k)
	}
	now := t0 + 895*sec
	for i := range uint32(5) {
		k := keyN(10+i, ProtoTCP)
		mustInsert(t, tb, k, 2, FlagACK, now)
		est = append(est, k)
	}
	for i := range uint32(4) {
		k := keyN(20+i, ProtoTCP)
		mustInsert(t, tb, k, 3, FlagSYN, now+int64(i)*sec)
		half = append(half, k)
	}
	now = t0 + 905*sec
	for i := range uint32(3) {
		mustInsert(t, tb, keyN(30+i, ProtoUDP), 4, 0, now)
		checkInvariants(t, tb)
	}
	for _, k := range old {
		mustGone(t, tb, k)
	}
	for _, k := range append(est, half...) {
		if _, ok := entry(t, tb, k); !ok {
			t.Fatalf("%+v evicted while expired flows were left", k)
		}
	}
	if ev := tb.Evictions(); ev != (EvictStats{Expired: 3}) {
		t.Fatalf("Evictions = %+v, want 3 expired", ev)
	}
	// Then the half-open flow closest to its expiry.
	mustInsert(t, tb, keyN(40, ProtoUDP), 4, 0, now)
	mustGone(t, tb, half[0])
	if ev := tb.Evictions(); ev != (EvictStats{Live: 1, Expired: 3}) {
		t.Fatalf("Evictions = %+v, want 1 live, 3 expired", ev)
	}
	for _, k := range est {
		mustHave(t, tb, k, now)
	}
	checkInvariants(t, tb)
	// The evicted flows released their templates: each lasts a
	// persistence period after the flow ended (t0+900 s, give or take the
	// two tick round-ups).
	if _, ok := tb.Template(old[0].Src, old[0].Dst, t0+955*sec); !ok {
		t.Fatal("an evicted expired flow's template lapsed early")
	}
	if _, ok := tb.Template(old[0].Src, old[0].Dst, t0+960*sec+2*tickNs); ok {
		t.Fatal("an evicted expired flow's template outlived its persistence")
	}
}

// When a family's slots in the key's shard hold nothing to evict, the other
// family's are searched, so a flood of one family cannot lock the other out.
func TestEvictAcrossFamilies(t *testing.T) {
	count := func(tb *Table) (n4, n6 int) {
		tb.Range(func(Key, Entry) bool { n4++; return true })
		tb.Range6(func(Key6, Entry) bool { n6++; return true })
		return n4, n6
	}
	tb := New(Config{MaxEntries: 8, shards: 1})
	for i := range uint32(8) {
		mustInsert(t, tb, keyN(i, ProtoTCP), 1, FlagSYN, t0)
	}
	k6 := portKey6(1, ProtoTCP, 443)
	mustInsert6(t, tb, k6, 2, FlagSYN, t0+sec)
	if n4, n6 := count(tb); n4 != 7 || n6 != 1 || tb.Evictions().Live != 1 {
		t.Fatalf("%d IPv4 and %d IPv6 flows, Evictions %+v", n4, n6, tb.Evictions())
	}
	checkInvariants(t, tb)
	// The own family comes first: the next IPv6 flow evicts the IPv6 one,
	// although it expires later than every IPv4 flow.
	mustInsert6(t, tb, portKey6(2, ProtoTCP, 443), 2, FlagSYN, t0+2*sec)
	if _, ok := entry6(t, tb, k6); ok {
		t.Fatal("an IPv6 insert evicted an IPv4 flow while an IPv6 one was evictable")
	}
	if n4, n6 := count(tb); n4 != 7 || n6 != 1 {
		t.Fatalf("%d IPv4 and %d IPv6 flows, want 7 and 1", n4, n6)
	}
	checkInvariants(t, tb)
	// And the other way round.
	tb = New(Config{MaxEntries: 8, shards: 1})
	for i := range uint32(8) {
		mustInsert6(t, tb, portKey6(i, ProtoUDP, 53), 1, 0, t0)
	}
	mustInsert(t, tb, keyN(1, ProtoTCP), 2, FlagSYN, t0+sec)
	if n4, n6 := count(tb); n4 != 1 || n6 != 7 || tb.Evictions().Live != 1 {
		t.Fatalf("%d IPv4 and %d IPv6 flows, Evictions %+v", n4, n6, tb.Evictions())
	}
	checkInvariants(t, tb)
}

// Import into a full table evicts as Insert does, and calls no hook.
func TestImportEvicts(t *testing.T) {
	tb := New(Config{MaxEntries: 4, shards: 1, Persistence: time.Minute})
	hooked := 0
	tb.SetOnInsert(func(Key, uint32, State) { hooked++ })
	for i := range uint32(4) {
		mustInsert(t, tb, keyN(i, ProtoTCP), 1, FlagSYN, t0+int64(i)*sec)
	}
	k := keyN(10, ProtoTCP)
	if err := tb.Import(k, 2, StateEstablished, t0+600*sec, t0+5*sec); err != nil {
		t.Fatalf("Import into a full table = %v", err)
	}
	mustGone(t, tb, keyN(0, ProtoTCP))
	if e, ok := entry(t, tb, k); !ok || e.Member != 2 || e.State != StateEstablished {
		t.Fatalf("imported flow reads %+v, %v", e, ok)
	}
	if hooked != 4 || tb.Evictions().Live != 1 {
		t.Fatalf("hook calls %d, Evictions %+v", hooked, tb.Evictions())
	}
	checkInvariants(t, tb)
}

// victim looks at the first evictWindow flows from the home slot, passing
// over empty slots but no more than evictScan positions, wrapping around
// the array; it skips live established flows and picks the earliest expiry.
func TestVictimWindow(t *testing.T) {
	const size = 128
	now := t0
	nowTick := uint32(now >> tickShift)
	mk := func() *flowTab[flowKey] {
		ft := &flowTab[flowKey]{slots: make([]slot[flowKey], size), n: size}
		for i := range ft.slots {
			ft.slots[i] = slot[flowKey]{key: flowKey{a: uint64(i)}, flags: flagUsed, state: StateEstablished,
				exp: nowTick + 1000, hash: uint32(i)}
		}
		return ft
	}
	clear := func(ft *flowTab[flowKey], i uint32) {
		ft.slots[i%size] = slot[flowKey]{}
		ft.n--
	}
	for _, home := range []uint32{0, 10, 120} {
		ft := mk()
		if i := victim(ft, home, now); i != -1 {
			t.Fatalf("home %d: victim %d among established flows", home, i)
		}
		// The 17th flow is outside the window.
		ft.slots[(home+evictWindow)%size].state = StateSynRecv
		if i := victim(ft, home, now); i != -1 {
			t.Fatalf("home %d: victim %d outside the window", home, i)
		}
		// An empty slot makes the window one position longer.
		clear(ft, home+3)
		if i, want := victim(ft, home, now), int((home+evictWindow)%size); i != want {
			t.Fatalf("home %d: victim %d, want %d past an empty slot", home, i, want)
		}
		// An earlier-expiring candidate wins; an expired established flow
		// wins over both.
		mid := (home + 5) % size
		ft.slots[mid].state, ft.slots[mid].exp = StateClosing, nowTick+10
		if i := victim(ft, home, now); i != int(mid) {
			t.Fatalf("home %d: victim %d, want %d (earliest)", home, i, mid)
		}
		dead := (home + 9) % size
		ft.slots[dead].exp = nowTick - 1
		if i := victim(ft, home, now); i != int(dead) {
			t.Fatalf("home %d: victim %d, want the expired %d", home, i, dead)
		}
	}
	// No more than evictScan positions are passed, however few flows lie
	// in them.
	ft := mk()
	for i := uint32(0); i < evictScan; i++ {
		clear(ft, 7+i)
	}
	ft.slots[7+evictScan].state = StateUDP
	if i := victim(ft, 7, now); i != -1 {
		t.Fatalf("victim %d beyond %d positions", i, evictScan)
	}
	if i := victim(ft, 6, now); i != -1 {
		t.Fatalf("victim %d beyond %d positions", i, evictScan)
	}
	if i, want := victim(ft, 8, now), 7+evictScan; i != want {
		t.Fatalf("victim %d, want %d", i, want)
	}
	// A table smaller than the scan is looked at once, not twice.
	small := &flowTab[flowKey]{slots: make([]slot[flowKey], minSlots), n: 1}
	small.slots[3] = slot[flowKey]{flags: flagUsed, state: StateUDP, exp: nowTick + 5}
	if i := victim(small, 9, now); i != 3 {
		t.Fatalf("victim %d in a small table, want 3", i)
	}
	if i := victim(&flowTab[flowKey]{}, 3, now); i != -1 {
		t.Fatalf("victim %d in a table without slots", i)
	}
}

// A SYN flood into a full table from several goroutines, alongside
// Touch, Expire and Range, evicts half-open flows only: every established
// flow survives and the counts stay exact.
func TestEvictConcurrentFlood(t *testing.T) {
	const nEst = 1000
	tb := New(Config{MaxEntries: 2 * nEst, shards: 8, Persistence: time.Minute})
	est := make([]Key, nEst)
	for i := range est {
		est[i] = keyN(uint32(i), ProtoTCP)
		mustInsert(t, tb, est[i], uint32(i%8), FlagACK, t0)
	}
	var clock sync.Mutex
	now := t0
	tick := func() int64 {
		clock.Lock()
		defer clock.Unlock()
		now += int64(time.Millisecond)
		return now
	}
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			for range 20000 {
				n := tick()
				k := Key{Src: 0x0b000000 | r.Uint32N(1<<20), Dst: 1, SPort: uint16(r.Uint32()), DPort: 25, Proto: ProtoTCP}
				err := tb.Insert(k, r.Uint32N(8), FlagSYN, n)
				if err != nil && !errors.Is(err, ErrFull) && !errors.Is(err, ErrExists) {
					t.Errorf("Insert: %v", err)
					return
				}
				if r.IntN(8) == 0 {
					tb.Import(k, r.Uint32N(8), StateSynRecv, n+sec, n)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 20000 {
			if _, ok := tb.Touch(est[i%nEst], FlagACK, tick()); !ok {
				t.Errorf("established flow %d lost", i%nEst)
				return
			}
			if i%2000 == 0 {
				tb.Expire(tick())
				tb.Range(func(Key, Entry) bool { return true })
			}
		}
	}()
	wg.Wait()
	for _, k := range est {
		mustHave(t, tb, k, tick())
	}
	if f, _ := tb.Len(); f > 2*nEst {
		t.Fatalf("Len %d beyond MaxEntries", f)
	}
	if tb.Evictions().Live == 0 {
		t.Fatal("the flood evicted nothing")
	}
	checkInvariants(t, tb)
	t.Logf("evictions %+v", tb.Evictions())
}
