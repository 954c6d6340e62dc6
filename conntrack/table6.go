package conntrack

// This file is the IPv6 half of the API: each method is its IPv4 namesake
// without the 6, with the same semantics, for a Key6 or for 16-byte client
// and VIP addresses. IPv6 flows live in the same Table as IPv4 ones, in
// their own slot arrays (see the package comment), and share its MaxEntries,
// Active counters, Expire and Len. The one difference is the protocol that
// makes a flow an ICMP flow: ProtoICMPv6 for IPv6 (see ProtoICMPv6).

// Key6 identifies an IPv6 flow as seen by the balancer, client to VIP. The
// addresses are in packet byte order (as netip.Addr.As16 gives them); ports
// are zero for protocols without them; Proto is the upper-layer protocol
// after any extension headers.
type Key6 struct {
	Src, Dst     [16]byte
	SPort, DPort uint16
	Proto        uint8
}

// tmplKey6 is the persistence template key of an IPv6 client and VIP: both
// addresses in full, 32 bytes.
type tmplKey6 struct{ client, vip [16]byte }

// flowKey6 is Key6 as the slots hold it: the template key first, then the
// ports and protocol packed as in flowKey.b, then 8 bytes of padding. The
// pad makes slot[flowKey6] 48+13 -> 64 bytes, one cache line; without it the
// slot would be 56 bytes and every eighth one would straddle two lines. It
// is a blank field, which == and maphash.Comparable skip (Go spec,
// "Comparison operators"; TestFlowKey6Padding checks both).
type flowKey6 struct {
	tk    tmplKey6
	ports uint64
	_     uint64
}

func (k Key6) pack() flowKey6 {
	return flowKey6{
		tk:    tmplKey6{k.Src, k.Dst},
		ports: uint64(k.SPort)<<24 | uint64(k.DPort)<<8 | uint64(k.Proto),
	}
}

func (f flowKey6) unpack() Key6 {
	return Key6{
		Src:   f.tk.client,
		Dst:   f.tk.vip,
		SPort: uint16(f.ports >> 24),
		DPort: uint16(f.ports >> 8),
		Proto: uint8(f.ports),
	}
}

// tmplKey is the persistence template key of a flow: client and VIP, all
// ports and protocols, as for IPv4.
func (f flowKey6) tmplKey() tmplKey6 { return f.tk }

// Touch6 is Touch for an IPv6 flow.
func (t *Table) Touch6(k Key6, tcpFlags uint8, now int64) (member uint32, ok bool) {
	return v6{t}.touch(k.pack(), tcpFlags, now)
}

// Insert6 is Insert for an IPv6 flow: with Persistence on it creates or
// refreshes the template of (k.Src, k.Dst), and after a successful Insert6
// it calls the SetOnInsert6 hook (not the SetOnInsert one), if any.
func (t *Table) Insert6(k Key6, member uint32, tcpFlags uint8, now int64) error {
	state := firstState6(k.Proto, tcpFlags)
	if err := (v6{t}).insert(k.pack(), member, state, t.classOf(k.Proto, k.DPort), now); err != nil {
		return err
	}
	if fn := t.onInsert6.Load(); fn != nil {
		(*fn)(k, member, state)
	}
	return nil
}

// SetOnInsert6 is SetOnInsert for IPv6 flows: fn is called after every
// successful Insert6, under the same rules; nil removes the hook. The two
// hooks are independent.
func (t *Table) SetOnInsert6(fn func(k Key6, member uint32, state State)) {
	if fn == nil {
		t.onInsert6.Store(nil)
		return
	}
	t.onInsert6.Store(&fn)
}

// Template6 is Template for an IPv6 client and VIP.
func (t *Table) Template6(client, vip [16]byte, now int64) (member uint32, ok bool) {
	return v6{t}.template(tmplKey6{client, vip}, now)
}

// SetMember6 is SetMember for an IPv6 flow.
func (t *Table) SetMember6(k Key6, member uint32) bool {
	return v6{t}.setMember(k.pack(), member)
}

// Delete6 is Delete for an IPv6 flow.
func (t *Table) Delete6(k Key6) bool {
	return v6{t}.delete(k.pack())
}

// Range6 is Range for the IPv6 flows.
func (t *Table) Range6(fn func(k Key6, e Entry) bool) {
	v6{t}.rangeFlows(func(f flowKey6, e Entry) bool { return fn(f.unpack(), e) })
}

// Import6 is Import for an IPv6 flow. StateICMP fits ProtoICMPv6, not
// ProtoICMP (see ProtoICMPv6).
func (t *Table) Import6(k Key6, member uint32, state State, expires int64, now int64) error {
	return v6{t}.importFlow(k.pack(), member, state, t.classOf(k.Proto, k.DPort), validState6(k.Proto, state), expires, now)
}

// ImportTemplate6 is ImportTemplate for an IPv6 client and VIP. IPv6
// templates count against the same MaxEntries as IPv4 ones.
func (t *Table) ImportTemplate6(client, vip [16]byte, member uint32, expires int64, now int64) error {
	return v6{t}.importTemplate(tmplKey6{client, vip}, member, expires, now)
}

// RangeTemplates6 is RangeTemplates for the IPv6 templates.
func (t *Table) RangeTemplates6(fn func(client, vip [16]byte, e Entry) bool) {
	v6{t}.rangeTemplates(func(tk tmplKey6, e Entry) bool { return fn(tk.client, tk.vip, e) })
}
