package scheduler

import "math/bits"

// WLC is weighted least-connection: a new flow goes to the member with the
// lowest (active+1)/weight, where active is the member's count of live flows.
// The +1 counts the flow being placed, so with no flows anywhere the heaviest
// member is chosen first rather than simply the first in the list. (Kernel
// ip_vs_wlc.c compares overhead/weight without the +1, which ip_vs_sed.c adds;
// the two differ only while members are nearly idle.) Ties go to the member
// earliest in Key order, so the choice is deterministic.
//
// Like IPVS, which also scans every destination per new connection, Pick
// costs one call of active per weighted member.
type WLC struct {
	members []Member // weighted members in Key order
	active  func(id uint32) int64
}

// NewWLC builds a weighted least-connection scheduler. active reports the
// live flows of a member; it must be non-nil and safe for concurrent use,
// and should not allocate if Pick is to stay allocation-free. Negative
// counts are treated as zero. It does not validate members; New does.
func NewWLC(members []Member, active func(id uint32) int64) *WLC {
	return &WLC{members: weighted(members), active: active}
}

// Pick returns the least-loaded member relative to its weight; h is ignored.
func (s *WLC) Pick(_ uint64) (uint32, bool) {
	if len(s.members) == 0 {
		return 0, false
	}
	best := 0
	bestLoad := load(s.active(s.members[0].ID))
	for i := 1; i < len(s.members); i++ {
		l := load(s.active(s.members[i].ID))
		// l/w_i < bestLoad/w_best, cross-multiplied in 128 bits because a
		// flow count times a weight can exceed 64 bits.
		lh, ll := bits.Mul64(l, uint64(s.members[best].Weight))
		rh, rl := bits.Mul64(bestLoad, uint64(s.members[i].Weight))
		if lh < rh || (lh == rh && ll < rl) {
			best, bestLoad = i, l
		}
	}
	return s.members[best].ID, true
}

// Name returns "wlc".
func (s *WLC) Name() string { return string(KindWLC) }

// load returns active+1 as an unsigned number, treating a negative count
// (a racing decrement, say) as zero.
func load(active int64) uint64 {
	if active < 0 {
		active = 0
	}
	return uint64(active) + 1
}
