package conntrack

import "sync/atomic"

// flowTab is one shard's flows: an open-addressing hash table with linear
// probing and backward-shift deletion (Knuth, TAOCP vol. 3, 6.4 Algorithm R),
// so there are no tombstones and a lookup stops at the first empty slot.
//
// Why not a Go map (Go 1.26 Swiss table, as first built and measured): on
// the 2-core KVM guest this was developed on, a dependent random read from a
// 64 MB array costs ~180-600 ns (noisy, shared host), so a lookup's cost is
// its cache and TLB misses. A map reaches a slot through its directory, a
// table and a group whose control word and slot often lie on different
// lines, and Touch must look the key up twice (read, then write back).
// Measured on 1 M flows in 256 shards with a mutex per shard: map read+write
// 270-365 ns/op versus 64-71 ns/op for this table in the same
// microbenchmark; BenchmarkTouch1M went from ~400 ns/op to ~240 ns/op, and
// 10 M inserts from 25 s to 5 s at 54 bytes/flow (map: 45). A slot is 32
// bytes (64 for IPv6) and the slot array has a power-of-two length, so a
// slot never straddles a 64-byte line, a hit usually touches one line, and
// Touch updates the slot in place through a pointer.
//
// flowTab is generic over the packed key K, so the IPv4 and the IPv6 table
// are one piece of code: flowKey (16 bytes) makes a 32-byte slot, flowKey6
// (48 bytes, padded) a 64-byte one; TestSlotSizes pins both.
type flowTab[K comparable] struct {
	slots []slot[K]
	n     int // used slots
	// pfBase and pfMask are slots' address and len-1, published for
	// Table.Prefetch, which reads them without the shard lock (see
	// prefetch.go). resize, the only place slots is assigned, keeps them
	// current.
	pfBase atomic.Uintptr
	pfMask atomic.Uint32
}

// slot is one flow: the packed key, then 13 bytes of state, rounded up to
// the key's 8-byte alignment. With flowKey that is 16+13 -> 32 bytes, so two
// fill a cache line exactly; with flowKey6 48+13 -> 64 bytes, one line
// (TestSlotSizes). Three bytes of padding are left in either.
type slot[K comparable] struct {
	key    K      // packed Key or Key6
	exp    uint32 // expiry tick
	member uint16
	state  State
	flags  uint8  // flagUsed, flagTemplate
	hash   uint32 // high half of the key's hash: home slot without rehashing
	// class is the flow's timeout class, a row of Table.timeouts, resolved
	// from its key once when it is recorded (porttimeout.go). It sits in
	// what was alignment padding: the slot stays 32 (64) bytes.
	class uint8
}

const (
	// flagUsed marks an occupied slot (a zero Key is a valid key, so the key
	// cannot mark emptiness).
	flagUsed = 0x80

	minSlots = 16
)

// maxLoad is 3/4: linear probing's expected probe count for a miss,
// (1 + 1/(1-α)^2)/2 (Knuth 6.4), is 8.5 there and grows fast beyond it.
func overLoad(n, size int) bool { return n*4 > size*3 }

// find returns the index of key k with hash h, or -1.
func (t *flowTab[K]) find(k K, h uint32) int {
	if len(t.slots) == 0 {
		return -1
	}
	m := uint32(len(t.slots) - 1)
	for i := h & m; ; i = (i + 1) & m {
		s := &t.slots[i]
		if s.flags&flagUsed == 0 {
			return -1
		}
		if s.key == k {
			return int(i)
		}
	}
}

// add inserts a key known to be absent and returns its slot.
func (t *flowTab[K]) add(k K, h uint32) *slot[K] {
	if len(t.slots) == 0 || overLoad(t.n+1, len(t.slots)) {
		t.resize(max(minSlots, 2*len(t.slots)))
	}
	s := t.place(h)
	s.key, s.hash, s.flags = k, h, flagUsed
	t.n++
	return s
}

// place returns the first empty slot on h's probe sequence.
func (t *flowTab[K]) place(h uint32) *slot[K] {
	m := uint32(len(t.slots) - 1)
	for i := h & m; ; i = (i + 1) & m {
		if t.slots[i].flags&flagUsed == 0 {
			return &t.slots[i]
		}
	}
}

func (t *flowTab[K]) resize(size int) {
	old := t.slots
	t.slots = make([]slot[K], size)
	t.publish()
	for i := range old {
		if old[i].flags&flagUsed != 0 {
			*t.place(old[i].hash) = old[i]
		}
	}
}

// removeAt empties slot i and shifts later members of its cluster back so
// every key stays reachable from its home slot without tombstones. A key
// from later in the cluster may land in slot i, so a caller sweeping the
// array must look at slot i again.
func (t *flowTab[K]) removeAt(idx int) {
	m := uint32(len(t.slots) - 1)
	i := uint32(idx)
	j := i
	for {
		j = (j + 1) & m
		s := &t.slots[j]
		if s.flags&flagUsed == 0 {
			break
		}
		home := s.hash & m
		// s may move to the hole at i only if its home is not cyclically
		// within (i, j]: moving it before its home would hide it.
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			t.slots[i] = *s
			i = j
		}
	}
	t.slots[i] = slot[K]{}
	t.n--
}

// shrink halves the table while it is under 1/8 full, so memory comes back
// after a flood of flows expires.
func (t *flowTab[K]) shrink() {
	size := len(t.slots)
	for size > minSlots && t.n*8 < size {
		size /= 2
	}
	if size != len(t.slots) {
		t.resize(size)
	}
}
