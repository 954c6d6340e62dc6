package conntrack

import (
	"math/rand/v2"
	"testing"
)

// TestFlowTabModel drives flowTab against a Go map through growth, deletion
// with backward shifts, sweeps and shrinking, with a tiny hash range so
// clusters are long and wrap around the array.
func TestFlowTabModel(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	var ft flowTab
	model := map[[2]uint64]uint32{}
	check := func() {
		t.Helper()
		if ft.n != len(model) {
			t.Fatalf("n = %d, model %d", ft.n, len(model))
		}
		for k, h := range model {
			i := ft.find(k[0], k[1], h)
			if i < 0 || ft.slots[i].a != k[0] || ft.slots[i].b != k[1] {
				t.Fatalf("key %v lost", k)
			}
		}
	}
	for round := 0; round < 20; round++ {
		// Grow to a few thousand keys; hashes crowd 1/8 of the table.
		for i := 0; i < 3000; i++ {
			k := [2]uint64{r.Uint64N(5000), 1}
			h := uint32(k[0]) % 64 * 8
			if _, ok := model[k]; ok {
				continue
			}
			if ft.find(k[0], k[1], h) >= 0 {
				t.Fatal("absent key found")
			}
			ft.add(k[0], k[1], h)
			model[k] = h
		}
		check()
		// Point deletes.
		for k, h := range model {
			if r.IntN(3) == 0 {
				ft.removeAt(ft.find(k[0], k[1], h))
				delete(model, k)
			}
		}
		check()
		// A sweep as Expire does it: remove in place, revisit the slot.
		for i := 0; i < len(ft.slots); {
			s := &ft.slots[i]
			if s.flags&flagUsed != 0 && s.a%5 != 0 {
				delete(model, [2]uint64{s.a, s.b})
				ft.removeAt(i)
				continue
			}
			i++
		}
		check()
		before := len(ft.slots)
		ft.shrink()
		if len(model) > 0 && len(ft.slots) >= before && len(model)*8 < before {
			t.Fatalf("shrink kept %d slots for %d keys", len(ft.slots), len(model))
		}
		check()
	}
}
