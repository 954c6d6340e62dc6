// Package afpacket provides the fast path's AF_PACKET sockets: a TPACKET_V3
// memory-mapped receive ring, PACKET_VNET_HDR offload metadata, virtual-MAC
// membership, fanout and batched transmission, all in pure Go.
//
// The kernel interface is described in Documentation/networking/packet_mmap.rst
// and include/uapi/linux/if_packet.h; the 10-byte offload header in
// include/uapi/linux/virtio_net.h.
package afpacket

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// EthPAll is ETH_P_ALL from include/uapi/linux/if_ether.h: bind a receive
// socket to it so it sees frames before ingress hooks and rx handlers.
const EthPAll uint16 = unix.ETH_P_ALL

// Sentinel errors returned by this package.
var (
	// ErrClosed is returned by every operation on a Socket after Close.
	ErrClosed = errors.New("afpacket: socket closed")
	// ErrInvalidConfig is returned by Open for a Config the kernel would
	// reject or that makes no sense (wrapped with the reason).
	ErrInvalidConfig = errors.New("afpacket: invalid config")
	// ErrShortFrame is returned by Send and SendBatch for a buffer shorter
	// than an Ethernet header (plus the virtio_net_hdr when VnetHdr is on).
	ErrShortFrame = errors.New("afpacket: frame too short")
	// ErrNotReceiving is returned by Receive on a transmit-only socket
	// (Config.Protocol == 0).
	ErrNotReceiving = errors.New("afpacket: socket is transmit-only")
)

// Config describes one packet socket bound to one interface.
type Config struct {
	// Ifindex is the interface the socket is bound to; it must be > 0.
	Ifindex int
	// Protocol is the ethertype the socket receives, in host byte order:
	// EthPAll (0x0003) for receive sockets, 0 for a transmit-only socket
	// that never receives anything.
	Protocol uint16
	// VnetHdr turns on PACKET_VNET_HDR: every received frame is preceded by
	// a struct virtio_net_hdr and every sent buffer must start with one.
	VnetHdr bool
	// IgnoreOutgoing turns on PACKET_IGNORE_OUTGOING so the socket never
	// reads frames this host transmits.
	IgnoreOutgoing bool
	// QdiscBypass turns on PACKET_QDISC_BYPASS: sent frames skip the
	// interface's qdisc (and its back-pressure).
	QdiscBypass bool
	// UnicastMACs are added with PACKET_ADD_MEMBERSHIP/PACKET_MR_UNICAST so
	// the NIC accepts them; the memberships end when the socket closes.
	UnicastMACs []net.HardwareAddr
	// Ring configures the TPACKET_V3 receive ring. The zero value means no
	// ring: Receive then falls back to one recvmsg(2) per frame.
	Ring RingConfig
	// FanoutGroup, when non-zero, joins PACKET_FANOUT group FanoutGroup so
	// several sockets share the interface's traffic.
	FanoutGroup uint16
	// FanoutMode is the PACKET_FANOUT mode, optionally ORed with
	// PACKET_FANOUT_FLAG_* bits; the zero value is unix.PACKET_FANOUT_HASH.
	FanoutMode uint16
}

// RingConfig sizes a TPACKET_V3 receive ring (packet_mmap.rst, "TPACKET_V3").
type RingConfig struct {
	// BlockSize is the size of one ring block in bytes; it must be a
	// multiple of the page size, and a frame larger than a block (minus
	// headers) is truncated.
	BlockSize int
	// BlockCount is the number of blocks in the ring.
	BlockCount int
	// FrameSize is the kernel's frame-size hint (a multiple of 16); V3
	// packs frames of any size into a block, so it only sets frame_nr.
	FrameSize int
	// RetireTimeout is how long the kernel waits before handing a partly
	// filled block to user space (rounded up to whole milliseconds; zero
	// lets the kernel derive one from the link speed).
	RetireTimeout time.Duration
}

// IsZero reports whether r is the zero value, i.e. asks for no ring.
func (r RingConfig) IsZero() bool { return r == RingConfig{} }

// DefaultRing returns the ring used by the dataplane.
//
// 1 MiB blocks: a V3 block must hold the largest frame whole, and GRO/TSO
// frames reach 64 KiB plus headers, so a block holds sixteen of those or
// ~650 MTU-sized frames and one block hand-over amortises the wake-up.
// 64 blocks (64 MiB): ~41 000 MTU frames of buffer, about 28 ms at 1.5 Mpps,
// enough to ride out a scheduling hiccup without drops.
// 2048-byte frame hint: an MTU frame with its tpacket3_hdr and sockaddr_ll.
// 1 ms retire timeout: the smallest the kernel accepts (tp_retire_blk_tov is
// in ms); under light load every frame waits for it, so it bounds the added
// latency, and an empty block is never retired so an idle ring costs no
// wake-ups.
func DefaultRing() RingConfig {
	return RingConfig{
		BlockSize:     1 << 20,
		BlockCount:    64,
		FrameSize:     2048,
		RetireTimeout: time.Millisecond,
	}
}

// Stats are cumulative PACKET_STATISTICS counters since Open.
type Stats struct {
	// Packets is the number of frames the kernel queued to the socket
	// (tp_packets minus tp_drops: the kernel's tp_packets includes drops).
	Packets uint64
	// Drops is the number of frames lost because the ring or queue was full.
	Drops uint64
	// FreezeQueueCount counts how often the V3 ring ran out of free blocks.
	FreezeQueueCount uint64
}

// maxBatch is how many frames one sendmmsg(2) call carries; the kernel caps a
// call at UIO_MAXIOV (1024) messages, 64 already amortises the syscall.
const maxBatch = 64

// Socket is one AF_PACKET socket. Receive must be called from one goroutine
// at a time (the ring has one consumer position; use fanout for
// parallelism); Send and SendBatch may be called concurrently with Receive
// and with each other.
type Socket struct {
	conn *packet.Conn
	rc   syscall.RawConn
	vnet bool
	recv bool

	closed atomic.Bool

	// Receive side, guarded by rxMu (Close takes it to unmap safely).
	rxMu       sync.Mutex
	ring       []byte
	blockSize  int
	blockCount int
	cur        int
	frame      Frame
	waitFn     func(fd uintptr) bool
	plain      plainState

	// Transmit side, guarded by txMu; the method values are built once so a
	// send does not allocate a closure.
	txMu       sync.Mutex
	txBuf      []byte
	txN        int
	txSent     int
	txErr      error
	writeFn    func(fd uintptr) bool
	writeMFn   func(fd uintptr) bool
	msgs       [maxBatch]unix.Mmsghdr
	iovs       [maxBatch]unix.Iovec
	statsMu    sync.Mutex
	statsTotal Stats
}

// Open creates, configures and binds a packet socket. The socket belongs to
// the network namespace of the calling OS thread.
func Open(cfg Config) (*Socket, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	// Bind with protocol 0 first: such a socket receives nothing, so no
	// frame is queued before the options and the ring are in place. The
	// real protocol is bound at the end.
	conn, err := packet.Listen(&net.Interface{Index: cfg.Ifindex}, packet.Raw, 0, nil)
	if err != nil {
		return nil, fmt.Errorf("afpacket: listen on ifindex %d: %w", cfg.Ifindex, err)
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("afpacket: %w", err)
	}
	s := &Socket{conn: conn, rc: rc, vnet: cfg.VnetHdr, recv: cfg.Protocol != 0}
	s.waitFn = s.ringReady
	s.writeFn = s.writeOne
	s.writeMFn = s.writeMany
	for i := range s.msgs {
		s.msgs[i].Hdr.Iov = &s.iovs[i]
		s.msgs[i].Hdr.SetIovlen(1)
	}
	var cerr error
	if err := rc.Control(func(fd uintptr) { cerr = s.setup(int(fd), cfg) }); err != nil {
		cerr = err
	}
	if cerr != nil {
		if s.ring != nil {
			_ = unix.Munmap(s.ring)
			s.ring = nil
		}
		_ = conn.Close()
		return nil, cerr
	}
	if s.recv && s.ring == nil {
		s.plain.init()
	}
	return s, nil
}

func (cfg *Config) validate() error {
	if cfg.Ifindex <= 0 {
		return fmt.Errorf("%w: ifindex %d", ErrInvalidConfig, cfg.Ifindex)
	}
	if cfg.Protocol == 0 && (!cfg.Ring.IsZero() || cfg.FanoutGroup != 0) {
		return fmt.Errorf("%w: a transmit-only socket (protocol 0) cannot have a ring or fanout", ErrInvalidConfig)
	}
	for _, mac := range cfg.UnicastMACs {
		if len(mac) != 6 {
			return fmt.Errorf("%w: unicast MAC %v is not 6 bytes", ErrInvalidConfig, mac)
		}
	}
	if r := cfg.Ring; !r.IsZero() {
		page := os.Getpagesize()
		switch {
		case r.BlockSize <= 0 || r.BlockSize%page != 0:
			return fmt.Errorf("%w: block size %d is not a positive multiple of the page size %d", ErrInvalidConfig, r.BlockSize, page)
		case r.BlockCount <= 0:
			return fmt.Errorf("%w: block count %d", ErrInvalidConfig, r.BlockCount)
		// TPACKET_ALIGNMENT is 16 (if_packet.h); the frame must hold the
		// 48-byte tpacket3_hdr.
		case r.FrameSize < unix.SizeofTpacket3Hdr || r.FrameSize%16 != 0 || r.FrameSize > r.BlockSize:
			return fmt.Errorf("%w: frame size %d", ErrInvalidConfig, r.FrameSize)
		case r.RetireTimeout < 0 || r.RetireTimeout > time.Duration(1<<31)*time.Millisecond:
			return fmt.Errorf("%w: retire timeout %v", ErrInvalidConfig, r.RetireTimeout)
		case uint64(r.BlockSize)*uint64(r.BlockCount) > 1<<40:
			return fmt.Errorf("%w: ring of %d x %d bytes is too large", ErrInvalidConfig, r.BlockCount, r.BlockSize)
		}
	}
	return nil
}

// setup applies cfg to the freshly bound fd. Order matters: PACKET_VNET_HDR
// and PACKET_VERSION must precede PACKET_RX_RING (the kernel answers EBUSY
// afterwards), and PACKET_FANOUT needs a socket already bound to a protocol.
func (s *Socket) setup(fd int, cfg Config) error {
	opt := func(name string, o int) error {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, o, 1); err != nil {
			return fmt.Errorf("afpacket: setsockopt %s: %w", name, err)
		}
		return nil
	}
	if cfg.VnetHdr {
		if err := opt("PACKET_VNET_HDR", unix.PACKET_VNET_HDR); err != nil {
			return err
		}
	}
	if cfg.IgnoreOutgoing {
		if err := opt("PACKET_IGNORE_OUTGOING", unix.PACKET_IGNORE_OUTGOING); err != nil {
			return err
		}
	}
	if cfg.QdiscBypass {
		if err := opt("PACKET_QDISC_BYPASS", unix.PACKET_QDISC_BYPASS); err != nil {
			return err
		}
	}
	for _, mac := range cfg.UnicastMACs {
		mreq := unix.PacketMreq{Ifindex: int32(cfg.Ifindex), Type: unix.PACKET_MR_UNICAST, Alen: 6}
		copy(mreq.Address[:], mac)
		if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
			return fmt.Errorf("afpacket: add unicast membership %v: %w", mac, err)
		}
	}
	if r := cfg.Ring; !r.IsZero() {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V3); err != nil {
			return fmt.Errorf("afpacket: setsockopt PACKET_VERSION: %w", err)
		}
		req := unix.TpacketReq3{
			Block_size:     uint32(r.BlockSize),
			Block_nr:       uint32(r.BlockCount),
			Frame_size:     uint32(r.FrameSize),
			Frame_nr:       uint32(r.BlockSize / r.FrameSize * r.BlockCount),
			Retire_blk_tov: uint32((r.RetireTimeout + time.Millisecond - 1) / time.Millisecond),
		}
		if err := unix.SetsockoptTpacketReq3(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
			return fmt.Errorf("afpacket: setsockopt PACKET_RX_RING %+v: %w", req, err)
		}
		ring, err := unix.Mmap(fd, 0, r.BlockSize*r.BlockCount, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return fmt.Errorf("afpacket: mmap ring: %w", err)
		}
		s.ring, s.blockSize, s.blockCount = ring, r.BlockSize, r.BlockCount
	}
	if cfg.Protocol != 0 && cfg.Ring.IsZero() {
		// The ring-less path reads the status bits a ring header would
		// carry from a PACKET_AUXDATA control message.
		if err := opt("PACKET_AUXDATA", unix.PACKET_AUXDATA); err != nil {
			return err
		}
	}
	if cfg.Protocol != 0 {
		sa := &unix.SockaddrLinklayer{Protocol: htons(cfg.Protocol), Ifindex: cfg.Ifindex}
		if err := unix.Bind(fd, sa); err != nil {
			return fmt.Errorf("afpacket: bind protocol %#04x: %w", cfg.Protocol, err)
		}
	}
	if cfg.FanoutGroup != 0 {
		v := int(cfg.FanoutGroup) | int(cfg.FanoutMode)<<16
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT, v); err != nil {
			return fmt.Errorf("afpacket: setsockopt PACKET_FANOUT group %d mode %#x: %w", cfg.FanoutGroup, cfg.FanoutMode, err)
		}
	}
	return nil
}

// htons converts to network byte order, as packet(7) wants sll_protocol.
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Stats returns the counters accumulated since Open. The kernel resets its
// counters on every read, so this sums them.
func (s *Socket) Stats() (Stats, error) {
	if s.closed.Load() {
		return Stats{}, ErrClosed
	}
	var st *unix.TpacketStatsV3
	var gerr error
	if err := s.rc.Control(func(fd uintptr) {
		// For V1/V2 sockets the kernel writes only the first 8 bytes.
		st, gerr = unix.GetsockoptTpacketStatsV3(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS)
	}); err != nil {
		return Stats{}, s.mapErr(err)
	}
	if gerr != nil {
		return Stats{}, fmt.Errorf("afpacket: getsockopt PACKET_STATISTICS: %w", gerr)
	}
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	s.statsTotal.Packets += uint64(st.Packets - st.Drops)
	s.statsTotal.Drops += uint64(st.Drops)
	s.statsTotal.FreezeQueueCount += uint64(st.Freeze_q_cnt)
	return s.statsTotal, nil
}

// Close closes the socket, waking a blocked Receive; the ring is unmapped
// only once Receive has returned, so Close must not be called from inside
// a Receive callback. Calling Close again returns nil.
func (s *Socket) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	err := s.conn.Close()
	s.rxMu.Lock()
	defer s.rxMu.Unlock()
	if s.ring != nil {
		if uerr := unix.Munmap(s.ring); uerr != nil && err == nil {
			err = uerr
		}
		s.ring = nil
	}
	if err != nil {
		return fmt.Errorf("afpacket: close: %w", err)
	}
	return nil
}

// mapErr turns the error of an operation that raced with Close into ErrClosed.
func (s *Socket) mapErr(err error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return fmt.Errorf("afpacket: %w", err)
}
