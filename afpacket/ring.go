package afpacket

import (
	"encoding/binary"
	"sync/atomic"
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

// Byte offsets in the V3 ring, from include/uapi/linux/if_packet.h.
const (
	// struct tpacket_block_desc: version, offset_to_priv, then
	// struct tpacket_hdr_v1 (block_status, num_pkts, offset_to_first_pkt,
	// blk_len, ...).
	bdStatusOff   = 8
	bdNumPktsOff  = 12
	bdFirstPktOff = 16
	bdHdrLen      = 48
	// struct tpacket3_hdr.
	thNextOff    = 0
	thSnaplenOff = 12
	thLenOff     = 16
	thStatusOff  = 20
	thMacOff     = 24
	thVlanTCIOff = 32
	thLen        = unix.SizeofTpacket3Hdr
	// struct sockaddr_ll follows the header at TPACKET_ALIGN(48) = 48;
	// sll_pkttype is its byte 10.
	sllPktTypeOff    = thLen + 10
	sizeofSockaddrLL = 20
)

// ringReady is the RawConn.Read callback: done once the current block (V3)
// or frame slot (V2) belongs to user space; otherwise poll(2) waits
// for the kernel's wake-up (sent when it retires a V3 block, or for every V2
// frame).
func (s *Socket) ringReady(uintptr) bool {
	if s.version == RingV2 {
		return s.frameReady()
	}
	return s.blockReady()
}

func (s *Socket) blockStatus(i int) *uint32 {
	return (*uint32)(unsafe.Pointer(&s.ring[i*s.blockSize+bdStatusOff]))
}

func (s *Socket) blockReady() bool {
	return atomic.LoadUint32(s.blockStatus(s.cur))&unix.TP_STATUS_USER != 0
}

// Receive waits, in poll(2), until at least one frame is
// available, calls fn for every frame available now, hands the ring blocks
// back to the kernel and returns the number of frames. fn must be a
// long-lived func value (not a fresh closure) so the call does not allocate.
// It returns ErrClosed once Close has been called.
func (s *Socket) Receive(fn func(f *Frame)) (int, error) {
	return s.ReceiveBlocks(fn, nil)
}

// ReceiveBlocks is Receive with a second callback, done, called after the frames of each ring
// block (V3), each batch of up to 64 frame slots (V2), or each frame without a ring, have been
// passed to fn and before they are handed back to the kernel or overwritten. Frames stay valid
// until then, so a caller can queue them in fn and send them with one SendBatch in done. done
// may be nil; like fn it must be long-lived.
func (s *Socket) ReceiveBlocks(fn func(f *Frame), done func()) (int, error) {
	s.rxMu.Lock()
	defer s.rxMu.Unlock()
	if s.closed.Load() {
		return 0, ErrClosed
	}
	if !s.recv {
		return 0, ErrNotReceiving
	}
	if s.ring == nil {
		return s.plain.receive(s, fn, done)
	}
	if s.version == RingV2 {
		return s.receiveV2(fn, done)
	}
	if !s.blockReady() {
		if err := s.rc.Read(s.waitFn); err != nil {
			return 0, s.mapErr(err)
		}
	}
	n := 0
	// At most one lap: blocks retired while we work are left for the next
	// call so one call's latency stays bounded.
	for i := 0; i < s.blockCount && s.blockReady(); i++ {
		off := s.cur * s.blockSize
		n += walkBlock(s.ring[off:off+s.blockSize:off+s.blockSize], s.vnet, &s.frame, fn)
		if done != nil {
			done()
		}
		// Release: the store must follow every read of the block; Go's
		// atomics are sequentially consistent, which is at least the
		// smp_wmb-then-store packet_mmap.rst asks of user space.
		atomic.StoreUint32(s.blockStatus(s.cur), unix.TP_STATUS_KERNEL)
		s.cur++
		if s.cur == s.blockCount {
			s.cur = 0
		}
	}
	return n, nil
}

// fillFrame sets f to the frame at mem[start:end] as a ring slot's header
// describes it (pktType, tp_status, tp_len), for V2 and V3 alike. first is
// where its virtio_net_hdr starts, or start when there is none; the caller
// has checked first <= start <= end <= len(mem).
func fillFrame(f *Frame, mem []byte, first, start, end int, pktType byte, status, flen uint32) {
	*f = Frame{
		Data:         mem[start:end:end],
		PktType:      pktType,
		VLANValid:    status&unix.TP_STATUS_VLAN_VALID != 0,
		CsumNotReady: status&unix.TP_STATUS_CSUMNOTREADY != 0,
		Truncated:    uint64(end-start) < uint64(flen) || status&unix.TP_STATUS_COPY != 0,
		wire:         mem[first:end:end],
	}
	if first < start {
		f.VnetHdr = mem[first:start:end]
	}
}

// walkBlock calls fn for each frame of the retired V3 block b (following
// tp_next_offset) and returns how many it delivered. Offsets come from the
// kernel but are still bounds-checked: a bad one ends the walk instead of
// faulting.
func walkBlock(b []byte, vnet bool, f *Frame, fn func(*Frame)) int {
	if len(b) < bdHdrLen {
		return 0
	}
	ne := binary.NativeEndian
	num := ne.Uint32(b[bdNumPktsOff:])
	off := uint64(ne.Uint32(b[bdFirstPktOff:]))
	size := uint64(len(b))
	n := 0
	for i := uint32(0); i < num; i++ {
		if off < bdHdrLen || off+sllPktTypeOff+1 > size {
			break
		}
		h := b[off:]
		snap := uint64(ne.Uint32(h[thSnaplenOff:]))
		flen := ne.Uint32(h[thLenOff:])
		status := ne.Uint32(h[thStatusOff:])
		start := off + uint64(ne.Uint16(h[thMacOff:]))
		end := start + snap
		// The frame (and its virtio_net_hdr) must lie after this header
		// and inside the block.
		first := start
		if vnet {
			first = start - VnetHdrLen
		}
		if first < off+thLen+sizeofSockaddrLL || end > size {
			break
		}
		fillFrame(f, b, int(first), int(start), int(end), h[sllPktTypeOff], status, flen)
		if f.VLANValid {
			f.VLANTCI = uint16(ne.Uint32(h[thVlanTCIOff:]))
		}
		fn(f)
		n++
		next := uint64(ne.Uint32(h[thNextOff:]))
		if next == 0 {
			break
		}
		off += next
	}
	*f = Frame{}
	return n
}
