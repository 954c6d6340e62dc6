package balancer

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane"
)

// SetMembers implements Control.
func (b *Balancer) SetMembers(ms []Member) error {
	seen := make(map[netip.Addr]bool, len(ms))
	for _, m := range ms {
		if !m.Addr.IsValid() || m.Addr.Is4In6() || m.Addr.Zone() != "" {
			return fmt.Errorf("%w: %v is not an IPv4 or IPv6 address", ErrBadMember, m.Addr)
		}
		if seen[m.Addr] {
			return fmt.Errorf("%w: %v listed twice", ErrBadMember, m.Addr)
		}
		if m.Ports.Lo > m.Ports.Hi {
			return fmt.Errorf("%w: %v port range %d-%d", ErrBadMember, m.Addr, m.Ports.Lo, m.Ports.Hi)
		}
		seen[m.Addr] = true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	prev := b.members
	b.members = slices.Clone(ms)
	if err := b.applyMembersLocked(); err != nil {
		b.members = prev
		return err
	}
	return nil
}

// applyMembersLocked turns the control plane's members into the engine's: operator weight
// overrides win, a member that is Down weighs 0, ranges that overlap are dropped, and a departed
// member that still has flows and is still reachable is kept, leaving, until they end.
func (b *Balancer) applyMembersLocked() error {
	ms := make([]dataplane.Member, 0, len(b.members)+len(b.leaving))
	listed := make(map[netip.Addr]bool, len(b.members))
	for _, m := range b.members {
		dm := dataplane.Member{Addr: m.Addr, Weight: m.Weight, Local: m.Local, Ports: m.Ports}
		if w, ok := b.weights[m.Addr]; ok {
			dm.Weight = w
		}
		if m.Down || (b.unhealthy[m.Addr] && b.cfg.Mode != control.ModeHelper) {
			// Outside CGP's helper mode the service checks decide too; in helper mode CGP's
			// Ready list is the authority for the listed members (issue 13).
			dm.Weight = 0
		}
		listed[m.Addr] = true
		if m.Leaving {
			dm.Weight, dm.Leaving = 0, true
			if !b.deliberate[m.Addr] {
				b.log.Info("member is leaving; keeping its established flows, no new connections", "member", m.Addr)
			}
			b.deliberate[m.Addr], b.leaving[m.Addr] = true, true
		} else {
			delete(b.leaving, m.Addr)
			delete(b.deliberate, m.Addr)
		}
		ms = append(ms, dm)
	}
	return b.configureLocked(append(ms, b.leavingLocked(listed)...))
}

// leavingLocked returns the members that left the list but keep their established flows
// (issue 13, graceful leave): a frontend removed from the list (CGP's ACTIVE without it, a
// --member dropped on reload, a standalone node that drains or vanished from gossip) may well be
// serving, and resetting its connections is what IPVS does and what operators of long-lived IMAP
// and SIP sessions do not want. A candidate is any address with flows in the table, this node's
// own flows and those imported from the active node alike (a standby that takes over with a list
// that leaves a frontend out never had it in its own list). It is kept at weight 0, without its
// persistence templates, while it has flows and stays reachable: its MAC resolves (the fast path
// re-resolves it like any member) and its health checks, where configured, pass. When it stops
// being reachable its flows follow --nodest at once.
func (b *Balancer) leavingLocked(listed map[netip.Addr]bool) []dataplane.Member {
	prev := make(map[netip.Addr]dataplane.Member, len(b.applied))
	for _, m := range b.applied {
		prev[m.Addr] = m
	}
	var out []dataplane.Member
	counts := b.eng.FlowCounts()
	for addr := range b.letGo {
		if listed[addr] || counts[addr] == 0 {
			delete(b.letGo, addr) // listed again, or its flows have all moved or ended
		}
	}
	for addr, flows := range counts {
		if listed[addr] || b.letGo[addr] {
			// Let go once stays let go: it is no longer probed, and re-adding it would start
			// it as an unproven target that keeps its flows (e2e/health found the flapping).
			continue
		}
		why := ""
		switch {
		case b.eng.Unreachable(addr):
			why = "its MAC no longer resolves"
		case b.unhealthy[addr]:
			why = "its health checks fail"
		}
		if why != "" {
			b.letGo[addr] = true
			if b.leaving[addr] {
				b.log.Warn("leaving member is unreachable; its flows follow the no-destination policy",
					"member", addr, "flows", flows, "why", why)
				delete(b.leaving, addr)
			}
			delete(b.deliberate, addr)
			continue
		}
		if !b.leaving[addr] {
			b.log.Info("member left; keeping its established flows while it is reachable", "member", addr, "flows", flows)
			b.leaving[addr] = true
		}
		m := dataplane.Member{Addr: addr, Leaving: b.deliberate[addr] || !b.cfg.KeepVanishedPersistence}
		if p, ok := prev[addr]; ok {
			m.Local, m.Ports = p.Local, p.Ports
		}
		out = append(out, m)
	}
	for addr := range b.leaving {
		if listed[addr] {
			continue
		}
		if !slices.ContainsFunc(out, func(m dataplane.Member) bool { return m.Addr == addr }) {
			b.log.Info("member left; its last flow ended", "member", addr)
			delete(b.leaving, addr)
			delete(b.deliberate, addr)
		}
	}
	return out
}

// configureLocked applies the engine members ms (sorted and with overlapping ranges dropped) if
// they differ from what is applied.
func (b *Balancer) configureLocked(ms []dataplane.Member) error {
	// Sorted first, so the overlaps are named in the same order on every node.
	slices.SortFunc(ms, func(a, c dataplane.Member) int { return a.Addr.Compare(c.Addr) })
	b.dropOverlapsLocked(ms)
	if slices.Equal(ms, b.applied) {
		return nil
	}
	cfg := b.eng.Config()
	cfg.Members = ms
	if err := b.eng.Configure(cfg); err != nil {
		return fmt.Errorf("%w: %w", ErrBadMember, err)
	}
	b.applied = ms
	b.log.Info("members", "members", memberList(ms))
	return nil
}

// dropOverlapsLocked enforces the one rule for source-port ranges (seed step 7), in every mode:
// when two members' ranges overlap, neither is used, because a reply to a port in both cannot be
// given to its owner, and which one to keep would depend on the order members were listed in,
// which differs between balancers. Replies to those ports are then scheduled like new flows. The
// overlaps are logged when they change and shown in the status.
func (b *Balancer) dropOverlapsLocked(ms []dataplane.Member) {
	bad := overlapping(ms)
	var pairs []string
	for i := range ms {
		for j := i + 1; j < len(ms); j++ {
			if bad[i] && bad[j] && ms[i].Ports.Overlaps(ms[j].Ports) {
				pairs = append(pairs, fmt.Sprintf("%s %d-%d and %s %d-%d", ms[i].Addr, ms[i].Ports.Lo, ms[i].Ports.Hi,
					ms[j].Addr, ms[j].Ports.Lo, ms[j].Ports.Hi))
			}
		}
	}
	for i := range ms {
		if bad[i] {
			ms[i].Ports = dataplane.PortRange{}
		}
	}
	now := strings.Join(pairs, "; ")
	if now != b.conflicts {
		if now != "" {
			b.log.Warn("members' source-port ranges overlap (seed step 7); those ranges are not used", "overlaps", now)
		} else {
			b.log.Info("members' source-port ranges no longer overlap")
		}
		b.conflicts = now
	}
}

// overlapping marks the members whose source-port range overlaps another member's.
func overlapping(ms []dataplane.Member) map[int]bool {
	bad := map[int]bool{}
	for i := range ms {
		for j := i + 1; j < len(ms); j++ {
			if ms[i].Ports.Overlaps(ms[j].Ports) {
				bad[i], bad[j] = true, true
			}
		}
	}
	return bad
}

func memberList(ms []dataplane.Member) string {
	parts := make([]string, 0, len(ms))
	for _, m := range ms {
		parts = append(parts, fmt.Sprintf("%s/%d", m.Addr, m.Weight))
	}
	return strings.Join(parts, " ")
}
