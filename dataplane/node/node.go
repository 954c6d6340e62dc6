// Package node runs a dataplane.Engine on sockets: the per-frame loop of each worker (receive,
// decide, rewrite, send in batches), the gratuitous ARP announcements of the active balancer, the
// resolution of the frontends' MAC addresses and the watch for other hosts claiming our VIPs.
//
// The sockets are given to Run (Sockets; Open makes the real AF_PACKET ones) and the periodic work
// is done by Tick and ResolveOnce, which take the time as an argument, so the package is tested
// with fake sockets and a synthetic clock. The Engine itself stays socket-free.
package node

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l2lb/l2lb/afpacket"
	"github.com/l2lb/l2lb/dataplane"
	"golang.org/x/sys/unix"
)

// Timing of the periodic work. A switch forgets a MAC after its ageing time (IEEE 802.1D default
// 300 s, Linux bridge ageing_time default 300 s), so the virtual MAC is re-announced well within
// it.
const (
	// announceBurst frames of each kind are sent announceBurstGap apart at every announcement.
	announceBurst    = 3
	announceBurstGap = 50 * time.Millisecond
	// announceRefresh re-announces the VIPs while active.
	announceRefresh = 30 * time.Second
	// announceRetry is the wait before re-sending announcements the link refused.
	announceRetry = time.Second
	// resolveInterval refreshes resolved frontend MACs; resolveRetry retries unresolved ones.
	resolveInterval = 10 * time.Second
	resolveRetry    = time.Second
	// ResolveTimeout bounds one ARP resolution of a frontend.
	ResolveTimeout = 500 * time.Millisecond
	// resolveMaxFailures consecutive failures make a frontend count as unresolved (presumed
	// down): its flows then follow the no-destination policy.
	resolveMaxFailures = 3
	// resolveStep is how often Run steps the resolver.
	resolveStep = 100 * time.Millisecond
	// expireInterval is how often expired flows, templates and fragments are forgotten.
	expireInterval = time.Second
	// minTickGap is the shortest wait Run's periodic loop makes between two Ticks, so that a
	// deadline already past can never make it spin.
	minTickGap = time.Millisecond
	// conflictLogGap rate-limits the conflict log and callback.
	conflictLogGap = time.Second
)

// announceRepeats are the delays after becoming active at which the announcement burst is sent
// again, in case the first one was lost while links or switch ports were settling.
var announceRepeats = []time.Duration{0, 500 * time.Millisecond, 2 * time.Second, 5 * time.Second}

// RxSocket is a socket on the balanced interface that receives balancer input and sends frames.
// *afpacket.Socket with a receive ring implements it.
type RxSocket interface {
	TxSocket
	// ReceiveBlocks waits for frames, calls fn for each one the ring holds and done before the
	// frames are handed back to the kernel (their memory is reused afterwards).
	ReceiveBlocks(fn func(*afpacket.Frame), done func()) (int, error)
	// SetPrefetch sets a function run on each frame a few frames before fn sees it.
	SetPrefetch(fn func(frame []byte))
	// JoinMulticast makes the NIC deliver frames to the Ethernet multicast address mac while the
	// socket is open (the solicited-node groups of the IPv6 VIPs).
	JoinMulticast(mac net.HardwareAddr) error
}

// TxSocket sends frames. Every buffer starts with a virtio_net_hdr (PACKET_VNET_HDR, design notes).
// *afpacket.Socket implements it.
type TxSocket interface {
	// Send transmits one frame.
	Send(b []byte) error
	// SendBatch transmits frames in order and returns how many were sent before an error.
	SendBatch(frames [][]byte) (int, error)
	// Close closes the socket; a ReceiveBlocks in progress returns afpacket.ErrClosed.
	Close() error
}

// Resolver learns the MAC address of a frontend on the interface: by ARP for an IPv4 address, by
// NDP for an IPv6 one.
type Resolver interface {
	// Resolve returns the MAC of ip, or an error within a bounded time.
	Resolve(ip netip.Addr) (net.HardwareAddr, error)
	// Close releases the resolver; a Resolve in progress returns an error.
	Close() error
}

// Sockets are what one life of the fast path runs on.
type Sockets struct {
	// Workers are the receive sockets, one per worker goroutine (one PACKET_FANOUT group).
	// Workers[0] also sends the announcements.
	Workers []RxSocket
	// Lo sends the active node's own share to the local stack (design notes: re-injection on
	// lo with destination MAC 00:00:00:00:00:00).
	Lo TxSocket
	// ARP resolves the frontends' MACs; nil leaves MACs to Engine.SetMAC calls.
	ARP Resolver
	// MAC is the interface's own address, the source of forwarded frames.
	MAC net.HardwareAddr
	// Info says what Open or OpenXDP made, for the status.
	Info SocketsInfo
	// Flows is the XDP program's flow cache, nil without one (OpenXDPWith, XDPConfig.FlowCache).
	Flows FlowCache
}

// SocketsInfo describes a fast path's sockets for the status (control.FastPath).
type SocketsInfo struct {
	// Backend is "afpacket" or "afxdp".
	Backend string
	// Queues is the number of receive queues with an AF_XDP socket (afxdp only).
	Queues int
	// XDPMode is the XDP attach mode that worked, "native" or "generic" (afxdp only).
	XDPMode string
	// TCP is "kernel" when TCP goes to the kernel's GRO and AF_PACKET rings, "xsk" when it
	// stays on the AF_XDP sockets (afxdp only).
	TCP string
	// ZeroCopy is true when the AF_XDP sockets run in zero-copy mode.
	ZeroCopy bool
	// FlowCache is the size of the XDP flow cache, 0 without one (afxdp only).
	FlowCache int
}

// Close closes every socket and the resolver.
func (s Sockets) Close() {
	for _, w := range s.Workers {
		w.Close()
	}
	if s.Lo != nil {
		s.Lo.Close()
	}
	if s.ARP != nil {
		s.ARP.Close()
	}
}

// Config configures a Node.
type Config struct {
	// Engine decides what happens to each frame.
	Engine *dataplane.Engine
	// Workers is the number of worker sockets expected, one goroutine and one set of counters
	// each (default 1). Run adds counters when it is given more sockets: the AF_XDP backend
	// with TCP left to the kernel has a socket per receive queue and an AF_PACKET ring per
	// worker.
	Workers int
	// Log receives events (nil: discarded).
	Log *slog.Logger
	// Priority, when set, raises a worker's scheduling priority while its socket drops frames
	// (see boost); nil leaves the workers at the process's priority.
	Priority Prioritizer
	// OnConflict is called (at most once a second, from a worker: it must not block) when another
	// host claims one of our VIPs while we answer ARP for them.
	OnConflict func(vip netip.Addr, mac net.HardwareAddr)
}

// ErrNoSockets is returned by Run when it is given no worker socket or no lo socket.
var ErrNoSockets = errors.New("node: no sockets")

// Node runs an Engine on sockets. It outlives its sockets: Run may be called again with new ones
// after a failure, and the counters, the role and the resolver's state carry over.
type Node struct {
	cfg    Config
	eng    *dataplane.Engine
	log    *slog.Logger
	tick   *dataplane.Counters // the periodic work's own (announcements)
	cached *dataplane.Counters // what the flow cache forwarded (sweepFlows)
	// flowStats are the flow cache's own counters.
	flowStats flowCacheCounters
	cmu       sync.Mutex // guards counters' growth in Run against Stats
	counters  []*dataplane.Counters
	// wake makes Run's periodic loop Tick at once: new bursts or a Release deadline were set.
	wake chan struct{}
	// boosts count the workers' priority raises (see boost).
	boosts boostStats
	// ringDrops holds the kernel drop counts of earlier lives' sockets (see FastPathStats).
	ringDrops atomic.Uint64

	mu          sync.Mutex
	workers     []RxSocket         // the sockets of the current life, while Run runs
	multicast   []net.HardwareAddr // groups the workers' sockets must receive (SetMulticast)
	tx          TxSocket           // where announcements go while Run runs
	bursts      []time.Time        // pending announcement bursts
	lastRefresh time.Time          // last periodic announcement
	lastExpire  time.Time          // last Engine.Expire
	releaseAt   time.Time          // a Release's deadline (zero: none pending)
	conflictLog time.Time          // last conflict logged
	resolve     map[netip.Addr]*resolveState
}

// resolveState is the resolver's memory of one frontend.
type resolveState struct {
	next     time.Time
	failures int
	resolved bool
}

// New returns a Node for cfg; it opens nothing.
func New(cfg Config) *Node {
	if cfg.Workers <= 0 {
		cfg.Workers = 1
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	n := &Node{cfg: cfg, eng: cfg.Engine, log: cfg.Log, wake: make(chan struct{}, 1),
		resolve: map[netip.Addr]*resolveState{}}
	n.tick, n.cached = new(dataplane.Counters), new(dataplane.Counters)
	n.grow(cfg.Workers)
	return n
}

// grow makes sure there is a set of counters for each of k workers; counters are never
// dropped, so totals survive fast-path restarts with fewer sockets.
func (n *Node) grow(k int) {
	n.cmu.Lock()
	defer n.cmu.Unlock()
	for len(n.counters) < k {
		n.counters = append(n.counters, new(dataplane.Counters))
	}
}

// Stats sums the workers' counters and the periodic work's.
func (n *Node) Stats() dataplane.Stats {
	n.cmu.Lock()
	cs := append([]*dataplane.Counters{n.tick, n.cached}, n.counters...)
	n.cmu.Unlock()
	return dataplane.Sum(cs...)
}

// FastPathStats are the kernel's and the scheduler's side of the fast path, for the status.
type FastPathStats struct {
	// RingDrops counts frames the kernel dropped because a worker socket's ring was full, since
	// the node started (DropCounter; sockets that cannot tell add nothing).
	RingDrops uint64
	// RaisedWorkers is the number of workers running at the raised priority now.
	RaisedWorkers int
	// PriorityRaises counts the times a worker raised its priority since the node started.
	PriorityRaises uint64
}

// FastPathStats returns the ring drops and the priority raises.
func (n *Node) FastPathStats() FastPathStats {
	n.mu.Lock()
	workers := n.workers
	n.mu.Unlock()
	return FastPathStats{RingDrops: n.ringDrops.Load() + sumDrops(workers),
		RaisedWorkers: int(n.boosts.raised.Load()), PriorityRaises: n.boosts.raises.Load()}
}

// sumDrops adds up the drop counters of sockets that have one.
func sumDrops(socks []RxSocket) uint64 {
	var total uint64
	for _, s := range socks {
		if dc, ok := s.(DropCounter); ok {
			if d, err := dc.RxDrops(); err == nil {
				total += d
			}
		}
	}
	return total
}

// SetActive makes the engine answer ARP and forward (true) or drop VIP input (false), at once. It
// cancels a pending Release. On becoming active the VIPs are announced.
func (n *Node) SetActive(on bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	// A node releasing its VIPs is still active (it forwards) but no longer answers ARP, and
	// its successor may have pulled the virtual MAC away meanwhile: taking the role back must
	// announce again, as becoming active does.
	releasing := !n.releaseAt.IsZero()
	n.releaseAt = time.Time{}
	was := n.eng.Active()
	n.eng.SetActive(on)
	if on && (!was || releasing) {
		n.scheduleLocked(time.Now())
		n.wakeTick()
	}
}

// Release stops answering ARP at once and stops forwarding at the first Tick after now+grace:
// frames already on their way to this node while the switch learns the new active node's port
// are still delivered. A SetActive in the meantime cancels it.
func (n *Node) Release(now time.Time, grace time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.eng.SetDraining()
	n.releaseAt = now.Add(grace)
	n.bursts = n.bursts[:0]
	n.wakeTick()
}

// wakeTick makes Run's periodic loop Tick now and plan its next wait again.
func (n *Node) wakeTick() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// nextTick returns when Tick next has work to do: the first pending announcement burst, the end
// of a Release, the next expiry or, while active, the next periodic announcement. Run sleeps
// until then instead of ticking on a fixed period (it was 10 ms), and SetActive, Announce and
// Release wake it. The workers tick the engine clock themselves, per batch, so nothing needs the
// clock ticked in between. Issue 14, `perf stat -p` on a balancer with no traffic on the 2-CPU
// VM: 1.9 % of a CPU and ~530 context switches a second with the 10 ms period, 0.2–0.3 % and
// 50–80 with this loop.
func (n *Node) nextTick() time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	next := n.lastExpire.Add(expireInterval)
	if len(n.bursts) > 0 && n.bursts[0].Before(next) {
		next = n.bursts[0] // bursts are kept in time order (scheduleLocked)
	}
	if !n.releaseAt.IsZero() {
		if n.releaseAt.Before(next) {
			next = n.releaseAt
		}
	} else if n.eng.Active() {
		if r := n.lastRefresh.Add(announceRefresh); r.Before(next) {
			next = r
		}
	}
	return next
}

// SetMulticast sets the Ethernet multicast addresses the interface must deliver to the fast path
// (the solicited-node groups of the IPv6 VIPs, dataplane.SolicitedNodeMAC), on the current
// sockets at once and on every later set. Memberships of addresses no longer listed are kept until
// the sockets close: an extra group costs a few frames, and dropping one a VIP still needs would
// cost answers.
func (n *Node) SetMulticast(macs []net.HardwareAddr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.multicast = append(n.multicast[:0:0], macs...)
	for _, w := range n.workers {
		n.joinLocked(w)
	}
}

// joinLocked joins w to every multicast group asked for.
func (n *Node) joinLocked(w RxSocket) {
	for _, mac := range n.multicast {
		if err := w.JoinMulticast(mac); err != nil {
			n.log.Warn("cannot receive a multicast group; IPv6 neighbour solicitations for a VIP may go unanswered",
				"mac", mac.String(), "err", err)
		}
	}
}

// Announce schedules the gratuitous ARP bursts again (after a VIP change, say), if active.
func (n *Node) Announce() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.eng.Active() {
		n.scheduleLocked(time.Now())
		n.wakeTick()
	}
}

// scheduleLocked plans announceBurst bursts at each of announceRepeats from now.
func (n *Node) scheduleLocked(now time.Time) {
	n.bursts = n.bursts[:0]
	for _, d := range announceRepeats {
		for i := 0; i < announceBurst; i++ {
			n.bursts = append(n.bursts, now.Add(d+time.Duration(i)*announceBurstGap))
		}
	}
	n.lastRefresh = now
}

// Tick does the periodic work due at now: it advances the engine clock, ends a Release whose
// grace is over, expires table entries every second and sends the announcements that are due. Run
// calls it when nextTick says there is work; tests call it with a synthetic clock.
func (n *Node) Tick(now time.Time) {
	n.eng.Tick()
	n.mu.Lock()
	if !n.releaseAt.IsZero() && !now.Before(n.releaseAt) {
		n.releaseAt = time.Time{}
		n.eng.SetActive(false)
	}
	expire := now.Sub(n.lastExpire) >= expireInterval
	if expire {
		n.lastExpire = now
	}
	due := 0
	for due < len(n.bursts) && !now.Before(n.bursts[due]) {
		due++
	}
	if due > 0 {
		n.bursts = append(n.bursts[:0], n.bursts[due:]...)
	}
	active := n.eng.Active() && n.releaseAt.IsZero()
	if active && now.Sub(n.lastRefresh) >= announceRefresh {
		n.lastRefresh = now
		due++
	}
	tx := n.tx
	n.mu.Unlock()
	if expire {
		n.eng.Expire()
	}
	if due == 0 || !active || tx == nil {
		return
	}
	// Several bursts due at once (a late tick) are sent as one.
	if !n.sendAnnouncements(tx) {
		// The link refused them (down?): keep trying every second until they go out, or the
		// switch keeps the virtual MAC where it last saw it.
		n.mu.Lock()
		if len(n.bursts) == 0 {
			n.bursts = append(n.bursts, now.Add(announceRetry))
		}
		n.mu.Unlock()
	}
}

// sendAnnouncements sends one burst of announcements for every VIP — a gratuitous ARP request and
// reply for each IPv4 VIP, an unsolicited neighbour advertisement for each IPv6 one — and reports
// whether every frame went out (a link that is down refuses them with ENOBUFS).
func (n *Node) sendAnnouncements(tx TxSocket) bool {
	cfg := n.eng.Config()
	if cfg.VIPs == nil || cfg.VIPs.Len() == 0 {
		return true
	}
	var v4, v6 []netip.Addr
	for _, a := range cfg.VIPs.Addrs() {
		if a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	frames := append(dataplane.Announcements(cfg.VirtualMAC, v4), dataplane.Announcements6(cfg.VirtualMAC, v6)...)
	sent := 0
	for _, f := range frames {
		buf := make([]byte, afpacket.VnetHdrLen+len(f))
		copy(buf[afpacket.VnetHdrLen:], f)
		if err := tx.Send(buf); err != nil {
			n.log.Warn("gratuitous ARP send failed", "err", err)
			continue
		}
		sent++
	}
	n.tick.Announced(sent)
	n.log.Debug("announced VIPs", "vips", cfg.VIPs.String(), "mac", cfg.VirtualMAC.String(), "frames", sent)
	return sent == len(frames)
}

// ResolveOnce resolves, with r, every non-local member whose refresh or retry is due at now, and
// tells the engine what it learnt. A member that stops answering is marked unresolved after
// resolveMaxFailures tries and gets no new flows until it answers again. It stops early when ctx
// ends. Run calls it every 100 ms from a goroutine of its own (a resolution may take
// ResolveTimeout); tests call it with a fake resolver and a synthetic clock.
func (n *Node) ResolveOnce(ctx context.Context, r Resolver, now time.Time) {
	for _, m := range n.eng.Config().Members {
		if m.Local {
			continue
		}
		n.mu.Lock()
		s := n.resolve[m.Addr]
		if s == nil {
			s = &resolveState{}
			n.resolve[m.Addr] = s
		}
		due := !now.Before(s.next)
		n.mu.Unlock()
		if !due {
			continue
		}
		if ctx.Err() != nil {
			return
		}
		mac, err := r.Resolve(m.Addr)
		if err != nil && ctx.Err() != nil {
			return // the resolver was closed under us: not the member's failure
		}
		n.mu.Lock()
		if err == nil {
			wasResolved := s.resolved
			s.failures, s.resolved, s.next = 0, true, now.Add(resolveInterval)
			n.mu.Unlock()
			if !wasResolved {
				n.log.Info("frontend MAC resolved", "member", m.Addr, "mac", mac.String())
			}
			if err := n.eng.SetMAC(m.Addr, mac); err != nil {
				n.log.Warn("applying frontend MAC", "member", m.Addr, "err", err)
			}
			continue
		}
		s.failures++
		s.next = now.Add(resolveRetry)
		down, wasResolved := s.failures == resolveMaxFailures, s.resolved
		if down {
			s.resolved = false
		}
		n.mu.Unlock()
		if !down {
			continue
		}
		// Presumed down: no new flows, and its flows follow the no-destination policy.
		if wasResolved {
			n.log.Warn("frontend MAC no longer resolves; no new flows to it", "member", m.Addr)
		} else {
			n.log.Warn("frontend MAC does not resolve; no flows to it until it answers ARP", "member", m.Addr)
		}
		n.eng.SetMAC(m.Addr, nil)
	}
}

// Run runs the fast path on s until ctx ends or a worker's socket fails, and closes s before it
// returns. The error is nil when ctx ended; otherwise it is the first worker's error (a socket
// that failed: the interface went away, say), and the caller may open new sockets and Run again.
func (n *Node) Run(ctx context.Context, s Sockets) error {
	defer s.Close()
	if len(s.Workers) == 0 || s.Lo == nil {
		return ErrNoSockets
	}
	n.grow(len(s.Workers))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n.mu.Lock()
	n.tx, n.workers = s.Workers[0], s.Workers
	for _, w := range s.Workers {
		n.joinLocked(w)
	}
	if n.eng.Active() && n.releaseAt.IsZero() {
		// New sockets after a failure (the link went down, say): the switch may have forgotten
		// where the virtual MAC lives.
		n.scheduleLocked(time.Now())
	}
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		n.tx, n.workers = nil, nil
		n.mu.Unlock()
	}()
	var wg sync.WaitGroup
	errc := make(chan error, len(s.Workers))
	n.cmu.Lock()
	counters := n.counters
	n.cmu.Unlock()
	if s.Flows != nil {
		// Before any worker installs: the program's generation starts at zero.
		n.publishGeneration(s.Flows)
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.runFlowCache(ctx, s.Flows)
		}()
	}
	for i, rx := range s.Workers {
		w := newWorker(n, rx, s.Lo, counters[i])
		if s.Flows != nil {
			w.flows, w.memo = s.Flows, new(installMemo)
		}
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
	go func() {
		defer wg.Done()
		t := time.NewTimer(0)
		defer t.Stop()
		for now := time.Now(); ; {
			n.Tick(now)
			t.Reset(max(time.Until(n.nextTick()), minTickGap))
			select {
			case <-ctx.Done():
				return
			case now = <-t.C:
			case <-n.wake:
				now = time.Now()
			}
		}
	}()
	if s.ARP != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(resolveStep)
			defer t.Stop()
			for {
				n.ResolveOnce(ctx, s.ARP, time.Now())
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	<-ctx.Done()
	// The sockets' drop counters end with them: keep their last values, and stop showing the
	// sockets in the same step so that FastPathStats never counts them twice.
	n.mu.Lock()
	n.ringDrops.Add(sumDrops(n.workers))
	n.tx, n.workers = nil, nil
	n.mu.Unlock()
	// Closing the sockets ends the workers' ReceiveBlocks and a Resolve in progress.
	s.Close()
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// logConflict reports an ARP or NDP frame b from another host claiming one of our VIPs, at most
// once per conflictLogGap.
func (n *Node) logConflict(b []byte) {
	n.mu.Lock()
	if time.Since(n.conflictLog) < conflictLogGap {
		n.mu.Unlock()
		return
	}
	n.conflictLog = time.Now()
	n.mu.Unlock()
	vip, mac, splitBrain, ok := dataplane.Conflict(b, n.eng.Config().VirtualMAC)
	if !ok {
		return
	}
	if splitBrain {
		n.log.Warn("another balancer announces our VIP with our virtual MAC: two active nodes (split brain)",
			"vip", vip, "from", net.HardwareAddr(b[6:12]).String())
	} else {
		n.log.Warn("another host claims one of our VIPs (arp_ignore missing, or proxy NDP, on a frontend?)",
			"vip", vip, "mac", mac.String())
	}
	if n.cfg.OnConflict != nil {
		n.cfg.OnConflict(vip, mac)
	}
}

// pktOutgoing is sll_pkttype of a frame this host sent (never balancer input).
const pktOutgoing = unix.PACKET_OUTGOING
