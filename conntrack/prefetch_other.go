//go:build !amd64

package conntrack

// prefetch is a no-op on architectures without an assembly version: the
// batch still works, its lookups just do not overlap their cache misses.
func prefetch(addr uintptr) {}
