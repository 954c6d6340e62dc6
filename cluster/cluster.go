// Package cluster runs a standalone l2lb node: it joins the group's membership (memberlist),
// elects the active balancer among the nodes, replicates the connection table from the active
// node to the standbys and drives the dataplane. Every node is both balancer-capable and a
// frontend. `l2lb run --peers ...` is this package plus flag parsing.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/election"
	"github.com/l2lb/l2lb/scheduler"
	"github.com/l2lb/l2lb/tablesync"
	"github.com/l2lb/l2lb/vipset"
)

// Timing of the control loop.
const (
	// memberInterval re-derives the member list from the membership at least this often.
	memberInterval = time.Second
	// tableReadyWait bounds how long a (re)joining node waits for a bulk dump before it declares
	// its table ready anyway (there may be no active node to send one).
	tableReadyWait = 3 * time.Second
	// handoverWait bounds the SIGTERM hand-over: memberlist gossips the Draining flag in about
	// 100 ms and the successor's election step follows at once.
	handoverWait = 3 * time.Second
	// releaseGrace is how long a node that gave the role away keeps forwarding frames still sent
	// to it: the switch moves the virtual MAC on the successor's first announcement, well within.
	releaseGrace = time.Second
	// healthInterval is the period of the node's own service probe.
	healthInterval = time.Second
)

// Config configures a standalone node.
type Config struct {
	// Name is the node's unique name in the group (default: its address).
	Name string
	// Interface receives VIP traffic; Addr is the node's real IPv4 address on it.
	Interface string
	Addr      netip.Addr
	// VIPs are balanced by the group.
	VIPs *vipset.Set
	// VirtualMAC is answered for the VIPs by whichever node is active.
	VirtualMAC net.HardwareAddr
	// Persistence is IPVS -p.
	Persistence time.Duration
	// Weight is this node's weight as a frontend (others announce theirs); SelfWeight is used
	// instead while this node is the active balancer (-r).
	Weight, SelfWeight uint32
	// Priority orders balancer candidates (higher wins; ties by name).
	Priority uint8
	// Preempt lets a returning higher-priority node take the role back once its table is synced.
	Preempt bool
	// Capable is false for a node that is only a frontend.
	NotCapable bool
	// Bind is the memberlist address (default Addr:7946); Peers are other nodes' memberlist
	// addresses.
	Bind  netip.AddrPort
	Peers []string
	// ClusterKey encrypts memberlist gossip (16, 24 or 32 bytes), optional.
	ClusterKey []byte
	// Sync configures the connection-sync channel (Interface and Local are filled in; Log
	// defaults to the node's).
	Sync connsync.Config
	// HealthPorts are this node's own service ports probed with TCP connects (none: always
	// healthy); Rise and Fall are the hysteresis counts.
	HealthPorts []uint16
	Rise, Fall  int
	// Scheduler, Workers, Conntrack and NoDest configure the dataplane.
	Scheduler scheduler.Kind
	Workers   int
	Conntrack conntrack.Config
	NoDest    dataplane.NoDestPolicy
	// PortLo, PortHi is this node's source-port range (seed step 7), read from
	// net.ipv4.ip_local_port_range when zero.
	PortLo, PortHi uint16
	// Log receives events.
	Log *slog.Logger
	// OnReady is called once the dataplane runs and the node has joined.
	OnReady func()
}

// Node is a running standalone node.
type Node struct {
	cfg    Config
	eng    *dataplane.Engine
	dp     *dataplane.Node
	sync   *tablesync.Syncer
	cl     *election.Cluster
	runner *election.Runner
	log    *slog.Logger

	active      atomic.Bool
	tableReady  atomic.Bool
	mu          sync.Mutex
	gone        map[netip.Addr]bool // departed members kept at weight 0 while they have flows
	owned       map[netip.Addr]bool // VIPs this node serves
	conflict    chan struct{}       // the dataplane saw another node announce our VIP
	memberCh    chan struct{}       // membership changed: re-derive the members
	transitions uint64
	weights     map[netip.Addr]uint32 // operator overrides (l2lb weight / drain)
	lastCfg     []dataplane.Member
	since       time.Time
}

// ErrConfig reports an incomplete configuration.
var ErrConfig = errors.New("cluster: bad configuration")

// New validates cfg and builds the node's parts; Run starts them.
func New(cfg Config) (*Node, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if !cfg.Addr.Is4() {
		return nil, fmt.Errorf("%w: node address %v is not IPv4", ErrConfig, cfg.Addr)
	}
	if cfg.VIPs == nil || cfg.VIPs.Len() == 0 {
		return nil, fmt.Errorf("%w: no VIPs", ErrConfig)
	}
	if cfg.Name == "" {
		cfg.Name = cfg.Addr.String()
	}
	if !cfg.Bind.IsValid() {
		cfg.Bind = netip.AddrPortFrom(cfg.Addr, election.DefaultPort)
	}
	if cfg.Weight == 0 {
		cfg.Weight = 100
	}
	if cfg.Rise <= 0 {
		cfg.Rise = 2
	}
	if cfg.Fall <= 0 {
		cfg.Fall = 3
	}
	if cfg.PortLo == 0 {
		lo, hi, err := election.LocalPortRange()
		if err != nil {
			return nil, fmt.Errorf("cluster: reading net.ipv4.ip_local_port_range: %w", err)
		}
		cfg.PortLo, cfg.PortHi = lo, hi
	}
	cfg.Conntrack.Persistence = cfg.Persistence
	n := &Node{cfg: cfg, log: cfg.Log, gone: map[netip.Addr]bool{}, owned: map[netip.Addr]bool{}, since: time.Now()}
	n.eng = dataplane.New(cfg.Conntrack)
	ifi, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("%w: interface %s: %v", ErrConfig, cfg.Interface, err)
	}
	self := dataplane.Member{Addr: cfg.Addr, Weight: cfg.Weight, Local: true,
		Ports: dataplane.PortRange{Lo: cfg.PortLo, Hi: cfg.PortHi}}
	if err := n.eng.Configure(dataplane.Config{VirtualMAC: cfg.VirtualMAC, InterfaceMAC: ifi.HardwareAddr,
		VIPs: cfg.VIPs, Members: []dataplane.Member{self}, Scheduler: cfg.Scheduler,
		Persistence: cfg.Persistence, NoDest: cfg.NoDest}); err != nil {
		return nil, err
	}
	n.lastCfg = []dataplane.Member{self}
	n.conflict = make(chan struct{}, 1)
	n.dp, err = dataplane.NewNode(dataplane.NodeConfig{Interface: cfg.Interface, Workers: cfg.Workers,
		Engine: n.eng, Logger: cfg.Log, OnConflict: func(netip.Addr, net.HardwareAddr) {
			select {
			case n.conflict <- struct{}{}:
			default:
			}
		}})
	if err != nil {
		return nil, err
	}
	return n, nil
}

// Engine returns the node's dataplane engine (for status).
func (n *Node) Engine() *dataplane.Engine { return n.eng }

// Dataplane returns the node's dataplane (for counters).
func (n *Node) Dataplane() *dataplane.Node { return n.dp }

// Active reports whether this node is the active balancer now.
func (n *Node) Active() bool { return n.active.Load() }

func (n *Node) logf(format string, args ...any) { n.log.Info(fmt.Sprintf(format, args...)) }

// meta is what this node announces.
func (n *Node) meta(healthy bool) election.NodeMeta {
	ifi, _ := net.InterfaceByName(n.cfg.Interface)
	var mac net.HardwareAddr
	if ifi != nil {
		mac = ifi.HardwareAddr
	}
	return election.NodeMeta{Name: n.cfg.Name, Addr: n.cfg.Addr, MAC: mac, PortLo: n.cfg.PortLo, PortHi: n.cfg.PortHi,
		Weight: n.cfg.Weight, Priority: n.cfg.Priority, Healthy: healthy, Capable: !n.cfg.NotCapable,
		TableReady: n.tableReady.Load()}
}

// Run runs the node until ctx ends. On the way out it hands the active role over first (the
// SIGTERM path), then leaves the membership and closes every socket.
func (n *Node) Run(ctx context.Context) error {
	cfg := n.cfg
	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	dpErr := make(chan error, 1)
	wg.Add(1)
	go func() { defer wg.Done(); dpErr <- n.dp.Run(runCtx) }()

	// Connection sync: every node listens; the active one replicates.
	sc := cfg.Sync
	sc.Interface, sc.Local = cfg.Interface, cfg.Addr
	var err error
	n.sync, err = tablesync.Start(n.eng, sc, n.log, func(from netip.Addr) {
		n.setTableReady("bulk dump from " + from.String())
	})
	if err != nil {
		cancel()
		wg.Wait()
		return fmt.Errorf("cluster: sync channel: %w", err)
	}

	// Membership and election.
	healthy := len(cfg.HealthPorts) == 0
	n.cl, err = election.Join(election.ClusterConfig{Name: cfg.Name, Bind: cfg.Bind, Peers: cfg.Peers,
		Meta: n.meta(healthy), Log: n.log, SecretKey: cfg.ClusterKey})
	if err != nil {
		n.sync.Close()
		cancel()
		wg.Wait()
		return fmt.Errorf("cluster: joining: %w", err)
	}
	el := election.NewElector(cfg.Name, cfg.VIPs.Addrs(), election.Options{Preempt: cfg.Preempt}, n.log)
	// The membership signals each change once; both the election and the member list must see
	// every change, so the signal is fanned out (a shared channel made one of them wait for its
	// next one-second tick, which slowed hand-overs to a second).
	runnerFeed := feed{Cluster: n.cl, ch: make(chan struct{}, 1)}
	n.memberCh = make(chan struct{}, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-n.cl.Updated():
				kick(runnerFeed.ch)
				kick(n.memberCh)
			}
		}
	}()
	n.runner = election.NewRunner(runnerFeed, el, n.meta(healthy), n.apply)
	// A (re)joining node asks the active one for the table before it may preempt anyone.
	n.sync.RequestDump()
	wg.Add(3)
	go func() { defer wg.Done(); n.runner.Run(runCtx, n.log) }()
	go func() { defer wg.Done(); n.memberLoop(runCtx) }()
	go func() { defer wg.Done(); n.healthLoop(runCtx, healthy) }()
	wg.Add(1)
	go func() {
		// Split brain seen on the wire: run the election at once instead of waiting for gossip;
		// the node Decide ranks lower yields (both log it: the dataplane logs the conflict, the
		// elector logs who yields).
		defer wg.Done()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-n.conflict:
				// The winner re-announces once the loser lets go (see memberLoop);
				// announcing here could pull the virtual MAC to a node about to yield.
				n.runner.Sync()
			}
		}
	}()
	go func() {
		select {
		case <-time.After(tableReadyWait):
			n.setTableReady("no bulk dump within " + tableReadyWait.String())
		case <-runCtx.Done():
		}
	}()
	if cfg.OnReady != nil {
		cfg.OnReady()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-dpErr:
		n.log.Error("dataplane stopped", "err", runErr)
	}
	// Planned stop: hand over first, so that a successor answers ARP before we stop.
	if n.active.Load() {
		hctx, hcancel := context.WithTimeout(context.Background(), handoverWait)
		if err := n.runner.Handover(hctx); err != nil {
			n.log.Warn("hand-over did not complete; releasing anyway", "err", err)
		} else {
			n.log.Info("handed over the active role")
		}
		hcancel()
	}
	n.cl.Leave(time.Second)
	n.cl.Shutdown()
	n.sync.Close()
	cancel()
	wg.Wait()
	return runErr
}

// apply is the election's effect on the dataplane.
func (n *Node) apply(acquire, release []netip.Addr) {
	// Called by the runner with its lock held: track ownership here rather than asking it.
	n.mu.Lock()
	for _, v := range acquire {
		n.owned[v] = true
	}
	for _, v := range release {
		delete(n.owned, v)
	}
	on := len(n.owned) > 0
	n.mu.Unlock()
	was := n.active.Swap(on)
	if on != was {
		n.log.Info("role change", "active", on, "acquired", fmt.Sprint(acquire), "released", fmt.Sprint(release))
		n.mu.Lock()
		n.since = time.Now()
		n.transitions++
		n.mu.Unlock()
		n.reconfigure()
	}
	if on {
		n.dp.SetActive(true)
	} else if was {
		// Hand-over or split-brain yield: stop answering ARP now, keep forwarding what is
		// already in flight to us for a moment (the tables are synced, so both nodes forward
		// a flow the same way).
		n.dp.Release(releaseGrace)
	}
	n.sync.SetActive(on)
}

func (n *Node) setTableReady(why string) {
	if n.tableReady.Swap(true) {
		return
	}
	n.log.Info("connection table ready", "why", why)
	if n.runner != nil {
		n.runner.Update(func(m *election.NodeMeta) { m.TableReady = true })
	}
}

// memberLoop derives the frontend list from the membership.
func (n *Node) memberLoop(ctx context.Context) {
	t := time.NewTicker(memberInterval)
	defer t.Stop()
	contested := false
	for {
		n.reconfigure()
		// While another node also claims a VIP we serve (a hand-over in progress, or a split
		// brain being resolved), the switch may learn the virtual MAC at either port. When the
		// other node lets go and we still serve, announce again so that the switch and the
		// clients point at us at once instead of at the next refresh.
		now := n.contested()
		if contested && !now && n.active.Load() {
			n.log.Info("another node released our VIPs; announcing them again")
			n.dp.Announce()
		}
		contested = now
		select {
		case <-ctx.Done():
			return
		case <-n.memberCh:
		case <-t.C:
		}
	}
}

// feed is the membership as the election runner sees it, with its own change signal.
type feed struct {
	*election.Cluster
	ch chan struct{}
}

// Updated implements election.Membership.
func (f feed) Updated() <-chan struct{} { return f.ch }

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// contested reports whether another alive node claims one of the VIPs this node serves.
func (n *Node) contested() bool {
	n.mu.Lock()
	owned := make(map[netip.Addr]bool, len(n.owned))
	for v := range n.owned {
		owned[v] = true
	}
	n.mu.Unlock()
	if len(owned) == 0 {
		return false
	}
	for _, m := range n.cl.View().Members {
		if m.Name == n.cfg.Name || !m.Alive {
			continue
		}
		for _, v := range m.Active {
			if owned[v] {
				return true
			}
		}
	}
	return false
}

// reconfigure applies the current membership to the engine: alive and healthy nodes are members
// with their announced weight and port range; this node weighs SelfWeight while active. A node
// that left or turned unhealthy stays as a weight-0 member while flows still point at it, so its
// established connections continue (its kernel and services may well be alive: only its l2lb
// process may have died); if the node itself is gone, its MAC stops resolving and its flows are
// rescheduled by the dataplane.
func (n *Node) reconfigure() {
	v := n.cl.View()
	n.mu.Lock()
	defer n.mu.Unlock()
	var ms []dataplane.Member
	seen := map[netip.Addr]bool{}
	for _, m := range v.Members {
		if !m.Addr.Is4() || seen[m.Addr] {
			continue
		}
		dm := dataplane.Member{Addr: m.Addr, Weight: m.Weight, Ports: dataplane.PortRange{Lo: m.PortLo, Hi: m.PortHi}}
		if m.Addr == n.cfg.Addr {
			dm.Local, dm.Ports = true, dataplane.PortRange{Lo: n.cfg.PortLo, Hi: n.cfg.PortHi}
			dm.Weight = n.cfg.Weight
			if n.active.Load() && n.cfg.SelfWeight > 0 {
				dm.Weight = n.cfg.SelfWeight
			}
		} else if !m.Alive || !m.Healthy {
			continue
		}
		if w, ok := n.weights[m.Addr]; ok {
			dm.Weight = w
		}
		seen[m.Addr] = true
		delete(n.gone, m.Addr)
		ms = append(ms, dm)
	}
	for _, old := range n.lastCfg {
		if seen[old.Addr] {
			continue
		}
		id, ok := n.eng.MemberID(old.Addr)
		if ok && n.eng.Table().Active(id) > 0 {
			if !n.gone[old.Addr] {
				n.log.Info("member left; keeping its established flows", "member", old.Addr, "flows", n.eng.Table().Active(id))
				n.gone[old.Addr] = true
			}
			old.Weight = 0
			ms = append(ms, old)
			seen[old.Addr] = true
		} else {
			delete(n.gone, old.Addr)
		}
	}
	// Port ranges that overlap cannot both be honoured: report and drop the later one.
	if o := election.Overlaps(v); len(o) > 0 {
		n.log.Warn("members' source-port ranges overlap (seed step 7)", "pairs", fmt.Sprint(o))
		ms = dropOverlaps(ms)
	}
	slices.SortFunc(ms, func(a, b dataplane.Member) int { return a.Addr.Compare(b.Addr) })
	if slices.Equal(ms, n.lastCfg) {
		return
	}
	cfg := n.eng.Config()
	cfg.Members = ms
	if err := n.eng.Configure(cfg); err != nil {
		n.log.Warn("applying membership", "err", err)
		return
	}
	n.lastCfg = ms
	n.log.Info("members", "members", memberList(ms))
}

func dropOverlaps(ms []dataplane.Member) []dataplane.Member {
	out := make([]dataplane.Member, 0, len(ms))
	for _, m := range ms {
		for _, o := range out {
			if m.Ports != (dataplane.PortRange{}) && o.Ports != (dataplane.PortRange{}) &&
				m.Ports.Lo <= o.Ports.Hi && o.Ports.Lo <= m.Ports.Hi {
				m.Ports = dataplane.PortRange{}
			}
		}
		out = append(out, m)
	}
	return out
}

func memberList(ms []dataplane.Member) string {
	s := ""
	for i, m := range ms {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%s/%d", m.Addr, m.Weight)
	}
	return s
}

// healthLoop probes this node's own service ports and gossips the result with hysteresis; an
// unhealthy node gets no new flows from the active balancer and is not a candidate.
func (n *Node) healthLoop(ctx context.Context, healthy bool) {
	if len(n.cfg.HealthPorts) == 0 {
		return
	}
	var addrs []netip.AddrPort
	for _, p := range n.cfg.HealthPorts {
		addrs = append(addrs, netip.AddrPortFrom(n.cfg.Addr, p))
	}
	h, err := election.NewHealth(election.TCPProbe(addrs, 500*time.Millisecond), n.cfg.Rise, n.cfg.Fall)
	if err != nil {
		n.log.Error("health check", "err", err)
		return
	}
	t := time.NewTicker(healthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, changed := h.Step()
		if changed {
			n.log.Info("health changed", "healthy", ok)
			n.runner.Update(func(m *election.NodeMeta) { m.Healthy = ok })
		}
	}
}

// SetWeight overrides a member's weight (l2lb weight, l2lb drain) until the process restarts;
// weight 0 quiesces it.
func (n *Node) SetWeight(member netip.Addr, weight uint32) error {
	found := false
	for _, m := range n.eng.Members() {
		if m.Addr == member {
			found = true
		}
	}
	if !found {
		return fmt.Errorf("cluster: %v is not a member", member)
	}
	n.mu.Lock()
	if n.weights == nil {
		n.weights = map[netip.Addr]uint32{}
	}
	n.weights[member] = weight
	n.lastCfg = nil // force re-application
	n.mu.Unlock()
	n.reconfigure()
	return nil
}

// RoleInfo returns whether the node is active, since when and how many role changes it saw.
func (n *Node) RoleInfo() (active bool, since time.Time, transitions uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.active.Load(), n.since, n.transitions
}

// SyncLast returns when the last sync message from another node arrived.
func (n *Node) SyncLast() time.Time {
	if n.sync == nil {
		return time.Time{}
	}
	return n.sync.LastReceived()
}

// SyncStats returns the sync channel's counters.
func (n *Node) SyncStats() (connsync.Stats, bool) {
	if n.sync == nil {
		return connsync.Stats{}, false
	}
	return n.sync.Stats(), true
}

// Status is a summary for logs and status output.
type Status struct {
	Name       string
	Active     bool
	Since      time.Time
	TableReady bool
	Members    []dataplane.MemberStatus
	Sync       connsync.Stats
}

// Status returns the node's state.
func (n *Node) Status() Status {
	n.mu.Lock()
	since := n.since
	n.mu.Unlock()
	s := Status{Name: n.cfg.Name, Active: n.active.Load(), Since: since, TableReady: n.tableReady.Load(),
		Members: n.eng.Members()}
	if n.sync != nil {
		s.Sync = n.sync.Stats()
	}
	return s
}
