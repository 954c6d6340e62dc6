package dataplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/l2lb/l2lb/afpacket"
	"github.com/mdlayher/arp"
	"golang.org/x/sys/unix"
)

// Timing of ARP work. A switch forgets a MAC after its ageing time (IEEE 802.1D default 300 s,
// Linux bridge ageing_time default 300 s), so the virtual MAC is re-announced well within it.
const (
	announceBurst      = 3
	announceBurstGap   = 50 * time.Millisecond
	announceRefresh    = 30 * time.Second
	resolveInterval    = 10 * time.Second // refresh of resolved frontend MACs
	resolveRetry       = time.Second      // retry of unresolved ones
	resolveTimeout     = 500 * time.Millisecond
	resolveMaxFailures = 3 // consecutive failures before a frontend counts as unresolved
	expireInterval     = time.Second
	// clockInterval ticks the engine clock while no frames arrive (workers tick it per batch)
	// and times the announcement repeats. It was 1 ms when only this loop ticked: 1000 timer
	// wake-ups a second cost an idle balancer ~3 % of a CPU on the 2-core bench VM.
	clockInterval = 10 * time.Millisecond
)

// announceRepeats are the delays after becoming active at which the announcement burst is sent
// again, in case the first one was lost while links or switch ports were settling.
var announceRepeats = []time.Duration{0, 500 * time.Millisecond, 2 * time.Second, 5 * time.Second}

// announceRetry is the wait before re-sending announcements the link refused.
const announceRetry = time.Second

// NodeConfig configures the I/O side of an active balancer.
type NodeConfig struct {
	// Interface receives VIP traffic and sends forwarded frames.
	Interface string
	// Workers is the number of fast-path goroutines, each with its own socket in one
	// PACKET_FANOUT group (default 1).
	Workers int
	// BusyPoll is how long a worker keeps polling its ring for the next frame before it sleeps in
	// poll(2) (afpacket.RingConfig.BusyPoll): zero means afpacket.DefaultRing's, negative none.
	BusyPoll time.Duration
	// Engine decides what happens to each frame.
	Engine *Engine
	// Logger receives events (default slog.Default()).
	Logger *slog.Logger
	// ResolveMACs learns members' MACs by ARP (default on in Run; tests may turn it off and call
	// Engine.SetMAC themselves).
	NoResolve bool
	// OnReady is called once the sockets are open and the fast path runs.
	OnReady func()
	// OnConflict is called (at most once a second, from the fast path: it must not block) when
	// another host claims one of our VIPs while we are active.
	OnConflict func(vip netip.Addr, mac net.HardwareAddr)
}

// Node runs an Engine on real sockets: AF_PACKET receive/transmit on the interface, transmit on
// lo for local delivery, ARP announcements and frontend MAC resolution.
type Node struct {
	cfg         NodeConfig
	ifi         *net.Interface
	lo          *net.Interface
	log         *slog.Logger
	counters    []*Counters
	announce    chan struct{}
	mu          sync.Mutex
	socks       []*afpacket.Socket
	conflictLog time.Time
	releaseGen  uint64
}

// ErrNoInterface is returned when the configured interface does not exist.
var ErrNoInterface = errors.New("dataplane: interface not found")

// NewNode checks cfg and looks up the interfaces; sockets are opened by Run.
func NewNode(cfg NodeConfig) (*Node, error) {
	if cfg.Engine == nil {
		return nil, errors.New("dataplane: NodeConfig.Engine is nil")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ifi, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNoInterface, cfg.Interface, err)
	}
	lo, err := loopback()
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, ifi: ifi, lo: lo, log: cfg.Logger, announce: make(chan struct{}, 1)}
	for i := 0; i < cfg.Workers; i++ {
		n.counters = append(n.counters, new(Counters))
	}
	return n, nil
}

func loopback() (*net.Interface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	for i := range ifs {
		if ifs[i].Flags&net.FlagLoopback != 0 {
			return &ifs[i], nil
		}
	}
	return nil, fmt.Errorf("%w: no loopback interface", ErrNoInterface)
}

// HardwareAddr returns the interface's MAC.
func (n *Node) HardwareAddr() net.HardwareAddr { return n.ifi.HardwareAddr }

// Stats sums the workers' counters.
func (n *Node) Stats() Stats { return Sum(n.counters...) }

// SetActive switches the engine's role; on becoming active the VIPs are announced at once.
func (n *Node) SetActive(on bool) {
	n.mu.Lock()
	n.releaseGen++ // cancels a pending Release
	n.mu.Unlock()
	was := n.cfg.Engine.Active()
	n.cfg.Engine.SetActive(on)
	if on && !was {
		select {
		case n.announce <- struct{}{}:
		default:
		}
	}
}

// Release stops answering ARP at once and stops forwarding after grace: frames already on their
// way to this node while the switch learns the new active node's port are still delivered. A
// SetActive(true) in the meantime cancels it.
func (n *Node) Release(grace time.Duration) {
	eng := n.cfg.Engine
	eng.SetDraining()
	n.mu.Lock()
	n.releaseGen++
	gen := n.releaseGen
	n.mu.Unlock()
	time.AfterFunc(grace, func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.releaseGen == gen {
			eng.SetActive(false)
		}
	})
}

// Announce re-sends the gratuitous ARP burst (after a VIP change, say).
func (n *Node) Announce() {
	select {
	case n.announce <- struct{}{}:
	default:
	}
}

// Run opens the sockets and runs until ctx is done. Everything it opened is closed when it
// returns; the virtual MAC's membership dies with the sockets, so nothing outlives the process.
func (n *Node) Run(ctx context.Context) error {
	eng := n.cfg.Engine
	vmac := eng.Config().VirtualMAC
	group := uint16(unix.Getpid() & 0xffff)
	var socks []*afpacket.Socket
	closeAll := func() {
		for _, s := range socks {
			s.Close()
		}
	}
	ring := afpacket.DefaultRing()
	switch {
	case n.cfg.BusyPoll > 0:
		ring.BusyPoll = n.cfg.BusyPoll
	case n.cfg.BusyPoll < 0:
		ring.BusyPoll = 0
	}
	for i := 0; i < n.cfg.Workers; i++ {
		c := afpacket.Config{
			Ifindex: n.ifi.Index, Protocol: unix.ETH_P_ALL, VnetHdr: true, IgnoreOutgoing: true,
			QdiscBypass: true, UnicastMACs: []net.HardwareAddr{vmac}, Ring: ring,
		}
		if n.cfg.Workers > 1 {
			c.FanoutGroup, c.FanoutMode = group, unix.PACKET_FANOUT_HASH
		}
		s, err := afpacket.Open(c)
		if err != nil {
			closeAll()
			return fmt.Errorf("dataplane: open %s: %w", n.ifi.Name, err)
		}
		socks = append(socks, s)
	}
	loSock, err := afpacket.Open(afpacket.Config{Ifindex: n.lo.Index, Protocol: 0, VnetHdr: true})
	if err != nil {
		closeAll()
		return fmt.Errorf("dataplane: open lo: %w", err)
	}
	socks = append(socks, loSock)
	n.mu.Lock()
	n.socks = socks
	n.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, n.cfg.Workers)
	for i := 0; i < n.cfg.Workers; i++ {
		w := &worker{eng: eng, rx: socks[i], lo: loSock, c: n.counters[i], node: n}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.run(); err != nil && !errors.Is(err, afpacket.ErrClosed) {
				errc <- err
				cancel()
			}
		}()
	}
	wg.Add(1)
	go func() { defer wg.Done(); n.housekeeping(ctx, socks[0]) }()
	if n.cfg.OnReady != nil {
		n.cfg.OnReady()
	}
	if !n.cfg.NoResolve {
		wg.Add(1)
		go func() { defer wg.Done(); n.resolveLoop(ctx) }()
	}
	<-ctx.Done()
	closeAll()
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// housekeeping ticks the engine clock, expires table entries and sends ARP announcements.
func (n *Node) housekeeping(ctx context.Context, tx *afpacket.Socket) {
	eng := n.cfg.Engine
	clock := time.NewTicker(clockInterval)
	defer clock.Stop()
	expire := time.NewTicker(expireInterval)
	defer expire.Stop()
	refresh := time.NewTicker(announceRefresh)
	defer refresh.Stop()
	var repeats []time.Time
	if eng.Active() {
		n.Announce()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-clock.C:
			eng.Tick()
			if len(repeats) > 0 && time.Now().After(repeats[0]) {
				repeats = repeats[1:]
				if !n.sendAnnouncements(tx) && len(repeats) == 0 {
					// The link refused them (down?): keep trying every second until they go
					// out, or the switch keeps the virtual MAC where it last saw it.
					repeats = append(repeats, time.Now().Add(announceRetry))
				}
			}
		case <-expire.C:
			eng.Expire()
		case <-refresh.C:
			if eng.Active() && !n.sendAnnouncements(tx) && len(repeats) == 0 {
				repeats = append(repeats, time.Now().Add(announceRetry))
			}
		case <-n.announce:
			if eng.Active() {
				now := time.Now()
				repeats = repeats[:0]
				for _, d := range announceRepeats {
					repeats = append(repeats, now.Add(d))
				}
			}
		}
	}
}

// sendAnnouncements sends the burst and reports whether every frame went out (a link that is
// down refuses them with ENOBUFS; the caller retries).
func (n *Node) sendAnnouncements(tx *afpacket.Socket) bool {
	eng := n.cfg.Engine
	if !eng.Active() {
		return true
	}
	cfg := eng.Config()
	frames := Announcements(cfg.VirtualMAC, cfg.VIPs.Addrs())
	sent := 0
	for i := 0; i < announceBurst; i++ {
		for _, f := range frames {
			buf := make([]byte, afpacket.VnetHdrLen+len(f))
			copy(buf[afpacket.VnetHdrLen:], f)
			if err := tx.Send(buf); err != nil {
				n.log.Warn("gratuitous ARP send failed", "err", err)
				continue
			}
			sent++
		}
		if i+1 < announceBurst {
			time.Sleep(announceBurstGap)
		}
	}
	n.counters[0].Announced(sent)
	n.log.Debug("announced VIPs", "vips", cfg.VIPs.String(), "mac", cfg.VirtualMAC.String(), "frames", sent)
	return sent == announceBurst*len(frames)
}

// resolveLoop learns the MAC of every non-local member by ARP on the interface and keeps it
// fresh; a member that stops answering is marked unresolved after resolveMaxFailures tries and
// gets no new flows until it answers again.
func (n *Node) resolveLoop(ctx context.Context) {
	eng := n.cfg.Engine
	client, err := arp.Dial(n.ifi)
	if err != nil {
		n.log.Error("cannot resolve frontend MACs: ARP client", "interface", n.ifi.Name, "err", err)
		return
	}
	defer client.Close()
	go func() { <-ctx.Done(); client.SetDeadline(time.Now()) }()
	type state struct {
		next     time.Time
		failures int
		resolved bool
	}
	states := map[netip.Addr]*state{}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		now := time.Now()
		for _, m := range eng.Config().Members {
			if m.Local {
				continue
			}
			s := states[m.Addr]
			if s == nil {
				s = &state{}
				states[m.Addr] = s
			}
			if now.Before(s.next) {
				continue
			}
			if ctx.Err() != nil {
				return
			}
			client.SetDeadline(time.Now().Add(resolveTimeout))
			mac, err := client.Resolve(m.Addr)
			if err == nil {
				if !s.resolved {
					n.log.Info("frontend MAC resolved", "member", m.Addr, "mac", mac.String())
				}
				s.failures, s.resolved = 0, true
				s.next = time.Now().Add(resolveInterval)
				if err := eng.SetMAC(m.Addr, mac); err != nil {
					n.log.Warn("applying frontend MAC", "member", m.Addr, "err", err)
				}
				continue
			}
			s.failures++
			s.next = time.Now().Add(resolveRetry)
			if s.failures == resolveMaxFailures {
				// Presumed down: no new flows, and its flows follow the no-destination policy.
				if s.resolved {
					n.log.Warn("frontend MAC no longer resolves; no new flows to it", "member", m.Addr)
				} else {
					n.log.Warn("frontend MAC does not resolve; no flows to it until it answers ARP", "member", m.Addr)
				}
				s.resolved = false
				eng.SetMAC(m.Addr, nil)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// maxBatch bounds the frames a worker queues before sending them with one sendmmsg(2).
const maxBatch = 64

// worker is one fast-path goroutine: one receive socket, one frame at a time. Frames to send are
// queued while a ring block is walked and sent with one sendmmsg per block and destination
// socket, before the block goes back to the kernel (the queued slices point into the ring).
type worker struct {
	eng      *Engine
	rx, lo   *afpacket.Socket
	c        *Counters
	node     *Node
	handleFn func(*afpacket.Frame)
	flushFn  func()
	out, loq batch
	scratch  [afpacket.VnetHdrLen + 128]byte
	// ticked is set once the engine clock was advanced for the current batch (see flush).
	ticked bool
}

// batch is a queue of frames for one socket and the results to count once they are sent.
type batch struct {
	frames [][]byte
	res    []Result
	lens   []int
}

func (w *worker) run() error {
	w.handleFn, w.flushFn = w.handle, w.flush
	// The ring runs Prefetch a few frames ahead of handle, so the connection-table slot a frame
	// needs is on its way from memory while the frames before it are handled (issue 5: a cold
	// lookup at 1 M flows costs ~220 ns, ~100 ns with the loads of a batch overlapped).
	w.rx.SetPrefetch(w.eng.Prefetch)
	w.out = batch{frames: make([][]byte, 0, maxBatch), res: make([]Result, 0, maxBatch), lens: make([]int, 0, maxBatch)}
	w.loq = batch{frames: make([][]byte, 0, maxBatch), res: make([]Result, 0, maxBatch), lens: make([]int, 0, maxBatch)}
	for {
		if _, err := w.rx.ReceiveBlocks(w.handleFn, w.flushFn); err != nil {
			return err
		}
	}
}

// handle processes one frame: decide, count, queue.
func (w *worker) handle(f *afpacket.Frame) {
	if f.PktType == unix.PACKET_OUTGOING {
		return
	}
	if f.Truncated {
		w.c.Drop(ReasonCaptureTruncated)
		return
	}
	if !w.ticked {
		// One clock read per batch: the first frame after a wait must not see the time the
		// wait began.
		w.eng.Tick()
		w.ticked = true
	}
	res := w.eng.Process(f.Data, f.VLANValid, w.scratch[afpacket.VnetHdrLen:])
	switch res.Verdict {
	case VerdictIgnored:
		if res.Conflict {
			w.c.Record(&res, len(f.Data))
			w.node.logConflict(f.Data)
		}
	case VerdictForward:
		w.queue(&w.out, w.rx, f, res)
	case VerdictLocal:
		w.queue(&w.loq, w.lo, f, res)
	case VerdictARPReply:
		clear(w.scratch[:afpacket.VnetHdrLen])
		if err := w.rx.Send(w.scratch[:afpacket.VnetHdrLen+len(res.Reply)]); err != nil {
			w.c.Drop(ReasonTxError)
			return
		}
		w.c.Record(&res, len(f.Data))
	default:
		w.c.Record(&res, len(f.Data))
	}
}

func (w *worker) queue(b *batch, s *afpacket.Socket, f *afpacket.Frame, res Result) {
	b.frames = append(b.frames, f.SendBuf())
	b.res = append(b.res, res)
	b.lens = append(b.lens, len(f.Data))
	if len(b.frames) == maxBatch {
		w.send(b, s)
	}
}

// flush sends what the block queued; called before the block is handed back to the kernel.
func (w *worker) flush() {
	w.ticked = false
	w.send(&w.out, w.rx)
	w.send(&w.loq, w.lo)
}

func (w *worker) send(b *batch, s *afpacket.Socket) {
	if len(b.frames) == 0 {
		return
	}
	sent, err := s.SendBatch(b.frames)
	if err != nil {
		// One frame the kernel refuses (EMSGSIZE, say) must not take the rest of the batch
		// with it: send the remainder one by one.
		for i := sent; i < len(b.frames); i++ {
			if i > sent {
				if s.Send(b.frames[i]) == nil {
					continue
				}
			}
			b.res[i].Verdict, b.res[i].Reason = VerdictDrop, ReasonTxError
		}
	}
	for i := range b.res {
		if b.res[i].Verdict == VerdictDrop {
			w.c.Drop(ReasonTxError)
			continue
		}
		w.c.Record(&b.res[i], b.lens[i])
	}
	clear(b.frames) // do not keep pointers into the ring
	b.frames, b.res, b.lens = b.frames[:0], b.res[:0], b.lens[:0]
}

func (n *Node) logConflict(b []byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if time.Since(n.conflictLog) < time.Second {
		return
	}
	n.conflictLog = time.Now()
	var p arp.Packet
	if p.UnmarshalBinary(b[ethHeaderLen:]) == nil {
		vmac := n.cfg.Engine.Config().VirtualMAC
		if bytes.Equal(p.SenderHardwareAddr, vmac) {
			n.log.Warn("another balancer announces our VIP with our virtual MAC: two active nodes (split brain)",
				"vip", p.SenderIP, "from", net.HardwareAddr(b[6:12]).String())
		} else {
			n.log.Warn("another host claims one of our VIPs (arp_ignore missing on a frontend?)",
				"vip", p.SenderIP, "mac", p.SenderHardwareAddr.String())
		}
		if n.cfg.OnConflict != nil {
			n.cfg.OnConflict(p.SenderIP, p.SenderHardwareAddr)
		}
	}
}
