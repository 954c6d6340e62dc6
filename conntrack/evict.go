package conntrack

// This file is what a full table does with a new flow (issue 13): rather
// than refuse it outright, Insert and Import evict one flow that matters
// less, and only return ErrFull when none is found within a bounded search.
//
// # What is evicted, in which order, and why
//
// The candidates are every flow that is not a live TCP ESTABLISHED one:
// expired flows (of any state) that Expire has not yet removed, TCP flows in
// SYN_RECV, CLOSING or CLOSE, and UDP, ICMP and other-protocol flows. Among
// them the one with the earliest expiry goes, which is the flow the table
// would drop first anyway:
//
//   - An expired flow's expiry lies before now, so expired flows always go
//     first; evicting one loses nothing (it is counted apart, as
//     EvictStats.Expired).
//   - Live candidates go in the order of their remaining lifetime, which the
//     IPVS timeouts already scale by how much a flow's state is worth: a
//     flow that saw a RST (10 s) before a half-open one (60 s, and under a
//     SYN flood mostly spoofed) before a closing one (120 s) before a UDP
//     flow (300 s), each pushed back by how recently it was active, and
//     pushed back further by a long PortTimeout (a SIP flow with 2 h).
//     Losing one costs little: the engine forwards a flow that misses the
//     table by its consistent-hashing scheduler, so a client whose SYN_RECV
//     or UDP flow was evicted most likely lands on the same member again.
//   - A live ESTABLISHED flow is never evicted: a TCP connection sent to
//     another member after a membership change would be reset, while a new
//     flow refused with ErrFull is still forwarded by the scheduler, as
//     before. So a table full of established flows refuses new ones.
//
// # Bounded work
//
// The search looks at the first evictWindow flows from the new key's home
// slot in its shard's slot array of its own family, passing over empty
// slots but looking at no more than evictScan positions: a run of adjacent
// lines that begins with the line the insert's own probe reads anyway, so
// the cost is O(1) and mostly sequential memory (at the usual 3/8 to 3/4
// load, 16 flows lie within 21 to 43 positions: 11 to 22 lines for IPv4,
// twice that for IPv6). Counting flows rather than positions matters: at
// half load, linear probing leaves runs of 16 empty slots often enough
// that a window of 16 positions refused about one insert in 10 000 of a
// SYN flood (BenchmarkInsertFull). If the own family has nothing to give,
// the other family's array in the same shard is searched the same way from
// the position the key's hash gives there, so a flood of one family cannot
// lock the other out of a full table. Because the hash is seeded (package
// comment), a client cannot aim its keys at one window. The search is
// local, so it may miss candidates elsewhere in the table: with a fraction
// e of evictable flows it fails with probability about (1-e)^16. A table
// with far fewer flows than shards (tests, tiny MaxEntries) often finds its
// key's shard empty, and refuses.
const (
	// evictWindow is how many flows an eviction looks at, per family.
	evictWindow = 16
	// evictScan bounds the slot positions it passes to find them, per
	// family: at the lowest load shrink leaves (1/8) 64 positions hold 8
	// flows on average.
	evictScan = 64
)

// EvictStats counts the flows that Insert and Import removed from a full
// table to make room for new ones, since the table was made.
type EvictStats struct {
	// Live counts flows evicted before their expiry: never TCP
	// ESTABLISHED ones (see the file comment of evict.go).
	Live uint64
	// Expired counts flows whose expiry had already passed but that Expire
	// had not yet removed; evicting them lost nothing.
	Expired uint64
}

// Evictions returns how many flows full-table inserts and imports evicted,
// IPv4 and IPv6 together, for the status. It is lock-free.
func (t *Table) Evictions() EvictStats {
	return EvictStats{Live: t.evictedLive.Load(), Expired: t.evictedExpired.Load()}
}

// evicted is a flow evict removed that held a reference on template tk,
// released after the shard lock as release is.
type evicted[T comparable] struct {
	rel  release[T]
	held bool
}

// makeRoom removes one flow from shard s (of f's shard, f hashing to h) to
// make room for f in a full table, for record, which has already counted f
// in nflows. It reports whether f may be recorded: true when a flow was
// evicted, or when f itself is in the table already, because record then
// replaces it if expired or refuses it if live, either way keeping the count
// right without an eviction.
func (t fam[K, T]) makeRoom(s *shard, f K, h uint32, now int64) bool {
	var r4 evicted[uint64]
	var r6 evicted[tmplKey6]
	ok := false
	s.mu.Lock()
	s.advance(now)
	if t.of(s).flows.find(f, h) >= 0 {
		s.mu.Unlock()
		return true
	}
	// The own family first: its window starts at f's home slot, which
	// record's probe is about to read anyway.
	if _, own4 := any(f).(flowKey); own4 {
		if r4, ok = (v4{t.Table}).evict(&s.v4.flows, h, now); !ok {
			r6, ok = (v6{t.Table}).evict(&s.v6.flows, h, now)
		}
	} else {
		if r6, ok = (v6{t.Table}).evict(&s.v6.flows, h, now); !ok {
			r4, ok = (v4{t.Table}).evict(&s.v4.flows, h, now)
		}
	}
	s.mu.Unlock()
	if r4.held {
		v4{t.Table}.releaseTemplate(r4.rel.tk, r4.rel.end)
	}
	if r6.held {
		v6{t.Table}.releaseTemplate(r6.rel.tk, r6.rel.end)
	}
	return ok
}

// evict removes the best candidate among the first evictWindow flows of ft from
// h's home slot, under its shard's lock, and reports whether there was one;
// the template reference it held, if any, is returned for the caller to
// release after the lock.
func (t fam[K, T]) evict(ft *flowTab[K], h uint32, now int64) (evicted[T], bool) {
	var r evicted[T]
	i := victim(ft, h, now)
	if i < 0 {
		return r, false
	}
	v := ft.slots[i]
	ft.removeAt(i)
	t.active[v.member].Add(-1)
	t.nflows.Add(-1)
	if expired(v.exp, now) {
		t.evictedExpired.Add(1)
	} else {
		t.evictedLive.Add(1)
	}
	if v.flags&flagTemplate != 0 {
		r = evicted[T]{rel: release[T]{v.key.tmplKey(), flowEnd(v.exp, now)}, held: true}
	}
	return r, true
}

// victim returns the index of the flow to evict among the first
// evictWindow flows of ft from h's home slot (within evictScan positions),
// or -1 if none may go: the candidate (any flow but a live TCP ESTABLISHED
// one) with the earliest expiry, compared as RFC 1982 serial numbers, so
// expired flows come first.
func victim[K comparable](ft *flowTab[K], h uint32, now int64) int {
	n := len(ft.slots)
	if n == 0 || ft.n == 0 {
		return -1
	}
	m := uint32(n - 1)
	best := -1
	var bestExp uint32
	scan := min(evictScan, n)
	for seen, pos, i := 0, 0, h&m; seen < evictWindow && pos < scan; pos, i = pos+1, (i+1)&m {
		v := &ft.slots[i]
		if v.flags&flagUsed == 0 {
			continue
		}
		seen++
		if v.state == StateEstablished && !expired(v.exp, now) {
			continue
		}
		if best < 0 || int32(v.exp-bestExp) < 0 {
			best, bestExp = int(i), v.exp
		}
	}
	return best
}
