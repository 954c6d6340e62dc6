package afpacket

import (
	"encoding/binary"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Byte offsets in a TPACKET_V2 frame slot, from include/uapi/linux/
// if_packet.h (struct tpacket2_hdr).
const (
	t2StatusOff  = 0
	t2LenOff     = 4
	t2SnaplenOff = 8
	t2MacOff     = 12
	t2VlanTCIOff = 24
	// t2Len is TPACKET_ALIGN(sizeof(struct tpacket2_hdr)): the struct
	// sockaddr_ll starts there (tpacket_rcv), sll_pkttype is its byte 10.
	t2Len        = 32
	t2PktTypeOff = t2Len + 10
)

// v2Release is how many V2 slots are passed to fn before done runs and they
// go back to the kernel: the dataplane's sendmmsg batch, and few enough
// that a ring of hundreds of slots is refilled while a long burst is still
// being walked.
const v2Release = 64

func (s *Socket) frameStatus(i int) *uint32 {
	return (*uint32)(unsafe.Pointer(&s.ring[s.frameOffs[i]+t2StatusOff]))
}

func (s *Socket) frameReady() bool {
	return atomic.LoadUint32(s.frameStatus(s.cur))&unix.TP_STATUS_USER != 0
}

// receiveV2 is ReceiveBlocks for a V2 ring: wait for the current slot
// (polling it for BusyPoll first), then
// walk the slots that belong to user space, at most one lap so one call's
// latency stays bounded, releasing them in batches of v2Release after done.
func (s *Socket) receiveV2(fn func(*Frame), done func()) (int, error) {
	if !s.frameReady() && !s.pollV2() {
		if err := s.rc.Read(s.waitFn); err != nil {
			return 0, s.mapErr(err)
		}
	}
	n, pending := 0, 0
	first := s.cur
	if s.prefetch != nil {
		for j := 0; j < prefetchAhead; j++ {
			s.prefetchSlot(s.cur + j)
		}
	}
	for i := 0; i < len(s.frameOffs) && s.frameReady(); i++ {
		if s.prefetch != nil {
			s.prefetchSlot(s.cur + prefetchAhead)
		}
		off := s.frameOffs[s.cur]
		if parseFrameV2(s.ring[off:off+s.frameSize:off+s.frameSize], s.vnet, &s.frame) {
			fn(&s.frame)
			n++
		}
		s.frame = Frame{}
		pending++
		if s.cur++; s.cur == len(s.frameOffs) {
			s.cur = 0
		}
		if pending == v2Release {
			s.releaseV2(first, pending, done)
			first, pending = s.cur, 0
		}
	}
	if pending > 0 {
		s.releaseV2(first, pending, done)
	}
	return n, nil
}

// prefetchAhead is how many slots ahead of the frame being handled the
// prefetch hook runs: far enough that a hook's memory loads (a connection
// table slot: one DRAM access, ~150 ns on the bench VM) complete while the
// frames in between are handled (~100 ns each in Engine.Process), and few
// enough that the lines are still cached when their frame comes.
const prefetchAhead = 4

// SetPrefetch installs fn, which Receive calls for a ready frame a few slots
// before it passes that frame to its callback, so fn can start the memory
// loads the callback will need (the dataplane prefetches the frame's
// connection-table slot). fn sees only the frame bytes, must not keep them
// and must not block; it runs on the receiving goroutine. Only V2 rings call
// it. Call SetPrefetch before the first Receive.
func (s *Socket) SetPrefetch(fn func(frame []byte)) {
	s.rxMu.Lock()
	defer s.rxMu.Unlock()
	s.prefetch = fn
}

// prefetchSlot runs the prefetch hook on slot i (wrapped round the ring) if the
// kernel has handed it over.
func (s *Socket) prefetchSlot(i int) {
	for i >= len(s.frameOffs) { // once at most, unless the ring has fewer slots than prefetchAhead
		i -= len(s.frameOffs)
	}
	if atomic.LoadUint32(s.frameStatus(i))&unix.TP_STATUS_USER == 0 {
		return
	}
	off := s.frameOffs[i]
	h := s.ring[off : off+s.frameSize : off+s.frameSize]
	if start, end, ok := frameBoundsV2(h, s.vnet); ok {
		s.prefetch(h[start:end:end])
	}
}

// pollV2 polls the current slot for up to BusyPoll before Receive parks in
// poll(2), and reports whether a frame arrived. It reads the clock
// only every 32 polls: a status load is a few nanoseconds, a clock read
// several times that.
func (s *Socket) pollV2() bool {
	if s.busyPoll <= 0 {
		return false
	}
	start := time.Now()
	for i := 1; ; i++ {
		if s.frameReady() {
			return true
		}
		if i%32 == 0 && time.Since(start) > s.busyPoll {
			return false
		}
	}
}

// releaseV2 calls done, then hands count slots from first back to the
// kernel. Go's atomic store is sequentially consistent, at least the
// smp_wmb-then-store packet_mmap.rst asks of user space, so it follows every
// read of the slot.
func (s *Socket) releaseV2(first, count int, done func()) {
	if done != nil {
		done()
	}
	for i := first; count > 0; count-- {
		atomic.StoreUint32(s.frameStatus(i), unix.TP_STATUS_KERNEL)
		if i++; i == len(s.frameOffs) {
			i = 0
		}
	}
}

// frameBoundsV2 returns where the frame in V2 slot h starts and ends. The
// offsets come from the kernel but are still checked: the frame (and its
// virtio_net_hdr) must lie after the sockaddr_ll and inside the slot, or ok
// is false.
func frameBoundsV2(h []byte, vnet bool) (start, end int, ok bool) {
	if len(h) < t2Len {
		return 0, 0, false
	}
	ne := binary.NativeEndian
	start = int(ne.Uint16(h[t2MacOff:]))
	end = start + int(ne.Uint32(h[t2SnaplenOff:]))
	hdr := t2Len + sizeofSockaddrLL
	if vnet {
		hdr += VnetHdrLen
	}
	if start < hdr || end > len(h) {
		return 0, 0, false
	}
	return start, end, true
}

// parseFrameV2 fills f from the V2 slot h and reports whether it holds a
// usable frame. The offsets come from the kernel but are still
// bounds-checked: a bad one skips the slot instead of faulting.
func parseFrameV2(h []byte, vnet bool, f *Frame) bool {
	if len(h) < t2PktTypeOff+1 {
		return false
	}
	start, end, ok := frameBoundsV2(h, vnet)
	if !ok {
		return false
	}
	ne := binary.NativeEndian
	first := start
	if vnet {
		first -= VnetHdrLen
	}
	fillFrame(f, h, first, start, end, h[t2PktTypeOff], ne.Uint32(h[t2StatusOff:]), ne.Uint32(h[t2LenOff:]))
	if f.VLANValid {
		f.VLANTCI = ne.Uint16(h[t2VlanTCIOff:])
	}
	return true
}
