package conntrack

import (
	"testing"
	"time"
)

// TestTouchHash checks that TouchHash with PrefetchHash's hash finds exactly what Touch finds,
// and that a hash of another key only misses (the fast path guards against that by comparing
// keys, but the table must stay sound regardless).
func TestTouchHash(t *testing.T) {
	tb := New(Config{})
	for n := uint32(0); n < 200; n++ {
		mustInsert(t, tb, tcpKey(n), n%7, FlagSYN, t0)
	}
	for n := uint32(0); n < 300; n++ {
		k := tcpKey(n)
		h := tb.PrefetchHash(k)
		gotM, gotOK := tb.TouchHash(k, h, FlagACK, t0+sec)
		wantM, wantOK := tb.Touch(k, FlagACK, t0+sec)
		if gotM != wantM || gotOK != wantOK {
			t.Fatalf("key %d: TouchHash = %d, %v; Touch = %d, %v", n, gotM, gotOK, wantM, wantOK)
		}
		if n < 200 && (!gotOK || gotM != n%7) {
			t.Fatalf("key %d: TouchHash = %d, %v, want %d, true", n, gotM, gotOK, n%7)
		}
	}
	// The hash of another key: a miss (or, if both keys share a shard and a probe run, still
	// the right flow, since slots are compared by key), never another flow's member.
	for n := uint32(0); n < 200; n++ {
		other := tb.PrefetchHash(tcpKey(n + 1))
		if m, ok := tb.TouchHash(tcpKey(n), other, FlagACK, t0+sec); ok && m != n%7 {
			t.Fatalf("key %d with key %d's hash found member %d", n, n+1, m)
		}
	}
	if f, _ := tb.Len(); f != 200 {
		t.Fatalf("%d flows after the lookups, want 200", f)
	}
}

func TestPrefetchHashAllocs(t *testing.T) {
	tb := New(Config{})
	k := tcpKey(5)
	mustInsert(t, tb, k, 1, FlagSYN, t0)
	now := t0
	allocs := testing.AllocsPerRun(1000, func() {
		now += tickNs
		tb.TouchHash(k, tb.PrefetchHash(k), FlagACK, now)
	})
	if allocs != 0 {
		t.Fatalf("PrefetchHash/TouchHash allocate %v times per run", allocs)
	}
}

// countTemplates counts the live templates per member by walking them, the way status did before
// Templates existed.
func countTemplates(tb *Table) map[uint32]int64 {
	m := map[uint32]int64{}
	tb.RangeTemplates(func(_, _ uint32, e Entry) bool { m[e.Member]++; return true })
	tb.RangeTemplates6(func(_, _ [16]byte, e Entry) bool { m[e.Member]++; return true })
	return m
}

func checkTemplates(t *testing.T, tb *Table, members uint32) {
	t.Helper()
	want := countTemplates(tb)
	for m := uint32(0); m <= members; m++ {
		if got := tb.Templates(m); got != want[m] {
			t.Errorf("Templates(%d) = %d, RangeTemplates counts %d", m, got, want[m])
		}
	}
}

// TestTemplatesPerMember follows the per-member template counts through every way a template is
// created, re-pointed and removed, against a walk of the templates.
func TestTemplatesPerMember(t *testing.T) {
	const persist = 10 * time.Second
	tb := New(Config{Persistence: persist})
	// tcpKey has 256 clients; flows n and n+256 share a template.
	for n := uint32(0); n < 40; n++ {
		mustInsert(t, tb, tcpKey(n), n%3, FlagSYN, t0)
		mustInsert6(t, tb, tcpKey6(n), n%3, FlagSYN, t0)
	}
	checkTemplates(t, tb, 3)
	if got := tb.Templates(0); got != 2*14 {
		t.Fatalf("Templates(0) = %d, want 28", got)
	}
	// A flow of an existing client scheduled elsewhere re-points its template (IPVS).
	mustInsert(t, tb, tcpKey(256), 2, FlagSYN, t0) // client of tcpKey(0), member 0 before
	checkTemplates(t, tb, 3)
	// A synced template: created, and re-pointed.
	if err := tb.ImportTemplate(0x0a000001, 0xc6336401, 1, t0+sec, t0); err != nil {
		t.Fatal(err)
	}
	if err := tb.ImportTemplate(0xc0000201, 0xc6336401, 0, t0+sec, t0); err != nil {
		t.Fatal(err)
	}
	checkTemplates(t, tb, 3)
	if got := tb.Templates(MaxMember + 1); got != 0 {
		t.Fatalf("Templates(MaxMember+1) = %d", got)
	}
	// Flows end, then the persistence period passes: every template goes.
	end := t0 + int64(time.Hour)
	tb.Expire(end)
	tb.Expire(end + int64(persist) + sec)
	checkTemplates(t, tb, 3)
	for m := uint32(0); m <= 3; m++ {
		if got := tb.Templates(m); got != 0 {
			t.Fatalf("Templates(%d) = %d after expiry, want 0", m, got)
		}
	}
}
