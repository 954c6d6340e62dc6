// Package cluster is the control plane of a standalone l2lb group (`l2lb run --peers ...`): it
// joins the group's membership (memberlist), elects the active balancer among the nodes, probes
// this node's own services and tells its balancer, through balancer.Control, whether it is active
// and which frontends the group has, with their weights, source-port ranges and health. Every
// node is both balancer-capable and a frontend; the balancer replicates the connection table.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l2lb/l2lb/balancer"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/election"
)

// Timing of the control plane.
const (
	// memberInterval re-derives the member list from the membership at least this often.
	memberInterval = time.Second
	// tableReadyWait bounds how long a (re)joining node waits for a bulk dump before it declares
	// its table ready anyway (there may be no active node to send one).
	tableReadyWait = 3 * time.Second
	// handoverWait bounds the SIGTERM hand-over: memberlist gossips the Draining flag in about
	// 100 ms and the successor's election step follows at once.
	handoverWait = 3 * time.Second
	// healthInterval is the period of the node's own service probe; healthRise and healthFall
	// are its hysteresis (keepalived's and HAProxy's usual 2 and 3).
	healthInterval = time.Second
	healthRise     = 2
	healthFall     = 3
	// healthTimeout bounds one TCP connect of the probe.
	healthTimeout = 500 * time.Millisecond
	// leaveTimeout bounds the goodbye gossip on the way out.
	leaveTimeout = time.Second
)

// ErrConfig reports an incomplete configuration.
var ErrConfig = errors.New("cluster: bad configuration")

// Membership is the group as this node sees it: election.Cluster over memberlist, or a fake.
type Membership interface {
	election.Membership
	// Leave tells the group this node leaves; Shutdown stops the membership.
	Leave(timeout time.Duration) error
	Shutdown() error
}

// Config configures a node of a standalone group.
type Config struct {
	// Name is the node's unique name in the group (default: its address).
	Name string
	// Addr is the node's real IPv4 address; MAC is its interface's, announced to the group.
	Addr netip.Addr
	MAC  net.HardwareAddr
	// VIPs are the group's VIPs, the keys of the election.
	VIPs []netip.Addr
	// Weight is this node's weight as a frontend (others announce theirs); SelfWeight (-r) is
	// used instead while this node is the active balancer, 0 included.
	Weight, SelfWeight uint32
	// Priority orders balancer candidates (higher wins; ties by name).
	Priority uint8
	// Preempt lets a returning higher-priority node take the role back once its table is synced.
	Preempt bool
	// PortLo, PortHi is this node's source-port range (seed step 7), read from
	// net.ipv4.ip_local_port_range when zero.
	PortLo, PortHi uint16
	// Bind is the memberlist address (default Addr:7946); Peers are other nodes' memberlist
	// addresses; ClusterKey, if set, encrypts the gossip (16, 24 or 32 bytes).
	Bind       netip.AddrPort
	Peers      []string
	ClusterKey []byte
	// HealthPorts are this node's own service ports, probed with TCP connects every second (none:
	// always healthy). An unhealthy node gets no new flows and is no candidate.
	HealthPorts []uint16
	// Log receives events (nil: discarded).
	Log *slog.Logger
	// Join joins the membership (default: election.Join over memberlist); tests inject a fake.
	Join func(election.ClusterConfig) (Membership, error)
	// Probe replaces the TCP probe of HealthPorts (tests).
	Probe func() bool
}

// Node is this node's control plane.
type Node struct {
	cfg Config
	b   balancer.Control
	log *slog.Logger

	// Set by Run before its goroutines start, read by them only.
	m      Membership
	runner *election.Runner

	active     atomic.Bool
	healthy    atomic.Bool
	tableReady atomic.Bool

	mu       sync.Mutex
	owned    map[netip.Addr]bool // VIPs this node serves
	memberCh chan struct{}       // membership changed: re-derive the members
}

// New validates cfg and gives b its first member list, this node alone, so that the balancer can
// be operated (`l2lb weight`, `l2lb status`) before the group is joined. Run joins the group.
func New(b balancer.Control, cfg Config) (*Node, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if !cfg.Addr.Is4() {
		return nil, fmt.Errorf("%w: node address %v is not IPv4", ErrConfig, cfg.Addr)
	}
	if len(cfg.VIPs) == 0 {
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
	if cfg.PortLo == 0 {
		lo, hi, err := election.LocalPortRange()
		if err != nil {
			return nil, fmt.Errorf("cluster: reading net.ipv4.ip_local_port_range: %w", err)
		}
		cfg.PortLo, cfg.PortHi = lo, hi
	}
	if cfg.Join == nil {
		cfg.Join = func(c election.ClusterConfig) (Membership, error) { return election.Join(c) }
	}
	if cfg.Probe == nil && len(cfg.HealthPorts) > 0 {
		var addrs []netip.AddrPort
		for _, p := range cfg.HealthPorts {
			addrs = append(addrs, netip.AddrPortFrom(cfg.Addr, p))
		}
		cfg.Probe = election.TCPProbe(addrs, healthTimeout)
	}
	n := &Node{cfg: cfg, b: b, log: cfg.Log, owned: map[netip.Addr]bool{}, memberCh: make(chan struct{}, 1)}
	// With health checks a node starts unhealthy and turns healthy after healthRise good probes.
	n.healthy.Store(cfg.Probe == nil)
	if err := b.SetMembers([]balancer.Member{n.self()}); err != nil {
		return nil, err
	}
	return n, nil
}

// self is this node as a member of its own balancer.
func (n *Node) self() balancer.Member {
	w := n.cfg.Weight
	if n.active.Load() {
		w = n.cfg.SelfWeight
	}
	return balancer.Member{Addr: n.cfg.Addr, Weight: w, Local: true, Down: !n.healthy.Load(),
		Ports: dataplane.PortRange{Lo: n.cfg.PortLo, Hi: n.cfg.PortHi}}
}

// meta is what this node announces.
func (n *Node) meta() election.NodeMeta {
	return election.NodeMeta{Name: n.cfg.Name, Addr: n.cfg.Addr, MAC: n.cfg.MAC, PortLo: n.cfg.PortLo,
		PortHi: n.cfg.PortHi, Weight: n.cfg.Weight, Priority: n.cfg.Priority, Healthy: n.healthy.Load(),
		Capable: true, TableReady: n.tableReady.Load()}
}

// Run joins the group and drives the balancer until ctx ends. On the way out it hands the active
// role over first (the SIGTERM path), then leaves the membership.
func (n *Node) Run(ctx context.Context) error {
	m, err := n.cfg.Join(election.ClusterConfig{Name: n.cfg.Name, Bind: n.cfg.Bind, Peers: n.cfg.Peers,
		Meta: n.meta(), Log: n.log.With("part", "membership"), SecretKey: n.cfg.ClusterKey})
	if err != nil {
		return fmt.Errorf("cluster: joining: %w", err)
	}
	n.start(m)
	runCtx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// The membership signals each change once; both the election and the member list must see
	// every change, so the signal is fanned out (a shared channel made one of them wait for its
	// next one-second tick, which slowed hand-overs to a second).
	runnerFeed := feed{Membership: m, ch: make(chan struct{}, 1)}
	n.runner = election.NewRunner(runnerFeed, n.newElector(), n.meta(), n.apply)
	wg.Add(5)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-m.Updated():
				kick(runnerFeed.ch)
				kick(n.memberCh)
			}
		}
	}()
	go func() { defer wg.Done(); n.runner.Run(runCtx, n.log) }()
	go func() { defer wg.Done(); n.memberLoop(runCtx) }()
	go func() { defer wg.Done(); n.healthLoop(runCtx) }()
	go func() { defer wg.Done(); n.eventLoop(runCtx) }()

	<-ctx.Done()
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
	m.Leave(leaveTimeout)
	m.Shutdown()
	cancel()
	wg.Wait()
	return nil
}

// start keeps the membership for the loops.
func (n *Node) start(m Membership) { n.m = m }

// newElector returns the election state machine of this node.
func (n *Node) newElector() *election.Elector {
	return election.NewElector(n.cfg.Name, n.cfg.VIPs, election.Options{Preempt: n.cfg.Preempt}, n.log)
}

// eventLoop acts on what the balancer notices: a split brain seen on the wire runs the election
// at once instead of waiting for gossip (the node Decide ranks lower yields; the winner
// re-announces once the loser lets go, see memberLoop), and a completed bulk dump makes the
// table ready. A node that saw no dump within tableReadyWait declares its table ready anyway.
func (n *Node) eventLoop(ctx context.Context) {
	wait := time.NewTimer(tableReadyWait)
	defer wait.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-wait.C:
			n.setTableReady("no bulk dump within " + tableReadyWait.String())
		case ev := <-n.b.Events():
			switch ev.Kind {
			case balancer.EventConflict:
				n.runner.Sync()
			case balancer.EventTableSynced:
				n.setTableReady("bulk dump from " + ev.From.String())
			}
		}
	}
}

// apply is the election's effect on the balancer. The runner calls it with its lock held.
func (n *Node) apply(acquire, release []netip.Addr) {
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
	if on == was {
		return
	}
	n.log.Info("role change", "active", on, "acquired", fmt.Sprint(acquire), "released", fmt.Sprint(release))
	n.reconfigure() // this node's own weight is -r while active
	if on {
		n.b.SetRole(balancer.RoleActive)
	} else {
		// Hand-over or split-brain yield: stop answering ARP now, keep forwarding what is
		// already in flight to us for a moment (the tables are synced, so both nodes forward
		// a flow the same way).
		n.b.SetRole(balancer.RoleReleasing)
	}
}

func (n *Node) setTableReady(why string) {
	if n.tableReady.Swap(true) {
		return
	}
	n.log.Info("connection table ready", "why", why)
	n.runner.Update(func(m *election.NodeMeta) { m.TableReady = true })
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
			n.b.Announce()
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
	Membership
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
	for _, m := range n.m.View().Members {
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

// reconfigure gives the balancer the group's frontends: this node itself, and every other alive
// node with its announced weight and port range, marked Down while its own health check fails and
// Leaving while it announces Draining. A node that vanished is no longer listed; the balancer keeps
// its established flows while it stays reachable (graceful leave, issue 13), since its kernel and
// services may well be alive.
func (n *Node) reconfigure() {
	ms := []balancer.Member{n.self()}
	seen := map[netip.Addr]bool{n.cfg.Addr: true}
	for _, m := range n.m.View().Members {
		if !m.Addr.Is4() || seen[m.Addr] || !m.Alive {
			continue
		}
		seen[m.Addr] = true
		ms = append(ms, balancer.Member{Addr: m.Addr, Weight: m.Weight, Down: !m.Healthy, Leaving: m.Draining,
			Ports: dataplane.PortRange{Lo: m.PortLo, Hi: m.PortHi}})
	}
	if err := n.b.SetMembers(ms); err != nil {
		n.log.Warn("applying membership", "err", err)
	}
}

// healthLoop probes this node's own service ports and gossips the result with hysteresis.
func (n *Node) healthLoop(ctx context.Context) {
	if n.cfg.Probe == nil {
		return
	}
	h, err := election.NewHealth(n.cfg.Probe, healthRise, healthFall)
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
		n.observeHealth(h.Step())
	}
}

// observeHealth applies one health-check result.
func (n *Node) observeHealth(ok, changed bool) {
	if !changed {
		return
	}
	n.log.Info("health changed", "healthy", ok)
	n.healthy.Store(ok)
	n.runner.Update(func(m *election.NodeMeta) { m.Healthy = ok })
	n.reconfigure()
}
