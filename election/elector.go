package election

import (
	"log/slog"
	"net/netip"
	"slices"
)

// Elector is the per-node election state machine. It remembers which VIPs
// this node serves and, for every new View, says which VIPs to start and stop
// serving. It has no timers and no I/O: Step is a pure transition, which
// lets failover be tested with a sequence of hand-made views.
//
// Rules, per VIP, applied in Step:
//   - A VIP nobody live and eligible serves is taken by the node Decide
//     names (failover).
//   - No preemption: a serving candidate keeps its VIP even when Decide now
//     names another node (for example a returning higher-priority node),
//     unless Options.Preempt is set and that node announces TableReady; the
//     preempting node then takes the VIP and the holder yields by the
//     split-brain rule.
//   - Hand-over: a serving node that is no longer a candidate (Draining on
//     SIGTERM, unhealthy, not capable) keeps serving until a candidate
//     announces the VIP, and then releases it, so the VIP is never unserved.
//   - Split brain: if another live candidate announces a VIP this candidate
//     serves, the one that ranks lower in Decide's order releases it at
//     once; both sides log the conflict.
type Elector struct {
	self  string
	vips  []netip.Addr
	opt   Options
	log   *slog.Logger
	owned map[netip.Addr]bool
	// seen remembers logged conflicts and waits so that a condition
	// that lasts several steps is logged once, when it starts.
	seen map[string]bool
}

// NewElector returns the elector of the node named self for the given VIPs.
// log receives one record per transition, with the node's name as "node";
// nil discards them.
func NewElector(self string, vips []netip.Addr, opt Options, log *slog.Logger) *Elector {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Elector{
		self:  self,
		vips:  sortedVIPs(vips),
		opt:   opt,
		log:   log,
		owned: make(map[netip.Addr]bool),
		seen:  make(map[string]bool),
	}
}

// Owned returns the VIPs this node serves now, sorted. It is what the node
// must announce in NodeMeta.Active after each Step.
func (e *Elector) Owned() []netip.Addr {
	out := make([]netip.Addr, 0, len(e.owned))
	for _, v := range e.vips {
		if e.owned[v] {
			out = append(out, v)
		}
	}
	return out
}

// Step applies the election rules to v and returns the VIPs this node must
// start serving (acquire) and stop serving (release) now, both sorted. The
// elector considers the change done when Step returns.
func (e *Elector) Step(v View) (acquire, release []netip.Addr) {
	self, ok := v.Member(e.self)
	if !ok {
		// Our own metadata is not in the view yet: we are no candidate,
		// which keeps what we serve until a candidate takes it over.
		self = Member{NodeMeta: NodeMeta{Name: e.self}, Alive: true}
	}
	// We are alive by definition; a stale view must not make us think
	// otherwise.
	self.Alive = true
	selfCand := Candidate(self)
	owners := Decide(v, e.vips)
	seen := make(map[string]bool)

	for _, vip := range e.vips {
		// Other live nodes announcing vip; only candidates can hold it
		// against us, the others are handing it over.
		var holders []Member
		for _, m := range v.Members {
			if m.Name != e.self && m.Alive && Candidate(m) && claims(m, vip) {
				holders = append(holders, m)
			}
		}
		owner, hasOwner := owners[vip]

		if e.owned[vip] {
			switch {
			case len(holders) == 0:
				// Sole holder: keep it (no preemption; a non-candidate
				// keeps it until someone takes it over).
			case !selfCand:
				delete(e.owned, vip)
				release = append(release, vip)
				e.log.Info("handed the VIP over", "node", e.self, "vip", vip, "to", holders[0].Name)
			default:
				w := best(append(holders, self))
				others := names(holders)
				if w.Name != e.self {
					delete(e.owned, vip)
					release = append(release, vip)
					e.log.Warn("split brain: others announce the VIP too; yielding", "node", e.self, "vip", vip,
						"others", others, "winner", w.Name)
				} else {
					key := "conflict " + vip.String() + " " + others
					if !e.seen[key] {
						e.log.Warn("split brain: others announce the VIP too; keeping it, they must yield", "node", e.self,
							"vip", vip, "others", others)
					}
					seen[key] = true
				}
			}
			continue
		}

		if !selfCand || !hasOwner || owner != e.self {
			continue
		}
		switch {
		case len(holders) == 0:
			e.owned[vip] = true
			acquire = append(acquire, vip)
			e.log.Info("acquired the VIP: elected, no live holder", "node", e.self, "vip", vip)
		case e.opt.Preempt && self.TableReady:
			e.owned[vip] = true
			acquire = append(acquire, vip)
			e.log.Info("acquired the VIP: preempting, table synced", "node", e.self, "vip", vip, "holders", names(holders))
		default:
			key := "wait " + vip.String() + " " + names(holders)
			if !e.seen[key] {
				msg := "elected for the VIP but another node holds it; not preempting"
				if e.opt.Preempt {
					msg = "elected for the VIP but another node holds it; waiting for the synced table"
				}
				e.log.Info(msg, "node", e.self, "vip", vip, "holders", names(holders))
			}
			seen[key] = true
		}
	}
	e.seen = seen
	return acquire, release
}

// names joins the names of ms, sorted, for log lines and log deduplication.
func names(ms []Member) string {
	ns := make([]string, len(ms))
	for i, m := range ms {
		ns[i] = m.Name
	}
	slices.Sort(ns)
	s := ns[0]
	for _, n := range ns[1:] {
		s += "," + n
	}
	return s
}

// ReleaseAll forgets every VIP this node serves and returns them, sorted. It
// is the last step of a stop, after the hand-over has completed or timed out.
func (e *Elector) ReleaseAll() []netip.Addr {
	out := e.Owned()
	if len(out) > 0 {
		e.log.Info("stopping, released the VIPs", "node", e.self, "vips", out)
	}
	clear(e.owned)
	return out
}
