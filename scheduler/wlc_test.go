package scheduler

import (
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// naiveWLC finds the lowest (active+1)/weight with floating point and the
// first member in Key order on ties; used to cross-check WLC.Pick.
func naiveWLC(ms []Member, active map[uint32]int64) (uint32, bool) {
	best, found := uint32(0), false
	bestLoad := math.Inf(1)
	for _, m := range weighted(ms) {
		a := max(active[m.ID], 0)
		if l := float64(a+1) / float64(m.Weight); l < bestLoad {
			best, bestLoad, found = m.ID, l, true
		}
	}
	return best, found
}

func TestWLCPicksLeastLoaded(t *testing.T) {
	ms := []Member{
		{ID: 1, Key: "192.0.2.1", Weight: 1},
		{ID: 2, Key: "192.0.2.2", Weight: 2},
		{ID: 3, Key: "192.0.2.3", Weight: 4},
		{ID: 4, Key: "192.0.2.4", Weight: 0},
	}
	for _, tc := range []struct {
		name   string
		active map[uint32]int64
		want   uint32
	}{
		{"idle: heaviest", map[uint32]int64{}, 3},
		{"heaviest busy", map[uint32]int64{3: 8}, 2},          // 1/1, 1/2, 9/4 → 2
		{"tie 2 vs 3", map[uint32]int64{1: 5, 2: 1, 3: 3}, 2}, // 6, 2/2, 4/4 → first Key of 2, 3
		{"three-way tie", map[uint32]int64{2: 1, 3: 3}, 1},    // 1, 2/2, 4/4 → first Key
		{"quiescent idle", map[uint32]int64{1: 5, 2: 50, 3: 50}, 1},
		{"negative count", map[uint32]int64{1: -3, 2: 5, 3: 9}, 1}, // 1/1 < 6/2, 10/4
	} {
		s := NewWLC(ms, func(id uint32) int64 { return tc.active[id] })
		got, ok := s.Pick(0)
		if !ok || got != tc.want {
			t.Errorf("%s: Pick = %d, %v; want %d", tc.name, got, ok, tc.want)
		}
		if n, _ := naiveWLC(ms, tc.active); n != got {
			t.Errorf("%s: naive model picks %d, WLC %d", tc.name, n, got)
		}
	}
}

func TestWLCRandomAgainstModel(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 500 {
		ms := genMembers(1+r.IntN(30), 0, 20, r.Uint64())
		active := map[uint32]int64{}
		for _, m := range ms {
			active[m.ID] = int64(r.IntN(50)) - 2
		}
		got, ok := NewWLC(ms, func(id uint32) int64 { return active[id] }).Pick(0)
		want, wok := naiveWLC(ms, active)
		if ok != wok || got != want {
			t.Fatalf("members %v active %v: Pick = %d, %v; model %d, %v", ms, active, got, ok, want, wok)
		}
	}
}

func TestWLCHugeCounts(t *testing.T) {
	// (active+1)·weight exceeds 64 bits here; the comparison must not wrap.
	ms := []Member{
		{ID: 1, Key: "192.0.2.1", Weight: math.MaxUint32},
		{ID: 2, Key: "192.0.2.2", Weight: math.MaxUint32 - 1},
	}
	active := map[uint32]int64{1: math.MaxInt64 - 1, 2: math.MaxInt64 / 2}
	got, _ := NewWLC(ms, func(id uint32) int64 { return active[id] }).Pick(0)
	if got != 2 {
		t.Fatalf("Pick = %d, want 2 (about half the load per weight)", got)
	}
}

func TestWLCSpreadsByWeight(t *testing.T) {
	// Placing flows and counting them as active converges on shares
	// proportional to weight. Four workers race between Pick and the
	// increment, so each share may be off by up to about one flow per
	// worker; ±8 leaves room for that and still fails a wrong policy.
	ms := []Member{
		{ID: 1, Key: "192.0.2.1", Weight: 1},
		{ID: 2, Key: "192.0.2.2", Weight: 3},
		{ID: 3, Key: "192.0.2.3", Weight: 6},
	}
	var active [4]atomic.Int64
	s := NewWLC(ms, func(id uint32) int64 { return active[id].Load() })
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 250 {
				id, ok := s.Pick(0)
				if !ok {
					t.Error("Pick not ok")
					return
				}
				active[id].Add(1)
			}
		})
	}
	wg.Wait()
	for _, m := range ms {
		want := 1000 * int64(m.Weight) / 10
		if got := active[m.ID].Load(); got < want-8 || got > want+8 {
			t.Errorf("member %d (w=%d) got %d flows, want %d±8", m.ID, m.Weight, got, want)
		}
	}
}

func TestWLCEmpty(t *testing.T) {
	s := NewWLC([]Member{{ID: 1, Key: "192.0.2.1"}}, func(uint32) int64 { return 0 })
	if _, ok := s.Pick(0); ok {
		t.Fatal("only quiescent members, but Pick ok")
	}
	if s.Name() != "wlc" {
		t.Fatalf("Name = %q", s.Name())
	}
}

func BenchmarkWLCPick(b *testing.B) {
	ms := genMembers(100, 1, 10, 3)
	act := make([]int64, len(ms))
	s := NewWLC(ms, func(id uint32) int64 { return act[id] })
	b.ReportAllocs()
	for b.Loop() {
		s.Pick(0)
	}
}
