package conntrack

import (
	"errors"
	"math"
	"testing"
	"time"
)

// within fails unless got is want rounded up to the table's tick.
func within(t *testing.T, what string, got, want int64) {
	t.Helper()
	if got < want || got > want+tickNs {
		t.Fatalf("%s = want%+v, want within a tick above", what, time.Duration(got-want))
	}
}

func TestImportNewFlow(t *testing.T) {
	tb := New(Config{})
	hooked := 0
	tb.SetOnInsert(func(Key, uint32, State) { hooked++ })
	k := tcpKey(1)
	now := t0
	if err := tb.Import(k, 4, StateEstablished, now+100*sec, now); err != nil {
		t.Fatal(err)
	}
	e, ok := entry(t, tb, k)
	if !ok || e.Member != 4 || e.State != StateEstablished {
		t.Fatalf("imported flow reads back as %+v, %v", e, ok)
	}
	within(t, "Expires", e.Expires, now+100*sec)
	if f, _ := tb.Len(); f != 1 || tb.Active(4) != 1 {
		t.Fatalf("Len %d, Active(4) %d", f, tb.Active(4))
	}
	// It lives until the given expiry, not its state's full timeout.
	if _, ok := tb.Touch(k, 0, now+99*sec); !ok {
		t.Fatal("imported flow gone before its expiry")
	}
	k2 := tcpKey(2)
	if err := tb.Import(k2, 5, StateSynRecv, now+30*sec, now); err != nil {
		t.Fatal(err)
	}
	if f, _ := tb.Expire(now + 30*sec + tickNs); f != 1 {
		t.Fatalf("Expire after the imported expiry removed %d, want 1", f)
	}
	if hooked != 0 {
		t.Fatalf("Import called the insert hook %d times", hooked)
	}
	checkInvariants(t, tb)
}

func TestImportClampsAndIgnoresEnded(t *testing.T) {
	tb := New(Config{Persistence: time.Minute})
	to := DefaultTimeouts()
	now := t0
	cases := []struct {
		k  Key
		st State
		d  time.Duration
	}{
		{tcpKey(1), StateEstablished, to.TCPEstablished},
		{tcpKey(2), StateClose, to.TCPClose},
		{Key{Src: 7, Dst: 8, SPort: 53, DPort: 53, Proto: ProtoUDP}, StateUDP, to.UDP},
		{Key{Src: 7, Dst: 8, Proto: 47}, StateOther, to.Other},
	}
	for i, c := range cases {
		// A bogus remaining lifetime, up to the largest time there is.
		exp := []int64{now + 1e6*sec, math.MaxInt64}[i%2]
		if err := tb.Import(c.k, 1, c.st, exp, now); err != nil {
			t.Fatal(err)
		}
		expectLife(t, tb, c.k, c.st, now, c.d)
	}
	// Ended flows (expiry at or before now) are not recorded, and create no
	// template.
	for _, exp := range []int64{now, now - sec, math.MinInt64} {
		if err := tb.Import(tcpKey(9), 2, StateEstablished, exp, now); err != nil {
			t.Fatalf("Import(ended at now%+d) = %v", exp-now, err)
		}
	}
	if _, ok := entry(t, tb, tcpKey(9)); ok {
		t.Fatal("an ended flow was recorded")
	}
	if _, ok := tb.Template(tcpKey(9).Src, tcpKey(9).Dst, now); ok {
		t.Fatal("an ended flow created a template")
	}
	// Nor do they change a live flow.
	before, _ := entry(t, tb, tcpKey(1))
	if err := tb.Import(tcpKey(1), 3, StateClose, now-sec, now); err != nil {
		t.Fatal(err)
	}
	if after, _ := entry(t, tb, tcpKey(1)); after != before {
		t.Fatalf("an ended import changed %+v to %+v", before, after)
	}
	checkInvariants(t, tb)
}

func TestImportBadArgs(t *testing.T) {
	tb := New(Config{})
	tcp, udp := tcpKey(1), Key{Src: 1, Dst: 2, Proto: ProtoUDP}
	icmp, gre := Key{Src: 1, Dst: 2, Proto: ProtoICMP}, Key{Src: 1, Dst: 2, Proto: 47}
	bad := []struct {
		k  Key
		st State
	}{
		{udp, StateEstablished}, {udp, StateICMP}, {tcp, StateUDP}, {tcp, StateOther},
		{tcp, numStates}, {icmp, StateUDP}, {gre, StateSynRecv}, {gre, StateICMP},
	}
	for _, c := range bad {
		if err := tb.Import(c.k, 1, c.st, t0+sec, t0); !errors.Is(err, ErrBadState) {
			t.Errorf("Import(proto %d, %v) = %v, want ErrBadState", c.k.Proto, c.st, err)
		}
	}
	if err := tb.Import(tcp, MaxMember+1, StateEstablished, t0+sec, t0); !errors.Is(err, ErrBadMember) {
		t.Errorf("Import(bad member) = %v", err)
	}
	if f, _ := tb.Len(); f != 0 {
		t.Fatalf("refused imports recorded %d flows", f)
	}
	good := []struct {
		k  Key
		st State
	}{
		{tcp, StateSynRecv}, {udp, StateUDP}, {icmp, StateICMP}, {gre, StateOther},
	}
	for _, c := range good {
		if err := tb.Import(c.k, MaxMember, c.st, t0+sec, t0); err != nil {
			t.Errorf("Import(proto %d, %v) = %v", c.k.Proto, c.st, err)
		}
	}
	if tb.Active(MaxMember) != 4 {
		t.Fatalf("Active(MaxMember) = %d, want 4", tb.Active(MaxMember))
	}
	checkInvariants(t, tb)
}

func TestImportUpdatesLiveFlow(t *testing.T) {
	tb := New(Config{})
	to := DefaultTimeouts()
	k := tcpKey(3)
	now := t0
	mustInsert(t, tb, k, 1, FlagACK, now) // established, now+900 s
	// The sync says it moved to member 2 and is closing: member and state
	// follow, the later expiry (ours) stays.
	if err := tb.Import(k, 2, StateClosing, now+60*sec, now+sec); err != nil {
		t.Fatal(err)
	}
	e, _ := entry(t, tb, k)
	if e.Member != 2 || e.State != StateClosing {
		t.Fatalf("updated flow reads %+v", e)
	}
	within(t, "Expires", e.Expires, now+int64(to.TCPEstablished))
	if tb.Active(1) != 0 || tb.Active(2) != 1 {
		t.Fatalf("Active(1) %d Active(2) %d", tb.Active(1), tb.Active(2))
	}
	// A later expiry extends it (clamped to the new state's timeout).
	now += 850 * sec
	if err := tb.Import(k, 2, StateClosing, now+1000*sec, now); err != nil {
		t.Fatal(err)
	}
	expectLife(t, tb, k, StateClosing, now, to.TCPClosing)
	if f, _ := tb.Len(); f != 1 {
		t.Fatalf("Len = %d after updates", f)
	}
	// Touch continues from the imported state: a SYN on a closing flow
	// reopens it on the same member.
	if m, ok := tb.Touch(k, FlagSYN, now); !ok || m != 2 {
		t.Fatalf("Touch = %d, %v", m, ok)
	}
	expectLife(t, tb, k, StateSynRecv, now, to.TCPSynRecv)
	checkInvariants(t, tb)
}

func TestImportFull(t *testing.T) {
	const max = 8
	tb := New(Config{MaxEntries: max, shards: 2, Persistence: time.Minute})
	// Established flows, which a full table never evicts (evict.go).
	for i := uint32(0); i < max; i++ {
		mustInsert(t, tb, Key{Src: i, Dst: 1, Proto: ProtoTCP}, 0, 0, t0)
	}
	newKey := Key{Src: 100, Dst: 1, Proto: ProtoTCP}
	if err := tb.Import(newKey, 1, StateEstablished, t0+sec, t0); !errors.Is(err, ErrFull) {
		t.Fatalf("Import into a full table = %v, want ErrFull", err)
	}
	if _, ok := tb.Template(100, 1, t0); ok {
		t.Fatal("a refused import created a template")
	}
	// Refreshing a flow the table holds needs no room.
	if err := tb.Import(Key{Src: 3, Dst: 1, Proto: ProtoTCP}, 5, StateEstablished, t0+10*sec, t0+sec); err != nil {
		t.Fatalf("refresh in a full table = %v", err)
	}
	if m, _ := tb.Template(3, 1, t0+sec); m != 5 || tb.Active(5) != 1 {
		t.Fatalf("refresh did not move flow and template: template %d, Active(5) %d", m, tb.Active(5))
	}
	tb.Delete(Key{Src: 0, Dst: 1, Proto: ProtoTCP})
	if err := tb.Import(newKey, 1, StateEstablished, t0+sec, t0); err != nil {
		t.Fatalf("Import after a Delete made room = %v", err)
	}
	checkInvariants(t, tb)
}

func TestImportPersistence(t *testing.T) {
	const p = 15 * time.Second
	tb := New(Config{Persistence: p})
	client, vip := uint32(0xc0000201), uint32(0xc6336401)
	k1 := Key{Src: client, Dst: vip, SPort: 1000, DPort: 80, Proto: ProtoTCP}
	k2 := Key{Src: client, Dst: vip, SPort: 1001, DPort: 80, Proto: ProtoTCP}
	now := t0
	if err := tb.Import(k1, 3, StateEstablished, now+100*sec, now); err != nil {
		t.Fatal(err)
	}
	if m, ok := tb.Template(client, vip, now); !ok || m != 3 {
		t.Fatalf("Template after Import = %d, %v; want 3", m, ok)
	}
	// A second flow of the pair takes a second reference and, as Insert
	// does, points the template at its member.
	if err := tb.Import(k2, 4, StateEstablished, now+50*sec, now); err != nil {
		t.Fatal(err)
	}
	if m, _ := tb.Template(client, vip, now); m != 4 {
		t.Fatalf("Template = %d, want 4", m)
	}
	checkInvariants(t, tb) // two references on one template
	// Updating a flow re-points its template without a new reference.
	if err := tb.Import(k1, 5, StateEstablished, now+100*sec, now+sec); err != nil {
		t.Fatal(err)
	}
	if m, _ := tb.Template(client, vip, now+sec); m != 5 {
		t.Fatalf("Template after update = %d, want 5", m)
	}
	checkInvariants(t, tb)
	if _, tm := tb.Len(); tm != 1 {
		t.Fatalf("templates = %d, want 1", tm)
	}
	// The template outlives its flows by p, counted from when the last
	// imported flow expires.
	tb.Delete(k2)
	if f, _ := tb.Expire(now + 100*sec + tickNs); f != 1 {
		t.Fatalf("Expire removed %d flows, want 1", f)
	}
	if m, ok := tb.Template(client, vip, now+100*sec+int64(p)-sec); !ok || m != 5 {
		t.Fatal("template gone within p of its last imported flow")
	}
	if _, tm := tb.Expire(now + 100*sec + int64(p) + 2*tickNs); tm != 1 {
		t.Fatalf("Expire removed %d templates, want 1", tm)
	}
	checkInvariants(t, tb)
}

func TestImportReplacesExpired(t *testing.T) {
	tb := New(Config{Persistence: 10 * time.Second})
	k := Key{Src: 1, Dst: 2, SPort: 3, DPort: 4, Proto: ProtoUDP}
	mustInsert(t, tb, k, 1, 0, t0)
	later := t0 + int64(DefaultTimeouts().UDP) + tickNs // expired, not swept
	if err := tb.Import(k, 2, StateUDP, later+sec, later); err != nil {
		t.Fatal(err)
	}
	if m, ok := tb.Touch(k, 0, later); !ok || m != 2 {
		t.Fatalf("Touch after replace = %d, %v", m, ok)
	}
	if f, tm := tb.Len(); f != 1 || tm != 1 || tb.Active(1) != 0 || tb.Active(2) != 1 {
		t.Fatalf("Len %d, %d; Active(1) %d Active(2) %d", f, tm, tb.Active(1), tb.Active(2))
	}
	if m, _ := tb.Template(1, 2, later); m != 2 {
		t.Fatalf("Template = %d, want 2", m)
	}
	checkInvariants(t, tb)
}

func TestImportTemplate(t *testing.T) {
	if err := New(Config{}).ImportTemplate(1, 2, 3, t0+sec, t0); !errors.Is(err, ErrNoPersistence) {
		t.Fatalf("ImportTemplate without persistence = %v", err)
	}
	const p = 30 * time.Second
	tb := New(Config{Persistence: p, MaxEntries: 3, shards: 2})
	now := t0
	if err := tb.ImportTemplate(1, 9, MaxMember+1, now+sec, now); !errors.Is(err, ErrBadMember) {
		t.Fatalf("ImportTemplate(bad member) = %v", err)
	}
	if err := tb.ImportTemplate(1, 9, 7, now+10*sec, now); err != nil {
		t.Fatal(err)
	}
	if m, ok := tb.Template(1, 9, now+10*sec-1); !ok || m != 7 {
		t.Fatalf("Template = %d, %v; want 7", m, ok)
	}
	if _, ok := tb.Template(1, 9, now+10*sec+tickNs); ok {
		t.Fatal("imported template outlived its expiry")
	}
	// An earlier expiry does not shorten it; a member change re-points it.
	if err := tb.ImportTemplate(1, 9, 8, now+sec, now); err != nil {
		t.Fatal(err)
	}
	if m, ok := tb.Template(1, 9, now+10*sec-1); !ok || m != 8 {
		t.Fatalf("Template = %d, %v; want 8 until the later expiry", m, ok)
	}
	// A bogus expiry is clamped to p.
	if err := tb.ImportTemplate(2, 9, 1, math.MaxInt64, now); err != nil {
		t.Fatal(err)
	}
	if _, ok := tb.Template(2, 9, now+int64(p)+tickNs); ok {
		t.Fatal("imported template outlived p")
	}
	// An already lapsed template is not recorded.
	if err := tb.ImportTemplate(3, 9, 1, now, now); err != nil {
		t.Fatal(err)
	}
	if _, tm := tb.Len(); tm != 2 {
		t.Fatalf("templates = %d, want 2", tm)
	}
	// Imported templates take no flow reference; they steer Insert's caller
	// and an Insert then holds them as usual.
	checkInvariants(t, tb)
	mustInsert(t, tb, Key{Src: 2, Dst: 9, Proto: ProtoICMP}, 1, 0, now)
	checkInvariants(t, tb)
	// The template table is bounded by MaxEntries.
	if err := tb.ImportTemplate(4, 9, 1, now+sec, now); err != nil {
		t.Fatal(err)
	}
	if err := tb.ImportTemplate(5, 9, 1, now+sec, now); !errors.Is(err, ErrFull) {
		t.Fatalf("ImportTemplate beyond MaxEntries = %v, want ErrFull", err)
	}
	// A lapsed template not yet swept is replaced, not extended.
	later := now + 20*sec
	if err := tb.ImportTemplate(1, 9, 6, later+5*sec, later); err != nil {
		t.Fatal(err)
	}
	if m, ok := tb.Template(1, 9, later+5*sec-1); !ok || m != 6 {
		t.Fatalf("Template = %d, %v; want 6", m, ok)
	}
	if _, ok := tb.Template(1, 9, later+5*sec+tickNs); ok {
		t.Fatal("replaced template outlived its new expiry")
	}
	checkInvariants(t, tb)
}

func TestRangeTemplates(t *testing.T) {
	tb := New(Config{})
	tb.RangeTemplates(func(uint32, uint32, Entry) bool {
		t.Fatal("template reported without persistence")
		return false
	})
	const p = 20 * time.Second
	tb = New(Config{Persistence: p})
	now := t0
	held := Key{Src: 1, Dst: 9, SPort: 5, Proto: ProtoTCP}
	mustInsert(t, tb, held, 1, FlagACK, now) // template 1/9 held
	if err := tb.ImportTemplate(2, 9, 2, now+5*sec, now); err != nil {
		t.Fatal(err) // idle, live until now+5 s
	}
	if err := tb.ImportTemplate(3, 9, 3, now+sec, now); err != nil {
		t.Fatal(err) // idle, lapses first
	}
	now += 2 * sec
	tb.Touch(held, FlagACK, now) // the table has now seen now
	got := map[uint32]Entry{}
	tb.RangeTemplates(func(client, vip uint32, e Entry) bool {
		if vip != 9 {
			t.Fatalf("vip = %d", vip)
		}
		got[client] = e
		return true
	})
	if len(got) != 2 {
		t.Fatalf("RangeTemplates reported %v, want clients 1 and 2", got)
	}
	if e := got[1]; e.Member != 1 || e.State != 0 || e.Expires < now+int64(p) {
		t.Fatalf("held template: %+v, want member 1 and Expires at least now+p", e)
	}
	within(t, "idle template Expires", got[2].Expires, t0+5*sec)
	if got[2].Member != 2 {
		t.Fatalf("idle template member %d", got[2].Member)
	}
	// fn returning false stops the walk.
	n := 0
	tb.RangeTemplates(func(uint32, uint32, Entry) bool { n++; return false })
	if n != 1 {
		t.Fatalf("RangeTemplates went on for %d calls after false", n)
	}
}

// TestSyncRoundTrip replicates a table the way connsync does: the sender's
// Range and RangeTemplates give absolute expiries in its clock, the lifetime
// left travels, and the receiver imports it against its own clock, here one
// that is about to wrap the tick counter.
func TestSyncRoundTrip(t *testing.T) {
	const p = 15 * time.Second
	src := New(Config{Persistence: p})
	dst := New(Config{Persistence: p})
	nowA := t0
	for i := uint32(0); i < 50; i++ {
		k := Key{Src: 0xc0000200 + i%7, Dst: 0xc6336401, SPort: uint16(1000 + i), DPort: 443, Proto: ProtoTCP}
		flags := []uint8{FlagSYN, FlagACK, FlagFIN, FlagRST}[i%4]
		mustInsert(t, src, k, i%5, flags, nowA+int64(i)*sec)
	}
	mustInsert(t, src, Key{Src: 77, Dst: 0xc6336401, Proto: ProtoUDP}, 4, 0, nowA+50*sec)
	src.Delete(Key{Src: 77, Dst: 0xc6336401, Proto: ProtoUDP}) // an idle template
	nowA += 55 * sec
	src.Expire(nowA)

	nowB := (int64(1)<<32)<<tickShift - 100*sec
	type flow struct {
		k Key
		e Entry
	}
	var flows []flow
	src.Range(func(k Key, e Entry) bool {
		flows = append(flows, flow{k, e})
		return true
	})
	if len(flows) == 0 {
		t.Fatal("nothing to replicate")
	}
	for _, f := range flows {
		if err := dst.Import(f.k, f.e.Member, f.e.State, nowB+(f.e.Expires-nowA), nowB); err != nil {
			t.Fatal(err)
		}
	}
	type tmpl struct{ client, vip uint32 }
	tmpls := map[tmpl]Entry{}
	src.RangeTemplates(func(client, vip uint32, e Entry) bool {
		tmpls[tmpl{client, vip}] = e
		return true
	})
	if _, ok := tmpls[tmpl{77, 0xc6336401}]; !ok {
		t.Fatal("idle template not reported")
	}
	for tk, e := range tmpls {
		if err := dst.ImportTemplate(tk.client, tk.vip, e.Member, nowB+(e.Expires-nowA), nowB); err != nil {
			t.Fatal(err)
		}
	}
	// Same flows, members, states and remaining lifetimes (within a tick
	// of rounding each way), and the same templates.
	n := 0
	dst.Range(func(k Key, e Entry) bool {
		n++
		var want Entry
		for _, f := range flows {
			if f.k == k {
				want = f.e
			}
		}
		if e.Member != want.Member || e.State != want.State {
			t.Fatalf("%+v replicated as %+v, want %+v", k, e, want)
		}
		if d := (e.Expires - nowB) - (want.Expires - nowA); d < -tickNs || d > tickNs {
			t.Fatalf("%+v lifetime off by %v", k, time.Duration(d))
		}
		return true
	})
	if n != len(flows) {
		t.Fatalf("replica holds %d flows, want %d", n, len(flows))
	}
	for tk, e := range tmpls {
		if m, ok := dst.Template(tk.client, tk.vip, nowB); !ok || m != e.Member {
			t.Fatalf("template %+v replicated as %d, %v; want %d", tk, m, ok, e.Member)
		}
	}
	for m := uint32(0); m < 5; m++ {
		if src.Active(m) != dst.Active(m) {
			t.Fatalf("Active(%d): source %d, replica %d", m, src.Active(m), dst.Active(m))
		}
	}
	checkInvariants(t, dst)
	// Across the wrap the replica expires like the source.
	dst.Expire(nowB + 1000*sec)
	if f, tm := dst.Len(); f != 0 || tm != 0 {
		t.Fatalf("replica left %d flows, %d templates after all expired", f, tm)
	}
}

func TestOnInsertHook(t *testing.T) {
	tb := New(Config{MaxEntries: 2, Persistence: time.Second})
	type call struct {
		k      Key
		member uint32
		state  State
		tmpl   uint32
	}
	var calls []call
	tb.SetOnInsert(func(k Key, member uint32, state State) {
		// Locks are released, so the hook may look at the table.
		m, _ := tb.Template(k.Src, k.Dst, t0)
		calls = append(calls, call{k, member, state, m})
	})
	k := tcpKey(1)
	mustInsert(t, tb, k, 3, FlagSYN, t0)
	if len(calls) != 1 || calls[0] != (call{k, 3, StateSynRecv, 3}) {
		t.Fatalf("hook calls %+v", calls)
	}
	tb.Insert(k, 4, FlagSYN, t0)                   // ErrExists
	tb.Insert(tcpKey(2), MaxMember+1, FlagSYN, t0) // ErrBadMember
	mustInsert(t, tb, tcpKey(3), 1, FlagACK, t0)
	// Both flows established: the full table refuses the next one, as it
	// never evicts established flows.
	tb.Touch(k, FlagACK, t0)
	tb.Insert(tcpKey(4), 1, FlagSYN, t0)                  // ErrFull
	tb.Import(tcpKey(5), 1, StateEstablished, t0+sec, t0) // never hooked
	if len(calls) != 2 || calls[1].k != tcpKey(3) || calls[1].state != StateEstablished {
		t.Fatalf("hook calls %+v", calls)
	}
	tb.SetOnInsert(nil)
	tb.Delete(k)
	mustInsert(t, tb, k, 3, FlagSYN, t0)
	if len(calls) != 2 {
		t.Fatal("hook called after SetOnInsert(nil)")
	}
}

func TestInsertHookAllocs(t *testing.T) {
	for _, hook := range []bool{false, true} {
		tb := New(Config{})
		n := 0
		if hook {
			tb.SetOnInsert(func(Key, uint32, State) { n++ })
		}
		k := tcpKey(1)
		now := t0
		// Insert then Delete the same flow: the slot array is already
		// grown, so any allocation would be the hook's.
		mustInsert(t, tb, k, 1, FlagSYN, now)
		tb.Delete(k)
		allocs := testing.AllocsPerRun(1000, func() {
			now += tickNs
			if err := tb.Insert(k, 1, FlagSYN, now); err != nil {
				t.Fatal(err)
			}
			tb.Delete(k)
		})
		if allocs != 0 {
			t.Fatalf("hook %v: Insert allocates %v times per run", hook, allocs)
		}
		if hook && n != 1002 {
			t.Fatalf("hook called %d times, want 1002", n)
		}
	}
}

// TestImportRecordRace drives the path Import takes when another goroutine
// records k between Import's first look and its insertion: record finds k
// live and must update it, keeping exactly one template reference.
func TestImportRecordRace(t *testing.T) {
	const vip = 9
	tb := New(Config{Persistence: time.Minute, MaxEntries: 3, shards: 1})
	now := t0
	k1 := Key{Src: 1, Dst: vip, Proto: ProtoTCP}
	k3 := Key{Src: 3, Dst: vip, Proto: ProtoTCP}
	mustInsert(t, tb, k1, 1, FlagACK, now) // holds template 1
	for _, c := range []uint32{2, 4} {
		if err := tb.ImportTemplate(c, vip, 1, now+sec, now); err != nil {
			t.Fatal(err)
		}
	}
	mustInsert(t, tb, k3, 1, FlagACK, now) // no room: no template
	if _, ok := tb.Template(k3.Src, vip, now); ok {
		t.Fatal("template created beyond MaxEntries")
	}
	now += 2 * sec
	if _, tm := tb.Expire(now); tm != 2 {
		t.Fatalf("Expire removed %d templates, want 2", tm)
	}
	for i, k := range []Key{k1, k3} {
		member := uint32(5 + i)
		if err := (v4{tb}).record(k.pack(), member, StateClosing, 0, expiryTick(now, sec), now, true); err != nil {
			t.Fatalf("record(%+v, update) = %v", k, err)
		}
		if e, _ := entry(t, tb, k); e.Member != member || e.State != StateClosing {
			t.Fatalf("%+v reads %+v after the racing import", k, e)
		}
		if m, ok := tb.Template(k.Src, vip, now); !ok || m != member {
			t.Fatalf("template of %+v = %d, %v; want %d", k, m, ok, member)
		}
		checkInvariants(t, tb) // one reference each, k3's newly taken
	}
	if f, tm := tb.Len(); f != 2 || tm != 2 {
		t.Fatalf("Len = %d, %d; want 2, 2", f, tm)
	}
}
