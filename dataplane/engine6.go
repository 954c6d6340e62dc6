package dataplane

import (
	"encoding/binary"

	"github.com/cespare/xxhash/v2"
	"github.com/l2lb/l2lb/conntrack"
)

// process6 is Process for an IPv6 frame to the virtual MAC: the same steps as IPv4, with IPv6's
// own fragment key (RFC 8200 §4.5: source, destination, Identification), ICMPv6 errors and
// neighbour discovery for the VIPs.
func (e *Engine) process6(st *state, b []byte, scratch []byte) Result {
	var p Packet6
	if r := ParseIPv6(b, &p); r != ReasonNone {
		return Result{Verdict: VerdictDrop, Reason: r}
	}
	if p.Proto == nhICMPv6 && (p.ICMPType == icmp6NeighSolicit || p.ICMPType == icmp6NeighAdvert) {
		// A unicast solicitation (neighbour unreachability detection, RFC 4861 §7.3) or
		// advertisement for a VIP: the balancer answers it, it is never forwarded.
		return e.processNDP(st, b, &p, scratch)
	}
	vi := st.vips.Index16(p.Dst)
	if vi < 0 {
		return Result{Verdict: VerdictDrop, Reason: ReasonNotVIP}
	}
	if !e.active.Load() {
		return Result{Verdict: VerdictDrop, Reason: ReasonInactive}
	}
	ctr := st.vipCounters6[vi]
	now := e.clock.Load()
	var res Result
	switch {
	case p.Fragment && !p.FirstFragment:
		id, ok := e.frags6.lookup(fragKey6{src: p.Src, dst: p.Dst, id: p.FragID}, now)
		if !ok {
			return Result{Verdict: VerdictDrop, Reason: ReasonFragmentUnknown}
		}
		res.Member = id
	case p.Proto == nhICMPv6 && p.ICMPError:
		// A Packet Too Big from a router on the client's side must reach the frontend that
		// sent the packet, or path MTU discovery through the VIP fails (RFC 8201).
		res.Member = e.icmp6Owner(st, &p, now)
	case p.Proto == nhICMPv6:
		// Echo and other informational ICMPv6 to a VIP are answered by the active node itself.
		res.Member = localOwner
	default:
		id, r := flowOwner(e, st, flow6{k: conntrack.Key6{Src: p.Src, Dst: p.Dst, SPort: p.SPort, DPort: p.DPort,
			Proto: p.Proto}, flags: p.TCPFlags}, now, &res)
		if r != ReasonNone {
			return Result{Verdict: VerdictDrop, Reason: r}
		}
		res.Member = id
		if p.FirstFragment {
			e.frags6.insert(fragKey6{src: p.Src, dst: p.Dst, id: p.FragID}, id, now)
		}
	}
	return e.send(st, b, res, ctr)
}

// processNDPMulticast handles an IPv6 frame to a multicast MAC: a neighbour solicitation for a
// VIP (sent to its solicited-node group) or an advertisement to all nodes is handled like the
// unicast ones; every other multicast (router advertisements, MLD, ...) is not balancer input
// and is left alone, malformed or not.
func (e *Engine) processNDPMulticast(st *state, b []byte, scratch []byte) Result {
	var p Packet6
	if ParseIPv6(b, &p) != ReasonNone || p.Proto != nhICMPv6 ||
		(p.ICMPType != icmp6NeighSolicit && p.ICMPType != icmp6NeighAdvert) {
		return Result{Verdict: VerdictIgnored}
	}
	return e.processNDP(st, b, &p, scratch)
}

// icmp6Owner finds the member an ICMPv6 error belongs to from the packet it quotes (a frontend's
// packet from the VIP to a client: the flow is its reverse); errors about nothing we know go to
// the local stack.
func (e *Engine) icmp6Owner(st *state, p *Packet6, now int64) uint32 {
	if p.InnerProto == protoTCP || p.InnerProto == protoUDP {
		k := conntrack.Key6{Src: p.InnerDst, Dst: p.InnerSrc, SPort: p.InnerDPort, DPort: p.InnerSPort, Proto: p.InnerProto}
		if id, ok := e.ct.Touch6(k, 0, now); ok && int(id) < len(st.members) && st.members[id].present {
			return id
		}
		if id, ok := st.rangeOwner(p.InnerSPort); ok {
			return id
		}
	}
	return localOwner
}

// flow6 is an IPv6 flow and the TCP flags of its frame.
type flow6 struct {
	k     conntrack.Key6
	flags uint8
}

func (f flow6) touch(ct *conntrack.Table, now int64) (uint32, bool) {
	return ct.Touch6(f.k, f.flags, now)
}
func (f flow6) remove(ct *conntrack.Table)               { ct.Delete6(f.k) }
func (f flow6) setMember(ct *conntrack.Table, id uint32) { ct.SetMember6(f.k, id) }
func (f flow6) template(ct *conntrack.Table, now int64) (uint32, bool) {
	return ct.Template6(f.k.Src, f.k.Dst, now)
}
func (f flow6) insert(ct *conntrack.Table, id uint32, now int64) error {
	return ct.Insert6(f.k, id, f.flags, now)
}
func (f flow6) ports() (uint8, uint16) { return f.k.Proto, f.k.DPort }
func (f flow6) hash(persist bool) uint64 {
	var buf [37]byte
	copy(buf[0:16], f.k.Src[:])
	copy(buf[16:32], f.k.Dst[:])
	if persist {
		return xxhash.Sum64(buf[:32])
	}
	binary.BigEndian.PutUint16(buf[32:34], f.k.SPort)
	binary.BigEndian.PutUint16(buf[34:36], f.k.DPort)
	buf[36] = f.k.Proto
	return xxhash.Sum64(buf[:])
}
