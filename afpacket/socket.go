// Package afpacket provides the fast path's AF_PACKET sockets: a TPACKET_V2
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
	"time"

	"golang.org/x/net/bpf"
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
	// ErrNotReceiving is returned by Receive and ReceiveBlocks on a
	// transmit-only socket (Config.Protocol == 0).
	ErrNotReceiving = errors.New("afpacket: socket is transmit-only")
)

// Config describes one packet socket bound to one interface.
type Config struct {
	// Ifindex is the interface the socket is bound to; it must be > 0.
	Ifindex int
	// Protocol is the ethertype the socket receives, in host byte order:
	// EthPAll (0x0003) for receive sockets, which need a Ring, or 0 for a
	// transmit-only socket that never receives anything and has no ring.
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
	// Ring configures the memory-mapped TPACKET_V2 receive ring. It is
	// required when Protocol is non-zero and must be the zero value when it
	// is 0.
	Ring RingConfig
	// FanoutGroup, when non-zero, joins PACKET_FANOUT group FanoutGroup so
	// several sockets share the interface's traffic.
	FanoutGroup uint16
	// FanoutMode is the PACKET_FANOUT mode, optionally ORed with
	// PACKET_FANOUT_FLAG_* bits; the zero value is unix.PACKET_FANOUT_HASH.
	FanoutMode uint16
	// Filter, when non-empty, is a classic-BPF program (at most 4096
	// instructions, the kernel's BPF_MAXINSNS) attached with
	// SO_ATTACH_FILTER so that only the frames it accepts reach the ring:
	// the others are dropped before they take a slot or count in Stats. It
	// sees each frame from the Ethernet header, with or without VnetHdr,
	// and its return value caps the bytes kept. It is only for receive
	// sockets. With fanout it runs after the group has picked this socket,
	// so a frame it drops is lost, not handed to another member: give every
	// member the same filter. DestinationMACFilter builds one.
	Filter []bpf.RawInstruction
}

// maxFilterLen is BPF_MAXINSNS (include/uapi/linux/bpf_common.h), the
// longest classic-BPF program the kernel accepts; checking it here also
// keeps the length within sock_fprog's 16-bit field.
const maxFilterLen = 4096

// RingConfig sizes a memory-mapped TPACKET_V2 receive ring (packet_mmap.rst):
// fixed-size frame slots, each handed over on its own with a per-frame status
// and a wake-up per frame (tpacket_rcv calls sk_data_ready for every V2
// frame), so the added latency is per packet.
type RingConfig struct {
	// BlockSize is the size of one ring block in bytes; it must be a
	// multiple of the page size. Each block is carved into
	// BlockSize/FrameSize slots.
	BlockSize int
	// BlockCount is the number of blocks in the ring.
	BlockCount int
	// FrameSize is the slot size, a multiple of 16 (TPACKET_ALIGNMENT): a
	// frame longer than FrameSize minus the headers arrives truncated.
	FrameSize int
	// BusyPoll is how long Receive keeps polling the next slot, once the
	// ring is drained, before it parks in poll(2); zero parks at once.
	BusyPoll time.Duration
	// Coalesce, when positive, lets a wake-up that finds fewer than
	// coalesceFrames frames ready sleep up to Coalesce before it walks the
	// ring, so that the frames arriving meanwhile are handled, and sent, in
	// the same batch: fewer wake-ups and sendmmsg calls per frame at low
	// and medium rates, for up to Coalesce of added latency per frame. Zero
	// (the default) walks at once, as DefaultRing says: measured with
	// l2lb bench pps conn on the 2-CPU VM (issue 14, 1 worker, 2 runs each)
	// 200 µs cut balancer CPU per frame at 50 000 frames/s from 3.8-4.2 to
	// 3.4-3.6 µs but new connections through the VIP from 0.97-1.04 to
	// 0.75-0.79 of direct, so it stays opt-in.
	Coalesce time.Duration
}

// IsZero reports whether r is the zero value, i.e. asks for no ring.
func (r RingConfig) IsZero() bool { return r == RingConfig{} }

// DefaultRing returns the ring used by the dataplane.
//
// Why TPACKET_V2: it hands over and signals each frame on its own, so a
// frame waits for no batch (BenchmarkRingLatency: tens of microseconds from
// send to Receive). TPACKET_V3, which this package no longer implements,
// wakes the reader only when a block is retired, so at low and medium rates
// every frame waited for the retire timeout (at least 1 ms) — each SYN,
// handshake ACK and TCP ACK through the balancer.
//
// 66 KiB frames: PACKET_VNET_HDR delivers GSO/GRO super-frames whole, and
// V2 truncates a frame that does not fit its slot (the kernel marks it
// TP_STATUS_COPY only if PACKET_COPY_THRESH is set, which it is not). The
// frame starts at tp_mac = TPACKET_ALIGN(TPACKET2_HDRLEN 52 + 16) + 10
// (virtio_net_hdr) - 14 = 76, and the largest frame without BIG TCP is an
// IPv6 packet of 40 + 65535 bytes plus Ethernet and two in-band VLAN tags
// (65597), so a slot needs 65673 bytes; 66 KiB = 67584 leaves room.
// 1 MiB blocks: the kernel allocates each block as one power-of-two page
// run, so a 1 MiB block holding 15 slots wastes 3 % (a 68 KiB block would
// take 128 KiB).
// 64 blocks: 960 slots in 64 MiB; at 1 Mpps that is ~1 ms of buffer, and
// because every frame is signalled the reader starts draining after the
// first one.
// No busy poll (BusyPoll 0), like the kernel's own net.core.busy_poll
// default: a reader that has drained the ring parks in poll(2) at once.
// Polling first saves the wake-up of a reader whose next frame comes within
// the poll, but every poll that ends empty is CPU taken from the services on
// the node, and the active balancer is a frontend too. Measured with
// l2lb bench on 2 CPUs (issue 5): 1 worker at 50 000 frames/s costs 3.1 µs
// of balancer CPU per frame without polling against 4.6 µs with 20 µs of it
// (2 workers: 4.1 against 6.0 µs), while new connections/s through the VIP
// (9 735 against 9 524, medians of 3) and the forwarding rate at saturation,
// where the ring never runs dry, do not change beyond run-to-run noise. A
// latency-bound deployment can still ask for it (l2lb run --busy-poll 20us).
func DefaultRing() RingConfig {
	return RingConfig{
		BlockSize:  1 << 20,
		BlockCount: 64,
		FrameSize:  66 << 10,
	}
}

// Stats are cumulative PACKET_STATISTICS counters since Open.
type Stats struct {
	// Packets is the number of frames the kernel queued to the socket
	// (tp_packets minus tp_drops: the kernel's tp_packets includes drops).
	Packets uint64
	// Drops is the number of frames lost because the ring or queue was full.
	Drops uint64
}

// maxBatch is how many frames one sendmmsg(2) call carries; the kernel caps a
// call at UIO_MAXIOV (1024) messages, 64 already amortises the syscall.
const maxBatch = 64

// Socket is one AF_PACKET socket. Receive must be called from one goroutine
// at a time (the ring has one consumer position; use fanout for
// parallelism); Send and SendBatch may be called concurrently with Receive
// and with each other.
type Socket struct {
	rc      *pollConn
	vnet    bool
	recv    bool
	ifindex int

	closed atomic.Bool

	// Receive side, guarded by rxMu (Close takes it to unmap safely).
	rxMu sync.Mutex
	ring []byte
	// cur is the next frame slot to read.
	cur int
	// frameOffs holds each slot's offset in ring (slots never straddle a
	// block, so they are not evenly spaced across blocks).
	frameOffs []int
	frameSize int
	busyPoll  time.Duration
	coalesce  time.Duration
	prefetch  func([]byte)
	frame     Frame
	waitFn    func(fd uintptr) bool

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
	// real protocol is bound at the end. The socket is not handed to the Go
	// netpoller (see pollConn).
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("afpacket: socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: cfg.Ifindex}); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("afpacket: bind to ifindex %d: %w", cfg.Ifindex, err)
	}
	rc, err := newPollConn(fd)
	if err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("afpacket: eventfd: %w", err)
	}
	s := &Socket{rc: rc, vnet: cfg.VnetHdr, recv: cfg.Protocol != 0, ifindex: cfg.Ifindex}
	s.waitFn = s.slotReady
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
		_ = rc.close()
		return nil, cerr
	}
	return s, nil
}

func (cfg *Config) validate() error {
	if cfg.Ifindex <= 0 {
		return fmt.Errorf("%w: ifindex %d", ErrInvalidConfig, cfg.Ifindex)
	}
	if cfg.Protocol == 0 && (!cfg.Ring.IsZero() || cfg.FanoutGroup != 0 || len(cfg.Filter) != 0) {
		return fmt.Errorf("%w: a transmit-only socket (protocol 0) cannot have a ring, fanout or filter", ErrInvalidConfig)
	}
	if len(cfg.Filter) > maxFilterLen {
		return fmt.Errorf("%w: filter of %d instructions (at most %d)", ErrInvalidConfig, len(cfg.Filter), maxFilterLen)
	}
	if cfg.Protocol != 0 && cfg.Ring.IsZero() {
		return fmt.Errorf("%w: a receive socket (protocol %#04x) needs a ring", ErrInvalidConfig, cfg.Protocol)
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
		// TPACKET_ALIGNMENT is 16 (if_packet.h); packet_set_ring wants a
		// frame to hold the header and the sockaddr_ll after it
		// (TPACKET2_HDRLEN, 52).
		case r.FrameSize < t2HdrLen || r.FrameSize%16 != 0 || r.FrameSize > r.BlockSize:
			return fmt.Errorf("%w: frame size %d", ErrInvalidConfig, r.FrameSize)
		case r.BusyPoll < 0:
			return fmt.Errorf("%w: busy poll %v", ErrInvalidConfig, r.BusyPoll)
		case r.Coalesce < 0 || r.Coalesce > maxCoalesce:
			return fmt.Errorf("%w: coalesce %v (0 to %v)", ErrInvalidConfig, r.Coalesce, maxCoalesce)
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
	// The filter goes on first, before the ring is mapped and while fd is
	// still bound to protocol 0 and so has no receive hook: a packet socket
	// starts queueing frames the moment it is bound to a protocol (joining
	// a fanout group, later, only moves that hook to the group's), so a
	// filter attached after the bind would let the frames it rejects that
	// arrive in between slip into the ring, and every reader would have to
	// check each frame again.
	if len(cfg.Filter) != 0 {
		if err := AttachFilter(fd, cfg.Filter); err != nil {
			return err
		}
	}
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
		if err := s.setupRing(fd, r); err != nil {
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

// setupRing selects TPACKET_V2, asks for the ring and maps it.
func (s *Socket) setupRing(fd int, r RingConfig) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V2); err != nil {
		return fmt.Errorf("afpacket: setsockopt PACKET_VERSION: %w", err)
	}
	// packet_set_ring insists on frame_nr == frames per block * blocks.
	per := r.BlockSize / r.FrameSize
	frames := per * r.BlockCount
	req := unix.TpacketReq{
		Block_size: uint32(r.BlockSize),
		Block_nr:   uint32(r.BlockCount),
		Frame_size: uint32(r.FrameSize),
		Frame_nr:   uint32(frames),
	}
	if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return fmt.Errorf("afpacket: setsockopt PACKET_RX_RING %+v: %w", req, err)
	}
	ring, err := unix.Mmap(fd, 0, r.BlockSize*r.BlockCount, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("afpacket: mmap ring: %w", err)
	}
	s.ring = ring
	// The kernel numbers slots block by block (packet_lookup_frame).
	s.frameOffs = make([]int, frames)
	for i := range s.frameOffs {
		s.frameOffs[i] = i/per*r.BlockSize + i%per*r.FrameSize
	}
	s.frameSize, s.busyPoll, s.coalesce = r.FrameSize, r.BusyPoll, r.Coalesce
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
	var st *unix.TpacketStats
	var gerr error
	if err := s.rc.Control(func(fd uintptr) {
		st, gerr = unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS)
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
	return s.statsTotal, nil
}

// RxDrops returns the frames lost since Open because the ring was full (tp_drops). The fast
// path's workers watch it to tell when they fall behind (dataplane/node's boost).
func (s *Socket) RxDrops() (uint64, error) {
	st, err := s.Stats()
	if err != nil {
		return 0, err
	}
	return st.Drops, nil
}

// Close closes the socket, waking a blocked Receive; the ring is unmapped
// only once Receive has returned, so Close must not be called from inside
// a Receive callback. Calling Close again returns nil.
func (s *Socket) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	err := s.rc.close()
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
	if s.closed.Load() || errors.Is(err, errConnClosed) {
		return ErrClosed
	}
	return fmt.Errorf("afpacket: %w", err)
}

// JoinMulticast adds the Ethernet multicast address mac to the interface's filter for as long as
// the socket is open (PACKET_ADD_MEMBERSHIP with PACKET_MR_MULTICAST, packet(7)), so that the NIC
// delivers frames sent to it (an IPv6 solicited-node group, say) without the host joining the
// group. Joining an address twice is harmless.
func (s *Socket) JoinMulticast(mac net.HardwareAddr) error {
	if len(mac) != 6 || mac[0]&1 == 0 {
		return fmt.Errorf("%w: %v is not an Ethernet multicast address", ErrInvalidConfig, mac)
	}
	mreq := unix.PacketMreq{Ifindex: int32(s.ifindex), Type: unix.PACKET_MR_MULTICAST, Alen: 6}
	copy(mreq.Address[:], mac)
	var serr error
	if err := s.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptPacketMreq(int(fd), unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq)
	}); err != nil {
		return s.mapErr(err)
	}
	if serr != nil {
		return fmt.Errorf("afpacket: add multicast membership %v: %w", mac, serr)
	}
	return nil
}
