package conntrack

import (
	"hash/maphash"
	"unsafe"
)

// PrefetchBatch is how many frames the fast path should prefetch ahead of
// looking them up: Prefetch the keys of up to PrefetchBatch ready frames,
// then Touch them one by one.
//
// Why batch at all: on the 2-core KVM guest this was developed on, one
// dependent load from DRAM costs ~140-165 ns (BenchmarkDRAMLatency, a
// pointer chase over 64 MB; transparent huge pages made no difference, so
// this is DRAM, not the TLB). A lookup in a 1 M-flow table misses on its
// slot almost every time, so a lone Touch can never be faster than that
// (BenchmarkTouch1M: ~230 ns). The CPU can have many misses in flight at
// once, though (memory-level parallelism): prefetching a batch's slots
// before the first Touch overlaps their misses, as DPDK's
// rte_hash_lookup_bulk does, and the AF_PACKET ring hands a worker several
// ready frames at a time anyway.
//
// Why 8: BenchmarkTouchBatch1M measured batches of 8, 16 and 32 at ~97,
// ~101 and ~101 ns per lookup (median), against ~192 ns for a batch of 16
// without Prefetch and ~220 ns for a lone lookup; a lookup's own CPU work
// (~70 ns warm) is then the limit, so a larger batch only holds frames
// back longer.
const PrefetchBatch = 8

// Prefetch starts loading the cache line of k's home slot, so that a Touch,
// Insert or Delete of k shortly after finds it in cache. It computes k's
// hash, shard and home slot exactly as Touch does, but takes no lock and
// reads no slot: it only issues a hardware prefetch (PREFETCHT0 on amd64; a
// no-op elsewhere). It never allocates and never faults, and it is safe
// to call concurrently with anything, including a resize of k's shard: a
// prefetch of a stale or torn address only wastes a cache line fill.
//
// Use it on a batch: Prefetch the keys of up to PrefetchBatch frames, then
// Touch each. One Prefetch right before its own Touch gains nothing.
func (t *Table) Prefetch(k Key) {
	if a := (v4{t}).homeAddr(k.pack()); a != 0 {
		prefetch(a)
	}
}

// Prefetch6 is Prefetch for an IPv6 flow; its slot is one whole cache line.
func (t *Table) Prefetch6(k Key6) {
	if a := (v6{t}).homeAddr(k.pack()); a != 0 {
		prefetch(a)
	}
}

// homeAddr is the address of f's home slot in its shard's current array, or
// 0 when the shard never held a flow. It reads only the published atomics.
func (t fam[K, T]) homeAddr(f K) uintptr {
	// The two loads in homeAddrHash are not atomic together: between them a
	// resize may publish a new array, pairing a new base with an old mask or
	// the other way round. The address may then lie outside any slot array,
	// which a prefetch tolerates (it neither faults nor is observable), and
	// the Touch that follows takes the lock and reads the current array.
	return t.homeAddrHash(maphash.Comparable(t.seed, f))
}

// publish records slots' address and mask for Prefetch; resize calls it
// whenever it replaces the array. The address is stored as a plain integer
// (not a pointer) so it does not keep a replaced array alive: the Go heap
// does not move objects, and a prefetch of freed or reused memory is
// harmless.
func (t *flowTab[K]) publish() {
	if len(t.slots) == 0 {
		t.pfBase.Store(0)
		t.pfMask.Store(0)
		return
	}
	t.pfBase.Store(uintptr(unsafe.Pointer(unsafe.SliceData(t.slots))))
	t.pfMask.Store(uint32(len(t.slots) - 1))
}

// Hash is a flow's hash in one Table, as PrefetchHash computes it, so that
// the lookup that follows the prefetch (TouchHash) need not hash the key a
// second time. It is only meaningful for the key and table it came from.
type Hash struct{ h uint64 }

// PrefetchHash is Prefetch that also returns k's hash for TouchHash. The
// fast path prefetches a frame's slot a few frames before it looks the flow
// up; handing the hash over saves the lookup a second maphash of the key.
func (t *Table) PrefetchHash(k Key) Hash {
	f := k.pack()
	h := maphash.Comparable(t.seed, f)
	if a := (v4{t}).homeAddrHash(h); a != 0 {
		prefetch(a)
	}
	return Hash{h}
}

// TouchHash is Touch for a key whose hash h came from PrefetchHash(k) on
// this table. A hash of another key (a caller's bug) cannot corrupt the
// table: the lookup compares keys, so it only misses, and k is never stored
// in a shard its own hash does not choose.
func (t *Table) TouchHash(k Key, h Hash, tcpFlags uint8, now int64) (member uint32, ok bool) {
	return v4{t}.touchHash(k.pack(), h.h, tcpFlags, now)
}

// homeAddrHash is homeAddr for a flow whose hash is h.
func (t fam[K, T]) homeAddrHash(h uint64) uintptr {
	ft := &t.of(&t.shards[h&t.mask]).flows
	base := ft.pfBase.Load()
	if base == 0 {
		return 0
	}
	return base + uintptr(uint32(h>>32)&ft.pfMask.Load())*unsafe.Sizeof(slot[K]{})
}
