// Package memlat builds the pointer chase that measures a machine's DRAM
// latency: the floor under any lookup in a table too big for the caches.
// The conntrack benchmarks and l2lb bench table both report it beside
// their lookup times.
package memlat

import "math/rand/v2"

// stride is the number of uint64s in a 64-byte cache line.
const stride = 64 / 8

// Chain returns a pointer chase through about size bytes: element i*8 (the
// start of cache line i) holds the index of the next line's start, in a
// random order that is one single cycle (Sattolo's algorithm), so a walk
// visits every line before it repeats and each hop depends on the previous
// load. Over a working set far beyond the last-level cache every hop is a
// full DRAM miss.
func Chain(size int) []uint64 {
	lines := size / 64
	mem := make([]uint64, lines*stride)
	perm := make([]uint32, lines)
	for i := range perm {
		perm[i] = uint32(i)
	}
	rng := rand.New(rand.NewPCG(7, 8))
	for i := lines - 1; i > 0; i-- {
		j := rng.IntN(i)
		perm[i], perm[j] = perm[j], perm[i]
	}
	for i, p := range perm {
		mem[i*stride] = uint64(p) * stride
	}
	return mem
}

// Walk follows n hops of chain from its start and returns where it ended,
// which the caller must use (runtime.KeepAlive) so the loads are not
// optimised away.
func Walk(chain []uint64, n int) uint64 {
	p := uint64(0)
	for range n {
		p = chain[p]
	}
	return p
}
