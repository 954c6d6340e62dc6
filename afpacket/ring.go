package afpacket

import (
	"encoding/binary"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VnetHdrLen is the size of struct virtio_net_hdr (include/uapi/linux/
// virtio_net.h, without num_buffers), the header PACKET_VNET_HDR adds.
const VnetHdrLen = 10

// zeroVnetHdr backs ZeroVnetHdr.
var zeroVnetHdr [VnetHdrLen]byte

// ZeroVnetHdr returns a virtio_net_hdr for an ordinary frame (no GSO, no
// checksum offload): every frame sent on a VnetHdr socket needs one in front.
// The returned slice is shared and must not be modified.
func ZeroVnetHdr() []byte { return zeroVnetHdr[:] }

// Frame is one received frame, valid only inside the Receive callback (it
// points into the ring).
type Frame struct {
	// Data is the frame from the Ethernet header on; it may be modified in
	// place.
	Data []byte
	// VnetHdr is the virtio_net_hdr immediately before Data when VnetHdr is
	// on, nil otherwise.
	VnetHdr []byte
	// PktType is sll_pkttype (unix.PACKET_HOST, PACKET_OTHERHOST,
	// PACKET_OUTGOING, ...).
	PktType uint8
	// VLANTCI is the VLAN tag the NIC stripped, valid when VLANValid.
	VLANTCI uint16
	// VLANValid reports TP_STATUS_VLAN_VALID.
	VLANValid bool
	// CsumNotReady reports TP_STATUS_CSUMNOTREADY: the transport checksum is
	// not computed yet (a locally generated or GRO frame).
	CsumNotReady bool
	// Truncated reports that the kernel stored fewer bytes than the frame
	// had (snaplen < len, or TP_STATUS_COPY).
	Truncated bool

	wire []byte
}

// SendBuf returns the bytes to pass to Send to transmit the frame unchanged,
// with its offload metadata: VnetHdr followed by Data when VnetHdr is on
// (they are contiguous), Data otherwise.
func (f *Frame) SendBuf() []byte { return f.wire }

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
	// sizeofSockaddrLL is sizeof(struct sockaddr_ll).
	sizeofSockaddrLL = 20
	// t2HdrLen is TPACKET2_HDRLEN: the header and the sockaddr_ll, the
	// least a slot must hold (packet_set_ring).
	t2HdrLen = t2Len + sizeofSockaddrLL
)

// v2Release is how many slots are passed to fn before done runs and they
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

// slotReady is the RawConn.Read callback: done once the current frame slot
// belongs to user space; otherwise poll(2) waits for the kernel's wake-up,
// sent for every frame.
func (s *Socket) slotReady(uintptr) bool { return s.frameReady() }

// Receive waits, in poll(2), until at least one frame is
// available, calls fn for every frame available now, hands the ring slots
// back to the kernel and returns the number of frames. fn must be a
// long-lived func value (not a fresh closure) so the call does not allocate.
// It returns ErrClosed once Close has been called, ErrNotReceiving on a
// transmit-only socket.
func (s *Socket) Receive(fn func(f *Frame)) (int, error) {
	return s.ReceiveBlocks(fn, nil)
}

// ReceiveBlocks is Receive with a second callback, done, called after each batch of up to 64
// frame slots has been passed to fn and before the slots are handed back to the kernel. Frames
// stay valid until then, so a caller can queue them in fn and send them with one SendBatch in
// done. done may be nil; like fn it must be long-lived.
//
// It waits for the current slot (polling it for RingConfig.BusyPoll first), then walks the slots
// that belong to user space, at most one lap so one call's latency stays bounded.
func (s *Socket) ReceiveBlocks(fn func(f *Frame), done func()) (int, error) {
	s.rxMu.Lock()
	defer s.rxMu.Unlock()
	if s.closed.Load() {
		return 0, ErrClosed
	}
	if !s.recv {
		return 0, ErrNotReceiving
	}
	if !s.frameReady() && !s.pollV2() {
		if err := s.rc.Read(s.waitFn); err != nil {
			return 0, s.mapErr(err)
		}
	}
	if s.coalesce > 0 && !s.slotReadyAt(s.cur+coalesceFrames-1) {
		// Few frames so far: let more arrive and share this wake-up's batch. nanosleep(2), not
		// time.Sleep: the runtime's timers wake a sleeping goroutine ~1 ms late on the bench
		// VM (TestRingCoalesce), the kernel's hrtimer within its 50 µs timer slack.
		ts := unix.NsecToTimespec(s.coalesce.Nanoseconds())
		for unix.Nanosleep(&ts, &ts) == unix.EINTR {
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

// coalesceFrames is how many ready frames make a wake-up walk the ring at
// once even with RingConfig.Coalesce set: a batch that size already shares
// its wake-up and sendmmsg well (one sendmmsg costs ~1 µs of syscall entry
// and exit on the bench VM, ~60 ns per frame over 16).
const coalesceFrames = 16

// maxCoalesce bounds RingConfig.Coalesce: beyond a millisecond a frame's
// added latency is TCP-visible (a retransmission timer is 200 ms at least,
// RFC 6298, but an RTT on a LAN is tens of microseconds).
const maxCoalesce = time.Millisecond

// slotReadyAt reports whether slot i (wrapped round the ring) belongs to
// user space.
func (s *Socket) slotReadyAt(i int) bool {
	for i >= len(s.frameOffs) {
		i -= len(s.frameOffs)
	}
	return atomic.LoadUint32(s.frameStatus(i))&unix.TP_STATUS_USER != 0
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
// and must not block; it runs on the receiving goroutine. Call SetPrefetch
// before the first Receive.
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

// frameBoundsV2 returns where the frame in slot h starts and ends. The
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
	hdr := t2HdrLen
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
	status := ne.Uint32(h[t2StatusOff:])
	*f = Frame{
		Data:         h[start:end:end],
		PktType:      h[t2PktTypeOff],
		VLANValid:    status&unix.TP_STATUS_VLAN_VALID != 0,
		CsumNotReady: status&unix.TP_STATUS_CSUMNOTREADY != 0,
		Truncated:    uint64(end-start) < uint64(ne.Uint32(h[t2LenOff:])) || status&unix.TP_STATUS_COPY != 0,
		wire:         h[first:end:end],
	}
	if first < start {
		f.VnetHdr = h[first:start:end]
	}
	if f.VLANValid {
		f.VLANTCI = ne.Uint16(h[t2VlanTCIOff:])
	}
	return true
}
