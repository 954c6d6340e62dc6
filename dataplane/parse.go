package dataplane

import "encoding/binary"

// Ethernet and IPv4 constants used by the parser. Numbers come from IEEE 802.3, RFC 791 (IPv4),
// RFC 793 (TCP), RFC 768 (UDP), RFC 792 (ICMP) and RFC 826 (ARP).
const (
	ethHeaderLen   = 14
	etherTypeIPv4  = 0x0800
	etherTypeARP   = 0x0806
	etherTypeVLAN  = 0x8100 // IEEE 802.1Q
	etherTypeQinQ  = 0x88a8 // IEEE 802.1ad
	ipv4MinHdrLen  = 20
	udpHeaderLen   = 8
	tcpMinHdrLen   = 20
	icmpHeaderLen  = 8
	ipFlagMF       = 0x2000
	ipFragOffMask  = 0x1fff
	protoICMP      = 1
	protoTCP       = 6
	protoUDP       = 17
	icmpEchoReply  = 0
	icmpUnreach    = 3
	icmpSrcQuench  = 4
	icmpRedirect   = 5
	icmpEcho       = 8
	icmpTimeExceed = 11
	icmpParamProb  = 12
)

// Packet is what the fast path needs to know about one IPv4 frame. Parse fills it in place so that
// parsing allocates nothing.
type Packet struct {
	// L3 is the offset of the IPv4 header in the frame.
	L3 int
	// Proto is the IPv4 protocol number.
	Proto uint8
	// Src and Dst are the IPv4 addresses as big-endian integers.
	Src, Dst uint32
	// Transport holds the ports and TCP flags.
	Transport
	// FragID is the IPv4 identification field, meaningful when Fragment is set.
	FragID uint16
	// Fragment reports that the datagram is a fragment (MF set or a non-zero offset).
	Fragment bool
	// FirstFragment reports a fragment at offset 0: it carries the transport header.
	FirstFragment bool
	// ICMPType is the ICMP type for protocol 1.
	ICMPType uint8
	// ICMPError reports an ICMP error message (RFC 792: unreachable, source quench, redirect, time
	// exceeded, parameter problem) whose embedded header was parsed into Inner*.
	ICMPError bool
	// InnerProto, InnerSrc, InnerDst, InnerSPort and InnerDPort describe the datagram an ICMP error
	// is about (RFC 792: its IP header and first 8 bytes are quoted).
	InnerProto             uint8
	InnerSrc, InnerDst     uint32
	InnerSPort, InnerDPort uint16
}

// Transport is the part of a TCP or UDP header the balancer reads, the same in both address
// families.
type Transport struct {
	// SPort and DPort are the transport ports (TCP, UDP); zero for other protocols and for
	// non-first fragments.
	SPort, DPort uint16
	// TCPFlags holds the TCP flag bits (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10).
	TCPFlags uint8
}

// parse reads the ports (and for TCP the flags) of the TCP or UDP header at the start of l4.
func (t *Transport) parse(l4 []byte, proto uint8) Reason {
	if proto == protoTCP {
		if len(l4) < tcpMinHdrLen {
			return ReasonL4Truncated
		}
		if int(l4[12]>>4)*4 < tcpMinHdrLen {
			return ReasonTCPDataOffset
		}
		t.TCPFlags = l4[13]
	} else if len(l4) < udpHeaderLen {
		return ReasonL4Truncated
	}
	t.SPort = binary.BigEndian.Uint16(l4[0:2])
	t.DPort = binary.BigEndian.Uint16(l4[2:4])
	return ReasonNone
}

// ParseIPv4 parses the IPv4 frame b (starting at the Ethernet header) into p. It returns
// ReasonNone when the frame is usable, or the reason it must be dropped. It never panics on any
// input and allocates nothing.
//
// Lying headers are caught here: a total length larger than the frame, a header length below 20
// bytes or beyond the total length, a TCP data offset below 5 words, an ICMP error too short to
// quote the header it is about. Frames longer than the IPv4 total length (Ethernet padding) are
// accepted, as the kernel does (it trims them in ip_rcv).
func ParseIPv4(b []byte, p *Packet) Reason {
	*p = Packet{}
	if len(b) < ethHeaderLen {
		return ReasonRunt
	}
	switch binary.BigEndian.Uint16(b[12:14]) {
	case etherTypeIPv4:
	case etherTypeVLAN, etherTypeQinQ:
		return ReasonVLAN
	default:
		return ReasonNotIP
	}
	ip := b[ethHeaderLen:]
	if len(ip) < ipv4MinHdrLen {
		return ReasonIPTruncated
	}
	if ip[0]>>4 != 4 {
		return ReasonIPVersion
	}
	ihl := int(ip[0]&0x0f) * 4
	if ihl < ipv4MinHdrLen {
		return ReasonIPHeaderLen
	}
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	// GSO frames handed over with PACKET_VNET_HDR keep a valid total length for the whole
	// super-frame (the kernel fixes it up in inet_gro_complete), so this check holds for them too.
	if total < ihl || total > len(ip) {
		return ReasonIPTotalLen
	}
	if len(ip) < ihl {
		return ReasonIPTruncated
	}
	if ipChecksum(ip[:ihl]) != 0 {
		return ReasonIPChecksum
	}
	ip = ip[:total]
	p.L3 = ethHeaderLen
	p.Proto = ip[9]
	p.Src = binary.BigEndian.Uint32(ip[12:16])
	p.Dst = binary.BigEndian.Uint32(ip[16:20])
	frag := binary.BigEndian.Uint16(ip[6:8])
	off := frag & ipFragOffMask
	if frag&ipFlagMF != 0 || off != 0 {
		p.Fragment = true
		p.FragID = binary.BigEndian.Uint16(ip[4:6])
		if off != 0 {
			// Non-first fragments carry no transport header (RFC 791); the caller maps them by
			// FragID to the first fragment's frontend.
			return ReasonNone
		}
		p.FirstFragment = true
	}
	l4 := ip[ihl:]
	switch p.Proto {
	case protoTCP, protoUDP:
		return p.Transport.parse(l4, p.Proto)
	case protoICMP:
		if len(l4) < icmpHeaderLen {
			return ReasonL4Truncated
		}
		p.ICMPType = l4[0]
		switch p.ICMPType {
		case icmpUnreach, icmpSrcQuench, icmpRedirect, icmpTimeExceed, icmpParamProb:
			return parseICMPError(l4[icmpHeaderLen:], p)
		}
	}
	return ReasonNone
}

// parseICMPError reads the quoted IPv4 header and first 8 bytes of the datagram an ICMP error is
// about (RFC 792). That datagram was sent by a frontend (source VIP) to a client, so the flow it
// belongs to is the reverse of the quoted addresses and ports.
func parseICMPError(q []byte, p *Packet) Reason {
	if len(q) < ipv4MinHdrLen || q[0]>>4 != 4 {
		return ReasonICMPInner
	}
	ihl := int(q[0]&0x0f) * 4
	if ihl < ipv4MinHdrLen || len(q) < ihl {
		return ReasonICMPInner
	}
	p.ICMPError = true
	p.InnerProto = q[9]
	p.InnerSrc = binary.BigEndian.Uint32(q[12:16])
	p.InnerDst = binary.BigEndian.Uint32(q[16:20])
	l4 := q[ihl:]
	if (p.InnerProto == protoTCP || p.InnerProto == protoUDP) &&
		binary.BigEndian.Uint16(q[6:8])&ipFragOffMask == 0 {
		if len(l4) < 4 {
			return ReasonICMPInner
		}
		p.InnerSPort = binary.BigEndian.Uint16(l4[0:2])
		p.InnerDPort = binary.BigEndian.Uint16(l4[2:4])
	}
	return ReasonNone
}

// ipChecksum returns the RFC 1071 ones' complement sum of h folded to 16 bits and inverted; it is
// zero for a header whose checksum field is correct.
func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(h[i])<<8 | uint32(h[i+1])
	}
	if len(h)%2 == 1 {
		sum += uint32(h[len(h)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
