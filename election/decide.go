package election

import (
	"net/netip"
	"slices"
)

// Member is one node of a View: its announced metadata and whether the
// membership currently considers it alive. Dead and departed nodes both have
// Alive false: memberlist does not tell them apart reliably in its events.
type Member struct {
	NodeMeta
	Alive bool
}

// View is a snapshot of the membership as seen by the node named Self.
type View struct {
	Self    string
	Members []Member
}

// Member returns the member called name and whether it is in the view.
func (v View) Member(name string) (Member, bool) {
	for _, m := range v.Members {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// Options selects the election policy.
type Options struct {
	// Preempt lets the node Decide names take a VIP from a live holder,
	// but only once it announces TableReady, so that no connection state is
	// lost by the move.
	Preempt bool
}

// Candidate reports whether m may be elected balancer: alive, healthy,
// capable and not handing over.
func Candidate(m Member) bool {
	return m.Alive && m.Healthy && m.Capable && !m.Draining
}

// Decide names the owner of each VIP among the candidates of v (see
// Candidate): every VIP goes to the candidate with the highest Priority, ties
// broken by the smallest Name. The result depends only on the set of members,
// not on their order. With no candidate the map is empty.
//
// Decide ignores who serves a VIP now; Elector adds that history (and
// Options.Preempt).
func Decide(v View, vips []netip.Addr) map[netip.Addr]string {
	var cands []Member
	for _, m := range v.Members {
		if Candidate(m) {
			cands = append(cands, m)
		}
	}
	out := make(map[netip.Addr]string, len(vips))
	if len(cands) == 0 {
		return out
	}
	w := best(cands).Name
	for _, vip := range vips {
		out[vip] = w
	}
	return out
}

// best returns the winner among ms (non-empty). Decide and the split-brain
// rule of Elector both use it, so a conflict is always settled the way a fresh
// election would settle it.
func best(ms []Member) Member {
	w := ms[0]
	for _, m := range ms[1:] {
		if better(m, w) {
			w = m
		}
	}
	return w
}

// better reports whether a ranks before b. The order is total (the name
// breaks every tie), which makes Decide independent of member order.
func better(a, b Member) bool {
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	return a.Name < b.Name
}

// sortedVIPs returns a sorted copy of vips without duplicates.
func sortedVIPs(vips []netip.Addr) []netip.Addr {
	out := slices.Clone(vips)
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// claims reports whether m announces vip in its Active list.
func claims(m Member, vip netip.Addr) bool {
	return slices.Contains(m.Active, vip)
}
