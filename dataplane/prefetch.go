package dataplane

import (
	"encoding/binary"

	"github.com/l2lb/l2lb/conntrack"
)

// Prefetch starts loading the connection-table slot that Process will look
// up for frame, so that a worker holding several received frames can
// Prefetch them all before it Processes the first and their cache misses
// overlap (see conntrack.PrefetchBatch for the measurements behind this).
//
// It reads only the Ethernet, IPv4 and TCP/UDP header fields that make up
// the flow key, with every length checked, and does nothing for anything
// else: ARP, VLAN tags, other protocols, ICMP (whose key comes from the
// quoted datagram), non-first fragments (looked up by fragment ID) and
// malformed headers. It validates no checksum and consults no
// configuration: a prefetch for a frame Process then drops costs only a
// wasted cache line. It never panics, takes no lock and allocates nothing.
func (e *Engine) Prefetch(frame []byte) {
	if k, ok := prefetchKey(frame); ok {
		e.ct.Prefetch(k)
	}
}

// prefetchKey returns the conntrack key Process's flowOwner uses for a
// TCP or UDP frame (client to VIP, as it arrives), or false when frame is
// not one it would look up that way. Its length checks mirror ParseIPv4's,
// so a frame ParseIPv4 rejects for a bad length gets no key here either.
func prefetchKey(b []byte) (conntrack.Key, bool) {
	if len(b) < ethHeaderLen+ipv4MinHdrLen || binary.BigEndian.Uint16(b[12:14]) != etherTypeIPv4 {
		return conntrack.Key{}, false
	}
	ip := b[ethHeaderLen:]
	if ip[0]>>4 != 4 {
		return conntrack.Key{}, false
	}
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if ihl < ipv4MinHdrLen || total < ihl || total > len(ip) {
		return conntrack.Key{}, false
	}
	if binary.BigEndian.Uint16(ip[6:8])&ipFragOffMask != 0 {
		return conntrack.Key{}, false // non-first fragment: no transport header
	}
	proto := ip[9]
	l4 := ip[ihl:total]
	switch {
	case proto == protoTCP && len(l4) >= tcpMinHdrLen && int(l4[12]>>4)*4 >= tcpMinHdrLen:
	case proto == protoUDP && len(l4) >= udpHeaderLen:
	default:
		return conntrack.Key{}, false
	}
	return conntrack.Key{
		Src:   binary.BigEndian.Uint32(ip[12:16]),
		Dst:   binary.BigEndian.Uint32(ip[16:20]),
		SPort: binary.BigEndian.Uint16(l4[0:2]),
		DPort: binary.BigEndian.Uint16(l4[2:4]),
		Proto: proto,
	}, true
}

// FlowHint carries what PrefetchHint learnt about a frame to the Process
// call for the same frame: the flow key and its table hash. Without it a
// worker that prefetches pays for the key's hash twice per frame (issue 14).
// The zero FlowHint holds nothing. A hint is only ever an optimisation:
// ProcessHint uses it when the key it parses itself equals the hint's, so a
// stale hint, or the hint of another frame, costs a second hash and nothing
// else.
type FlowHint struct {
	key  conntrack.Key
	hash conntrack.Hash
	ok   bool
}

// PrefetchHint is Prefetch that records the frame's flow key and hash in h
// for ProcessHint. It resets h for a frame Prefetch would ignore. Like
// Prefetch it never panics, takes no lock and allocates nothing.
func (e *Engine) PrefetchHint(frame []byte, h *FlowHint) {
	k, ok := prefetchKey(frame)
	if !ok {
		*h = FlowHint{}
		return
	}
	*h = FlowHint{key: k, hash: e.ct.PrefetchHash(k), ok: true}
}
