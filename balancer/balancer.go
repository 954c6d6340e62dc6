// Package balancer owns a running l2lb balancer: the per-frame engine, the fast path on its
// sockets, the connection-sync channel, the members with their MACs, weights and drains, the VIP
// list and its reloads, the counters and the status. It is assembled once here, whatever drives
// it: a control plane (static members, the standalone cluster, CommuniGate Pro's helper) talks to
// it only through the Control interface, and the operator's tools (control socket, metrics, status
// page) read it through control.Provider, which *Balancer implements.
package balancer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/dataplane/node"
	"github.com/l2lb/l2lb/dsrprobe"
	"github.com/l2lb/l2lb/scheduler"
	"github.com/l2lb/l2lb/services"
	"github.com/l2lb/l2lb/vipset"
)

// Timing of the balancer's own loops.
const (
	// ReleaseGrace is how long RoleReleasing keeps forwarding frames still sent to this node:
	// the switch moves the virtual MAC on the successor's first announcement, well within.
	ReleaseGrace = time.Second
	// housekeepingInterval paces the stats file, the retries of the sync channel and the
	// re-evaluation of leaving members.
	housekeepingInterval = time.Second
	// reopenMin and reopenMax bound the back-off between attempts to open the fast path's
	// sockets (the interface missing or down).
	reopenMin = 250 * time.Millisecond
	reopenMax = 10 * time.Second
	// syncRetry is the wait between attempts to open a sync channel that failed to open.
	syncRetry = 10 * time.Second
)

// Config configures a Balancer.
type Config struct {
	// Mode and Name identify the balancer in the status (control.ModeRun, ModeCluster,
	// ModeHelper; the node's name).
	Mode, Name string
	// Interface receives VIP traffic and sends forwarded frames.
	Interface string
	// VIPFile lists the VIPs (seed format); Reload re-reads it.
	VIPFile string
	// StartAnyway makes New succeed when the VIP file cannot be read or the interface is
	// missing: the problem shows in the status and in SetRole's error until Reload or the
	// interface's appearance repairs it. CGP's helper needs this (it must keep answering);
	// `l2lb run` fails at start instead.
	StartAnyway bool
	// VirtualMAC is answered for the VIPs while active.
	VirtualMAC net.HardwareAddr
	// Scheduler, Persistence and NoDest configure the engine (IPVS -s, -p, expire_nodest_conn).
	Scheduler   scheduler.Kind
	Persistence time.Duration
	NoDest      dataplane.NoDestPolicy
	// MaxConns and Timeouts configure the connection table.
	MaxConns int
	Timeouts conntrack.Timeouts
	// Workers, BusyPoll and Coalesce configure the fast path (node.OpenConfig).
	Workers  int
	BusyPoll time.Duration
	Coalesce time.Duration
	// Priority raises a worker's thread while its ring overflows (node.Config.Priority; nil: off).
	Priority node.Prioritizer
	// Sync, when set, opens the connection-sync channel: the active node replicates its table,
	// standbys import it (IPVS's sync daemon). Interface and Log are filled in.
	Sync *connsync.Config
	// KeepVanishedPersistence treats a member that vanished from the list without leaving on
	// purpose like a quiesced IPVS server: its persistent clients' new connections still go to
	// it while it is reachable. The standalone cluster sets it, because a node that drops out of
	// the gossip without announcing Draining has most likely lost only its l2lb (a crash), not
	// its services. Elsewhere the list is a deliberate decision (CGP's Ready servers, the
	// operator's --member), so a member that left it gets no new connections at all.
	KeepVanishedPersistence bool
	// StatsFile, when set, receives the status as JSON every second and at exit.
	StatsFile string
	// Log receives events (nil: discarded).
	Log *slog.Logger
	// Open opens the fast path's sockets (default node.Open); tests inject fakes.
	Open func(node.OpenConfig) (node.Sockets, error)
	// ServicesFile, when set, is the services file (package services): per-port idle timeouts,
	// SIP Call-ID affinity and health checks. Reload re-reads it.
	ServicesFile string
	// OpenProbe opens the health checks' probe stack (default OpenProbeStack); tests inject one.
	OpenProbe func(dsrprobe.Config) (ProbeStack, error)
	// ClockRate, above 1, runs the connection table's clock that many times faster than real
	// time (dataplane.Engine.SetClockRate): for end-to-end tests of long idle timeouts only.
	ClockRate int64
}

// Balancer is one running balancer. Its methods may be called from several goroutines.
type Balancer struct {
	cfg    Config
	log    *slog.Logger
	eng    *dataplane.Engine
	node   *node.Node
	events chan Event
	start  time.Time

	mu          sync.Mutex
	role        Role // what the control plane asked for
	since       time.Time
	transitions uint64
	vips        *vipset.Set
	vipErr      error
	running     bool              // the fast path runs on open sockets
	fastPath    *control.FastPath // what the running fast path's sockets are; nil while not running
	openErr     error             // why the last attempt to open the sockets failed
	members     []Member
	leaving     map[netip.Addr]bool // departed members kept at weight 0 while they have flows
	deliberate  map[netip.Addr]bool // members that left on purpose (Member.Leaving): no new connections
	letGo       map[netip.Addr]bool // departed members let go (unreachable or failing) while their flows move
	unhealthy   map[netip.Addr]bool // members whose service health checks fail (SetHealth)
	applied     []dataplane.Member
	weights     map[netip.Addr]uint32 // operator overrides (l2lb weight / drain)
	conflicts   string                // the port-range overlaps reported last
	sync        *syncer
	syncErr     error
	syncTried   time.Time
	reloadHooks []ReloadHook
	svc         *services.File // the services file in force; nil without one
	svcErr      error          // why the services file could not be read at start (StartAnyway)
	svcStart    *services.File // the file read at start, whose idle timeouts the table has
	health      *health        // the health checks of svc; nil without any
	kick        chan struct{}  // wakes housekeeping at once (a role change starts the checks)
}

// New returns a balancer in the standby role with the VIPs of cfg.VIPFile; it opens nothing
// (Run does). A bad VIP file or a missing interface is an error unless cfg.StartAnyway.
func New(cfg Config) (*Balancer, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 1
	}
	if cfg.Open == nil {
		cfg.Open = node.Open
	}
	if len(cfg.VirtualMAC) != 6 {
		return nil, fmt.Errorf("balancer: virtual MAC %v is not a MAC-48 address", cfg.VirtualMAC)
	}
	if cfg.Scheduler == "" {
		cfg.Scheduler = scheduler.KindMaglev
	}
	b := &Balancer{cfg: cfg, log: cfg.Log, events: make(chan Event, 16), start: time.Now(), kick: make(chan struct{}, 1),
		leaving: map[netip.Addr]bool{}, deliberate: map[netip.Addr]bool{}, letGo: map[netip.Addr]bool{}, unhealthy: map[netip.Addr]bool{}, weights: map[netip.Addr]uint32{}}
	b.since = b.start
	if cfg.OpenProbe == nil {
		cfg.OpenProbe = OpenProbeStack
		b.cfg.OpenProbe = OpenProbeStack
	}
	if cfg.ServicesFile != "" {
		f, err := services.Load(cfg.ServicesFile)
		if err != nil && !cfg.StartAnyway {
			return nil, err
		}
		b.svc, b.svcErr = f, err
	}
	ctc := conntrack.Config{MaxEntries: cfg.MaxConns, Timeouts: cfg.Timeouts,
		Persistence: cfg.Persistence, PortTimeouts: portTimeouts(b.svc)}
	if err := ctc.Validate(); err != nil {
		if b.svc != nil {
			return nil, fmt.Errorf("%s: %w", b.svc.Path, err)
		}
		return nil, fmt.Errorf("balancer: %w", err)
	}
	b.svcStart = b.svc
	b.eng = dataplane.New(ctc)
	if cfg.ClockRate > 1 {
		b.eng.SetClockRate(cfg.ClockRate)
		b.log.Warn("test clock: the connection table's timeouts run faster than real time", "rate", cfg.ClockRate)
	}
	b.vips, b.vipErr = ReadVIPs(cfg.VIPFile)
	if b.vipErr != nil && !cfg.StartAnyway {
		return nil, b.vipErr
	}
	if b.svc != nil {
		var err error
		if b.health, err = newHealth(b, b.svc, b.vips.Addrs()); err != nil && !cfg.StartAnyway {
			return nil, err
		} else if err != nil {
			b.svc, b.svcErr = nil, err
		}
	}
	if _, err := net.InterfaceByName(cfg.Interface); err != nil && !cfg.StartAnyway {
		return nil, fmt.Errorf("%w: -i %s: %w", ErrNoInterface, cfg.Interface, err)
	}
	// The interface's MAC, the source of forwarded frames, is set when the fast path opens.
	if err := b.eng.Configure(dataplane.Config{VirtualMAC: cfg.VirtualMAC, VIPs: b.vips,
		Scheduler: cfg.Scheduler, NoDest: cfg.NoDest, CallIDPorts: callIDPorts(b.svc),
		ProbeSources: probeSources(b.svc)}); err != nil {
		return nil, fmt.Errorf("balancer: %w", err)
	}
	b.node = node.New(node.Config{Engine: b.eng, Workers: cfg.Workers, Log: cfg.Log, Priority: cfg.Priority,
		OnConflict: func(vip netip.Addr, _ net.HardwareAddr) { b.emit(Event{Kind: EventConflict, From: vip}) }})
	b.node.SetMulticast(solicitedNodeMACs(b.vips))
	return b, nil
}

// solicitedNodeMACs returns the Ethernet groups neighbour solicitations for the IPv6 VIPs of v
// are sent to, which the interface must deliver to the fast path.
func solicitedNodeMACs(v *vipset.Set) []net.HardwareAddr {
	var out []net.HardwareAddr
	for _, a := range v.Addrs() {
		if a.Is6() {
			out = append(out, dataplane.SolicitedNodeMAC(a))
		}
	}
	return out
}

// ReadVIPs parses a VIP file (seed format) as the balancer does: a file that lists none is an
// error too, and every error wraps ErrNoVIPs.
func ReadVIPs(path string) (*vipset.Set, error) {
	v, err := vipset.ParseFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoVIPs, err)
	}
	if v.Len() == 0 {
		return nil, fmt.Errorf("%w: %s lists none", ErrNoVIPs, path)
	}
	return v, nil
}

// emit delivers ev unless nobody has room for it.
func (b *Balancer) emit(ev Event) {
	select {
	case b.events <- ev:
	default:
	}
}

// Events implements Control.
func (b *Balancer) Events() <-chan Event { return b.events }

// VIPs returns the VIPs in force (an empty set while none could be read).
func (b *Balancer) VIPs() *vipset.Set { return b.eng.Config().VIPs }

// Engine returns the balancer's per-frame engine, for benchmarks and tests that look inside.
func (b *Balancer) Engine() *dataplane.Engine { return b.eng }

// Run runs the fast path until ctx ends: it opens the sockets (retrying with a back-off while the
// interface is missing or down), runs the engine on them, and opens them again if they fail. The
// engine, its connection table and the counters outlive every restart. It also runs the sync
// channel and the stats file. On the way out it stops answering and forwarding, closes every
// socket and writes the stats file a last time.
func (b *Balancer) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	// The goroutines below end with ctx: a configuration error returned early must stop them
	// before wg.Wait, or Run never returns (it hung on ErrQueues and ErrSuperFrames until
	// TestAFXDPRefusesSuperFrames caught it).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(2)
	go func() { defer wg.Done(); b.housekeeping(ctx) }()
	go func() { defer wg.Done(); b.watchHealth(ctx) }()
	defer b.closeSync()
	defer b.closeHealth()
	wait := reopenMin
	backOff := func() {
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, reopenMax)
	}
	for ctx.Err() == nil {
		socks, err := b.open()
		if errors.Is(err, node.ErrQueues) || errors.Is(err, node.ErrSuperFrames) || errors.Is(err, node.ErrFlowCacheVeth) {
			// More receive queues than workers, generic XDP that would drop bulk TCP, or a
			// flow cache whose XDP_TX a veth would drop: a configuration error, not a passing
			// state.
			return fmt.Errorf("balancer: %w", err)
		}
		if err != nil {
			b.mu.Lock()
			changed := b.openErr == nil || b.openErr.Error() != err.Error()
			b.openErr = err
			b.mu.Unlock()
			if changed {
				b.log.Error("cannot open the fast path; retrying", "interface", b.cfg.Interface, "err", err)
			}
			backOff()
			continue
		}
		started := time.Now()
		b.setRunning(true, socks, nil)
		err = b.node.Run(ctx, socks)
		if err == nil || ctx.Err() != nil {
			b.setRunning(false, node.Sockets{}, nil)
			break
		}
		if ifi, ierr := net.InterfaceByName(b.cfg.Interface); ierr == nil && ifi.Flags&net.FlagUp == 0 {
			// The link went down: report it as the reopening will (node.Open refuses a down
			// interface), so the problem keeps one text while it lasts and CGP's log does not
			// get a "repaired" line for a mere change of wording.
			err = fmt.Errorf("%w: %s", node.ErrInterfaceDown, b.cfg.Interface)
		}
		// The error is recorded with the stop, so that no status shows the fast path down
		// without saying why (TestFastPathRestart once caught that moment in CI).
		b.setRunning(false, node.Sockets{}, err)
		b.log.Error("fast path stopped; reopening its sockets", "interface", b.cfg.Interface, "err", err)
		if time.Since(started) < reopenMax {
			// Sockets that fail soon after opening would fail again at once: back off as
			// for a failed open, and only a life longer than the longest wait resets it.
			backOff()
		} else {
			wait = reopenMin
		}
	}
	b.node.SetActive(false)
	b.writeStats()
	return nil
}

// open opens the sockets of one fast-path life and gives the engine the interface's MAC (it may
// have changed while the interface was away).
func (b *Balancer) open() (node.Sockets, error) {
	s, err := b.cfg.Open(node.OpenConfig{Interface: b.cfg.Interface, Workers: b.cfg.Workers, BusyPoll: b.cfg.BusyPoll,
		Coalesce: b.cfg.Coalesce, VirtualMAC: b.cfg.VirtualMAC, FanoutGroup: uint16(os.Getpid())})
	if err != nil {
		if errors.Is(err, node.ErrNoInterface) {
			err = fmt.Errorf("%w: %w", ErrNoInterface, err)
		}
		return node.Sockets{}, err
	}
	// Under b.mu: every read-modify-write of the engine's configuration is, or a member list
	// applied between this Config and Configure would be undone (and, equal to b.applied, never
	// applied again) — TestIPv6CrashFailover caught a restarted node left without its members.
	b.mu.Lock()
	defer b.mu.Unlock()
	cfg := b.eng.Config()
	if string(cfg.InterfaceMAC) != string(s.MAC) {
		cfg.InterfaceMAC = s.MAC
		if err := b.eng.Configure(cfg); err != nil {
			s.Close()
			return node.Sockets{}, err
		}
	}
	return s, nil
}

// setRunning records that the fast path runs on s (or stopped, because of stopErr if not nil)
// and applies the role asked for.
func (b *Balancer) setRunning(on bool, s node.Sockets, stopErr error) {
	b.mu.Lock()
	b.running = on
	b.fastPath = nil
	if !on && stopErr != nil {
		b.openErr = stopErr
	}
	if on {
		b.openErr = nil
		i := s.Info
		b.fastPath = &control.FastPath{Backend: i.Backend, Sockets: len(s.Workers), Queues: i.Queues,
			XDPMode: i.XDPMode, TCP: i.TCP, ZeroCopy: i.ZeroCopy}
		if i.FlowCache > 0 {
			b.fastPath.FlowCache = &control.FlowCache{Size: i.FlowCache}
		}
	}
	b.applyRoleLocked()
	vips := b.vips
	b.mu.Unlock()
	if on {
		b.log.Info("ready", "mode", b.cfg.Mode, "interface", b.cfg.Interface, "vips", vips.String(),
			"vmac", b.cfg.VirtualMAC.String(), "workers", b.cfg.Workers)
	}
}

// housekeeping writes the stats file, retries a sync channel that failed to open and lets go of
// leaving members whose flows have ended, every housekeepingInterval until ctx ends.
func (b *Balancer) housekeeping(ctx context.Context) {
	t := time.NewTicker(housekeepingInterval)
	defer t.Stop()
	for {
		b.mu.Lock()
		b.openSyncLocked(time.Now())
		if len(b.leaving) > 0 {
			if err := b.applyMembersLocked(); err != nil {
				b.log.Warn("applying members", "err", err)
			}
		}
		b.stepHealthLocked()
		b.mu.Unlock()
		b.writeStats()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-b.kick:
		}
	}
}

// RunWith runs the balancer driven by plane until ctx ends or the balancer fails on its own (a
// configuration error such as ErrQueues). The plane stops first, with the balancer still
// running, so that it can hand the active role over; then the balancer stops. When the
// balancer fails, the plane is stopped after it.
func (b *Balancer) RunWith(ctx context.Context, plane Plane) error {
	bctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pctx, stopPlane := context.WithCancel(ctx)
	defer stopPlane()
	done := make(chan error, 1)
	go func() {
		err := b.Run(bctx)
		if err != nil {
			stopPlane()
		}
		done <- err
	}()
	perr := plane.Run(pctx)
	cancel()
	return errors.Join(perr, <-done)
}

// SetRole implements Control.
func (b *Balancer) SetRole(r Role) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if r != b.role {
		b.log.Info("role change", "role", r.String(), "was", b.role.String())
		if (r == RoleActive) != (b.role == RoleActive) {
			b.since = time.Now()
			b.transitions++
		}
		b.role = r
		b.applyRoleLocked()
	}
	return b.roleErrLocked()
}

// roleErrLocked says why the role asked for does not hold now.
func (b *Balancer) roleErrLocked() error {
	if b.role != RoleActive {
		return nil
	}
	if b.vipErr != nil {
		return b.vipErr
	}
	if !b.running {
		if b.openErr != nil {
			if errors.Is(b.openErr, ErrNoInterface) {
				return b.openErr
			}
			return fmt.Errorf("%w: %w", ErrNotRunning, b.openErr)
		}
		return ErrNotRunning
	}
	return nil
}

// applyRoleLocked makes the fast path and the sync channel follow the role asked for, as far as
// the VIPs and the sockets allow.
func (b *Balancer) applyRoleLocked() {
	active := b.role == RoleActive && b.vipErr == nil && b.running
	switch {
	case active:
		b.node.SetActive(true)
	case b.role == RoleReleasing && b.eng.Active():
		b.node.Release(time.Now(), ReleaseGrace)
	case b.role != RoleReleasing:
		b.node.SetActive(false)
	}
	if b.sync != nil {
		b.sync.setActive(active)
	}
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// Announce implements Control.
func (b *Balancer) Announce() { b.node.Announce() }

// ReloadHook is a part of the configuration a control plane re-reads on Reload (the static
// plane's members file). It reads and checks its files and returns how to apply them; an error
// (naming file and line) refuses the whole reload.
type ReloadHook func() (apply func() error, err error)

// OnReload adds h to what Reload re-reads, after the VIP file.
func (b *Balancer) OnReload(h ReloadHook) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reloadHooks = append(b.reloadHooks, h)
}

// Reload re-reads the VIP file and what the control plane registered with OnReload (SIGHUP,
// `l2lb reload`). Everything is read and checked before anything is applied: a bad file is
// reported with its file:line and the whole running configuration stays. A good VIP file is
// applied atomically, new VIPs are announced at once, and a role that waited for VIPs is taken.
// Established flows are not touched.
func (b *Balancer) Reload() error {
	refuse := func(err error) error {
		b.log.Error("reload refused; the running configuration stays", "err", err)
		return err
	}
	vips, err := ReadVIPs(b.cfg.VIPFile)
	if err != nil {
		return refuse(err)
	}
	svc, err := b.readServices()
	if err != nil {
		return refuse(err)
	}
	b.mu.Lock()
	hooks := slices.Clone(b.reloadHooks)
	b.mu.Unlock()
	applies := make([]func() error, 0, len(hooks))
	for _, h := range hooks {
		apply, err := h()
		if err != nil {
			return refuse(err)
		}
		applies = append(applies, apply)
	}
	if err := b.reloadVIPs(vips); err != nil {
		return refuse(err)
	}
	if err := b.applyServices(svc); err != nil {
		return refuse(err)
	}
	for _, apply := range applies {
		if err := apply(); err != nil {
			return refuse(err)
		}
	}
	return nil
}

// reloadVIPs applies a VIP set read by Reload.
func (b *Balancer) reloadVIPs(vips *vipset.Set) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.vips
	if old != nil && old.Equal(vips) && b.vipErr == nil {
		b.log.Info("reload: VIPs unchanged", "vips", vips.String())
		return nil
	}
	if err := b.eng.SetVIPs(vips); err != nil {
		return err
	}
	b.vips, b.vipErr = vips, nil
	b.node.SetMulticast(solicitedNodeMACs(vips))
	b.applyRoleLocked()
	b.node.Announce()
	b.log.Info("reloaded", "vips", vips.String(), "was", old.String())
	return nil
}

// SetWeight overrides a member's weight (`l2lb weight`, `l2lb drain`) for as long as the process
// runs, also across later member lists from the control plane; 0 quiesces it.
func (b *Balancer) SetWeight(member netip.Addr, weight uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	known := b.leaving[member]
	for _, m := range b.members {
		known = known || m.Addr == member
	}
	if !known {
		return fmt.Errorf("%w: %v", control.ErrUnknownMember, member)
	}
	b.weights[member] = weight
	return b.applyMembersLocked()
}
