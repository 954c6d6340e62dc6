package conntrack

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// TestFlowTabModel drives flowTab against a Go map through growth, deletion
// with backward shifts, sweeps and shrinking, with a tiny hash range so
// clusters are long and wrap around the array.
func TestFlowTabModel(t *testing.T) {
	t.Run("flowKey", func(t *testing.T) {
		testFlowTabModel(t, func(a, b uint64) flowKey { return flowKey{a, b} })
	})
	t.Run("flowKey6", func(t *testing.T) {
		testFlowTabModel(t, func(a, b uint64) flowKey6 {
			var k flowKey6
			binary.BigEndian.PutUint64(k.tk.client[8:], a)
			binary.BigEndian.PutUint64(k.tk.vip[:8], a^b)
			k.ports = b
			return k
		})
	})
}

// testFlowTabModel is TestFlowTabModel for the slots of key type K; key
// maps two numbers one-to-one onto keys.
func testFlowTabModel[K comparable](t *testing.T, key func(a, b uint64) K) {
	r := rand.New(rand.NewPCG(5, 6))
	var ft flowTab[K]
	model := map[[2]uint64]uint32{}
	keyOf := map[K][2]uint64{}
	check := func() {
		t.Helper()
		if ft.n != len(model) {
			t.Fatalf("n = %d, model %d", ft.n, len(model))
		}
		for k, h := range model {
			i := ft.find(key(k[0], k[1]), h)
			if i < 0 || ft.slots[i].key != key(k[0], k[1]) {
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
			if ft.find(key(k[0], k[1]), h) >= 0 {
				t.Fatal("absent key found")
			}
			ft.add(key(k[0], k[1]), h)
			model[k] = h
			keyOf[key(k[0], k[1])] = k
		}
		check()
		// Point deletes.
		for k, h := range model {
			if r.IntN(3) == 0 {
				ft.removeAt(ft.find(key(k[0], k[1]), h))
				delete(model, k)
			}
		}
		check()
		// A sweep as Expire does it: remove in place, revisit the slot.
		for i := 0; i < len(ft.slots); {
			s := &ft.slots[i]
			if k := keyOf[s.key]; s.flags&flagUsed != 0 && k[0]%5 != 0 {
				delete(model, k)
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

// TestSlotSizes pins the slot size, which sets the bytes per flow, and
// checks that slot arrays start on a cache line, so that with a size that
// divides 64 no slot straddles two lines.
func TestSlotSizes(t *testing.T) {
	if sz := unsafe.Sizeof(slot[flowKey]{}); sz != 32 {
		t.Errorf("IPv4 slot is %d bytes, want 32", sz)
	}
	if sz := unsafe.Sizeof(slot[flowKey6]{}); sz != 64 {
		t.Errorf("IPv6 slot is %d bytes, want 64", sz)
	}
	for size := minSlots; size <= 1<<16; size *= 2 {
		var ft flowTab[flowKey]
		ft.resize(size)
		if a := uintptr(unsafe.Pointer(&ft.slots[0])); a%64 != 0 {
			t.Errorf("%d IPv4 slots start at %#x, not on a cache line", size, a)
		}
		var ft6 flowTab[flowKey6]
		ft6.resize(size)
		if a := uintptr(unsafe.Pointer(&ft6.slots[0])); a%64 != 0 {
			t.Errorf("%d IPv6 slots start at %#x, not on a cache line", size, a)
		}
	}
}
