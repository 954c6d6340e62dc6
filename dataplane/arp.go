package dataplane

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
)

// arpFrameLen is an Ethernet header plus an IPv4-over-Ethernet ARP packet (RFC 826: 28 bytes).
const arpFrameLen = ethHeaderLen + 28

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// processARP answers ARP requests for our VIPs while active, with the virtual MAC both as the
// answer and as the Ethernet source (so switches learn where the virtual MAC lives), and notices
// other hosts claiming our VIPs. ARP frames are rare, so using the arp package's allocating
// decoder here is fine; it keeps us from hand-writing RFC 826.
func (e *Engine) processARP(st *state, b []byte, scratch []byte) Result {
	var p arp.Packet
	if err := p.UnmarshalBinary(b[ethHeaderLen:]); err != nil {
		return Result{Verdict: VerdictDrop, Reason: ReasonARPMalformed}
	}
	if !e.answering.Load() {
		return Result{Verdict: VerdictIgnored}
	}
	if p.SenderIP.Is4() && st.vips.ContainsU32(u32(p.SenderIP)) && !isZeroMAC(p.SenderHardwareAddr) {
		// Someone else answers or announces one of our VIPs: a misconfigured frontend (arp_ignore
		// missing) answers with its own MAC; another active balancer of our group announces our
		// virtual MAC (we never read our own frames: PACKET_IGNORE_OUTGOING), which is a split
		// brain. Count and report; the election decides who yields.
		return Result{Verdict: VerdictIgnored, Conflict: true}
	}
	if p.Operation != arp.OperationRequest || !p.TargetIP.Is4() || !st.vips.ContainsU32(u32(p.TargetIP)) {
		return Result{Verdict: VerdictIgnored}
	}
	if !p.SenderIP.Is4() || len(scratch) < arpFrameLen {
		return Result{Verdict: VerdictIgnored}
	}
	n := buildARP(scratch, arp.OperationReply, st.vmac[:], p.TargetIP, p.SenderHardwareAddr, p.SenderIP,
		net.HardwareAddr(b[6:12]))
	if n == 0 {
		return Result{Verdict: VerdictDrop, Reason: ReasonARPMalformed}
	}
	return Result{Verdict: VerdictARPReply, Reply: scratch[:n]}
}

// buildARP writes an Ethernet+ARP frame into dst and returns its length (0 on failure).
func buildARP(dst []byte, op arp.Operation, srcHW net.HardwareAddr, srcIP netip.Addr, tgtHW net.HardwareAddr,
	tgtIP netip.Addr, ethDst net.HardwareAddr) int {
	p, err := arp.NewPacket(op, srcHW, srcIP, tgtHW, tgtIP)
	if err != nil {
		return 0
	}
	pb, err := p.MarshalBinary()
	if err != nil {
		return 0
	}
	f := ethernet.Frame{Destination: ethDst, Source: srcHW, EtherType: ethernet.EtherTypeARP, Payload: pb}
	fb, err := f.MarshalBinary()
	if err != nil || len(fb) > len(dst) {
		return 0
	}
	return copy(dst, fb)
}

// Announcements returns gratuitous ARP frames for every VIP: one request and one reply each
// (RFC 5227 §3 announcements are requests; some older switches and hosts update their caches
// only on replies, so both forms are sent, as keepalived does). Source MAC and sender MAC are the
// virtual MAC.
func Announcements(vmac net.HardwareAddr, vips []netip.Addr) [][]byte {
	out := make([][]byte, 0, 2*len(vips))
	for _, v := range vips {
		req := make([]byte, 64)
		if n := buildARP(req, arp.OperationRequest, vmac, v, net.HardwareAddr{0, 0, 0, 0, 0, 0}, v, broadcastMAC); n > 0 {
			out = append(out, req[:n])
		}
		rep := make([]byte, 64)
		if n := buildARP(rep, arp.OperationReply, vmac, v, broadcastMAC, v, broadcastMAC); n > 0 {
			out = append(out, rep[:n])
		}
	}
	return out
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func isZeroMAC(m net.HardwareAddr) bool {
	for _, c := range m {
		if c != 0 {
			return false
		}
	}
	return true
}
