package dsrprobe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// virtio_net_hdr flags and GSO types (include/uapi/linux/virtio_net.h).
const (
	vnetFlagNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM: checksum left to offload
	vnetGSONone       = 0 // VIRTIO_NET_HDR_GSO_NONE
	vnetGSOECN        = 0x80
)

// readBufSize holds the largest frame PACKET_VNET_HDR can deliver: a GRO or
// same-host TSO super-frame of 40 + 65535 bytes (IPv6 without BIG TCP) with an
// Ethernet header, two VLAN tags and the virtio_net_hdr in front.
const readBufSize = vnetHdrLen + ethHdrLen + 8 + header.IPv6MinimumSize + 65535

// readRetry is the pause after a failed read. A packet socket reports, for
// example, ENETDOWN once when its interface goes down and works again when
// it comes back, so the loop keeps reading; the pause keeps a persistent
// error from spinning.
const readRetry = 100 * time.Millisecond

// readLoop reads frames until the Stack is closed.
func (s *Stack) readLoop() {
	defer s.readerW.Done()
	buf := make([]byte, readBufSize)
	for {
		n, _, err := s.conn.ReadFrom(buf)
		if err != nil {
			if s.closed() || errors.Is(err, net.ErrClosed) {
				return
			}
			s.stats.readErr.Add(1)
			s.log.Warn("probe socket read failed", "err", err)
			select {
			case <-s.done:
				return
			case <-time.After(readRetry):
			}
			continue
		}
		s.stats.framesIn.Add(1)
		s.handleFrame(buf[:n])
	}
}

// handleFrame processes one received frame, with its virtio_net_hdr when the
// Stack uses one. It never retains frame.
func (s *Stack) handleFrame(frame []byte) {
	var (
		needsCsum            bool
		csumStart, csumField int
	)
	if s.vnet {
		if len(frame) < vnetHdrLen {
			s.stats.malformed.Add(1)
			return
		}
		// struct virtio_net_hdr is in host byte order for a packet
		// socket (virtio_net_hdr_from_skb with little_endian =
		// vio_le()).
		flags, gso := frame[0], frame[1]
		if flags&vnetFlagNeedsCsum != 0 {
			needsCsum = true
			csumStart = int(binary.NativeEndian.Uint16(frame[6:8]))
			csumField = csumStart + int(binary.NativeEndian.Uint16(frame[8:10]))
			s.stats.partial.Add(1)
		}
		if gso&^vnetGSOECN != vnetGSONone {
			s.stats.gso.Add(1)
		}
		frame = frame[vnetHdrLen:]
	}
	if len(frame) < ethHdrLen {
		s.stats.malformed.Add(1)
		return
	}
	eth := header.Ethernet(frame)
	payload := frame[ethHdrLen:]
	var proto tcpip.NetworkProtocolNumber
	switch eth.Type() {
	case header.ARPProtocolNumber:
		s.handleARP(frame)
		return
	case header.IPv4ProtocolNumber:
		h := header.IPv4(payload)
		if s.src4.Len() == 0 || len(payload) < header.IPv4MinimumSize || !h.IsValid(len(payload)) {
			s.stats.malformed.Add(1)
			return
		}
		if !bytes.Equal(frame[:6], s.cfg.MAC) || h.DestinationAddress() != s.src4 {
			s.stats.notForUs.Add(1)
			return
		}
		proto, payload = ipv4.ProtocolNumber, payload[:h.TotalLength()]
	case header.IPv6ProtocolNumber:
		h := header.IPv6(payload)
		if s.src6.Len() == 0 || len(payload) < header.IPv6MinimumSize || !h.IsValid(len(payload)) {
			s.stats.malformed.Add(1)
			return
		}
		if s.handleNS(frame) {
			return
		}
		if !bytes.Equal(frame[:6], s.cfg.MAC) || h.DestinationAddress() != s.src6 {
			s.stats.notForUs.Add(1)
			return
		}
		proto, payload = ipv6.ProtocolNumber, payload[:header.IPv6MinimumSize+int(h.PayloadLength())]
	default:
		s.stats.notForUs.Add(1)
		return
	}
	if needsCsum && !completeChecksum(frame[:ethHdrLen+len(payload)], csumStart, csumField) {
		s.stats.malformed.Add(1)
		return
	}
	s.inject(proto, payload)
}

// completeChecksum finishes a checksum left to offload (CHECKSUM_PARTIAL),
// as the kernel's skb_checksum_help does: the field at csumField holds the
// pseudo-header sum, and the one's complement of the sum from csumStart to
// the end of the packet goes there. Offsets are from the start of the
// Ethernet frame (virtio_net_hdr csum_start and csum_offset). It reports
// false if they do not fit the packet.
//
// Why not trust such frames instead: gVisor has no per-packet "checksum
// verified" input (the NIC overwrites PacketBuffer.RXChecksumValidated with
// the link's CapabilityRXChecksumOffload), and trusting every frame would
// also accept frames from the wire that no NIC verified. Measured on veth
// (TestDSRProbe logs the counters): every TCP and UDP frame from a frontend
// arrives with VIRTIO_NET_HDR_F_NEEDS_CSUM, and without this completion the
// stack dropped them all and no handshake completed.
func completeChecksum(pkt []byte, csumStart, csumField int) bool {
	if csumStart < ethHdrLen || csumField+2 > len(pkt) || csumField < csumStart {
		return false
	}
	c := ^checksum.Checksum(pkt[csumStart:], 0)
	if c == 0 {
		// A UDP checksum of zero means "none" (RFC 768); the one's
		// complement equivalent 0xffff is sent instead, and TCP
		// accepts either.
		c = 0xffff
	}
	binary.BigEndian.PutUint16(pkt[csumField:], c)
	return true
}

// inject copies an IP packet into a gVisor packet buffer and delivers it.
func (s *Stack) inject(proto tcpip.NetworkProtocolNumber, b []byte) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	defer pkt.DecRef()
	if s.link.deliver(proto, pkt) {
		s.stats.injected.Add(1)
	}
}

// handleARP answers an ARP request for Source4 (RFC 826: the reply goes to
// the requester's hardware address, with ours as sender).
func (s *Stack) handleARP(frame []byte) {
	a := header.ARP(frame[ethHdrLen:])
	if !a.IsValid() {
		s.stats.malformed.Add(1)
		return
	}
	if a.Op() != header.ARPRequest || s.src4.Len() == 0 || tcpip.AddrFrom4Slice(a.ProtocolAddressTarget()) != s.src4 {
		s.stats.notForUs.Add(1)
		return
	}
	reqMAC := net.HardwareAddr(a.HardwareAddressSender())
	if reqMAC[0]&1 != 0 {
		s.stats.malformed.Add(1)
		return
	}
	var out [vnetHdrLen + ethHdrLen + header.ARPSize]byte
	b := out[:]
	if !s.vnet {
		b = out[vnetHdrLen:]
	}
	f := b[len(b)-ethHdrLen-header.ARPSize:]
	header.Ethernet(f).Encode(&header.EthernetFields{
		SrcAddr: tcpip.LinkAddress(s.cfg.MAC),
		DstAddr: tcpip.LinkAddress(reqMAC),
		Type:    header.ARPProtocolNumber,
	})
	r := header.ARP(f[ethHdrLen:])
	r.SetIPv4OverEthernet()
	r.SetOp(header.ARPReply)
	copy(r.HardwareAddressSender(), s.cfg.MAC)
	copy(r.ProtocolAddressSender(), a.ProtocolAddressTarget())
	copy(r.HardwareAddressTarget(), reqMAC)
	copy(r.ProtocolAddressTarget(), a.ProtocolAddressSender())
	if s.send(b, reqMAC) {
		s.stats.arp.Add(1)
	}
}

// handleNS answers a neighbour solicitation for Source6 (RFC 4861 section
// 7.2.4) and reports whether frame was one (answered or not).
func (s *Stack) handleNS(frame []byte) bool {
	ip := header.IPv6(frame[ethHdrLen:])
	if ip.NextHeader() != uint8(header.ICMPv6ProtocolNumber) {
		return false
	}
	icmp := header.ICMPv6(ip.Payload())
	if len(icmp) < header.ICMPv6NeighborSolicitMinimumSize || icmp.Type() != header.ICMPv6NeighborSolicit {
		return false
	}
	// RFC 4861 section 7.1.1: a solicitation is valid only with hop limit
	// 255 (it cannot have crossed a router), code 0 and a good checksum,
	// and from the unspecified address only to a solicited-node address.
	ns := header.NDPNeighborSolicit(icmp.MessageBody())
	src, dst := ip.SourceAddress(), ip.DestinationAddress()
	if ns.TargetAddress() != s.src6 {
		s.stats.notForUs.Add(1)
		return true
	}
	if ip.HopLimit() != header.NDPHopLimit || icmp.Code() != 0 || header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: icmp, Src: src, Dst: dst,
	}) != icmp.Checksum() {
		s.stats.malformed.Add(1)
		return true
	}
	reqMAC := net.HardwareAddr(header.Ethernet(frame).SourceAddress())
	// The requester's link-layer address: its Source Link-Layer Address
	// option if present, otherwise the frame's source.
	if opts, err := ns.Options().Iter(true); err == nil {
		for {
			o, done, err := opts.Next()
			if err != nil || done {
				break
			}
			if sl, ok := o.(header.NDPSourceLinkLayerAddressOption); ok && len(sl.EthernetAddress()) == 6 {
				reqMAC = net.HardwareAddr(sl.EthernetAddress())
			}
		}
	}
	replyDst, solicited := src, true
	dstMAC := reqMAC
	if src.Unspecified() {
		// Duplicate address detection by someone else: answer to
		// all-nodes, unsolicited (section 7.2.4), to defend the address.
		if !header.IsSolicitedNodeAddr(dst) {
			s.stats.malformed.Add(1)
			return true
		}
		replyDst, solicited = header.IPv6AllNodesMulticastAddress, false
		dstMAC = net.HardwareAddr(header.EthernetAddressFromMulticastIPv6Address(replyDst))
	} else if reqMAC[0]&1 != 0 {
		s.stats.malformed.Add(1)
		return true
	}

	const naLen = header.ICMPv6NeighborAdvertMinimumSize + header.NDPLinkLayerAddressSize
	var out [vnetHdrLen + ethHdrLen + header.IPv6MinimumSize + naLen]byte
	b := out[:]
	if !s.vnet {
		b = out[vnetHdrLen:]
	}
	f := b[len(b)-ethHdrLen-header.IPv6MinimumSize-naLen:]
	header.Ethernet(f).Encode(&header.EthernetFields{
		SrcAddr: tcpip.LinkAddress(s.cfg.MAC),
		DstAddr: tcpip.LinkAddress(dstMAC),
		Type:    header.IPv6ProtocolNumber,
	})
	header.IPv6(f[ethHdrLen:]).Encode(&header.IPv6Fields{
		PayloadLength:     naLen,
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          header.NDPHopLimit,
		SrcAddr:           s.src6,
		DstAddr:           replyDst,
	})
	na := header.ICMPv6(f[ethHdrLen+header.IPv6MinimumSize:])
	na.SetType(header.ICMPv6NeighborAdvert)
	na.SetCode(0)
	body := header.NDPNeighborAdvert(na.MessageBody())
	body.SetSolicitedFlag(solicited)
	// Override: the probe source is no anycast address, so our answer
	// replaces whatever the requester had cached (section 7.2.4).
	body.SetOverrideFlag(true)
	body.SetTargetAddress(s.src6)
	body.Options().Serialize(header.NDPOptionsSerializer{header.NDPTargetLinkLayerAddressOption(tcpip.LinkAddress(s.cfg.MAC))})
	na.SetChecksum(0)
	na.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: na, Src: s.src6, Dst: replyDst}))
	if s.send(b, dstMAC) {
		s.stats.ndp.Add(1)
	}
	return true
}

// send writes one frame built by this package (ARP, NDP).
func (s *Stack) send(frame []byte, dst net.HardwareAddr) bool {
	if _, err := s.conn.WriteTo(frame, &packet.Addr{HardwareAddr: dst}); err != nil {
		s.stats.writeErr.Add(1)
		if !s.closed() {
			s.log.Warn("probe ARP/NDP answer not sent", "to", dst.String(), "err", err)
		}
		return false
	}
	s.stats.framesOut.Add(1)
	return true
}

// filter returns the classic BPF program for the socket: it accepts only
//   - ARP requests whose target protocol address is src4,
//   - IPv4 frames to mac whose destination is src4,
//   - ICMPv6 neighbour solicitations whose target is src6 (any
//     destination: solicited-node multicast or, for reachability
//     confirmation, src6 itself),
//   - other IPv6 frames to mac whose destination is src6,
//
// so the socket is not woken by the rest of the LAN's traffic. Offsets are of
// an untagged Ethernet II frame (RFC 826, RFC 791, RFC 8200, RFC 4861).
func filter(mac net.HardwareAddr, src4, src6 netip.Addr) ([]bpf.RawInstruction, error) {
	const (
		offType    = 12
		offARPOp   = ethHdrLen + 6
		offARPTPA  = ethHdrLen + 24
		offIPv4Dst = ethHdrLen + 16
		offIPv6NH  = ethHdrLen + 6
		offIPv6Dst = ethHdrLen + 24
		offICMPv6  = ethHdrLen + header.IPv6MinimumSize
		offNSTgt   = offICMPv6 + 8
		accept     = 0x40000 // more than any frame: the whole frame
	)
	var prog []bpf.Instruction
	// block appends a sequence of (load, compare) pairs that all must hold
	// for the frame to be accepted; the first mismatch jumps to the next
	// block.
	type check struct {
		load bpf.Instruction
		val  uint32
	}
	block := func(checks []check) {
		n := 2*len(checks) + 1 // each check is a load and a jump, then ret
		for i, c := range checks {
			prog = append(prog, c.load, bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: c.val, SkipTrue: uint8(n - 2*i - 2)})
		}
		prog = append(prog, bpf.RetConstant{Val: accept})
	}
	half := func(off uint32) bpf.Instruction { return bpf.LoadAbsolute{Off: off, Size: 2} }
	word := func(off uint32) bpf.Instruction { return bpf.LoadAbsolute{Off: off, Size: 4} }
	byte1 := func(off uint32) bpf.Instruction { return bpf.LoadAbsolute{Off: off, Size: 1} }
	macChecks := []check{
		{word(0), binary.BigEndian.Uint32(mac[0:4])},
		{half(4), uint32(binary.BigEndian.Uint16(mac[4:6]))},
	}
	addr6 := func(off uint32, a netip.Addr) []check {
		b := a.As16()
		var cs []check
		for i := uint32(0); i < 16; i += 4 {
			cs = append(cs, check{word(off + i), binary.BigEndian.Uint32(b[i:])})
		}
		return cs
	}
	if src4.IsValid() {
		b := src4.As4()
		a := binary.BigEndian.Uint32(b[:])
		block([]check{{half(offType), uint32(header.ARPProtocolNumber)}, {half(offARPOp), uint32(header.ARPRequest)}, {word(offARPTPA), a}})
		block(append([]check{{half(offType), uint32(header.IPv4ProtocolNumber)}, {word(offIPv4Dst), a}}, macChecks...))
	}
	if src6.IsValid() {
		block(append([]check{
			{half(offType), uint32(header.IPv6ProtocolNumber)},
			{byte1(offIPv6NH), uint32(header.ICMPv6ProtocolNumber)},
			{byte1(offICMPv6), uint32(header.ICMPv6NeighborSolicit)},
		}, addr6(offNSTgt, src6)...))
		block(append(append([]check{{half(offType), uint32(header.IPv6ProtocolNumber)}}, addr6(offIPv6Dst, src6)...), macChecks...))
	}
	prog = append(prog, bpf.RetConstant{Val: 0})
	return bpf.Assemble(prog)
}
