package scheduler

import (
	"fmt"

	"github.com/cespare/xxhash/v2"
)

// DefaultTableSize is the default number of Maglev lookup-table slots. It is
// prime, as the permutation requires, and is the smaller of the two sizes
// Eisenbud et al. evaluate (65537 and 655373); it still leaves about 65 slots
// per member with 1000 members, and populate keeps every share within about
// one slot of exact.
const DefaultTableSize = 65537

// MaxTableSize bounds the Maglev table size: 2^24 slots is 64 MiB of table,
// far beyond what any realistic member count needs, and it keeps every
// product compared while building (turn number × weight) below 2^64.
const MaxTableSize = 1 << 24

// The two xxhash seeds giving the independent hashes h1 (offset) and h2
// (skip) of Maglev §3.4. Their values are arbitrary but must never change:
// every balancer of a group has to derive the same permutations from the same
// keys, including balancers running different l2lb versions.
const (
	offsetSeed = 0x6c326c62_6f666673 // "l2lboffs"
	skipSeed   = 0x6c326c62_736b6970 // "l2lbskip"
)

// emptySlot marks a table slot that no member has claimed yet; it cannot be
// a member ID because IDs are at most MaxMemberID.
const emptySlot = ^uint32(0)

// Maglev is a weighted Maglev consistent-hashing lookup table (Eisenbud et
// al., "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI
// 2016, §3.4). It is immutable once built, so Pick is safe for concurrent
// use; to change members build a new one and swap it in.
type Maglev struct {
	table []uint32
}

// NewMaglev builds a Maglev table of m slots for members; m must be prime
// and at most MaxTableSize, and zero selects DefaultTableSize. Members with
// weight zero get no slots. Each weighted member owns a share of slots
// proportional to its weight, and the table depends only on the set of
// (Key, ID, Weight) triples, not on their order.
func NewMaglev(members []Member, m int) (*Maglev, error) {
	if m == 0 {
		m = DefaultTableSize
	}
	if m > MaxTableSize {
		return nil, fmt.Errorf("%w: %d > %d", ErrTableTooLarge, m, MaxTableSize)
	}
	if !isPrime(m) {
		return nil, fmt.Errorf("%w: %d", ErrNotPrime, m)
	}
	if err := validate(members); err != nil {
		return nil, err
	}
	return &Maglev{table: populate(weighted(members), uint32(m))}, nil
}

// Pick returns the owner of slot h mod M. It never allocates.
func (mg *Maglev) Pick(h uint64) (uint32, bool) {
	t := mg.table
	if len(t) == 0 {
		return 0, false
	}
	return t[h%uint64(len(t))], true
}

// Name returns "maglev".
func (mg *Maglev) Name() string { return string(KindMaglev) }

// Table returns the lookup table: slot i holds the ID of the member that
// owns it. It is empty when no member has a weight above zero. The slice is
// shared with the scheduler and must not be modified.
func (mg *Maglev) Table() []uint32 { return mg.table }

// populate fills an m-slot table from members, which must be non-empty of
// weight, sorted, and free of duplicate keys.
//
// The paper's populate loop gives every member one turn per round; on its
// turn a member walks its permutation (offset, offset+skip, … mod m) to the
// first free slot and claims it. Here the rounds are weighted: member i's
// k-th turn (k = 0, 1, …) happens at virtual time (k+½)/w_i and turns are
// taken in virtual-time order, ties going to the member earlier in Key
// order. When the table fills at some time T, member i has had round(T·w_i)
// turns, i.e. slots, so every member is within about one slot of its exact
// weight share. With equal weights this is exactly the paper's round-robin.
// A member's turn times depend only on its own weight, so removing a member
// does not reorder the turns of the others, which keeps disruption low.
func populate(members []Member, m uint32) []uint32 {
	n := len(members)
	if n == 0 {
		return nil
	}
	pos := make([]uint32, n)  // next candidate slot in the member's permutation
	skip := make([]uint32, n) // permutation stride, 1 ≤ skip < m
	turn := make([]uint64, n) // turns taken so far (k)
	weight := make([]uint64, n)
	var d xxhash.Digest
	for i, mem := range members {
		d.ResetWithSeed(offsetSeed)
		_, _ = d.WriteString(mem.Key)
		pos[i] = uint32(d.Sum64() % uint64(m))
		d.ResetWithSeed(skipSeed)
		_, _ = d.WriteString(mem.Key)
		// Any stride in [1, m-1] is coprime with the prime m, so the walk
		// visits every slot and always finds a free one.
		skip[i] = uint32(d.Sum64()%uint64(m-1)) + 1
		weight[i] = uint64(mem.Weight)
	}

	// before reports whether member a's next turn comes before member b's:
	// (2·k_a+1)/(2·w_a) < (2·k_b+1)/(2·w_b), cross-multiplied to stay in
	// integers (floating point could round differently on another CPU).
	// k < m ≤ 2^24 and w < 2^32, so each product is below 2^57.
	before := func(a, b int32) bool {
		l := (2*turn[a] + 1) * weight[b]
		r := (2*turn[b] + 1) * weight[a]
		if l != r {
			return l < r
		}
		return a < b
	}
	heap := make([]int32, n)
	for i := range heap {
		heap[i] = int32(i)
	}
	down := func(i int) {
		for {
			c := 2*i + 1
			if c >= n {
				return
			}
			if c+1 < n && before(heap[c+1], heap[c]) {
				c++
			}
			if !before(heap[c], heap[i]) {
				return
			}
			heap[i], heap[c] = heap[c], heap[i]
			i = c
		}
	}
	for i := n/2 - 1; i >= 0; i-- {
		down(i)
	}

	table := make([]uint32, m)
	for i := range table {
		table[i] = emptySlot
	}
	for filled := uint32(0); filled < m; filled++ {
		i := heap[0]
		p, s := pos[i], skip[i]
		for table[p] != emptySlot {
			if p += s; p >= m {
				p -= m
			}
		}
		table[p] = members[i].ID
		if p += s; p >= m {
			p -= m
		}
		pos[i] = p
		turn[i]++
		down(0)
	}
	return table
}

// isPrime reports whether n is prime, by trial division; n ≤ MaxTableSize
// keeps this under 2^12 divisions.
func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	if n%2 == 0 {
		return n == 2
	}
	for d := 3; d*d <= n; d += 2 {
		if n%d == 0 {
			return false
		}
	}
	return true
}
