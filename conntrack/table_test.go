package conntrack

import (
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

const sec = int64(time.Second)

// t0 is an arbitrary start time far from zero, so tests do not depend on the
// clock starting at 0.
const t0 = int64(1234567) * sec

func tcpKey(n uint32) Key {
	return Key{Src: 0xc0000200 | n&0xff, Dst: 0xc6336401, SPort: uint16(40000 + n), DPort: 443, Proto: ProtoTCP}
}

// entry returns the Range view of k.
func entry(t *testing.T, tb *Table, k Key) (Entry, bool) {
	t.Helper()
	var got Entry
	found := false
	tb.Range(func(rk Key, e Entry) bool {
		if rk == k {
			got, found = e, true
			return false
		}
		return true
	})
	return got, found
}

func mustInsert(t *testing.T, tb *Table, k Key, member uint32, flags uint8, now int64) {
	t.Helper()
	if err := tb.Insert(k, member, flags, now); err != nil {
		t.Fatalf("Insert(%+v, %d): %v", k, member, err)
	}
}

// expectState checks k's state and that it lives exactly its timeout d from
// now: still there just before, gone one tick after.
func expectLife(t *testing.T, tb *Table, k Key, want State, now int64, d time.Duration) {
	t.Helper()
	e, ok := entry(t, tb, k)
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

func checkInvariants(t testing.TB, tb *Table) {
	t.Helper()
	checkMembers(t, tb, MaxMember+1)
}

// checkMembers checks the flow, template and Active accounting of both
// families, looking at the Active counters of members below nMembers only
// (all must be there).
func checkMembers(t testing.TB, tb *Table, nMembers int) {
	t.Helper()
	flows, tmpls := tb.Len()
	perMember := map[uint16]int64{}
	n, nt := checkFam(t, v4{tb}, perMember)
	n6, nt6 := checkFam(t, v6{tb}, perMember)
	n, nt = n+n6, nt+nt6
	if n != flows || nt != tmpls {
		t.Fatalf("Len = %d, %d; maps hold %d, %d", flows, tmpls, n, nt)
	}
	var sum int64
	for m := range tb.active[:nMembers] {
		a := tb.active[m].Load()
		if a != perMember[uint16(m)] {
			t.Fatalf("Active(%d) = %d, table holds %d", m, a, perMember[uint16(m)])
		}
		sum += a
	}
	if sum != int64(flows) {
		t.Fatalf("sum of Active = %d, Len = %d", sum, flows)
	}
}

// slotClass is the timeout class a flow with packed key k must have.
func slotClass[K comparable](tb *Table, k K) uint8 {
	switch k := any(k).(type) {
	case flowKey:
		u := k.unpack()
		return tb.classOf(u.Proto, u.DPort)
	case flowKey6:
		u := k.unpack()
		return tb.classOf(u.Proto, u.DPort)
	}
	panic("unknown key type")
}

// checkFam checks the flows and templates of one key type: every flow is
// reachable from its home slot, each shard counts its flows right, and each
// template counts the flows that hold it. It adds the flows of each member
// to perMember and returns how many flows and templates it saw.
func checkFam[K packedKey[K, T], T comparable](t testing.TB, f fam[K, T], perMember map[uint16]int64) (flows, tmpls int) {
	t.Helper()
	held := map[T]uint32{}
	for i := range f.shards {
		s := &f.shards[i]
		ft := &f.of(s).flows
		s.mu.Lock()
		used := 0
		for i := range ft.slots {
			v := &ft.slots[i]
			if v.flags&flagUsed == 0 {
				continue
			}
			used++
			flows++
			perMember[v.member]++
			if v.flags&flagTemplate != 0 {
				held[v.key.tmplKey()]++
			}
			if ft.find(v.key, v.hash) != i {
				t.Fatalf("flow %+v at slot %d unreachable from its home", v.key, i)
			}
			if c := slotClass(f.Table, v.key); v.class != c {
				t.Fatalf("flow %+v has timeout class %d, its port's is %d", v.key, v.class, c)
			}
		}
		if used != ft.n {
			t.Fatalf("shard %d counts %d flows, holds %d", i, ft.n, used)
		}
		s.mu.Unlock()
	}
	for i := range f.shards {
		s := &f.shards[i]
		s.mu.Lock()
		for tk, v := range f.of(s).tmpls {
			tmpls++
			if held[tk] != v.flows {
				t.Fatalf("template %+v counts %d flows, %d hold it", tk, v.flows, held[tk])
			}
			delete(held, tk)
		}
		s.mu.Unlock()
	}
	if len(held) != 0 {
		t.Fatalf("flows hold %d templates that do not exist", len(held))
	}
	return flows, tmpls
}

func TestTCPLifecycleFIN(t *testing.T) {
	tb := New(Config{})
	to := DefaultTimeouts()
	k := tcpKey(1)
	now := t0
	mustInsert(t, tb, k, 3, FlagSYN, now)
	expectLife(t, tb, k, StateSynRecv, now, to.TCPSynRecv)

	now += sec
	if m, ok := tb.Touch(k, FlagSYN, now); !ok || m != 3 {
		t.Fatalf("Touch(retransmitted SYN) = %d, %v", m, ok)
	}
	expectLife(t, tb, k, StateSynRecv, now, to.TCPSynRecv)

	now += sec
	if m, ok := tb.Touch(k, FlagACK, now); !ok || m != 3 {
		t.Fatalf("Touch(ACK) = %d, %v", m, ok)
	}
	expectLife(t, tb, k, StateEstablished, now, to.TCPEstablished)

	// An established connection outlives the SYN_RECV timeout.
	now += int64(to.TCPSynRecv) + sec
	if _, ok := tb.Touch(k, FlagACK, now); !ok {
		t.Fatal("established flow lost after SYN_RECV timeout")
	}
	// A SYN in ESTABLISHED does not reset it.
	tb.Touch(k, FlagSYN, now)
	expectLife(t, tb, k, StateEstablished, now, to.TCPEstablished)

	now += sec
	tb.Touch(k, FlagFIN|FlagACK, now)
	expectLife(t, tb, k, StateClosing, now, to.TCPClosing)
	// Further ACKs keep it closing.
	now += sec
	tb.Touch(k, FlagACK, now)
	expectLife(t, tb, k, StateClosing, now, to.TCPClosing)

	if f, _ := tb.Expire(now + int64(to.TCPClosing) - 1); f != 0 {
		t.Fatalf("Expire before timeout removed %d flows", f)
	}
	if _, ok := tb.Touch(k, 0, now+int64(to.TCPClosing)-1); !ok {
		t.Fatal("closing flow gone before its timeout")
	}
	now += int64(to.TCPClosing) - 1
	end := now + int64(to.TCPClosing) + tickNs
	if _, ok := tb.Touch(k, FlagACK, end); ok {
		t.Fatal("Touch found an expired flow")
	}
	if f, _ := tb.Expire(end); f != 1 {
		t.Fatalf("Expire removed %d flows, want 1", f)
	}
	if f, _ := tb.Len(); f != 0 || tb.Active(3) != 0 {
		t.Fatalf("after expiry Len = %d, Active = %d", f, tb.Active(3))
	}
	checkInvariants(t, tb)
}

func TestTCPRSTAndReopen(t *testing.T) {
	tb := New(Config{})
	to := DefaultTimeouts()
	k := tcpKey(2)
	now := t0
	mustInsert(t, tb, k, 7, FlagSYN, now)
	tb.Touch(k, FlagACK, now)
	now += sec
	tb.Touch(k, FlagRST|FlagACK, now)
	expectLife(t, tb, k, StateClose, now, to.TCPClose)
	// FIN after RST stays CLOSE.
	tb.Touch(k, FlagFIN, now)
	expectLife(t, tb, k, StateClose, now, to.TCPClose)

	// The client reuses the 4-tuple: same member, a new handshake.
	now += sec
	if m, ok := tb.Touch(k, FlagSYN, now); !ok || m != 7 {
		t.Fatalf("Touch(SYN on CLOSE) = %d, %v", m, ok)
	}
	expectLife(t, tb, k, StateSynRecv, now, to.TCPSynRecv)
	tb.Touch(k, FlagFIN, now)
	expectLife(t, tb, k, StateClosing, now, to.TCPClosing)
	tb.Touch(k, FlagSYN, now)
	expectLife(t, tb, k, StateSynRecv, now, to.TCPSynRecv)

	// RST then silence: gone after 10 s, not 60 s.
	tb.Touch(k, FlagRST, now)
	if f, _ := tb.Expire(now + int64(to.TCPClose) + tickNs); f != 1 {
		t.Fatalf("Expire after CLOSE timeout removed %d", f)
	}
	checkInvariants(t, tb)
}

func TestFirstFrameState(t *testing.T) {
	tests := []struct {
		proto uint8
		flags uint8
		want  State
	}{
		{ProtoTCP, FlagSYN, StateSynRecv},
		{ProtoTCP, FlagACK, StateEstablished}, // mid-stream after failover
		{ProtoTCP, 0, StateEstablished},
		{ProtoTCP, FlagFIN | FlagACK, StateClosing},
		{ProtoTCP, FlagRST, StateClose},
		{ProtoUDP, FlagSYN, StateUDP}, // flags ignored for non-TCP
		{ProtoICMP, 0, StateICMP},
		{47, 0, StateOther}, // GRE
	}
	for i, tc := range tests {
		tb := New(Config{})
		k := Key{Src: 1, Dst: 2, SPort: 3, DPort: 4, Proto: tc.proto}
		mustInsert(t, tb, k, 1, tc.flags, t0)
		to := tb.timeouts[0][tc.want]
		expectLife(t, tb, k, tc.want, t0, time.Duration(to))
		_ = i
	}
}

func TestProtocolTimeouts(t *testing.T) {
	custom := Timeouts{UDP: 5 * time.Second} // the rest default
	tb := New(Config{Timeouts: custom})
	to := DefaultTimeouts()
	to.UDP = 5 * time.Second
	cases := []struct {
		k Key
		d time.Duration
	}{
		{Key{Src: 1, Dst: 9, SPort: 5060, DPort: 5060, Proto: ProtoUDP}, to.UDP},
		{Key{Src: 2, Dst: 9, Proto: ProtoICMP}, to.ICMP},
		{Key{Src: 3, Dst: 9, Proto: 132}, to.Other},
		{Key{Src: 4, Dst: 9, SPort: 1, DPort: 25, Proto: ProtoTCP}, to.TCPEstablished},
	}
	for i, c := range cases {
		mustInsert(t, tb, c.k, uint32(i), 0, t0)
	}
	// Touching a UDP flow refreshes it.
	now := t0 + 4*sec
	if _, ok := tb.Touch(cases[0].k, 0, now); !ok {
		t.Fatal("UDP flow missing before its timeout")
	}
	for i, c := range cases {
		start := t0
		if i == 0 {
			start = now
		}
		if _, ok := tb.Touch(c.k, 0, start+int64(c.d)-1); !ok {
			t.Fatalf("%d: gone before %v", c.k.Proto, c.d)
		}
		// The touch above restarted the timer; check expiry from there.
		start += int64(c.d) - 1
		if _, ok := tb.Touch(c.k, 0, start+int64(c.d)+tickNs); ok {
			t.Fatalf("%d: alive after %v", c.k.Proto, c.d)
		}
	}
	if f, _ := tb.Expire(t0 + 4000*sec); f != len(cases) {
		t.Fatalf("Expire removed %d, want %d", f, len(cases))
	}
	checkInvariants(t, tb)
}

func TestInsertExistsAndReplace(t *testing.T) {
	tb := New(Config{})
	k := Key{Src: 1, Dst: 2, SPort: 3, DPort: 4, Proto: ProtoUDP}
	mustInsert(t, tb, k, 1, 0, t0)
	if err := tb.Insert(k, 2, 0, t0+sec); !errors.Is(err, ErrExists) {
		t.Fatalf("second Insert = %v, want ErrExists", err)
	}
	if m, _ := tb.Touch(k, 0, t0+sec); m != 1 {
		t.Fatalf("member changed to %d by a refused Insert", m)
	}
	// Once expired (but not yet swept) the key may be inserted afresh.
	later := t0 + sec + int64(DefaultTimeouts().UDP) + tickNs
	mustInsert(t, tb, k, 2, 0, later)
	if m, ok := tb.Touch(k, 0, later); !ok || m != 2 {
		t.Fatalf("Touch after replace = %d, %v", m, ok)
	}
	if f, _ := tb.Len(); f != 1 || tb.Active(1) != 0 || tb.Active(2) != 1 {
		t.Fatalf("Len %d Active(1) %d Active(2) %d", f, tb.Active(1), tb.Active(2))
	}
	if err := tb.Insert(Key{Src: 9}, MaxMember+1, 0, t0); !errors.Is(err, ErrBadMember) {
		t.Fatalf("Insert(bad member) = %v", err)
	}
	checkInvariants(t, tb)
}

func TestPersistence(t *testing.T) {
	const p = 15 * time.Second // the seed's default -p
	tb := New(Config{Persistence: p})
	client, vip := uint32(0xc0000201), uint32(0xc6336401)
	k1 := Key{Src: client, Dst: vip, SPort: 1000, DPort: 80, Proto: ProtoTCP}
	k2 := Key{Src: client, Dst: vip, SPort: 1001, DPort: 443, Proto: ProtoTCP}
	other := Key{Src: client + 1, Dst: vip, SPort: 1000, DPort: 80, Proto: ProtoTCP}

	if _, ok := tb.Template(client, vip, t0); ok {
		t.Fatal("template before any flow")
	}
	now := t0
	mustInsert(t, tb, k1, 4, FlagSYN, now)
	mustInsert(t, tb, other, 5, FlagSYN, now)
	if m, ok := tb.Template(client, vip, now+sec); !ok || m != 4 {
		t.Fatalf("Template = %d, %v; want 4", m, ok)
	}
	if _, ok := tb.Template(client, vip+1, now); ok {
		t.Fatal("template leaked to another VIP")
	}
	// Same client, other port, within p: the caller follows the template.
	mustInsert(t, tb, k2, 4, FlagSYN, now+sec)
	if _, tm := tb.Len(); tm != 2 {
		t.Fatalf("templates = %d, want 2", tm)
	}

	// A long flow keeps the template alive far beyond p.
	tb.Delete(k2)
	for i := 0; i < 20; i++ {
		now += 50 * sec
		tb.Touch(k1, FlagACK, now)
		tb.Expire(now)
		if m, ok := tb.Template(client, vip, now); !ok || m != 4 {
			t.Fatalf("template lost at +%ds while its flow lives", (now-t0)/sec)
		}
	}
	// The flow ends (FIN, then its closing timeout); p counts from its end.
	tb.Touch(k1, FlagFIN, now)
	flowEnd := now + int64(DefaultTimeouts().TCPClosing)
	if m, ok := tb.Template(client, vip, flowEnd+int64(p)-sec); !ok || m != 4 {
		t.Fatal("template gone within p of its last flow's end")
	}
	f, tm := tb.Expire(flowEnd + tickNs)
	if f != 1 || tm != 0 { // k1; other's SYN_RECV expired in the loop
		t.Fatalf("Expire at flow end removed %d flows, %d templates", f, tm)
	}
	if m, ok := tb.Template(client, vip, flowEnd+int64(p)-sec); !ok || m != 4 {
		t.Fatal("template gone within p of its last flow's end")
	}
	if _, ok := tb.Template(client, vip, flowEnd+int64(p)+2*tickNs); ok {
		t.Fatal("template alive after p idle with no flows")
	}
	if _, tm := tb.Expire(flowEnd + int64(p) + 2*tickNs); tm != 1 {
		t.Fatalf("Expire removed %d templates, want 1", tm)
	}
	if _, tm := tb.Len(); tm != 0 {
		t.Fatalf("templates left: %d", tm)
	}
	checkInvariants(t, tb)
}

func TestPersistenceIdleWithoutFlows(t *testing.T) {
	const p = 30 * time.Second
	tb := New(Config{Persistence: p})
	k := Key{Src: 10, Dst: 20, SPort: 1, DPort: 53, Proto: ProtoUDP}
	mustInsert(t, tb, k, 2, 0, t0)
	if !tb.Delete(k) {
		t.Fatal("Delete missed")
	}
	// Delete ends the flow at the shard's latest time (t0 here).
	if _, ok := tb.Template(10, 20, t0+int64(p)-sec); !ok {
		t.Fatal("template gone before p")
	}
	// A new flow within p is new activity: p restarts. Time only moves forward here, as in
	// the balancer: Delete ends a flow at its shard's latest time, and the lookup above at
	// t0+p-1s may have moved that shard's clock (when flow and template share a shard, which
	// the per-process hash seed decides), so a flow made at an earlier time would end later
	// than it was made and the check below would fail about once in the shard count.
	k.SPort = 2
	at := t0 + int64(p) - sec
	mustInsert(t, tb, k, 2, 0, at)
	tb.Delete(k)
	if _, ok := tb.Template(10, 20, at+int64(p)-sec); !ok {
		t.Fatal("new flow did not restart persistence")
	}
	if _, ok := tb.Template(10, 20, at+int64(p)+tickNs); ok {
		t.Fatal("template outlived p")
	}
	// A dead template is replaced, not resurrected with its old member.
	mustInsert(t, tb, k, 9, 0, t0+200*sec)
	if m, ok := tb.Template(10, 20, t0+200*sec); !ok || m != 9 {
		t.Fatalf("Template = %d, %v; want 9", m, ok)
	}
	checkInvariants(t, tb)
}

func TestLimit(t *testing.T) {
	const max = 100
	tb := New(Config{MaxEntries: max, shards: 4, Persistence: time.Minute})
	// TCP flows first seen without SYN are ESTABLISHED, which a full table
	// never evicts (evict.go): it refuses new flows instead.
	for i := 0; i < max; i++ {
		mustInsert(t, tb, Key{Src: uint32(i), Dst: 1, Proto: ProtoTCP}, uint32(i%3), 0, t0)
	}
	for i := 0; i < 10; i++ {
		err := tb.Insert(Key{Src: uint32(max + i), Dst: 1, Proto: ProtoTCP}, 0, 0, t0)
		if !errors.Is(err, ErrFull) {
			t.Fatalf("Insert beyond MaxEntries = %v, want ErrFull", err)
		}
	}
	if f, tm := tb.Len(); f != max || tm != max {
		t.Fatalf("Len = %d, %d; want %d, %d", f, tm, max, max)
	}
	checkInvariants(t, tb)
	// A refused flow must not have created a template.
	if _, ok := tb.Template(uint32(max), 1, t0); ok {
		t.Fatal("refused flow created a template")
	}
	// Deleting flows makes room again.
	tb.Delete(Key{Src: 0, Dst: 1, Proto: ProtoTCP})
	mustInsert(t, tb, Key{Src: 0, Dst: 1, SPort: 5, Proto: ProtoTCP}, 0, 0, t0)
	// Templates are bounded too: with all 100 template slots live, a flow of
	// a new client is recorded without persistence.
	tb.Delete(Key{Src: 1, Dst: 1, Proto: ProtoTCP})
	mustInsert(t, tb, Key{Src: 5000, Dst: 1, Proto: ProtoTCP}, 1, 0, t0)
	if _, ok := tb.Template(5000, 1, t0); ok {
		t.Fatal("template created beyond MaxEntries")
	}
	if _, tm := tb.Len(); tm != max {
		t.Fatalf("templates = %d, want %d", tm, max)
	}
	checkInvariants(t, tb)
}

func TestActive(t *testing.T) {
	tb := New(Config{Persistence: time.Minute})
	now := t0
	for i := uint32(0); i < 300; i++ {
		mustInsert(t, tb, Key{Src: i, Dst: 100, SPort: uint16(i), Proto: ProtoTCP}, i%3, FlagSYN, now)
	}
	for m := uint32(0); m < 3; m++ {
		if a := tb.Active(m); a != 100 {
			t.Fatalf("Active(%d) = %d, want 100", m, a)
		}
	}
	// A later Insert re-points the client's template: member 2's template
	// is then also held by a flow of member 1.
	mustInsert(t, tb, Key{Src: 1, Dst: 100, SPort: 9999, Proto: ProtoTCP}, 2, FlagSYN, now)
	if m, ok := tb.Template(1, 100, now); !ok || m != 2 || tb.Active(2) != 101 {
		t.Fatalf("Template = %d, %v, Active(2) = %d; want 2, true, 101", m, ok, tb.Active(2))
	}
	checkInvariants(t, tb)

	// Delete and SetMember keep Active exact.
	k := Key{Src: 0, Dst: 100, SPort: 0, Proto: ProtoTCP}
	if !tb.SetMember(k, 1) || tb.Active(0) != 99 || tb.Active(1) != 101 {
		t.Fatal("SetMember did not move the Active count")
	}
	if m, _ := tb.Touch(k, FlagACK, now); m != 1 {
		t.Fatalf("Touch after SetMember = %d", m)
	}
	if tb.SetMember(Key{Src: 77}, 1) || tb.SetMember(k, MaxMember+1) {
		t.Fatal("SetMember accepted a missing key or bad member")
	}
	if !tb.Delete(k) || tb.Delete(k) || tb.Active(1) != 100 {
		t.Fatal("Delete did not adjust Active once")
	}
	checkInvariants(t, tb)
	// Expire (all SYN_RECV) brings every count to zero.
	f, _ := tb.Expire(now + int64(DefaultTimeouts().TCPSynRecv) + tickNs)
	if f != 300 || tb.Active(0) != 0 || tb.Active(1) != 0 || tb.Active(2) != 0 {
		t.Fatalf("Expire removed %d; Active %d %d %d", f, tb.Active(0), tb.Active(1), tb.Active(2))
	}
	checkInvariants(t, tb)
}

func TestTickWrap(t *testing.T) {
	tb := New(Config{Persistence: 10 * time.Second})
	// Start two seconds before the 32-bit tick counter wraps.
	start := (int64(1)<<32)<<tickShift - 2*sec
	k := Key{Src: 1, Dst: 2, Proto: ProtoICMP}
	mustInsert(t, tb, k, 6, 0, start)
	if _, ok := tb.Touch(k, 0, start+30*sec); !ok {
		t.Fatal("flow lost across the tick wrap")
	}
	e, _ := entry(t, tb, k)
	if want := start + 30*sec + int64(DefaultTimeouts().ICMP); e.Expires < want || e.Expires > want+tickNs {
		t.Fatalf("Expires across wrap = %d, want %d", e.Expires, want)
	}
	if f, _ := tb.Expire(start + 89*sec); f != 0 {
		t.Fatal("expired early across wrap")
	}
	if f, _ := tb.Expire(start + 91*sec); f != 1 {
		t.Fatal("not expired across wrap")
	}
	if _, ok := tb.Template(1, 2, start+100*sec); !ok {
		t.Fatal("template lost across wrap")
	}
	if _, tm := tb.Expire(start + 102*sec); tm != 1 {
		t.Fatal("template not expired across wrap")
	}
}

func TestStateString(t *testing.T) {
	want := []string{"SYN_RECV", "ESTABLISHED", "CLOSING", "CLOSE", "UDP", "ICMP", "OTHER"}
	for i, w := range want {
		if got := State(i).String(); got != w {
			t.Errorf("State(%d) = %q, want %q", i, got, w)
		}
	}
	if got := State(42).String(); got != "State(42)" {
		t.Errorf("State(42) = %q", got)
	}
}

func TestConfigDefaults(t *testing.T) {
	for _, c := range []struct{ in, want int }{{0, 256}, {1, 1}, {3, 4}, {256, 256}, {300, 512}} {
		if got := len(New(Config{shards: c.in}).shards); got != c.want {
			t.Errorf("shards %d -> %d, want %d", c.in, got, c.want)
		}
	}
	if New(Config{}).max != 1<<20 {
		t.Error("MaxEntries default is not 1<<20")
	}
}

func TestKeyPackRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 1000; i++ {
		k := Key{Src: r.Uint32(), Dst: r.Uint32(), SPort: uint16(r.Uint32()), DPort: uint16(r.Uint32()), Proto: uint8(r.Uint32())}
		if got := k.pack().unpack(); got != k {
			t.Fatalf("pack/unpack %+v -> %+v", k, got)
		}
	}
}

func TestTouchAllocs(t *testing.T) {
	tb := New(Config{Persistence: time.Second})
	k := tcpKey(5)
	mustInsert(t, tb, k, 1, FlagSYN, t0)
	now := t0
	allocs := testing.AllocsPerRun(1000, func() {
		now += tickNs
		tb.Touch(k, FlagACK, now)
		tb.Touch(tcpKey(6), FlagACK, now) // a miss
		tb.Template(1, 2, now)
	})
	if allocs != 0 {
		t.Fatalf("Touch/Template allocate %v times per run", allocs)
	}
}

// TestConcurrentStress runs the fast-path calls and sync imports from
// several goroutines against Expire, Delete and both Ranges,
// then checks every count and that the insert hook saw each successful
// Insert exactly once.
func TestConcurrentStress(t *testing.T) {
	tb := New(Config{shards: 8, MaxEntries: 3000, Persistence: 2 * time.Second,
		Timeouts: Timeouts{TCPSynRecv: time.Second, TCPEstablished: 5 * time.Second,
			TCPClosing: 2 * time.Second, UDP: 3 * time.Second}})
	var inserted, hooked atomic.Int64
	tb.SetOnInsert(func(k Key, member uint32, state State) {
		if member >= 8 || !validState(k.Proto, state) {
			t.Errorf("hook got member %d state %v for %+v", member, state, k)
		}
		hooked.Add(1)
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
			r := rand.New(rand.NewPCG(seed, 7))
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := tick()
				k := Key{Src: r.Uint32N(64), Dst: 1, SPort: uint16(r.Uint32N(64)), Proto: []uint8{ProtoTCP, ProtoUDP}[r.IntN(2)]}
				flags := []uint8{FlagSYN, FlagACK, FlagFIN, FlagRST}[r.IntN(4)]
				if _, ok := tb.Touch(k, flags, n); !ok {
					m, ok := tb.Template(k.Src, k.Dst, n)
					if !ok {
						m = r.Uint32N(8)
					}
					err := tb.Insert(k, m, flags, n)
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
				case 2, 3, 4, 5:
					// A sync update, possibly for a key another
					// goroutine is inserting or deleting right now.
					st := firstState(k.Proto, []uint8{FlagSYN, FlagACK, FlagFIN, FlagRST}[r.IntN(4)])
					exp := n + int64(r.IntN(20))*int64(500*time.Millisecond) - sec
					err := tb.Import(k, r.Uint32N(8), st, exp, n)
					if err != nil && !errors.Is(err, ErrFull) {
						t.Errorf("Import: %v", err)
						return
					}
				case 6:
					exp := n + int64(r.IntN(8))*int64(500*time.Millisecond)
					err := tb.ImportTemplate(k.Src, k.Dst, r.Uint32N(8), exp, n)
					if err != nil && !errors.Is(err, ErrFull) {
						t.Errorf("ImportTemplate: %v", err)
						return
					}
				}
			}
		}(uint64(w))
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			tb.Expire(tick())
			tb.Range(func(Key, Entry) bool { return true })
			tb.RangeTemplates(func(_, _ uint32, e Entry) bool {
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
	if inserted.Load() != hooked.Load() {
		t.Fatalf("%d successful Inserts, hook called %d times", inserted.Load(), hooked.Load())
	}
	f, _ := tb.Len()
	t.Logf("flows at end: %d; %d inserts", f, inserted.Load())
	tb.Expire(tick() + 3600*sec)
	if f, tm := tb.Len(); f != 0 || tm != 0 {
		t.Fatalf("after expiring everything Len = %d, %d", f, tm)
	}
	checkInvariants(t, tb)
}

// fuzzPortTimeouts gives the fuzzed TCP flows (all to port 0) an
// established timeout of their own, shorter than the fuzzer's time steps
// reach, and leaves UDP flows at the defaults, so both a port class and the
// default class are exercised.
var fuzzPortTimeouts = []PortTimeout{{Proto: ProtoTCP, Port: 0, Timeout: 3 * time.Second}}

// FuzzOps runs a byte-coded sequence of operations on a small table and
// checks the accounting invariants after each one, and for sync imports
// what Range and Template then report.
func FuzzOps(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11})
	f.Add([]byte{0, 0x12, 0, 0x34, 5, 0x56, 6, 0x78, 7, 0x9a, 0, 0xbc, 0xde, 6, 0xff})
	f.Add([]byte{8, 0x21, 9, 0x41, 98, 0x21, 0, 0x21, 6, 0x40, 5, 0, 248, 0x35, 9, 0x13, 169, 0x62, 6, 0xff, 5, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		tb := New(Config{shards: 2, MaxEntries: 12, Persistence: 5 * time.Second,
			Timeouts:     Timeouts{TCPSynRecv: 2 * time.Second, TCPClose: time.Second},
			PortTimeouts: fuzzPortTimeouts})
		var inserted, hooked int
		tb.SetOnInsert(func(Key, uint32, State) { hooked++ })
		now := t0
		for i := 0; i+1 < len(ops); i += 2 {
			op, arg := ops[i], ops[i+1]
			k := Key{Src: uint32(arg & 3), Dst: 1, SPort: uint16(arg >> 2 & 3), Proto: []uint8{ProtoTCP, ProtoUDP}[arg>>4&1]}
			member := uint32(arg >> 5)
			sel := op / 10
			flags := []uint8{FlagSYN, FlagACK, FlagFIN, FlagRST, 0, FlagSYN | FlagACK, FlagFIN | FlagACK, FlagRST | FlagACK}[sel&7]
			// Import lifetimes: already over, short, beyond the short
			// timeouts, and absurd (must be clamped).
			life := []int64{-sec, sec, 4 * sec, 1 << 60}[sel>>3&3]
			switch op % 10 {
			case 0:
				err := tb.Insert(k, member, flags, now)
				if err != nil && !errors.Is(err, ErrFull) && !errors.Is(err, ErrExists) {
					t.Fatal(err)
				}
				if err == nil {
					inserted++
					if m, ok := tb.Touch(k, 0, now); !ok || m != member {
						t.Fatalf("inserted flow reads back as %d, %v", m, ok)
					}
				}
			case 1:
				tb.Touch(k, flags, now)
			case 2:
				tb.Delete(k)
			case 3:
				tb.SetMember(k, member)
			case 4:
				// Active counts exactly the member's flows (checkMembers
				// below checks every member's count too).
				n := int64(0)
				tb.Range(func(_ Key, e Entry) bool {
					if e.Member == member {
						n++
					}
					return true
				})
				if got := tb.Active(member); got != n {
					t.Fatalf("Active(%d) = %d, Range holds %d", member, got, n)
				}
			case 5:
				tb.Expire(now)
				tb.Range(func(k Key, e Entry) bool {
					if e.Expires <= now-tickNs {
						t.Fatalf("%+v survived Expire: expires %d, now %d", k, e.Expires, now)
					}
					return true
				})
				// Expire advanced every shard to now, so RangeTemplates
				// judges liveness at now, as Template does.
				got := map[uint32]Entry{}
				tb.RangeTemplates(func(client, vip uint32, e Entry) bool {
					if vip != 1 || client > 3 {
						t.Fatalf("template %d/%d never made", client, vip)
					}
					got[client] = e
					return true
				})
				for c := uint32(0); c < 4; c++ {
					m, ok := tb.Template(c, 1, now)
					e, reported := got[c]
					if ok != reported || ok && (e.Member != m || e.Expires <= now) {
						t.Fatalf("client %d: Template %d, %v; RangeTemplates %+v, %v", c, m, ok, e, reported)
					}
				}
			case 6:
				now += int64(arg) * sec / 8
			case 7:
				tb.Template(k.Src, k.Dst, now)
			case 8:
				st := State(sel & 7)
				if k.Proto == ProtoUDP {
					st = []State{StateUDP, StateEstablished, State(numStates)}[min(sel&7, 2)]
				}
				fuzzImport(t, tb, k, member, st, now+life, now)
			case 9:
				before, wasLive := tb.Template(k.Src, k.Dst, now)
				if err := tb.ImportTemplate(k.Src, k.Dst, member, now+life, now); err != nil {
					t.Fatalf("ImportTemplate: %v", err)
				}
				m, ok := tb.Template(k.Src, k.Dst, now)
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
			t.Fatalf("%d successful Inserts, hook called %d times", inserted, hooked)
		}
	})
}

// fuzzImport imports k and checks the result against what was there before.
// The fuzzed table never runs out of templates, so a recorded flow's
// template must point at member afterwards.
func fuzzImport(t *testing.T, tb *Table, k Key, member uint32, st State, expires, now int64) {
	t.Helper()
	prev, had := entry(t, tb, k)
	had = had && prev.Expires > now // live, give or take the tick
	err := tb.Import(k, member, st, expires, now)
	if !validState(k.Proto, st) {
		if !errors.Is(err, ErrBadState) {
			t.Fatalf("Import(%v for proto %d) = %v, want ErrBadState", st, k.Proto, err)
		}
		return
	}
	if errors.Is(err, ErrFull) {
		if f, _ := tb.Len(); f < 12 {
			t.Fatalf("Import: ErrFull with %d flows", f)
		}
		return
	}
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	e, ok := entry(t, tb, k)
	if expires <= now {
		if ok != had && !(ok && e.Expires <= now) || ok && had && e != prev {
			t.Fatalf("Import of an ended flow changed %+v to %+v", prev, e)
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
	if m, ok := tb.Template(k.Src, k.Dst, now); !ok || m != member {
		t.Fatalf("template after Import = %d, %v; want %d", m, ok, member)
	}
}

// Shards fill whole cache lines, so no two shards' locks share one.
func TestShardCacheLinePadding(t *testing.T) {
	if sz := unsafe.Sizeof(shard{}); sz%64 != 0 {
		t.Errorf("shard is %d bytes, not a multiple of 64", sz)
	} else if st := unsafe.Sizeof(shardState{}); sz-st >= 64 {
		t.Errorf("shard is %d bytes for %d bytes of state: a whole line of pad", sz, st)
	}
}

// Each table keys its hash with its own random seed, so where a flow lands
// cannot be computed in advance (see the package comment on hash flooding):
// two tables place the same keys differently.
func TestHashSeededPerTable(t *testing.T) {
	a, b := New(Config{}), New(Config{})
	same := 0
	const n = 64
	for i := range n {
		k := Key{Src: 0x0a000000 | uint32(i), Dst: 0xc00002c8, SPort: uint16(1024 + i), DPort: 25, Proto: ProtoTCP}
		_, ha := flowShard(a, k.pack())
		_, hb := flowShard(b, k.pack())
		if ha == hb {
			same++
		}
	}
	if same == n {
		t.Errorf("all %d keys hash alike in two tables: the hash is not seeded", n)
	}
}
