package scheduler

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

// ipvsWRR is a deliberately naive model of the IPVS wrr state machine: a
// current weight cw that starts at the maximum, steps down by the gcd, and
// at each level walks the list picking members with weight ≥ cw.
type ipvsWRR struct {
	ms       []Member // weighted, in list order
	i        int      // last position picked, -1 before the first pick
	cw, g, m uint32
}

func newIPVSWRR(members []Member) *ipvsWRR {
	r := &ipvsWRR{ms: weighted(members), i: -1}
	for _, m := range r.ms {
		r.g = gcd(r.g, m.Weight)
		r.m = max(r.m, m.Weight)
	}
	r.cw = r.m
	return r
}

func (r *ipvsWRR) next() uint32 {
	for {
		for r.i+1 < len(r.ms) {
			r.i++
			if r.ms[r.i].Weight >= r.cw {
				return r.ms[r.i].ID
			}
		}
		r.i = -1
		r.cw -= r.g
		if r.cw == 0 {
			r.cw = r.m
		}
	}
}

func TestWRRMatchesIPVSSequence(t *testing.T) {
	rnd := rand.New(rand.NewPCG(11, 12))
	sets := [][]Member{
		{{ID: 1, Key: "a", Weight: 100}, {ID: 2, Key: "b", Weight: 50}},
		{{ID: 1, Key: "a", Weight: 4}, {ID: 2, Key: "b", Weight: 3}, {ID: 3, Key: "c", Weight: 2}},
		{{ID: 9, Key: "x", Weight: 6}, {ID: 8, Key: "y", Weight: 0}, {ID: 7, Key: "z", Weight: 9}},
		{{ID: 5, Key: "only", Weight: 7}},
	}
	for range 20 {
		n := 1 + rnd.IntN(40)
		ms := make([]Member, n)
		mult := uint32(1 + rnd.IntN(4)) // gcd > 1 sometimes
		for i := range ms {
			ms[i] = Member{ID: uint32(i), Key: fmt.Sprintf("198.51.100.%d", i), Weight: mult * uint32(rnd.IntN(12))}
		}
		sets = append(sets, ms)
	}
	for si, ms := range sets {
		ref := newIPVSWRR(ms)
		w := NewWRR(ms)
		if len(ref.ms) == 0 {
			if _, ok := w.Pick(0); ok {
				t.Fatalf("set %d: all weights zero but Pick ok", si)
			}
			continue
		}
		var period int
		for _, m := range ref.ms {
			period += int(m.Weight / ref.g)
		}
		for p := range 3*period + 7 {
			want := ref.next()
			got, ok := w.Pick(uint64(p))
			if !ok || got != want {
				t.Fatalf("set %d %v: pick %d = %d, %v; IPVS wrr gives %d", si, ms, p, got, ok, want)
			}
		}
	}
}

func TestWRRProportionsAndInterleave(t *testing.T) {
	ms := []Member{
		{ID: 10, Key: "192.0.2.1", Weight: 100},
		{ID: 20, Key: "192.0.2.2", Weight: 50},
		{ID: 30, Key: "192.0.2.3", Weight: 0},
	}
	w := NewWRR(ms)
	const rounds = 7
	counts := map[uint32]int{}
	run, longest, prev := 0, 0, uint32(0)
	for range rounds * 150 {
		id, ok := w.Pick(0)
		if !ok {
			t.Fatal("Pick not ok")
		}
		counts[id]++
		if id == prev {
			run++
		} else {
			run, prev = 1, id
		}
		longest = max(longest, run)
	}
	if counts[10] != rounds*100 || counts[20] != rounds*50 || counts[30] != 0 {
		t.Fatalf("counts over %d×Σw picks = %v, want 10:%d 20:%d 30:0", rounds, counts, rounds*100, rounds*50)
	}
	// ceil(w_max/w_min)+1 = 3 for 100/50.
	if longest > 3 {
		t.Fatalf("a member was picked %d times in a row, want ≤ 3", longest)
	}
	if w.Name() != "wrr" {
		t.Fatalf("Name = %q", w.Name())
	}
}

func TestWRRConcurrent(t *testing.T) {
	ms := []Member{
		{ID: 1, Key: "192.0.2.1", Weight: 5},
		{ID: 2, Key: "192.0.2.2", Weight: 3},
		{ID: 3, Key: "192.0.2.3", Weight: 2},
	}
	w := NewWRR(ms)
	const workers, per = 8, 2500 // 20000 picks = 2000 cycles of 10
	var mu sync.Mutex
	total := map[uint32]int{}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			local := map[uint32]int{}
			for range per {
				id, _ := w.Pick(0)
				local[id]++
			}
			mu.Lock()
			for id, c := range local {
				total[id] += c
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	cycles := workers * per / 10
	for _, m := range ms {
		if total[m.ID] != cycles*int(m.Weight) {
			t.Errorf("member %d picked %d times, want %d", m.ID, total[m.ID], cycles*int(m.Weight))
		}
	}
}

func TestWRROrderIndependent(t *testing.T) {
	ms := genMembers(200, 0, 30, 8)
	want := make([]uint32, 5000)
	a := NewWRR(ms)
	for i := range want {
		want[i], _ = a.Pick(0)
	}
	sh := slices.Clone(ms)
	slices.Reverse(sh)
	b := NewWRR(sh)
	for i := range want {
		if got, _ := b.Pick(0); got != want[i] {
			t.Fatalf("pick %d differs after reordering members: %d vs %d", i, got, want[i])
		}
	}
}

func BenchmarkWRRPick(b *testing.B) {
	w := NewWRR(genMembers(1000, 1, 1000, 2))
	b.ReportAllocs()
	for b.Loop() {
		w.Pick(0)
	}
}
