package balancer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dsrprobe"
	"github.com/l2lb/l2lb/healthcheck"
	"github.com/l2lb/l2lb/services"
)

// healthSendInterval is how often the active node re-sends its health view to the standbys
// besides every change, so that a standby that (re)joined has it within this bound.
const healthSendInterval = 5 * time.Second

// ProbeStack is the DSR probe transport the health checks dial through: dsrprobe.Stack, behind
// a narrow interface so tests can inject one.
type ProbeStack interface {
	// Dialer returns a dialer whose connections to a VIP go out with the frontend's MAC as
	// destination.
	Dialer(frontendMAC net.HardwareAddr) healthcheck.Dialer
	// Close stops the stack and every connection dialed through it.
	Close() error
}

// OpenProbeStack opens the real probe stack (dsrprobe.Listen).
func OpenProbeStack(cfg dsrprobe.Config) (ProbeStack, error) {
	s, err := dsrprobe.Listen(cfg)
	if err != nil {
		return nil, err
	}
	return probeStack{s}, nil
}

type probeStack struct{ s *dsrprobe.Stack }

func (p probeStack) Dialer(mac net.HardwareAddr) healthcheck.Dialer { return p.s.Dialer(mac) }
func (p probeStack) Close() error                                   { return p.s.Close() }

// errNotProbing is what a standby's placeholder dialers return: only the active node probes
// (the probe source address is answered with the virtual MAC, which only it holds).
var errNotProbing = errors.New("balancer: health checks run on the active node only")

type noDialer struct{}

func (noDialer) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, errNotProbing
}

// health runs the service checks of the services file (issue 13) while this node is the active
// balancer: every member (listed or leaving) is probed through the DSR path, its frames to the
// VIP sent with the member's MAC, so the check tests what clients get. This node itself is
// probed through its own stack (the VIP is on its lo). Results feed the members' health and are
// sent to the standbys over the sync channel, so a standby takes over with the same view.
type health struct {
	b   *Balancer
	mon *healthcheck.Monitor
	src [2]netip.Addr // probe sources, IPv4 and IPv6

	mu        sync.Mutex
	stack     ProbeStack
	cancel    context.CancelFunc
	done      chan struct{}
	openErr   error
	lastSent  time.Time
	unhealthy map[netip.Addr]bool
	// view is the latest health view received from the active node. It is applied whenever
	// the targets change while this node does not probe, and once more when it starts probing:
	// a helper-mode standby has no members (CGP sends the list only with ACTIVE), so the view
	// can only be adopted once the targets exist.
	view *healthcheck.Snapshot
}

// newHealth builds the monitor for the checks of f against the VIPs, or returns nil when f has
// no check.
func newHealth(b *Balancer, f *services.File, vips []netip.Addr) (*health, error) {
	vip4, vip6 := firstVIPs(vips)
	specs, err := healthcheck.SpecsFor(f, vip4, vip6)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Path, err)
	}
	if len(specs) == 0 {
		return nil, nil
	}
	mon, err := healthcheck.NewMonitor(healthcheck.Config{Specs: specs, Quorum: f.Quorum,
		Logger: b.log.With("part", "health")})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Path, err)
	}
	return &health{b: b, mon: mon, src: [2]netip.Addr{f.ProbeSource4, f.ProbeSource6}}, nil
}

// firstVIPs returns the first IPv4 and the first IPv6 VIP of the set.
func firstVIPs(addrs []netip.Addr) (v4, v6 netip.Addr) {
	for _, a := range addrs {
		if a.Is4() && !v4.IsValid() {
			v4 = a
		}
		if a.Is6() && !v6.IsValid() {
			v6 = a
		}
	}
	return v4, v6
}

// step is called every housekeeping interval: it starts or stops the probing with the role,
// gives the monitor the current members, and re-sends the view to the standbys.
func (h *health) step(active bool, targets map[netip.Addr]net.HardwareAddr, local map[netip.Addr]bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case active && h.stack == nil:
		st, err := h.b.cfg.OpenProbe(dsrprobe.Config{Interface: h.b.cfg.Interface, MAC: h.b.cfg.VirtualMAC,
			Source4: h.src[0], Source6: h.src[1], Log: h.b.log.With("part", "probe")})
		if err != nil {
			if h.openErr == nil || h.openErr.Error() != err.Error() {
				h.b.log.Error("health checks cannot run: the probe stack does not open; retrying", "err", err)
			}
			h.openErr = err
			break
		}
		h.openErr = nil
		h.stack = st
		ctx, cancel := context.WithCancel(context.Background())
		h.cancel, h.done = cancel, make(chan struct{})
		h.mon.SetTargets(h.dialersLocked(targets, local))
		if h.view != nil {
			// Take over with the active node's view, not "every target unproven".
			h.mon.Restore(*h.view)
			h.view = nil
		}
		go func(done chan struct{}) { defer close(done); h.mon.Run(ctx) }(h.done)
		h.b.log.Info("health checks started", "targets", len(targets))
	case !active && h.stack != nil:
		h.stopLocked()
		h.b.log.Info("health checks stopped: not the active balancer")
	}
	h.mon.SetTargets(h.dialersLocked(targets, local))
	if h.stack == nil && h.view != nil {
		h.mon.Restore(*h.view)
	}
	if h.stack != nil && time.Since(h.lastSent) >= healthSendInterval {
		h.sendLocked()
	}
}

// dialersLocked maps targets to their dialers: through the probe stack with the member's MAC,
// the kernel for this node itself, a placeholder while not probing.
func (h *health) dialersLocked(targets map[netip.Addr]net.HardwareAddr, local map[netip.Addr]bool) map[netip.Addr]healthcheck.Dialer {
	out := make(map[netip.Addr]healthcheck.Dialer, len(targets))
	for a, mac := range targets {
		switch {
		case h.stack == nil:
			out[a] = noDialer{}
		case local[a]:
			out[a] = &net.Dialer{} // the VIP is on this node's lo: its own service answers
		default:
			out[a] = h.stack.Dialer(mac)
		}
	}
	return out
}

func (h *health) stopLocked() {
	h.cancel()
	<-h.done
	h.stack.Close()
	h.stack, h.cancel, h.done = nil, nil, nil
}

// close stops the probing.
func (h *health) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stack != nil {
		h.stopLocked()
	}
}

// sendLocked sends the monitor's view to the standbys.
func (h *health) sendLocked() {
	h.lastSent = time.Now()
	// A target still proving itself (just added, no failure yet) is left out: the view has
	// only healthy and unhealthy, and a standby must not take "not probed yet" for "failing".
	unproven := map[netip.Addr]bool{}
	for _, t := range h.mon.Status() {
		if !t.Healthy && !failing(t) {
			unproven[t.Addr] = true
		}
	}
	view := h.mon.Snapshot()
	view.Targets = slices.DeleteFunc(view.Targets, func(t healthcheck.TargetHealth) bool { return unproven[t.Addr] })
	if len(view.Targets) == 0 {
		return
	}
	b, err := view.MarshalBinary()
	if err != nil {
		h.b.log.Warn("health view not sent", "err", err)
		return
	}
	if len(b) > 0 {
		h.b.sendHealth(b)
	}
}

// restore adopts the active node's view sent over the sync channel, while this node does not
// probe itself. A malformed view changes nothing.
func (h *health) restore(payload []byte) {
	var s healthcheck.Snapshot
	if err := s.UnmarshalBinary(payload); err != nil {
		h.b.log.Debug("health view from the active node rejected", "err", err)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stack != nil {
		return // this node probes itself
	}
	h.view = &s
	h.mon.Restore(s)
}

// changed returns the members that fail their checks, and whether that set differs from the
// one returned last.
func (h *health) changed() (map[netip.Addr]bool, bool) {
	bad := map[netip.Addr]bool{}
	for _, t := range h.mon.Status() {
		if failing(t) {
			bad[t.Addr] = true
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	same := len(bad) == len(h.unhealthy)
	for a := range bad {
		same = same && h.unhealthy[a]
	}
	h.unhealthy = bad
	if h.stack != nil {
		// Every change (a target proven healthy too, which leaves the failing set as it was).
		h.sendLocked()
	}
	return bad, !same
}

// problems reports what keeps the checks from working: the probe stack not opening, fewer
// healthy frontends than the quorum.
func (h *health) problems() (bool, []string) {
	var out []string
	h.mu.Lock()
	if h.openErr != nil {
		out = append(out, "health checks cannot run: "+h.openErr.Error())
	}
	h.mu.Unlock()
	if n, q, ok := h.mon.Quorum(); !ok {
		out = append(out, fmt.Sprintf("only %d frontends pass their health checks, fewer than the quorum of %d", n, q))
	}
	return len(out) == 0, out
}

// failing reports whether a target fails its checks: a check is unhealthy and either its
// latest probe failed or it has had rise probes (or a view) to prove itself. A target just added
// whose probes have passed so far is still proving itself, not failing: a leaving member is not
// let go, nor a member's share moved, because it was not probed yet.
func failing(t healthcheck.TargetStatus) bool {
	for _, s := range t.Services {
		if !s.Healthy && (s.LastErr != nil || s.Probes >= s.Rise) {
			return true
		}
	}
	return false
}

// status returns the checks of every member for the status.
func (h *health) status() map[string][]control.Check {
	out := map[string][]control.Check{}
	for _, t := range h.mon.Status() {
		cs := make([]control.Check, 0, len(t.Services))
		for _, s := range t.Services {
			c := control.Check{Service: s.Name, Port: s.Port, Proto: s.Proto, Healthy: s.Healthy, Since: s.Since}
			if s.LastErr != nil {
				c.Error = s.LastErr.Error()
			}
			cs = append(cs, c)
		}
		out[t.Addr.String()] = cs
	}
	return out
}

// watchHealth applies the health monitor's changes to the members until ctx ends. The monitor
// may be replaced by a reload, so it is looked up again at least every housekeeping interval.
func (b *Balancer) watchHealth(ctx context.Context) {
	for {
		b.mu.Lock()
		h := b.health
		b.mu.Unlock()
		var changes <-chan struct{}
		if h != nil {
			changes = h.mon.Changes()
		}
		select {
		case <-ctx.Done():
			return
		case <-changes:
		case <-time.After(housekeepingInterval):
			continue
		}
		bad, changed := h.changed()
		if !changed {
			continue
		}
		b.mu.Lock()
		if b.health == h {
			b.setUnhealthyLocked(bad)
		}
		b.mu.Unlock()
	}
}

// closeHealth stops the health checks when the balancer stops.
func (b *Balancer) closeHealth() {
	b.mu.Lock()
	h := b.health
	b.mu.Unlock()
	if h != nil {
		h.close()
	}
}

// setUnhealthyLocked records the members whose checks fail and applies them: a leaving member
// that fails is let go (its flows follow --nodest), and outside CGP's helper mode a listed
// member that fails gets no new flows, like a Down one. In helper mode CGP's Ready list is the
// authority for the listed members.
func (b *Balancer) setUnhealthyLocked(bad map[netip.Addr]bool) {
	for a := range bad {
		if !b.unhealthy[a] {
			b.log.Warn("member fails its health checks", "member", a)
		}
	}
	for a := range b.unhealthy {
		if !bad[a] {
			b.log.Info("member passes its health checks again", "member", a)
		}
	}
	b.unhealthy = bad
	if err := b.applyMembersLocked(); err != nil {
		b.log.Warn("applying members", "err", err)
	}
}

// healthTargetsLocked returns the members to probe (listed and leaving) with their MACs, and
// which are this node.
func (b *Balancer) healthTargetsLocked() (map[netip.Addr]net.HardwareAddr, map[netip.Addr]bool) {
	targets := map[netip.Addr]net.HardwareAddr{}
	local := map[netip.Addr]bool{}
	for _, m := range b.eng.Members() {
		if m.Local {
			local[m.Addr] = true
			targets[m.Addr] = nil
		} else if len(m.MAC) == 6 {
			targets[m.Addr] = slices.Clone(m.MAC)
		}
	}
	return targets, local
}

// stepHealthLocked is the housekeeping step of the health checks.
func (b *Balancer) stepHealthLocked() {
	if b.health == nil {
		return
	}
	targets, local := b.healthTargetsLocked()
	active := b.role == RoleActive && b.roleErrLocked() == nil
	h := b.health
	// step takes h.mu and may call sendHealth, which takes b.mu: run it unlocked.
	b.mu.Unlock()
	h.step(active, targets, local)
	b.mu.Lock()
}

// sendHealth sends a health view over the sync channel, if there is one.
func (b *Balancer) sendHealth(payload []byte) {
	b.mu.Lock()
	s := b.sync
	b.mu.Unlock()
	if s == nil || !s.active.Load() {
		return
	}
	if err := s.conn.SendHealth(payload); err != nil {
		b.log.Debug("sending the health view", "err", err)
	}
}

// onHealthView is the sync receiver's hook for MsgHealth.
func (b *Balancer) onHealthView(payload []byte) {
	b.mu.Lock()
	h := b.health
	b.mu.Unlock()
	if h != nil {
		h.restore(payload)
	}
}
