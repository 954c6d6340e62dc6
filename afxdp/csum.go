package afxdp

import "encoding/binary"

// Why checksums are fixed here: a frame sent on the same host (a veth peer, a namespace) with
// checksum offload is CHECKSUM_PARTIAL in the kernel — its TCP or UDP checksum field holds only
// the folded pseudo-header sum, and the rest is left to the NIC. An AF_PACKET socket learns this
// from the virtio_net_hdr (design notes); AF_XDP hands over bare bytes (measured on 6.18 in both
// attach modes), and the frame would reach the frontend with a checksum it rejects. So a TCP or
// UDP frame whose checksum field equals its pseudo-header sum and whose checksum does not verify
// is completed, as the NIC would have done. A frame corrupted on the wire is not "repaired": its
// field is the sender's complete checksum, which matches the pseudo-header sum only by a 2^-16
// chance, and the Ethernet FCS has dropped it before anyway.

// Offsets and values from RFC 791 (IPv4), RFC 8200 (IPv6), IEEE 802.1Q, RFC 793 and RFC 768.
const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	etherTypeVLAN = 0x8100
	protoTCP      = 6
	protoUDP      = 17
)

// fixPartialChecksum completes the TCP or UDP checksum of frame in place if it is a partial
// one (see above) and reports whether it changed the frame. Anything it does not understand
// (IPv4 fragments and options are handled; IPv6 extension headers are not) is left alone.
func fixPartialChecksum(frame []byte) bool {
	off := 12
	if len(frame) < off+2 {
		return false
	}
	et := binary.BigEndian.Uint16(frame[off:])
	if et == etherTypeVLAN {
		off += 4
		if len(frame) < off+2 {
			return false
		}
		et = binary.BigEndian.Uint16(frame[off:])
	}
	off += 2
	var (
		pseudo uint32
		proto  byte
		l4     []byte
	)
	switch et {
	case etherTypeIPv4:
		ip := frame[off:]
		if len(ip) < 20 || ip[0]>>4 != 4 {
			return false
		}
		ihl := int(ip[0]&0xf) * 4
		total := int(binary.BigEndian.Uint16(ip[2:]))
		if ihl < 20 || total < ihl || total > len(ip) {
			return false
		}
		if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
			return false // a fragment: the checksum covers the whole datagram
		}
		proto = ip[9]
		l4 = ip[ihl:total]
		pseudo = sum16(ip[12:20], 0)
	case etherTypeIPv6:
		ip := frame[off:]
		if len(ip) < 40 || ip[0]>>4 != 6 {
			return false
		}
		plen := int(binary.BigEndian.Uint16(ip[4:]))
		if 40+plen > len(ip) {
			return false
		}
		proto = ip[6]
		l4 = ip[40 : 40+plen]
		pseudo = sum16(ip[8:40], 0)
	default:
		return false
	}
	var field int
	switch proto {
	case protoTCP:
		if len(l4) < 20 {
			return false
		}
		field = 16
	case protoUDP:
		if len(l4) < 8 {
			return false
		}
		field = 6
	default:
		return false
	}
	pseudo += uint32(proto) + uint32(len(l4))
	p := fold(pseudo)
	got := binary.BigEndian.Uint16(l4[field:])
	if got != p {
		return false // a complete checksum (the common case): not ours to judge
	}
	// The field is the pseudo-header sum. One pass over the segment: verify first, so the
	// 2^-16 complete checksum that equals it is left as it is; the sum without the field is the
	// sum with it plus the field's complement (RFC 1624 arithmetic).
	all := fold(sum16(l4, pseudo))
	if all == 0xffff {
		return false
	}
	c := ^fold(uint32(all) + uint32(^p))
	if proto == protoUDP && c == 0 {
		c = 0xffff // RFC 768: zero means "no checksum"
	}
	binary.BigEndian.PutUint16(l4[field:], c)
	return true
}

// sum16 adds b as big-endian 16-bit words (an odd last byte padded with zero, RFC 1071) to s.
func sum16(b []byte, s uint32) uint32 {
	acc := uint64(s)
	for len(b) >= 8 {
		acc += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:]))
		b = b[8:]
	}
	for len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	for acc > 0xffffffff {
		acc = acc&0xffffffff + acc>>32
	}
	return uint32(acc>>16)&0xffff + uint32(acc)&0xffff + uint32(acc>>32)
}

// fold folds a 32-bit one's-complement sum to 16 bits.
func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}
