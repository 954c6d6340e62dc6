package conntrack

// prefetch issues PREFETCHT0 for the cache line holding addr (Intel SDM
// vol. 2, PREFETCHh: a hint that never faults, whatever the address). addr
// is an integer, not a pointer, so neither the garbage collector nor the
// race detector sees a memory access: none happens at the Go level.
func prefetch(addr uintptr)
