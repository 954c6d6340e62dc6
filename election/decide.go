package election

import (
	"net/netip"
	"slices"

	"github.com/cespare/xxhash/v2"
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
	// Spread distributes the VIPs over all candidates (the owner of a VIP
	// is the candidate with the highest rendezvous hash of node name and
	// VIP) instead of giving every VIP to the single best candidate.
	// Priority is not used in this mode. Without Preempt, VIPs stay where
	// they are once taken, so a returning node only gets its share back
	// when Preempt is also set.
	Spread bool
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
// Candidate). Without Spread every VIP goes to the candidate with the highest
// Priority, ties broken by the smallest Name; with Spread each VIP goes to its
// rendezvous-hash winner. The result depends only on the set of members, not
// on their order. VIPs without any candidate are absent from the map.
//
// Decide ignores who serves a VIP now; Elector adds that history.
func Decide(v View, vips []netip.Addr, opt Options) map[netip.Addr]string {
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
	for _, vip := range vips {
		out[vip] = best(cands, vip, opt).Name
	}
	return out
}

// best returns the winner among ms (non-empty) for vip under opt. Decide and
// the split-brain rule of Elector both use it, so a conflict is always settled
// the way a fresh election would settle it.
func best(ms []Member, vip netip.Addr, opt Options) Member {
	w := ms[0]
	for _, m := range ms[1:] {
		if better(m, w, vip, opt) {
			w = m
		}
	}
	return w
}

// better reports whether a ranks before b for vip. The order is total (the
// name breaks every tie), which makes Decide independent of member order.
func better(a, b Member, vip netip.Addr, opt Options) bool {
	if opt.Spread {
		if sa, sb := score(a.Name, vip), score(b.Name, vip); sa != sb {
			return sa > sb
		}
	} else if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	return a.Name < b.Name
}

// score is the rendezvous (highest-random-weight) hash of a node and a VIP
// (Thaler and Ravishankar, 1998). Each VIP goes to the candidate with the
// highest score, so adding or removing a candidate moves only the VIPs that
// candidate wins or won, about 1/n of them, and nothing else.
func score(name string, vip netip.Addr) uint64 {
	var d xxhash.Digest
	d.Reset()
	_, _ = d.WriteString(name)
	// The zero byte separates the name from the address so that distinct
	// (name, vip) pairs never hash the same byte string.
	a := vip.Unmap().As16()
	var buf [17]byte
	copy(buf[1:], a[:])
	_, _ = d.Write(buf[:])
	return d.Sum64()
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
