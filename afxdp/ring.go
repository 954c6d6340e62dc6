package afxdp

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ring is one of the four single-producer/single-consumer rings an AF_XDP socket shares with
// the kernel (Documentation/networking/af_xdp.rst, "Rings"). The indices are free-running
// 32-bit counters: the slot of index i is i & mask, and the number of entries is producer minus
// consumer in modular arithmetic, so wrap-around at 2^32 needs no special case. The side this
// process owns is kept in local and published with a store-release; the kernel's side is read
// with a load-acquire (the barriers the kernel document asks for around the descriptor
// accesses; Go's sync/atomic operations are sequentially consistent, which is stronger).
type ring struct {
	prod, cons, flags *uint32
	desc              unsafe.Pointer // the descriptor array: uint64 addresses or unix.XDPDesc
	mask              uint32
	size              uint32
	local             uint32 // our index: producer for fill/tx, consumer for rx/completion
}

// ringFree returns how many entries a producer at prod may still add to a ring of size entries
// whose consumer is at cons.
func ringFree(size, prod, cons uint32) uint32 { return size - (prod - cons) }

// ringAvail returns how many entries a consumer at cons may take from a ring whose producer is
// at prod.
func ringAvail(prod, cons uint32) uint32 { return prod - cons }

// free is ringFree for a ring this process produces into.
func (r *ring) free() uint32 { return ringFree(r.size, r.local, atomic.LoadUint32(r.cons)) }

// avail is ringAvail for a ring this process consumes from.
func (r *ring) avail() uint32 { return ringAvail(atomic.LoadUint32(r.prod), r.local) }

// publishProd hands the entries written so far to the kernel.
func (r *ring) publishProd() { atomic.StoreUint32(r.prod, r.local) }

// publishCons hands the entries read so far back to the kernel.
func (r *ring) publishCons() { atomic.StoreUint32(r.cons, r.local) }

// needWakeup reports XDP_RING_NEED_WAKEUP: the kernel wants a syscall before it looks at the
// ring again (XDP_USE_NEED_WAKEUP, af_xdp.rst).
func (r *ring) needWakeup() bool { return atomic.LoadUint32(r.flags)&unix.XDP_RING_NEED_WAKEUP != 0 }

// addr returns the address slot of index i of a fill or completion ring.
func (r *ring) addr(i uint32) *uint64 {
	return (*uint64)(unsafe.Add(r.desc, uintptr(i&r.mask)*8))
}

// xdpDesc returns the descriptor slot of index i of an rx or tx ring.
func (r *ring) xdpDesc(i uint32) *unix.XDPDesc {
	return (*unix.XDPDesc)(unsafe.Add(r.desc, uintptr(i&r.mask)*unsafe.Sizeof(unix.XDPDesc{})))
}

// initRing points r at a ring of n entries mapped at m with the kernel's offsets off.
func initRing(r *ring, m []byte, off unix.XDPRingOffset, n uint32) {
	base := unsafe.Pointer(unsafe.SliceData(m))
	r.prod = (*uint32)(unsafe.Add(base, off.Producer))
	r.cons = (*uint32)(unsafe.Add(base, off.Consumer))
	r.flags = (*uint32)(unsafe.Add(base, off.Flags))
	r.desc = unsafe.Add(base, off.Desc)
	r.size, r.mask = n, n-1
}
