package dataplane

import "encoding/binary"

// IPv6 constants used by the parser: RFC 8200 (IPv6 and its extension headers), RFC 4443
// (ICMPv6), RFC 4861 (neighbour discovery).
const (
	etherTypeIPv6 = 0x86dd
	ipv6HdrLen    = 40
	// IPv6 next-header values.
	nhHopByHop = 0
	nhRouting  = 43
	nhFragment = 44
	nhESP      = 50
	nhAH       = 51
	nhICMPv6   = 58
	nhNone     = 59
	nhDestOpts = 60
	// maxExtHeaders bounds the extension-header walk. RFC 8200 §4.1 recommends at most one of
	// each kind (Destination Options twice), in a fixed order, so a legitimate chain has at
	// most six; a longer one is an attack on the walk, dropped as ReasonIPv6ExtChain.
	maxExtHeaders = 8
	// ICMPv6 message types (RFC 4443 §2.1: types below 128 are errors; RFC 4861 §4).
	icmp6DestUnreach  = 1
	icmp6PacketTooBig = 2
	icmp6TimeExceeded = 3
	icmp6ParamProblem = 4
	icmp6EchoRequest  = 128
	icmp6EchoReply    = 129
	icmp6NeighSolicit = 135
	icmp6NeighAdvert  = 136
	icmp6HeaderLen    = 8
	// ndpTargetLen is an NS or NA body up to and including its target address (RFC 4861 §4.3,
	// §4.4): 4 bytes of type/code/checksum, 4 of flags or reserved, 16 of target.
	ndpTargetLen = 24
)

// Packet6 is what the fast path needs to know about one IPv6 frame. ParseIPv6 fills it in place so
// that parsing allocates nothing.
type Packet6 struct {
	// Proto is the upper-layer protocol, after the extension headers (RFC 8200 §4).
	Proto uint8
	// Src and Dst are the IPv6 addresses in packet byte order.
	Src, Dst [16]byte
	// HopLimit is the IPv6 hop limit (NDP messages must carry 255, RFC 4861 §7.1.1).
	HopLimit uint8
	// Transport holds the ports and TCP flags.
	Transport
	// Fragment reports a Fragment header (RFC 8200 §4.5); FirstFragment one at offset 0, which
	// carries the upper-layer header; FragID is its Identification.
	Fragment, FirstFragment bool
	FragID                  uint32
	// ICMPType is the ICMPv6 type for protocol 58.
	ICMPType uint8
	// ICMPError reports an ICMPv6 error (RFC 4443 §3: unreachable, packet too big, time exceeded,
	// parameter problem) whose quoted packet was parsed into Inner*.
	ICMPError bool
	// InnerProto, InnerSrc, InnerDst, InnerSPort and InnerDPort describe the packet an ICMPv6
	// error is about: it was sent by a frontend (source VIP) to a client.
	InnerProto             uint8
	InnerSrc, InnerDst     [16]byte
	InnerSPort, InnerDPort uint16
	// L4 is the offset of the upper-layer header in the frame (the ICMPv6 message for NDP).
	L4 int
}

// ParseIPv6 parses the IPv6 frame b (starting at the Ethernet header) into p. It returns
// ReasonNone when the frame is usable, or the reason it must be dropped. It never panics on any
// input and allocates nothing.
//
// The extension-header chain is walked with a bound (maxExtHeaders), a Hop-by-Hop header that is
// not first is refused (RFC 8200 §4.1), and a payload length beyond the frame is refused; frames
// longer than the payload length (Ethernet padding) are accepted. A jumbogram (payload length 0
// with a Hop-by-Hop jumbo option, RFC 2675) is not supported and is dropped as a bad length.
// ESP, AH and "no next header" end the walk with no ports: such flows are keyed by addresses.
func ParseIPv6(b []byte, p *Packet6) Reason {
	*p = Packet6{}
	if len(b) < ethHeaderLen {
		return ReasonRunt
	}
	if binary.BigEndian.Uint16(b[12:14]) != etherTypeIPv6 {
		return ReasonNotIP
	}
	ip := b[ethHeaderLen:]
	if len(ip) < ipv6HdrLen {
		return ReasonIPTruncated
	}
	if ip[0]>>4 != 6 {
		return ReasonIPVersion
	}
	plen := int(binary.BigEndian.Uint16(ip[4:6]))
	if plen == 0 || ipv6HdrLen+plen > len(ip) {
		return ReasonIPTotalLen
	}
	ip = ip[:ipv6HdrLen+plen]
	p.HopLimit = ip[7]
	p.Src = [16]byte(ip[8:24])
	p.Dst = [16]byte(ip[24:40])
	nh, off, r := walkExtHeaders(ip, ip[6], ipv6HdrLen, p)
	if r != ReasonNone {
		return r
	}
	p.Proto = nh
	p.L4 = ethHeaderLen + off
	if p.Fragment && !p.FirstFragment {
		// Non-first fragments carry no upper-layer header (RFC 8200 §4.5); the caller maps them
		// by the fragment's Identification to the first fragment's frontend.
		return ReasonNone
	}
	l4 := ip[off:]
	switch nh {
	case protoTCP, protoUDP:
		return p.Transport.parse(l4, nh)
	case nhICMPv6:
		if len(l4) < icmp6HeaderLen {
			return ReasonL4Truncated
		}
		p.ICMPType = l4[0]
		switch p.ICMPType {
		case icmp6DestUnreach, icmp6PacketTooBig, icmp6TimeExceeded, icmp6ParamProblem:
			return parseICMPv6Error(l4[icmp6HeaderLen:], p)
		case icmp6NeighSolicit, icmp6NeighAdvert:
			if len(l4) < ndpTargetLen {
				return ReasonNDPMalformed
			}
		}
	}
	return ReasonNone
}

// walkExtHeaders follows the extension-header chain of the IPv6 packet ip from the header whose
// next-header value is nh at offset off, and returns the upper-layer protocol and its offset.
// It records a Fragment header in p.
func walkExtHeaders(ip []byte, nh uint8, off int, p *Packet6) (uint8, int, Reason) {
	for n := 0; ; n++ {
		switch nh {
		case nhHopByHop, nhRouting, nhDestOpts, nhFragment, nhAH:
		default:
			return nh, off, ReasonNone
		}
		if n == maxExtHeaders {
			return 0, 0, ReasonIPv6ExtChain
		}
		if nh == nhHopByHop && n != 0 {
			return 0, 0, ReasonIPv6ExtChain // RFC 8200 §4.1: only right after the IPv6 header
		}
		if len(ip) < off+8 {
			return 0, 0, ReasonIPv6ExtChain
		}
		h := ip[off:]
		var hlen int
		switch nh {
		case nhFragment:
			if p.Fragment {
				return 0, 0, ReasonIPv6ExtChain // two fragment headers
			}
			hlen = 8
			fo := binary.BigEndian.Uint16(h[2:4])
			p.Fragment = true
			p.FirstFragment = fo>>3 == 0
			p.FragID = binary.BigEndian.Uint32(h[4:8])
		case nhAH:
			hlen = (int(h[1]) + 2) * 4 // RFC 4302 §2.2: in 4-byte units, minus 2
		default:
			hlen = (int(h[1]) + 1) * 8 // RFC 8200 §4.3: in 8-byte units, not counting the first 8
		}
		if len(ip) < off+hlen {
			return 0, 0, ReasonIPv6ExtChain
		}
		nh = h[0]
		off += hlen
		if p.Fragment && !p.FirstFragment {
			// Past a non-first fragment's header comes fragment data, not headers.
			return nh, off, ReasonNone
		}
	}
}

// parseICMPv6Error reads the quoted packet of an ICMPv6 error (RFC 4443 §3: as much of the
// invoking packet as fits). That packet was sent by a frontend (source VIP) to a client, so the
// flow it belongs to is the reverse of the quoted addresses and ports.
func parseICMPv6Error(q []byte, p *Packet6) Reason {
	if len(q) < ipv6HdrLen || q[0]>>4 != 6 {
		return ReasonICMPInner
	}
	p.ICMPError = true
	p.InnerSrc = [16]byte(q[8:24])
	p.InnerDst = [16]byte(q[24:40])
	var inner Packet6
	nh, off, r := walkExtHeaders(q, q[6], ipv6HdrLen, &inner)
	if r != ReasonNone {
		return ReasonICMPInner
	}
	p.InnerProto = nh
	if (nh == protoTCP || nh == protoUDP) && (!inner.Fragment || inner.FirstFragment) {
		if len(q) < off+4 {
			return ReasonICMPInner
		}
		p.InnerSPort = binary.BigEndian.Uint16(q[off : off+2])
		p.InnerDPort = binary.BigEndian.Uint16(q[off+2 : off+4])
	}
	return ReasonNone
}
