package dataplane

import (
	"github.com/l2lb/l2lb/conntrack"
)

// process6 is Process for an IPv6 frame to the virtual MAC: the same steps as IPv4, with IPv6's
// own fragment key (RFC 8200 §4.5: source, destination, Identification), ICMPv6 errors and
// neighbour discovery for the VIPs.
func (e *Engine) process6(st *state, b []byte, scratch []byte, countVIP bool) Result {
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
		if st.hasProbe6 && p.Dst == st.probe6 {
			return Result{Verdict: VerdictIgnored} // a health probe's reply (dsrprobe)
		}
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
		k := conntrack.Key6{Src: p.Src, Dst: p.Dst, SPort: p.SPort, DPort: p.DPort, Proto: p.Proto}
		var id uint32
		dialog := false
		if p.Proto == protoUDP && st.callID != nil && st.callID.has(p.DPort) {
			var r Reason
			if id, r, dialog = e.sipOwner6(st, b, &p, k, now, &res); r != ReasonNone {
				return Result{Verdict: VerdictDrop, Reason: r, NoCallID: res.NoCallID}
			}
		}
		if !dialog {
			var hit bool
			id, hit = e.ct.Touch6(k, p.TCPFlags, now)
			if !hit || int(id) >= len(st.members) || !st.members[id].keeps(p.TCPFlags) {
				f := flowRef{v6: true, flags: p.TCPFlags, k6: k}
				var r Reason
				if id, r = e.flowOwner(st, &f, id, hit, now, &res); r != ReasonNone {
					return Result{Verdict: VerdictDrop, Reason: r, NoCallID: res.NoCallID}
				}
			}
		}
		res.Member = id
		if p.FirstFragment {
			e.frags6.insert(fragKey6{src: p.Src, dst: p.Dst, id: p.FragID}, id, now)
		}
	}
	e.send(st, b, &res, ctr, countVIP)
	return res
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
