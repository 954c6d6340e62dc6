package conntrack

// This file is what a connection-sync channel needs: Import and
// ImportTemplate record what the active balancer reports on a standby, and
// RangeTemplates (with Range) lets the active report it. Remaining lifetimes
// travel as durations; each side converts them against its own clock.

// validState reports whether a flow of protocol proto can be in state st, as
// firstState and nextState would put it there.
func validState(proto uint8, st State) bool {
	switch proto {
	case ProtoTCP:
		return st <= StateClose
	case ProtoUDP:
		return st == StateUDP
	case ProtoICMP:
		return st == StateICMP
	default:
		return st == StateOther
	}
}

// validState6 is validState for an IPv6 flow.
func validState6(proto uint8, st State) bool { return validState(proto6(proto), st) }

// Import records or updates flow k as learnt from a connection-sync channel:
// forwarded to member, in state, expiring at the absolute time expires (the
// caller's clock, as "now"). The expiry is first clamped to now plus state's
// timeout, so a bogus remaining lifetime cannot pin memory, and rounded up to
// the table's tick; an expiry at or before now describes a flow that already
// ended and is ignored (nil error).
//
// If k is absent, or expired but not yet removed, it is recorded as Insert
// would: counted in Active, making room at MaxEntries flows by an eviction
// or refused with ErrFull, and
// with Persistence on it takes a reference on the template of (k.Src, k.Dst),
// creating it or pointing it at member (a template overflow is counted and
// the flow recorded without persistence). If k is live it is updated in
// place: its member (moving the Active count) and state are replaced, its
// expiry becomes the later of the two, and its template, if it holds one, is
// pointed at member and its persistence period restarted at now, as an
// Insert would have done. Import never calls the SetOnInsert hook.
//
// Import returns ErrBadMember for a member above MaxMember and ErrBadState
// for a state that does not fit k.Proto (a TCP state for a UDP flow, say).
func (t *Table) Import(k Key, member uint32, state State, expires int64, now int64) error {
	return v4{t}.importFlow(k.pack(), member, state, t.classOf(k.Proto, k.DPort), validState(k.Proto, state), expires, now)
}

// importFlow is Import for a flow of timeout class class; stateOK says
// whether state fits the flow's protocol.
func (t fam[K, T]) importFlow(f K, member uint32, state State, class uint8, stateOK bool, expires int64, now int64) error {
	if member > MaxMember {
		return ErrBadMember
	}
	if !stateOK {
		return ErrBadState
	}
	if lim := now + t.timeouts[class][state]; expires > lim {
		expires = lim
	}
	if expires <= now {
		return nil
	}
	exp := expiryTick(expires, 0)
	// The periodic refresh of a live flow is the common case: update it in
	// place first, which needs no capacity, so a full table still accepts
	// refreshes of the flows it holds.
	s, h := flowShard(t.Table, f)
	ft := &t.of(s).flows
	s.mu.Lock()
	s.advance(now)
	if i := ft.find(f, h); i >= 0 && !expired(ft.slots[i].exp, now) {
		v := &ft.slots[i]
		updateSlot(t.Table, v, member, state, exp)
		held := v.flags&flagTemplate != 0
		s.mu.Unlock()
		if held {
			t.pointTemplate(f.tmplKey(), member, now)
		}
		return nil
	}
	s.mu.Unlock()
	// Absent or expired: record it as Insert does. Another goroutine may
	// record k in between; record then updates it instead.
	return t.record(f, member, state, class, exp, now, true)
}

// updateSlot applies an import to live flow v under its shard's lock.
func updateSlot[K comparable](t *Table, v *slot[K], member uint32, state State, exp uint32) {
	if uint32(v.member) != member {
		t.active[v.member].Add(-1)
		t.active[member].Add(1)
		v.member = uint16(member)
	}
	v.state = state
	v.exp = laterTick(v.exp, exp)
}

// pointTemplate points existing template tk at member and restarts its
// persistence period at now, as acquireTemplate does, without taking a
// reference. A template removed meanwhile is not recreated: no flow holds it.
func (t fam[K, T]) pointTemplate(tk T, member uint32, now int64) {
	s := tmplShard(t.Table, tk)
	sf := t.of(s)
	s.mu.Lock()
	s.advance(now)
	if v, ok := sf.tmpls[tk]; ok {
		t.repoint(&v, member)
		v.exp = laterTick(v.exp, expiryTick(now, t.persist))
		sf.tmpls[tk] = v
	}
	s.mu.Unlock()
}

// ImportTemplate records the persistence template of (client, vip) as learnt
// from a connection-sync channel: pointing at member, live until the absolute
// time expires (the caller's clock, as "now") once no flow holds it. The
// expiry is clamped to now plus Persistence and becomes the later of the
// template's existing one and the given one; an expiry at or before now
// describes a template that already lapsed and is ignored (nil error). An
// existing template is pointed at member, as the sending balancer is the
// authority on where the client goes. The template takes no flow reference:
// flows imported with Import take their own.
//
// ImportTemplate returns ErrNoPersistence when the table has persistence
// off, ErrBadMember for a member above MaxMember, and ErrFull when
// MaxEntries templates exist already.
func (t *Table) ImportTemplate(client, vip uint32, member uint32, expires int64, now int64) error {
	return v4{t}.importTemplate(tmplKey4(client, vip), member, expires, now)
}

func (t fam[K, T]) importTemplate(tk T, member uint32, expires int64, now int64) error {
	if t.persist == 0 {
		return ErrNoPersistence
	}
	if member > MaxMember {
		return ErrBadMember
	}
	if lim := now + t.persist; expires > lim {
		expires = lim
	}
	if expires <= now {
		return nil
	}
	exp := expiryTick(expires, 0)
	s := tmplShard(t.Table, tk)
	sf := t.of(s)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advance(now)
	v, ok := t.templateForUpdate(sf, tk, exp, member)
	if !ok {
		return ErrFull
	}
	// A dead template not yet removed has an expiry before now, so the
	// later of the two is the new one: it is replaced, not resurrected.
	v.member = uint16(member)
	v.exp = laterTick(v.exp, exp)
	sf.tmpls[tk] = v
	return nil
}

// latest returns the latest time any shard has seen.
func (t *Table) latest() int64 {
	var now int64
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		now = max(now, s.now)
		s.mu.Unlock()
	}
	return now
}

// RangeTemplates calls fn for each live persistence template, shard by
// shard, until fn returns false, for a connection-sync sender's periodic
// refresh or bulk dump. A template is live while a flow holds it or its
// persistence period has not passed, judged at the latest time the table
// has seen. fn runs with the template's shard locked, so it must not call
// back into t. Templates created or removed during RangeTemplates may or may
// not be seen.
//
// Entry.Member is the template's member and Entry.State is zero.
// Entry.Expires is an absolute time in the caller's clock, as for Range: for
// a template no flow holds, the end of its persistence period; for one that
// flows hold, which lives as long as they do plus Persistence, at least
// Persistence after the latest time the table has seen, so a receiver keeps
// it even before it learns of the flows.
func (t *Table) RangeTemplates(fn func(client, vip uint32, e Entry) bool) {
	v4{t}.rangeTemplates(func(tk uint64, e Entry) bool { return fn(uint32(tk>>32), uint32(tk), e) })
}

func (t fam[K, T]) rangeTemplates(fn func(tk T, e Entry) bool) {
	if t.persist == 0 {
		return // no template is ever created
	}
	ref := t.latest()
	held := expiryTick(ref, t.persist)
	for i := range t.shards {
		s := &t.shards[i]
		sf := t.of(s)
		s.mu.Lock()
		for tk, v := range sf.tmpls {
			exp := v.exp
			if v.flows > 0 {
				exp = laterTick(exp, held)
			} else if expired(exp, ref) {
				continue
			}
			e := Entry{Member: uint32(v.member), Expires: tickTime(exp, ref)}
			if !fn(tk, e) {
				s.mu.Unlock()
				return
			}
		}
		s.mu.Unlock()
	}
}
