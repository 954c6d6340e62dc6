package afxdp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/l2lb/l2lb/afpacket"
	"golang.org/x/sys/unix"
)

// Errors of Socket.
var (
	// ErrClosed is afpacket.ErrClosed, returned by every operation after Close, so that the
	// dataplane's workers treat both backends alike.
	ErrClosed = afpacket.ErrClosed
	// ErrInvalidConfig is returned by Open for a Config that makes no sense (wrapped with the
	// reason).
	ErrInvalidConfig = errors.New("afxdp: invalid config")
	// ErrShortFrame is returned by Send and SendBatch for a buffer shorter than the
	// virtio_net_hdr plus an Ethernet header.
	ErrShortFrame = errors.New("afxdp: frame too short")
	// ErrFrameTooBig is returned for a frame longer than a UMEM frame (Config.FrameSize).
	ErrFrameTooBig = errors.New("afxdp: frame larger than a UMEM frame")
	// ErrTxFull is returned when the transmit ring or the pool of transmit frames stays full
	// although the kernel was kicked: the link cannot keep up.
	ErrTxFull = errors.New("afxdp: transmit ring full")
)

// Defaults of Config. 4096-byte frames (one page, the largest aligned chunk size; af_xdp.rst)
// hold a 1500-byte-MTU frame after the XDP_PACKET_HEADROOM of 256 bytes the kernel reserves in
// front of received data, with room for jumbo frames up to ~3800 bytes. 2048 receive frames are
// ~2 ms of buffer at 1 Mpps, as the AF_PACKET ring's 960 slots are ~1 ms.
const (
	DefaultFrameSize = 4096
	DefaultRxFrames  = 2048
	DefaultTxFrames  = 1024
)

// ethHdrLen is the Ethernet header (IEEE 802.3): two MACs and the ethertype.
const ethHdrLen = 14

// maxBatch bounds the descriptors taken from the rx ring per wake-up (the dataplane's worker
// batches as many frames per sendmmsg).
const maxBatch = 64

// prefetchAhead is how many frames before fn the prefetch function sees a frame (as in
// afpacket).
const prefetchAhead = 4

// Config describes one AF_XDP socket bound to one receive queue of one interface.
type Config struct {
	// Ifindex is the interface the socket is bound to; it must be > 0.
	Ifindex int
	// Queue is the receive queue (and XSKMAP slot) the socket serves.
	Queue int
	// Program, if set, gets the socket registered for Queue once it is bound.
	Program *Program
	// FrameSize is the UMEM chunk size: 2048 or 4096 (aligned mode, af_xdp.rst); 0 means
	// DefaultFrameSize.
	FrameSize int
	// RxFrames is the number of UMEM frames for reception, a power of two (also the size of
	// the fill and rx rings); 0 means DefaultRxFrames.
	RxFrames int
	// TxFrames is the number of UMEM frames for copies of frames that are not in the UMEM
	// (ARP replies, announcements), a power of two (also the size of the tx and completion
	// rings); 0 means DefaultTxFrames.
	TxFrames int
	// Control opens, beside the AF_XDP socket, a packet socket that reads the ARP and NDP
	// frames the XDP program leaves to the kernel (broadcast ARP, solicited-node multicast)
	// and holds the memberships of VirtualMAC and JoinMulticast. One socket per interface
	// needs it.
	Control bool
	// VirtualMAC is added to the interface's unicast filter (PACKET_MR_UNICAST on the control
	// socket) while the socket is open, so the NIC accepts frames to it. Only with Control.
	VirtualMAC net.HardwareAddr
	// FixPartialChecksums completes the TCP and UDP checksums that same-host senders leave
	// partial (CHECKSUM_PARTIAL: AF_XDP passes no offload metadata; see csum.go) before the
	// frame is handed over. It costs ~10 ns per frame that does not need it.
	FixPartialChecksums bool
	// Log receives events; nil discards them.
	Log *slog.Logger
}

func (c *Config) normalize() error {
	if c.Ifindex <= 0 {
		return fmt.Errorf("%w: ifindex %d", ErrInvalidConfig, c.Ifindex)
	}
	if c.Queue < 0 {
		return fmt.Errorf("%w: queue %d", ErrInvalidConfig, c.Queue)
	}
	if c.FrameSize == 0 {
		c.FrameSize = DefaultFrameSize
	}
	if c.RxFrames == 0 {
		c.RxFrames = DefaultRxFrames
	}
	if c.TxFrames == 0 {
		c.TxFrames = DefaultTxFrames
	}
	if c.FrameSize != 2048 && c.FrameSize != 4096 {
		return fmt.Errorf("%w: frame size %d (2048 or 4096)", ErrInvalidConfig, c.FrameSize)
	}
	pow2 := func(n int) bool { return n > 0 && n&(n-1) == 0 }
	if !pow2(c.RxFrames) || !pow2(c.TxFrames) || c.RxFrames > 1<<16 || c.TxFrames > 1<<16 {
		return fmt.Errorf("%w: rx %d / tx %d frames must be powers of two up to 65536",
			ErrInvalidConfig, c.RxFrames, c.TxFrames)
	}
	if c.VirtualMAC != nil && (!c.Control || len(c.VirtualMAC) != 6) {
		return fmt.Errorf("%w: virtual MAC needs Control and 6 bytes", ErrInvalidConfig)
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Stats are the kernel's counters of one socket (struct xdp_statistics,
// include/uapi/linux/if_xdp.h).
type Stats struct {
	// RxDropped counts frames dropped for reasons other than a full ring (too big, say).
	RxDropped uint64
	// RxRingFull counts frames dropped because the rx ring was full.
	RxRingFull uint64
	// RxFillEmpty counts times the fill ring had no frame for the kernel.
	RxFillEmpty uint64
	// TxInvalid counts transmit descriptors the kernel refused.
	TxInvalid uint64
}

// Socket is an AF_XDP socket with its own UMEM: received frames stay in the UMEM until the done
// callback of ReceiveBlocks returns them to the fill ring, and a received frame sent back out
// (a forwarded one, rewritten in place) leaves from the same UMEM frame. It implements the
// dataplane's node.RxSocket. ReceiveBlocks must be called from one goroutine at a time; Send and
// SendBatch may be called from any goroutine.
type Socket struct {
	fd, ctl, efd int
	cfg          Config
	umem         []byte
	rxRegion     uintptr // bytes of the UMEM that hold receive frames
	maps         [4][]byte
	rx, tx       ring
	fill, comp   ring
	zeroCopy     bool

	mu       sync.Mutex // tx ring, completion ring, fill ring, txFree, inFlight
	txFree   []uint32   // free transmit frame indices
	inFlight []bool     // per receive frame: on the tx ring, back through the completion ring

	// Receive side, used only by the goroutine in ReceiveBlocks.
	descs    [maxBatch]unix.XDPDesc
	frame    afpacket.Frame
	prefetch func([]byte)
	pfds     [3]unix.PollFd
	npfds    int
	poll     func(fds []unix.PollFd, timeout int) (int, error) // unix.Poll; tests replace it
	ctlBuf   []byte
	sinceCtl int

	maxKicks int  // sendto calls per kick: enough for a full tx ring at the TX budget
	txStuck  bool // descriptors were left on the tx ring by the last kick

	// Deferred kicks (see finishKick), under mu: kickDue is set while frames a done callback
	// queued wait for the receive loop to send them, pollSends once a poll(2) was seen to
	// transmit them, and noDefer if one did not. inDone is set while the callback runs.
	inDone                      atomic.Bool
	kickDue, pollSends, noDefer bool
	kickCons                    uint32 // the tx ring's consumer when kickDue was set
	kickAge                     int    // batches received since kickDue was set

	closed atomic.Bool
	users  atomic.Int32
	once   sync.Once
}

// Open creates the socket and its UMEM, binds it to cfg.Queue of cfg.Ifindex (zero-copy where
// the driver supports it, copy mode otherwise) and registers it with cfg.Program. On error
// nothing stays open.
func Open(cfg Config) (_ *Socket, err error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	s := &Socket{fd: -1, ctl: -1, efd: -1, cfg: cfg, poll: unix.Poll}
	defer func() {
		if err != nil {
			s.release()
		}
	}()
	nrx, ntx := uint32(cfg.RxFrames), uint32(cfg.TxFrames)
	s.fd, err = unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: socket(AF_XDP): %w", ErrUnavailable, err)
	}
	s.umem, err = unix.Mmap(-1, 0, int(nrx+ntx)*cfg.FrameSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("afxdp: UMEM: %w", err)
	}
	s.rxRegion = uintptr(nrx) * uintptr(cfg.FrameSize)
	reg := unix.XDPUmemReg{Addr: uint64(uintptr(unsafe.Pointer(unsafe.SliceData(s.umem)))),
		Len: uint64(len(s.umem)), Size: uint32(cfg.FrameSize)}
	if err := setsockopt(s.fd, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg)); err != nil {
		return nil, fmt.Errorf("afxdp: XDP_UMEM_REG: %w", err)
	}
	for _, o := range []struct{ opt, n int }{{unix.XDP_UMEM_FILL_RING, int(nrx)},
		{unix.XDP_UMEM_COMPLETION_RING, int(ntx)}, {unix.XDP_RX_RING, int(nrx)}, {unix.XDP_TX_RING, int(ntx)}} {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, o.opt, o.n); err != nil {
			return nil, fmt.Errorf("afxdp: ring option %d: %w", o.opt, err)
		}
	}
	var off unix.XDPMmapOffsets
	if err := getsockopt(s.fd, unix.XDP_MMAP_OFFSETS, unsafe.Pointer(&off), unsafe.Sizeof(off)); err != nil {
		return nil, fmt.Errorf("afxdp: XDP_MMAP_OFFSETS: %w", err)
	}
	descSize := uint64(unsafe.Sizeof(unix.XDPDesc{}))
	for i, m := range []struct {
		pgoff int64
		off   unix.XDPRingOffset
		n     uint32
		size  uint64
		r     *ring
	}{
		{unix.XDP_PGOFF_RX_RING, off.Rx, nrx, descSize, &s.rx},
		{unix.XDP_PGOFF_TX_RING, off.Tx, ntx, descSize, &s.tx},
		{unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, nrx, 8, &s.fill},
		{unix.XDP_UMEM_PGOFF_COMPLETION_RING, off.Cr, ntx, 8, &s.comp},
	} {
		b, err := unix.Mmap(s.fd, m.pgoff, int(m.off.Desc+uint64(m.n)*m.size),
			unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return nil, fmt.Errorf("afxdp: mmap ring: %w", err)
		}
		s.maps[i] = b
		initRing(m.r, b, m.off, m.n)
	}
	// Every receive frame starts on the fill ring; the transmit frames in the free pool.
	for i := uint32(0); i < nrx; i++ {
		*s.fill.addr(s.fill.local) = uint64(i) * uint64(cfg.FrameSize)
		s.fill.local++
	}
	s.fill.publishProd()
	s.inFlight = make([]bool, nrx)
	s.txFree = make([]uint32, 0, ntx)
	for i := nrx + ntx; i > nrx; i-- {
		s.txFree = append(s.txFree, i-1)
	}
	sa := &unix.SockaddrXDP{Flags: unix.XDP_USE_NEED_WAKEUP, Ifindex: uint32(cfg.Ifindex), QueueID: uint32(cfg.Queue)}
	if err := unix.Bind(s.fd, sa); err != nil {
		return nil, fmt.Errorf("afxdp: bind ifindex %d queue %d: %w", cfg.Ifindex, cfg.Queue, err)
	}
	// One sendto per batch instead of one per 32 frames, where the kernel has the option
	// (Linux 6.16+); without it kickLocked calls again.
	budget := uint32(ntx)
	_ = setsockopt(s.fd, unix.XDP_MAX_TX_SKB_BUDGET, unsafe.Pointer(&budget), 4)
	s.maxKicks = int(ntx)/32 + 2
	var opts uint32
	if err := getsockopt(s.fd, unix.XDP_OPTIONS, unsafe.Pointer(&opts), 4); err == nil {
		s.zeroCopy = opts&unix.XDP_OPTIONS_ZEROCOPY != 0
	}
	if s.efd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("afxdp: eventfd: %w", err)
	}
	s.pfds[0] = unix.PollFd{Fd: int32(s.fd), Events: unix.POLLIN}
	s.pfds[1] = unix.PollFd{Fd: int32(s.efd), Events: unix.POLLIN}
	s.npfds = 2
	if cfg.Control {
		if s.ctl, err = openControl(cfg.Ifindex, cfg.VirtualMAC); err != nil {
			return nil, err
		}
		s.pfds[2] = unix.PollFd{Fd: int32(s.ctl), Events: unix.POLLIN}
		s.npfds = 3
		s.ctlBuf = make([]byte, afpacket.VnetHdrLen+cfg.FrameSize)
	}
	if cfg.Program != nil {
		if err := cfg.Program.Register(cfg.Queue, s.fd); err != nil {
			return nil, err
		}
	}
	cfg.Log.Debug("AF_XDP socket open", "ifindex", cfg.Ifindex, "queue", cfg.Queue, "zerocopy", s.zeroCopy)
	return s, nil
}

// ZeroCopy reports whether the driver runs the socket in zero-copy mode (XDP_OPTIONS_ZEROCOPY);
// false is copy mode, where the kernel copies each frame into and out of the UMEM.
func (s *Socket) ZeroCopy() bool { return s.zeroCopy }

// FD returns the AF_XDP socket's file descriptor (for an XSKMAP of one's own).
func (s *Socket) FD() int { return s.fd }

func setsockopt(fd, opt int, p unsafe.Pointer, n uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(p), n, 0)
	if e != 0 {
		return e
	}
	return nil
}

func getsockopt(fd, opt int, p unsafe.Pointer, n uintptr) error {
	l := uint32(n)
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(p),
		uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// enter marks an operation in progress, so that Close does not unmap memory under it; it may
// nest (a Send from inside ReceiveBlocks' callbacks).
func (s *Socket) enter() bool {
	s.users.Add(1)
	if s.closed.Load() {
		s.users.Add(-1)
		return false
	}
	return true
}

func (s *Socket) leave() { s.users.Add(-1) }

// SetPrefetch sets a function run on each frame prefetchAhead frames before ReceiveBlocks' fn
// sees it. It must not be called while ReceiveBlocks runs.
func (s *Socket) SetPrefetch(fn func(frame []byte)) { s.prefetch = fn }

// data returns the received frame of descriptor d.
func (s *Socket) data(d *unix.XDPDesc) []byte {
	return s.umem[d.Addr : d.Addr+uint64(d.Len) : d.Addr+uint64(d.Len)]
}

// ReceiveBlocks waits for frames, calls fn for each one received (on the AF_XDP socket, and on
// the control socket when there is one) and done once after the last, then returns the frames
// to the kernel. Each frame is passed as an afpacket.Frame whose SendBuf starts with a zeroed
// virtio_net_hdr of afpacket.VnetHdrLen bytes (the UMEM headroom holds it), so that it may be
// forwarded or re-injected on an AF_PACKET socket unchanged. It returns ErrClosed after Close.
func (s *Socket) ReceiveBlocks(fn func(*afpacket.Frame), done func()) (int, error) {
	if !s.enter() {
		return 0, ErrClosed
	}
	defer s.leave()
	for {
		n := s.rx.avail()
		if n == 0 {
			s.mu.Lock()
			s.reapLocked()
			if s.txStuck {
				s.txStuck = s.kickLocked()
			}
			timeout := -1
			if s.txStuck {
				timeout = 1 // retry the frames a busy device refused in 1 ms
			} else if s.kickDue && !s.pollSends {
				timeout = 1 // until a poll is seen to transmit (finishKick)
			}
			s.mu.Unlock()
			if c := s.pollControl(fn, done, false); c > 0 {
				return c, nil
			}
			err := s.wait(timeout)
			s.finishKick(true)
			if err != nil {
				return 0, err
			}
			if s.npfds == 3 && s.pfds[2].Revents != 0 {
				if c := s.pollControl(fn, done, true); c > 0 {
					return c, nil
				}
			}
			continue
		}
		if n > maxBatch {
			n = maxBatch
		}
		for i := uint32(0); i < n; i++ {
			s.descs[i] = *s.rx.xdpDesc(s.rx.local + i)
		}
		s.rx.local += n
		s.rx.publishCons()
		if s.prefetch != nil {
			for i := uint32(0); i < n && i < prefetchAhead; i++ {
				s.prefetch(s.data(&s.descs[i]))
			}
		}
		for i := uint32(0); i < n; i++ {
			if s.prefetch != nil && i+prefetchAhead < n {
				s.prefetch(s.data(&s.descs[i+prefetchAhead]))
			}
			d := &s.descs[i]
			if d.Addr < afpacket.VnetHdrLen || d.Addr+uint64(d.Len) > uint64(s.rxRegion) {
				continue // not a frame we gave the kernel: never touch it
			}
			wire := s.umem[d.Addr-afpacket.VnetHdrLen : d.Addr+uint64(d.Len) : d.Addr+uint64(d.Len)]
			clear(wire[:afpacket.VnetHdrLen])
			if s.cfg.FixPartialChecksums {
				fixPartialChecksum(wire[afpacket.VnetHdrLen:])
			}
			s.frame = *afpacket.FrameOf(wire)
			fn(&s.frame)
		}
		if done != nil {
			s.beginDone()
			done()
			s.inDone.Store(false)
		}
		s.refill(n)
		s.sinceCtl++
		return int(n), nil
	}
}

// beginDone marks the done callback as running, so that the frames it sends are queued for
// the receive loop's next step (finishKick). First it transmits deferred frames that have
// waited maxDeferBatches batches: a busy receive ring keeps the loop from poll(2), and a burst
// the worker only drops would keep them waiting.
func (s *Socket) beginDone() {
	s.mu.Lock()
	if s.kickDue {
		if s.kickAge++; s.kickAge >= maxDeferBatches {
			s.finishKickLocked(false)
		}
	}
	s.inDone.Store(true)
	s.mu.Unlock()
}

// maxDeferBatches bounds how many receive batches a deferred kick waits for the loop to go
// idle: at most maxDeferBatches*maxBatch frames of work, well under a millisecond.
const maxDeferBatches = 4

// finishKick transmits what a done callback queued, unless the poll(2) that just returned
// (polled) did.
//
// Why defer it: in copy mode poll(2) on an AF_XDP socket transmits the tx ring before it sleeps
// ("Poll needs to drive Tx also in copy mode", xsk_poll in net/xdp/xsk.c), as sendto(2) does.
// A worker that sent what it received and finds the rx ring empty goes to poll anyway, so the
// sendto of its flush is a system call too many per wake-up. The first deferred kick waits at
// most 1 ms; on a kernel whose poll leaves the ring alone the frames are sent here, and kicks
// are never deferred again.
func (s *Socket) finishKick(polled bool) {
	s.mu.Lock()
	s.finishKickLocked(polled)
	s.mu.Unlock()
}

// finishKickLocked is finishKick with mu held.
func (s *Socket) finishKickLocked(polled bool) {
	if !s.kickDue {
		return
	}
	cons := atomic.LoadUint32(s.tx.cons)
	if polled && cons != s.kickCons {
		s.pollSends = true
	}
	if cons == s.tx.local {
		s.kickDue = false
		return
	}
	if polled && !s.pollSends {
		s.noDefer = true
		s.cfg.Log.Info("afxdp: poll(2) did not transmit the tx ring; kicking with sendto(2) after every batch", "queue", s.cfg.Queue)
	}
	s.txStuck = s.kickLocked()
}

// refill returns the frames of the last n descriptors to the fill ring, except those the
// callbacks sent in place (they come back through the completion ring).
func (s *Socket) refill(n uint32) {
	fs := uint64(s.cfg.FrameSize)
	s.mu.Lock()
	for i := uint32(0); i < n; i++ {
		a := s.descs[i].Addr
		if a >= uint64(s.rxRegion) {
			continue
		}
		idx := a / fs
		if s.inFlight[idx] {
			continue
		}
		*s.fill.addr(s.fill.local) = idx * fs
		s.fill.local++
	}
	s.fill.publishProd()
	s.reapLocked()
	s.mu.Unlock()
	if s.zeroCopy && s.fill.needWakeup() {
		// A zero-copy driver that ran out of fill entries waits for this wake-up
		// (XDP_USE_NEED_WAKEUP, af_xdp.rst); copy mode never sets the flag on the fill ring.
		_, _, _ = unix.Syscall6(unix.SYS_RECVFROM, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	}
}

// wait blocks in poll(2), for at most timeout ms (-1: no limit), until the AF_XDP socket or
// the control socket is readable or Close is called. poll also gives the kernel the wake-up XDP_USE_NEED_WAKEUP asks for on the fill
// ring (af_xdp.rst).
func (s *Socket) wait(timeout int) error {
	for {
		if s.closed.Load() {
			return ErrClosed
		}
		_, err := s.poll(s.pfds[:s.npfds], timeout)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("afxdp: poll: %w", err)
		}
		if s.closed.Load() || s.pfds[1].Revents != 0 {
			return ErrClosed
		}
		if s.pfds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			return fmt.Errorf("afxdp: socket error (revents %#x): %w", s.pfds[0].Revents, unix.ENETDOWN)
		}
		return nil
	}
}

// controlEvery is how many batches of the AF_XDP socket pass, while it is busy, between two
// reads of the control socket: ARP and NDP are rare and may wait a little, but not starve.
const controlEvery = 16

// pollControl reads the frames waiting on the control socket (when ready, or every
// controlEvery batches) and hands them to fn, then calls done.
func (s *Socket) pollControl(fn func(*afpacket.Frame), done func(), ready bool) int {
	if s.ctl < 0 || (!ready && s.sinceCtl < controlEvery) {
		return 0
	}
	s.sinceCtl = 0
	n := 0
	for n < maxBatch {
		m, err := unix.Read(s.ctl, s.ctlBuf[afpacket.VnetHdrLen:])
		if err != nil || m <= 0 {
			break
		}
		wire := s.ctlBuf[:afpacket.VnetHdrLen+m]
		clear(wire[:afpacket.VnetHdrLen])
		s.frame = *afpacket.FrameOf(wire)
		fn(&s.frame)
		n++
		if done != nil {
			// The next read reuses the buffer: the frame's sends must be done first.
			done()
		}
	}
	return n
}

// Send transmits one frame; b starts with a virtio_net_hdr of afpacket.VnetHdrLen bytes,
// which is dropped (AF_XDP has no offload metadata; XDP frames are never GSO super-frames).
func (s *Socket) Send(b []byte) error {
	_, err := s.sendBatch1(b, nil)
	return err
}

// SendBatch transmits frames in order with at most one kick of the kernel and returns how many
// were queued before an error. A frame that lies in this socket's UMEM (a received frame,
// possibly rewritten) is sent from where it is; others are copied into a transmit frame.
func (s *Socket) SendBatch(frames [][]byte) (int, error) { return s.sendBatch1(nil, frames) }

func (s *Socket) sendBatch1(one []byte, frames [][]byte) (int, error) {
	if !s.enter() {
		return 0, ErrClosed
	}
	defer s.leave()
	s.mu.Lock()
	defer s.mu.Unlock()
	sent := 0
	var err error
	if one != nil {
		if err = s.queueLocked(one); err == nil {
			sent = 1
		}
	} else {
		for _, b := range frames {
			if err = s.queueLocked(b); err != nil {
				break
			}
			sent++
		}
	}
	if sent > 0 {
		s.tx.publishProd()
		if s.inDone.Load() && !s.noDefer && !s.zeroCopy && s.tx.local-atomic.LoadUint32(s.tx.cons) <= txBudget {
			if !s.kickDue {
				s.kickDue, s.kickCons, s.kickAge = true, atomic.LoadUint32(s.tx.cons), 0
			}
		} else {
			s.txStuck = s.kickLocked()
		}
	}
	return sent, err
}

// txBudget is the number of descriptors one sendto(2) or poll(2) transmits in copy mode
// (TX_BATCH_SIZE in net/xdp/xsk.c, the default of XDP_MAX_TX_SKB_BUDGET): a deferred kick
// is left to the next poll only when one call can send everything pending.
const txBudget = 32

// queueLocked puts b on the tx ring, kicking the kernel and reaping completions once if the
// ring or the pool of transmit frames is full.
func (s *Socket) queueLocked(b []byte) error {
	if len(b) < afpacket.VnetHdrLen+ethHdrLen {
		return ErrShortFrame
	}
	b = b[afpacket.VnetHdrLen:]
	if len(b) > s.cfg.FrameSize-unix.XDP_PACKET_HEADROOM {
		return fmt.Errorf("%w: %d bytes", ErrFrameTooBig, len(b))
	}
	for try := 0; s.tx.free() == 0; try++ {
		if try == 3 {
			return ErrTxFull
		}
		s.tx.publishProd()
		s.txStuck = s.kickLocked()
		s.reapLocked()
		if try > 0 {
			time.Sleep(20 * time.Microsecond)
		}
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(s.umem)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b))) - base
	var addr uint64
	if p < s.rxRegion && p+uintptr(len(b)) <= s.rxRegion {
		// A received frame: send it from where it is, and keep it off the fill ring until the
		// completion ring hands it back.
		idx := p / uintptr(s.cfg.FrameSize)
		if s.inFlight[idx] {
			return fmt.Errorf("%w: frame already queued", ErrInvalidConfig)
		}
		s.inFlight[idx] = true
		addr = uint64(p)
	} else {
		if len(s.txFree) == 0 {
			s.tx.publishProd()
			s.txStuck = s.kickLocked()
			s.reapLocked()
			if len(s.txFree) == 0 {
				return ErrTxFull
			}
		}
		idx := s.txFree[len(s.txFree)-1]
		s.txFree = s.txFree[:len(s.txFree)-1]
		addr = uint64(idx) * uint64(s.cfg.FrameSize)
		copy(s.umem[addr:], b)
	}
	d := s.tx.xdpDesc(s.tx.local)
	d.Addr, d.Len, d.Options = addr, uint32(len(b)), 0
	s.tx.local++
	return nil
}

// kickLocked makes the kernel transmit what the tx ring holds: in copy mode transmission
// happens inside sendto(2), at most the socket's TX budget per call (XDP_MAX_TX_SKB_BUDGET,
// 32 unless raised; net/xdp/xsk.c answers EAGAIN when it is spent), so it calls again until the
// kernel has taken every descriptor; in zero-copy mode the driver transmits on its own and wants
// a call only when it asks (XDP_RING_NEED_WAKEUP). ENOBUFS and EBUSY mean the device is busy:
// the frames stay on the ring and the next kick, or ReceiveBlocks' idle path, sends them (as
// libxdp's examples treat them). It reports whether descriptors are still pending.
func (s *Socket) kickLocked() bool {
	s.kickDue = false
	for i := 0; i < s.maxKicks; i++ {
		if atomic.LoadUint32(s.tx.cons) == s.tx.local {
			return false
		}
		if s.zeroCopy && !s.tx.needWakeup() {
			return true
		}
		_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
		if e != 0 && e != unix.EAGAIN {
			break
		}
	}
	return atomic.LoadUint32(s.tx.cons) != s.tx.local
}

// reapLocked takes the transmitted frames off the completion ring: received frames sent in
// place go back to the fill ring, copies to the free pool.
func (s *Socket) reapLocked() {
	n := s.comp.avail()
	if n == 0 {
		return
	}
	fs := uint64(s.cfg.FrameSize)
	for i := uint32(0); i < n; i++ {
		a := *s.comp.addr(s.comp.local + i)
		idx := a / fs
		if a < uint64(s.rxRegion) {
			s.inFlight[idx] = false
			*s.fill.addr(s.fill.local) = idx * fs
			s.fill.local++
		} else {
			s.txFree = append(s.txFree, uint32(idx))
		}
	}
	s.comp.local += n
	s.comp.publishCons()
	s.fill.publishProd()
}

// JoinMulticast makes the NIC deliver frames to the Ethernet multicast address mac while the
// socket is open, on the control socket (PACKET_MR_MULTICAST); without one it does nothing,
// since another socket of the interface holds the memberships.
func (s *Socket) JoinMulticast(mac net.HardwareAddr) error {
	if s.ctl < 0 {
		return nil
	}
	if len(mac) != 6 {
		return fmt.Errorf("%w: multicast MAC %v", ErrInvalidConfig, mac)
	}
	mreq := unix.PacketMreq{Ifindex: int32(s.cfg.Ifindex), Type: unix.PACKET_MR_MULTICAST, Alen: 6}
	copy(mreq.Address[:], mac)
	if err := unix.SetsockoptPacketMreq(s.ctl, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
		return fmt.Errorf("afxdp: join %v: %w", mac, err)
	}
	return nil
}

// Stats returns the kernel's counters of the socket (XDP_STATISTICS).
func (s *Socket) Stats() (Stats, error) {
	if !s.enter() {
		return Stats{}, ErrClosed
	}
	defer s.leave()
	var st unix.XDPStatistics
	if err := getsockopt(s.fd, unix.XDP_STATISTICS, unsafe.Pointer(&st), unsafe.Sizeof(st)); err != nil {
		return Stats{}, fmt.Errorf("afxdp: XDP_STATISTICS: %w", err)
	}
	return Stats{RxDropped: st.Rx_dropped, RxRingFull: st.Rx_ring_full,
		RxFillEmpty: st.Rx_fill_ring_empty_descs, TxInvalid: st.Tx_invalid_descs}, nil
}

// RxDrops returns the frames the kernel could not queue to the socket since it opened, the rx
// ring full or no buffer on the fill ring (XDP_STATISTICS rx_ring_full plus rx_dropped, which
// net/xdp/xsk.c's __xsk_rcv counts for a frame the fill ring had no buffer for). The fast path's
// workers watch it to tell when they fall behind (dataplane/node's boost).
func (s *Socket) RxDrops() (uint64, error) {
	st, err := s.Stats()
	if err != nil {
		return 0, err
	}
	return st.RxDropped + st.RxRingFull, nil
}

// Close wakes a ReceiveBlocks in progress (it returns ErrClosed), waits for operations in
// progress to end, and releases the sockets and the memory. It does not close cfg.Program.
func (s *Socket) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if s.efd >= 0 {
		var one = [8]byte{1}
		unix.Write(s.efd, one[:])
	}
	for s.users.Load() != 0 {
		time.Sleep(100 * time.Microsecond)
	}
	return s.release()
}

func (s *Socket) release() error {
	var errs []error
	s.once.Do(func() {
		for i, m := range s.maps {
			if m != nil {
				errs = append(errs, unix.Munmap(m))
				s.maps[i] = nil
			}
		}
		for _, fd := range []*int{&s.fd, &s.ctl, &s.efd} {
			if *fd >= 0 {
				errs = append(errs, unix.Close(*fd))
				*fd = -1
			}
		}
		if s.umem != nil {
			errs = append(errs, unix.Munmap(s.umem))
			s.umem = nil
		}
	})
	return errors.Join(errs...)
}
