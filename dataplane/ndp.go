package dataplane

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ndp"
)

// IPv6 neighbour discovery (RFC 4861) for the VIPs: the IPv6 counterpart of processARP. NDP
// frames are rare, so they are decoded and encoded with github.com/mdlayher/ndp, which allocates;
// this keeps RFC 4861's message and option formats out of hand-written code.

// allNodes is ff02::1 (RFC 4291 §2.7.1), where unsolicited advertisements go, and its Ethernet
// multicast address 33:33:00:00:00:01 (RFC 2464 §7).
var (
	allNodes    = netip.MustParseAddr("ff02::1")
	allNodesMAC = net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
)

// ndpHopLimit is the hop limit every NDP message carries and requires (RFC 4861 §7.1.1), so that
// a node can tell it came from the link.
const ndpHopLimit = 255

// SolicitedNodeMAC returns the Ethernet multicast address that neighbour solicitations for the
// IPv6 address a are sent to (RFC 4291 §2.7.1: ff02::1:ffXX:XXXX; RFC 2464 §7: 33:33 and its last
// four bytes). The balancer's NIC must accept it for each IPv6 VIP.
func SolicitedNodeMAC(a netip.Addr) net.HardwareAddr {
	b := a.As16()
	return net.HardwareAddr{0x33, 0x33, 0xff, b[13], b[14], b[15]}
}

// isIPv6Multicast reports an Ethernet destination of IPv6 multicast (33:33:xx:xx:xx:xx).
func isIPv6Multicast(m []byte) bool { return m[0] == 0x33 && m[1] == 0x33 }

// processNDP answers neighbour solicitations for our VIPs while answering, with the virtual MAC
// as the target link-layer address and as the Ethernet source (so switches learn where it
// lives), and notices advertisements from other hosts claiming our VIPs. p is the parsed frame b,
// an ICMPv6 NS or NA.
func (e *Engine) processNDP(st *state, b []byte, p *Packet6, scratch []byte) Result {
	if p.HopLimit != ndpHopLimit || b[p.L4+1] != 0 {
		return Result{Verdict: VerdictDrop, Reason: ReasonNDPMalformed} // RFC 4861 §7.1.1
	}
	m, err := ndp.ParseMessage(b[p.L4:])
	if err != nil {
		return Result{Verdict: VerdictDrop, Reason: ReasonNDPMalformed}
	}
	if !e.answering.Load() {
		return Result{Verdict: VerdictIgnored}
	}
	switch m := m.(type) {
	case *ndp.NeighborAdvertisement:
		// Someone else advertises one of our VIPs (we never read our own frames:
		// PACKET_IGNORE_OUTGOING): a frontend answering for its lo VIP (proxy NDP?), or another
		// active balancer of our group — a split brain. Count and report.
		if st.vips.Contains(m.TargetAddress) {
			return Result{Verdict: VerdictIgnored, Conflict: true}
		}
	case *ndp.NeighborSolicitation:
		if !st.vips.Contains(m.TargetAddress) || len(scratch) < ethHeaderLen+ipv6HdrLen+32 {
			return Result{Verdict: VerdictIgnored}
		}
		src := netip.AddrFrom16(p.Src)
		dst, ethDst := src, net.HardwareAddr(b[6:12])
		solicited := true
		if src.IsUnspecified() {
			// Duplicate address detection by another host (RFC 4862 §5.4.3): answer all nodes.
			dst, ethDst, solicited = allNodes, allNodesMAC, false
		}
		for _, o := range m.Options {
			if l, ok := o.(*ndp.LinkLayerAddress); ok && l.Direction == ndp.Source && len(l.Addr) == 6 && solicited {
				ethDst = l.Addr
			}
		}
		n := buildNA(scratch, st.vmac[:], m.TargetAddress, dst, ethDst, solicited)
		if n == 0 {
			return Result{Verdict: VerdictDrop, Reason: ReasonNDPMalformed}
		}
		return Result{Verdict: VerdictNDPReply, Reply: scratch[:n]}
	}
	return Result{Verdict: VerdictIgnored}
}

// buildNA writes an Ethernet frame with a neighbour advertisement for target, sent from target
// and the virtual MAC to dst at ethDst, with the Override flag (RFC 4861 §7.2.4: the answer
// replaces a cache entry that points elsewhere, as after a failover), into out; it returns the
// frame's length (0 on failure).
func buildNA(out []byte, vmac net.HardwareAddr, target, dst netip.Addr, ethDst net.HardwareAddr, solicited bool) int {
	na := &ndp.NeighborAdvertisement{Solicited: solicited, Override: true, TargetAddress: target,
		Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: vmac}}}
	icmp, err := ndp.MarshalMessageChecksum(na, target, dst)
	if err != nil || len(out) < ethHeaderLen+ipv6HdrLen+len(icmp) {
		return 0
	}
	copy(out[0:6], ethDst)
	copy(out[6:12], vmac)
	binary.BigEndian.PutUint16(out[12:14], etherTypeIPv6)
	ip := out[ethHeaderLen:]
	clear(ip[:ipv6HdrLen])
	ip[0] = 6 << 4
	binary.BigEndian.PutUint16(ip[4:6], uint16(len(icmp)))
	ip[6] = nhICMPv6
	ip[7] = ndpHopLimit
	s, d := target.As16(), dst.As16()
	copy(ip[8:24], s[:])
	copy(ip[24:40], d[:])
	return ethHeaderLen + ipv6HdrLen + copy(ip[ipv6HdrLen:], icmp)
}

// Announcements6 returns unsolicited neighbour advertisements for the IPv6 VIPs, to all nodes
// with the Override flag and the virtual MAC (RFC 4861 §7.2.6: a node whose link-layer address
// changed sends up to three; keepalived and Linux's own ndisc_send_unsol_na do the same), so
// neighbours' caches and the switch follow a failover at once.
func Announcements6(vmac net.HardwareAddr, vips []netip.Addr) [][]byte {
	var out [][]byte
	for _, v := range vips {
		if !v.Is6() || v.Is4In6() {
			continue
		}
		f := make([]byte, ethHeaderLen+ipv6HdrLen+32)
		if n := buildNA(f, vmac, v, allNodes, allNodesMAC, false); n > 0 {
			out = append(out, f[:n])
		}
	}
	return out
}

// Conflict describes a frame for which Process reported Result.Conflict: the VIP another host
// claims, the link-layer address it claims it for, and whether that is our own virtual MAC (a
// second active balancer of our group: a split brain) or another host's (a frontend answering
// ARP or NDP for its lo VIP). ok is false for a frame that is neither.
func Conflict(frame []byte, vmac net.HardwareAddr) (vip netip.Addr, mac net.HardwareAddr, splitBrain, ok bool) {
	if len(frame) < ethHeaderLen {
		return netip.Addr{}, nil, false, false
	}
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case etherTypeARP:
		var p arp.Packet
		if p.UnmarshalBinary(frame[ethHeaderLen:]) != nil {
			return netip.Addr{}, nil, false, false
		}
		return p.SenderIP, p.SenderHardwareAddr, bytes.Equal(p.SenderHardwareAddr, vmac), true
	case etherTypeIPv6:
		var p Packet6
		if ParseIPv6(frame, &p) != ReasonNone || p.Proto != nhICMPv6 {
			return netip.Addr{}, nil, false, false
		}
		m, err := ndp.ParseMessage(frame[p.L4:])
		na, isNA := m.(*ndp.NeighborAdvertisement)
		if err != nil || !isNA {
			return netip.Addr{}, nil, false, false
		}
		mac = net.HardwareAddr(frame[6:12])
		for _, o := range na.Options {
			if l, ok := o.(*ndp.LinkLayerAddress); ok && l.Direction == ndp.Target {
				mac = l.Addr
			}
		}
		return na.TargetAddress, mac, bytes.Equal(mac, vmac), true
	}
	return netip.Addr{}, nil, false, false
}
