package dataplane

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
)

// The engine imports and exports its table as connsync.Records, the form the sync channel
// carries: members as addresses (IDs are per node) and remaining lifetimes. The same type goes
// from the table to the wire and back, with no conversion in between.

// memberIDLocked returns the ID of addr, allocating one if the engine has never seen it. A member
// learnt this way is not configured: flows to it are treated like flows of a removed member until
// a configuration lists it.
func (e *Engine) memberIDLocked(addr netip.Addr) (uint32, error) {
	if id, ok := e.ids[addr]; ok {
		return id, nil
	}
	if int(e.nextID) >= MaxMembers {
		return 0, ErrTooManyMembers
	}
	id := e.nextID
	e.ids[addr] = id
	e.nextID++
	if e.cfg.VirtualMAC != nil {
		if err := e.applyLocked(e.cfg); err != nil {
			return 0, err
		}
	}
	return id, nil
}

// Import records flows and templates learnt from the active balancer, so that this node can take
// over without cutting them. Records with an invalid member are skipped; the first error is
// returned after the rest were applied.
func (e *Engine) Import(recs []connsync.Record) error {
	now := e.Tick()
	var first error
	for i := range recs {
		r := &recs[i]
		if !r.Member.Is4() {
			if first == nil {
				first = fmt.Errorf("%w: sync record with member %v", ErrBadMember, r.Member)
			}
			continue
		}
		e.mu.Lock()
		id, err := e.memberIDLocked(r.Member)
		e.mu.Unlock()
		if err == nil {
			exp := now + int64(r.TTL)
			if r.Kind == connsync.RecordTemplate {
				err = e.ct.ImportTemplate(r.Key.Src, r.Key.Dst, id, exp, now)
			} else {
				err = e.ct.Import(r.Key, id, r.State, exp, now)
			}
		}
		if err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Export calls fn for every live flow and template, with members as addresses and remaining
// lifetimes, for the sync channel's refresh and bulk dump. It stops when fn returns false.
func (e *Engine) Export(fn func(connsync.Record) bool) {
	now := e.Tick()
	st := e.state.Load()
	cont := true
	e.ct.Range(func(k conntrack.Key, en conntrack.Entry) bool {
		a, ok := st.memberAddr(en.Member)
		if !ok || en.Expires <= now {
			return true
		}
		cont = fn(connsync.Record{Kind: connsync.RecordFlow, Key: k, Member: a, State: en.State,
			TTL: time.Duration(en.Expires - now)})
		return cont
	})
	if !cont {
		return
	}
	e.ct.RangeTemplates(func(client, vip uint32, en conntrack.Entry) bool {
		a, ok := st.memberAddr(en.Member)
		if !ok || en.Expires <= now {
			return true
		}
		return fn(connsync.Record{Kind: connsync.RecordTemplate, Key: conntrack.Key{Src: client, Dst: vip},
			Member: a, TTL: time.Duration(en.Expires - now)})
	})
}

// RecordOf converts a new flow reported by the table's insert hook into a sync record; it is
// allocation-free so it can run in the fast path.
func (e *Engine) RecordOf(k conntrack.Key, member uint32, state conntrack.State) (connsync.Record, bool) {
	a, ok := e.state.Load().memberAddr(member)
	if !ok {
		return connsync.Record{}, false
	}
	return connsync.Record{Kind: connsync.RecordFlow, Key: k, Member: a, State: state, TTL: e.timeoutOf(state)}, true
}

// memberAddr returns the address of member id, if the snapshot knows one.
func (st *state) memberAddr(id uint32) (netip.Addr, bool) {
	if int(id) >= len(st.members) || st.members[id].addr == 0 {
		return netip.Addr{}, false
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], st.members[id].addr)
	return netip.AddrFrom4(b), true
}

// timeoutOf returns the configured lifetime of a flow in state s.
func (e *Engine) timeoutOf(s conntrack.State) time.Duration {
	t := e.timeouts
	switch s {
	case conntrack.StateSynRecv:
		return t.TCPSynRecv
	case conntrack.StateEstablished:
		return t.TCPEstablished
	case conntrack.StateClosing:
		return t.TCPClosing
	case conntrack.StateClose:
		return t.TCPClose
	case conntrack.StateUDP:
		return t.UDP
	case conntrack.StateICMP:
		return t.ICMP
	}
	return t.Other
}
