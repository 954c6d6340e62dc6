package afxdp

import (
	"math"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestRingArithmeticWraps(t *testing.T) {
	for _, c := range []struct {
		name             string
		size, prod, cons uint32
		free, avail      uint32
	}{
		{"empty", 8, 0, 0, 8, 0},
		{"full", 8, 8, 0, 0, 8},
		{"partly", 8, 13, 10, 5, 3},
		{"producer wrapped", 8, 2, math.MaxUint32 - 1, 4, 4},
		{"both wrapped", 8, 5, 1, 4, 4},
		{"full across wrap", 4, 1, math.MaxUint32 - 2, 0, 4},
	} {
		if got := ringFree(c.size, c.prod, c.cons); got != c.free {
			t.Errorf("%s: ringFree(%d, %d, %d) = %d, want %d", c.name, c.size, c.prod, c.cons, got, c.free)
		}
		if got := ringAvail(c.prod, c.cons); got != c.avail {
			t.Errorf("%s: ringAvail(%d, %d) = %d, want %d", c.name, c.prod, c.cons, got, c.avail)
		}
	}
}

// fakeRing lays out a ring in ordinary memory the way the kernel's mmap does.
func fakeRing(n uint32, descSize uintptr) (*ring, []byte) {
	off := unix.XDPRingOffset{Producer: 0, Consumer: 64, Flags: 128, Desc: 192}
	m := make([]byte, 192+uintptr(n)*descSize)
	r := &ring{}
	initRing(r, m, off, n)
	return r, m
}

func TestRingSlotsAndPublish(t *testing.T) {
	r, m := fakeRing(4, 8)
	// Start near the top of the index space, so the slots wrap past 2^32.
	start := uint32(math.MaxUint32 - 1)
	*r.prod, *r.cons, r.local = start, start, start
	for i := uint32(0); i < 4; i++ {
		if r.free() == 0 {
			t.Fatalf("ring full after %d entries", i)
		}
		*r.addr(r.local) = uint64(100 + i)
		r.local++
	}
	if r.free() != 0 {
		t.Fatalf("free = %d after 4 entries in a 4-entry ring", r.free())
	}
	r.publishProd()
	if *r.prod != start+4 {
		t.Fatalf("producer = %d, want %d", *r.prod, start+4)
	}
	// Entry i sits in slot (start+i)&3: the last two wrapped to slots 0 and 1.
	base := unsafe.Pointer(unsafe.SliceData(m))
	for i, want := range []uint64{102, 103, 100, 101} {
		got := *(*uint64)(unsafe.Add(base, 192+8*i))
		if got != want {
			t.Errorf("slot %d = %d, want %d", i, got, want)
		}
	}
	// A consumer sees the four entries in order.
	c := &ring{}
	initRing(c, m, unix.XDPRingOffset{Producer: 0, Consumer: 64, Flags: 128, Desc: 192}, 4)
	c.local = start
	if c.avail() != 4 {
		t.Fatalf("avail = %d, want 4", c.avail())
	}
	for i := uint32(0); i < 4; i++ {
		if got := *c.addr(c.local + i); got != uint64(100+i) {
			t.Errorf("entry %d = %d", i, got)
		}
	}
	c.local += 4
	c.publishCons()
	if r.free() != 4 {
		t.Fatalf("producer sees %d free after the consumer took all, want 4", r.free())
	}
	*r.flags = unix.XDP_RING_NEED_WAKEUP
	if !r.needWakeup() {
		t.Error("needWakeup false with XDP_RING_NEED_WAKEUP set")
	}
}

func TestRingDescriptors(t *testing.T) {
	r, _ := fakeRing(2, unsafe.Sizeof(unix.XDPDesc{}))
	for i := uint32(0); i < 3; i++ {
		d := r.xdpDesc(i)
		d.Addr, d.Len = uint64(i)*4096, 60+i
	}
	// Index 2 reuses slot 0.
	if d := r.xdpDesc(0); d.Addr != 2*4096 || d.Len != 62 {
		t.Fatalf("slot 0 = %+v, want the third descriptor", *d)
	}
	if d := r.xdpDesc(1); d.Addr != 4096 || d.Len != 61 {
		t.Fatalf("slot 1 = %+v", *d)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, c := range []Config{
		{Ifindex: 0},
		{Ifindex: 1, Queue: -1},
		{Ifindex: 1, FrameSize: 3000},
		{Ifindex: 1, RxFrames: 1000},
		{Ifindex: 1, TxFrames: 1 << 17},
		{Ifindex: 1, VirtualMAC: []byte{2, 0, 0, 0, 0, 1}},
	} {
		if err := c.normalize(); err == nil {
			t.Errorf("normalize(%+v) accepted", c)
		}
	}
	c := Config{Ifindex: 1}
	if err := c.normalize(); err != nil || c.FrameSize != DefaultFrameSize || c.RxFrames != DefaultRxFrames {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
}
