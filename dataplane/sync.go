package dataplane

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
)

// The engine imports and exports its table as connsync.Records, the form the sync channel
// carries: addresses of either family, members as addresses (IDs are per node) and remaining
// lifetimes. The same type goes from the table to the wire and back, with no conversion in
// between.

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
// over without cutting them. Records with an invalid member or addresses are skipped; the first
// error is returned after the rest were applied.
func (e *Engine) Import(recs []connsync.Record) error {
	now := e.Tick()
	var first error
	for i := range recs {
		if err := e.import1(&recs[i], now); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (e *Engine) import1(r *connsync.Record, now int64) error {
	if !r.Member.IsValid() || r.Member.Is4In6() {
		return fmt.Errorf("%w: sync record with member %v", ErrBadMember, r.Member)
	}
	e.mu.Lock()
	id, err := e.memberIDLocked(r.Member)
	e.mu.Unlock()
	if err != nil {
		return err
	}
	exp := now + int64(r.TTL)
	switch {
	case r.Src.Is4() && r.Dst.Is4():
		k := conntrack.Key{Src: u32(r.Src), Dst: u32(r.Dst), SPort: r.SPort, DPort: r.DPort, Proto: r.Proto}
		if r.Kind == connsync.RecordTemplate {
			return e.ct.ImportTemplate(k.Src, k.Dst, id, exp, now)
		}
		return e.ct.Import(k, id, r.State, exp, now)
	case r.Src.Is6() && r.Dst.Is6() && !r.Src.Is4In6() && !r.Dst.Is4In6():
		k := conntrack.Key6{Src: r.Src.As16(), Dst: r.Dst.As16(), SPort: r.SPort, DPort: r.DPort, Proto: r.Proto}
		if r.Kind == connsync.RecordTemplate {
			return e.ct.ImportTemplate6(k.Src, k.Dst, id, exp, now)
		}
		return e.ct.Import6(k, id, r.State, exp, now)
	}
	return fmt.Errorf("%w: sync record for %v -> %v", ErrBadMember, r.Src, r.Dst)
}

// Export calls fn for every live flow and template of both families, with members as addresses
// and remaining lifetimes, for the sync channel's refresh and bulk dump. It stops when fn returns
// false.
func (e *Engine) Export(fn func(connsync.Record) bool) {
	now := e.Tick()
	st := e.state.Load()
	cont := true
	rec := func(kind connsync.RecordKind, src, dst netip.Addr, sport, dport uint16, proto uint8, en conntrack.Entry) bool {
		a, ok := st.memberAddr(en.Member)
		if !ok || en.Expires <= now {
			return true
		}
		cont = fn(connsync.Record{Kind: kind, Src: src, Dst: dst, SPort: sport, DPort: dport, Proto: proto, Member: a,
			State: en.State, TTL: time.Duration(en.Expires - now)})
		return cont
	}
	e.ct.Range(func(k conntrack.Key, en conntrack.Entry) bool {
		return rec(connsync.RecordFlow, addr4(k.Src), addr4(k.Dst), k.SPort, k.DPort, k.Proto, en)
	})
	if cont {
		e.ct.Range6(func(k conntrack.Key6, en conntrack.Entry) bool {
			return rec(connsync.RecordFlow, netip.AddrFrom16(k.Src), netip.AddrFrom16(k.Dst), k.SPort, k.DPort, k.Proto, en)
		})
	}
	if cont {
		e.ct.RangeTemplates(func(client, vip uint32, en conntrack.Entry) bool {
			return rec(connsync.RecordTemplate, addr4(client), addr4(vip), 0, 0, 0, en)
		})
	}
	if cont {
		e.ct.RangeTemplates6(func(client, vip [16]byte, en conntrack.Entry) bool {
			return rec(connsync.RecordTemplate, netip.AddrFrom16(client), netip.AddrFrom16(vip), 0, 0, 0, en)
		})
	}
}

// RecordOf converts a new IPv4 flow reported by the table's insert hook into a sync record; it is
// allocation-free so it can run in the fast path.
func (e *Engine) RecordOf(k conntrack.Key, member uint32, state conntrack.State) (connsync.Record, bool) {
	a, ok := e.state.Load().memberAddr(member)
	if !ok {
		return connsync.Record{}, false
	}
	return connsync.Record{Kind: connsync.RecordFlow, Src: addr4(k.Src), Dst: addr4(k.Dst), SPort: k.SPort, DPort: k.DPort,
		Proto: k.Proto, Member: a, State: state, TTL: e.timeoutOf(state)}, true
}

// RecordOf6 is RecordOf for a new IPv6 flow.
func (e *Engine) RecordOf6(k conntrack.Key6, member uint32, state conntrack.State) (connsync.Record, bool) {
	a, ok := e.state.Load().memberAddr(member)
	if !ok {
		return connsync.Record{}, false
	}
	return connsync.Record{Kind: connsync.RecordFlow, Src: netip.AddrFrom16(k.Src), Dst: netip.AddrFrom16(k.Dst),
		SPort: k.SPort, DPort: k.DPort, Proto: k.Proto, Member: a, State: state, TTL: e.timeoutOf(state)}, true
}

// addr4 is the netip form of an IPv4 address held as a big-endian uint32.
func addr4(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// memberAddr returns the address of member id, if the snapshot knows one.
func (st *state) memberAddr(id uint32) (netip.Addr, bool) {
	if int(id) >= len(st.members) || !st.members[id].addr.IsValid() {
		return netip.Addr{}, false
	}
	return st.members[id].addr, true
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
