package scheduler

import (
	"slices"
	"sync/atomic"
)

// WRR is weighted round-robin with the pick sequence of the Linux IPVS "wrr"
// scheduler (net/netfilter/ipvs/ip_vs_wrr.c). IPVS keeps a current weight cw
// that starts at the largest weight and steps down by the gcd g of all
// weights; at each cw it walks the member list in order and picks every
// member whose weight is at least cw, then starts over at the top. Heavy
// members are thus spread through the cycle instead of served in one burst.
// One cycle holds Σw/g picks, member i appearing w_i/g times.
//
// IPVS advances that state under a lock. WRR instead numbers picks with an
// atomic counter and computes the counter's position in the cycle directly,
// so Pick is lock-free and allocation-free; each concurrent Pick gets its
// own position. The member list is ordered by Key.
type WRR struct {
	next   atomic.Uint64
	period uint64    // picks in one cycle, Σw/g
	ids    []uint32  // member IDs in list (Key) order
	bands  []wrrBand // consecutive runs of cw levels with the same eligible set

	// A persistent segment tree over list positions: version c holds the
	// positions of the c heaviest members, so "the r-th eligible member in
	// list order" is an O(log n) descent from the root of the band's version.
	left, right, count []int32
}

// wrrBand is a run of consecutive cw levels at which the same members are
// eligible (those whose weight is at least the run's highest cw).
type wrrBand struct {
	end  uint64 // cumulative picks up to and including this band
	size uint64 // eligible members, picked in list order once per level
	root int32  // tree version holding the eligible members' list positions
}

// NewWRR builds a weighted round-robin scheduler. Members of weight zero are
// never picked. It does not validate members; New does.
func NewWRR(members []Member) *WRR {
	ms := weighted(members)
	n := len(ms)
	w := &WRR{ids: make([]uint32, n)}
	if n == 0 {
		return w
	}
	var g uint32
	for i, m := range ms {
		w.ids[i] = m.ID
		g = gcd(g, m.Weight)
	}
	// Members by descending weight (list order among equals): the members
	// eligible at level cw are a prefix of this order.
	byWeight := make([]int, n)
	for i := range byWeight {
		byWeight[i] = i
	}
	slices.SortStableFunc(byWeight, func(a, b int) int {
		switch wa, wb := ms[a].Weight, ms[b].Weight; {
		case wa > wb:
			return -1
		case wa < wb:
			return 1
		}
		return 0
	})
	w.left, w.right, w.count = []int32{0}, []int32{0}, []int32{0} // node 0: empty tree
	root := int32(0)
	for c, i := range byWeight {
		root = w.insert(root, n, i)
		hi := ms[i].Weight
		var lo uint32 // next lower distinct weight, 0 after the lightest
		if c+1 < n {
			lo = ms[byWeight[c+1]].Weight
			if lo == hi {
				continue
			}
		}
		// Levels cw in (lo, hi] that are multiples of g: (hi-lo)/g of them,
		// each picking the c+1 members of weight ≥ hi.
		w.period += uint64((hi-lo)/g) * uint64(c+1)
		w.bands = append(w.bands, wrrBand{end: w.period, size: uint64(c + 1), root: root})
	}
	return w
}

// insert returns the root of a new tree version: version prev plus list
// position p, sharing every untouched subtree with prev.
func (w *WRR) insert(prev int32, n, p int) int32 {
	clone := func(x int32) int32 {
		w.left = append(w.left, w.left[x])
		w.right = append(w.right, w.right[x])
		w.count = append(w.count, w.count[x]+1)
		return int32(len(w.count) - 1)
	}
	root := clone(prev)
	cur, lo, hi := root, 0, n-1
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if p <= mid {
			c := clone(w.left[cur])
			w.left[cur], cur, hi = c, c, mid
		} else {
			c := clone(w.right[cur])
			w.right[cur], cur, lo = c, c, mid+1
		}
	}
	return root
}

// Pick returns the next member of the round-robin cycle; h is ignored.
func (w *WRR) Pick(_ uint64) (uint32, bool) {
	if w.period == 0 {
		return 0, false
	}
	x := (w.next.Add(1) - 1) % w.period
	// First band ending after x.
	lo, hi := 0, len(w.bands)-1
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if w.bands[mid].end > x {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	b := w.bands[lo]
	var start uint64
	if lo > 0 {
		start = w.bands[lo-1].end
	}
	r := int32((x - start) % b.size)
	// Descend to the r-th (from 0) eligible list position.
	node, l, h := b.root, 0, len(w.ids)-1
	for l < h {
		mid := int(uint(l+h) >> 1)
		if c := w.count[w.left[node]]; r < c {
			node, h = w.left[node], mid
		} else {
			r -= c
			node, l = w.right[node], mid+1
		}
	}
	return w.ids[l], true
}

// Name returns "wrr".
func (w *WRR) Name() string { return string(KindWRR) }

// gcd returns the greatest common divisor of a and b; gcd(0, b) is b.
func gcd(a, b uint32) uint32 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
