package connsync

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"net/netip"
	"time"

	"github.com/l2lb/l2lb/conntrack"
)

// Wire-format constants (see the package documentation for the byte
// layouts).
const (
	// Version1 is the wire-format version of messages whose records are
	// all IPv4: client, VIP and member (RecordLenV1 bytes a record). It is
	// the only version nodes before IPv6 support speak, and what every
	// message without records uses.
	Version1 = 1
	// Version2 is the wire-format version of messages whose records each
	// have an IPv6 address: client and VIP, or member, or both
	// (RecordLenV2 bytes a record). A message never mixes the versions'
	// records: an IPv4 record always travels in a version 1 message, so a
	// node that speaks only version 1 gets every IPv4 record during a
	// rolling upgrade and drops (and counts under ErrVersion) only the
	// version 2 messages.
	Version2 = 2
	// HeaderLen is the size of a message header in bytes; it is the same
	// in both versions.
	HeaderLen = 20
	// RecordLenV1 is the size of one version 1 record in bytes.
	RecordLenV1 = 24
	// RecordLenV2 is the size of one version 2 record in bytes: the
	// version 1 record with 16-byte addresses.
	RecordLenV2 = 60
	// MACLen is the size of the HMAC-SHA256 trailer (RFC 2104, FIPS 180-4)
	// present when a key is set.
	MACLen = sha256.Size
	// MaxMessage bounds an encoded message. An IPv4 datagram on a
	// 1500-byte Ethernet MTU (RFC 894) carries 1472 bytes of UDP payload
	// after the 20-byte IPv4 (RFC 791) and 8-byte UDP (RFC 768) headers;
	// 1400 leaves room for a VLAN tag or a tunnel on the path, so a sync
	// message is never fragmented and one lost fragment never costs a
	// whole batch. The channel runs over IPv4 whatever the records carry.
	MaxMessage = 1400
	// MaxRecordsV1 is the largest number of records in a version 1
	// message: what fits in MaxMessage after the header and the MAC. It is
	// the same with and without a key so that batching does not depend on
	// configuration.
	MaxRecordsV1 = (MaxMessage - HeaderLen - MACLen) / RecordLenV1
	// MaxRecordsV2 is the same for version 2.
	MaxRecordsV2 = (MaxMessage - HeaderLen - MACLen) / RecordLenV2
	// MaxRecords is the largest number of records any message carries
	// (MaxRecordsV1): a slice of this capacity holds every decoded message.
	MaxRecords = MaxRecordsV1
	// MaxTTL is the largest record lifetime the wire can carry: the TTL
	// field is an unsigned 32-bit count of milliseconds (about 49.7 days,
	// far above any IPVS timeout).
	MaxTTL = time.Duration(1<<32-1) * time.Millisecond
)

// Version 2 address flags, the record's byte 3 (reserved, zero, in version
// 1). A set bit says the field holds an IPv4 address in its IPv4-mapped form
// (::ffff:a.b.c.d, RFC 4291 section 2.5.5.2); a clear bit says it holds an
// IPv6 address, which must then not be IPv4-mapped. Both bits set is not a
// version 2 record (it belongs in a version 1 message), and the other bits
// are reserved and zero.
const (
	// v2FlowIPv4 covers the client and the VIP, which share a family.
	v2FlowIPv4 = 0x01
	// v2MemberIPv4 covers the member.
	v2MemberIPv4 = 0x02
	v2Flags      = v2FlowIPv4 | v2MemberIPv4
)

// protoICMPv6 is ICMPv6's protocol number (RFC 4443), the ICMP of an IPv6
// flow: a flow in conntrack.StateICMP has protocol conntrack.ProtoICMP when
// its addresses are IPv4 and protoICMPv6 when they are IPv6.
const protoICMPv6 = 58

// magic starts every message; "L2SY" keeps it distinct from IPVS's sync
// protocol, which may share the LAN during a migration.
var magic = [4]byte{'L', '2', 'S', 'Y'}

// flagAuth marks a message that ends with an HMAC-SHA256 trailer.
const flagAuth = 0x01

// Sentinel errors returned (possibly wrapped) by Encode, Decode and the
// connection. Every rejected message is counted under one of them.
var (
	// ErrShort means the message is shorter than its fixed header.
	ErrShort = errors.New("connsync: message too short")
	// ErrMagic means the message does not start with the protocol magic.
	ErrMagic = errors.New("connsync: bad magic")
	// ErrVersion means the message uses a wire-format version other than
	// Version1 and Version2.
	ErrVersion = errors.New("connsync: unsupported version")
	// ErrHeader means the header carries an unknown message type, unknown
	// flags, non-zero reserved bits or an invalid sender address.
	ErrHeader = errors.New("connsync: bad header")
	// ErrCount means the record count disagrees with the message length
	// for its version's record size, exceeds its version's maximum
	// (MaxRecordsV1, MaxRecordsV2), is non-zero for a message without
	// records, or zero in a version 2 message (which always has records).
	ErrCount = errors.New("connsync: bad record count")
	// ErrSyncID means the message belongs to another sync group.
	ErrSyncID = errors.New("connsync: other SyncID")
	// ErrAuth means the HMAC is wrong, or present when no key is set, or
	// absent when one is.
	ErrAuth = errors.New("connsync: authentication failed")
	// ErrRecord means a record has an unknown kind, an invalid state,
	// protocol or address, non-zero reserved fields or bits, version 2
	// address flags that disagree with the addresses or make a version 1
	// record, or an out-of-range TTL; or that Encode was given records of
	// both versions for one message.
	ErrRecord = errors.New("connsync: bad record")
)

// RecordKind says what a Record describes.
type RecordKind uint8

// Record kinds. Zero is not a kind, so a zero Record never passes as valid.
const (
	// RecordFlow is a connection entry: a flow key, its member and state.
	RecordFlow RecordKind = 1
	// RecordTemplate is a persistence template: client and VIP to member
	// (IPVS's -p).
	RecordTemplate RecordKind = 2
)

// String names the kind.
func (k RecordKind) String() string {
	switch k {
	case RecordFlow:
		return "flow"
	case RecordTemplate:
		return "template"
	}
	return fmt.Sprintf("RecordKind(%d)", uint8(k))
}

// MsgType is the type of a sync message.
type MsgType uint8

// Message types.
const (
	// MsgUpdate carries records (new flows, or a refresh or dump of live
	// ones).
	MsgUpdate MsgType = 1
	// MsgDumpRequest asks the active balancer for a bulk dump; it is sent
	// by a standby that (re)joins and carries no records.
	MsgDumpRequest MsgType = 2
	// MsgDumpEnd follows the last update of a bulk dump and carries no
	// records, so a standby knows its table is complete.
	MsgDumpEnd MsgType = 3
	// MsgHealth carries the active balancer's view of its frontends' health
	// checks as an opaque payload (issue 13: a standby takes over with the
	// same view). It is a version 1 message whose Count field is the length
	// of the payload in bytes, 1 to MaxHealthPayload, instead of a record
	// count. Nodes before it reject it as ErrHeader.
	MsgHealth MsgType = 4
)

// MaxHealthPayload bounds the payload of a MsgHealth message: what fits in
// MaxMessage after the header and the MAC.
const MaxHealthPayload = MaxMessage - HeaderLen - MACLen

// String names the message type.
func (t MsgType) String() string {
	switch t {
	case MsgUpdate:
		return "update"
	case MsgDumpRequest:
		return "dump-request"
	case MsgDumpEnd:
		return "dump-end"
	case MsgHealth:
		return "health"
	}
	return fmt.Sprintf("MsgType(%d)", uint8(t))
}

// Record is one replicated item: a flow (its key, member address, state
// and remaining lifetime) or a persistence template (client and VIP to
// member address, remaining lifetime).
//
// Src and Dst are both IPv4 or both IPv6, never IPv4-mapped IPv6
// (::ffff:a.b.c.d is refused; use the 4-byte form); Member is IPv4 or IPv6
// on its own, since a frontend may be reached over either family whatever
// the flow's. A record whose three addresses are IPv4 travels in a version 1
// message, any other in a version 2 one.
//
// Encode, Decode and Conn.Send accept a record only when it is valid:
//   - Kind is RecordFlow or RecordTemplate;
//   - IPv4 Src and Dst are not 0.0.0.0 (the rule of version 1, kept as it
//     was so that every node of a group accepts the same IPv4 records);
//   - IPv6 Src and Dst are global or unique-local unicast, as a client and a
//     VIP are: not unspecified, loopback, multicast or link-local, not
//     IPv4-mapped, without a zone;
//   - Member is a unicast address a frontend can have on the LAN: IPv4 not
//     0.0.0.0, loopback, multicast or 255.255.255.255; IPv6 under the rules
//     of Src and Dst (no link-local member: the balancer resolves a member's
//     MAC on the interface and must reach it by a routable address);
//   - a flow's State matches its Proto as conntrack assigns it: TCP states
//     for TCP, StateUDP for UDP, StateICMP for the ICMP of the flow's family
//     (ICMP, protocol 1, for IPv4; ICMPv6, protocol 58, for IPv6) and
//     StateOther for every other protocol;
//   - a template has no ports, protocol or state;
//   - TTL is between 0 and MaxTTL.
type Record struct {
	// Kind says whether this is a flow or a template.
	Kind RecordKind
	// Src is the client's address and Dst the VIP's.
	Src, Dst netip.Addr
	// SPort and DPort are the flow's client and VIP ports (zero for
	// protocols without ports and for a template).
	SPort, DPort uint16
	// Proto is the flow's IP protocol (zero for a template).
	Proto uint8
	// Member is the real address of the frontend the flow or client goes
	// to, IPv4 or IPv6. It is an address, not a local member ID, because
	// IDs are assigned per node and differ between balancers.
	Member netip.Addr
	// State is the flow's protocol state; zero for a template.
	State conntrack.State
	// TTL is the remaining lifetime at the sender; the receiver adds it to
	// its own clock, so the nodes' clocks need not agree. It travels in
	// whole milliseconds (shorter remainders are truncated).
	TTL time.Duration
}

// Header is the decoded header of a message. The record count is the
// length of the record slice, the authentication flag follows from the key
// and the version from the records, so none of them appears here.
type Header struct {
	// Type is the message type.
	Type MsgType
	// SyncID is the sender's sync group (IPVS --syncid); 0 is a valid
	// group of its own.
	SyncID uint16
	// Sender is the IPv4 real address of the sending balancer (the channel
	// runs over IPv4 in both versions).
	Sender netip.Addr
	// Seq numbers the sender's messages, so a receiver can spot loss.
	Seq uint32
	// Payload is the body of a MsgHealth message (nil for the others). On
	// decoding it aliases the decoded buffer.
	Payload []byte
}

// EncodedLen returns the size of a message of version (Version1 or
// Version2) with n records, with or without the MAC trailer; 0 for another
// version.
func EncodedLen(version, n int, authenticated bool) int {
	var l int
	switch version {
	case Version1:
		l = HeaderLen + n*RecordLenV1
	case Version2:
		l = HeaderLen + n*RecordLenV2
	default:
		return 0
	}
	if authenticated {
		l += MACLen
	}
	return l
}

// Encode appends the message made of h and recs to dst and returns the
// extended slice: a version 1 message when every record is IPv4 (client,
// VIP and member; a message without records included), a version 2 message
// when every record has an IPv6 address. Records of both kinds fail with
// ErrRecord: a message never mixes them (Conn.Send splits a batch). With a
// non-empty key the message ends with an HMAC-SHA256 over everything before
// it. Without a key it allocates nothing when dst has room for the message
// (MaxMessage bytes always suffice); with one it sets up an HMAC state for
// the call (crypto/hmac allocates it), which a Conn instead keeps and
// reuses. It fails with ErrHeader, ErrCount (more than MaxRecordsV1 or
// MaxRecordsV2 records) or ErrRecord (wrapped) on input Decode would
// reject, returning dst with its length and contents unchanged (its spare
// capacity may have been written).
func Encode(dst []byte, h Header, recs []Record, key []byte) ([]byte, error) {
	return encode(dst, h, recs, newMAC(key))
}

// encode is Encode with the key's HMAC state, nil for no key.
func encode(dst []byte, h Header, recs []Record, mac *macState) ([]byte, error) {
	if h.Type == MsgHealth && h.Sender.Is4() {
		return encodeHealth(dst, h, recs, mac)
	}
	if h.Type < MsgUpdate || h.Type > MsgDumpEnd || !h.Sender.Is4() || h.Payload != nil {
		return dst, ErrHeader
	}
	if len(recs) > MaxRecordsV1 || (h.Type != MsgUpdate && len(recs) != 0) {
		return dst, ErrCount
	}
	// The first record says the version; every record is checked as it is
	// written, and the first that is invalid or of the other version
	// fails the message.
	v := Version1
	if len(recs) > 0 && !v1Shaped(&recs[0]) {
		v = Version2
	}
	if v == Version2 && len(recs) > MaxRecordsV2 {
		return dst, ErrCount
	}
	start := len(dst)
	dst = grow(dst, EncodedLen(v, len(recs), mac != nil))
	b := dst[start:]
	off := HeaderLen
	for i := range recs {
		var ok bool
		if v == Version1 {
			ok = putRecordV1(b[off:off+RecordLenV1], &recs[i])
			off += RecordLenV1
		} else {
			ok = putRecordV2(b[off:off+RecordLenV2], &recs[i])
			off += RecordLenV2
		}
		if !ok {
			if rv := recordVersion(&recs[i]); rv != 0 {
				return dst[:start], fmt.Errorf("%w: record %d is of version %d, record 0 of version %d; a message carries one version's records (Conn.Send splits them)",
					ErrRecord, i, rv, v)
			}
			return dst[:start], fmt.Errorf("%w: record %d", ErrRecord, i)
		}
	}
	putHeader(b, v, h, len(recs), mac != nil)
	if mac != nil {
		mac.appendMAC(b[:off])
	}
	return dst, nil
}

// encodeHealth encodes a MsgHealth message: h.Payload after the header, no
// records.
func encodeHealth(dst []byte, h Header, recs []Record, mac *macState) ([]byte, error) {
	if len(recs) != 0 || len(h.Payload) == 0 || len(h.Payload) > MaxHealthPayload {
		return dst, ErrCount
	}
	start := len(dst)
	n := HeaderLen + len(h.Payload)
	l := n
	if mac != nil {
		l += MACLen
	}
	dst = grow(dst, l)
	b := dst[start:]
	copy(b[HeaderLen:], h.Payload)
	putHeader(b, Version1, h, len(h.Payload), mac != nil)
	if mac != nil {
		mac.appendMAC(b[:n])
	}
	return dst, nil
}

// putHeader writes the header of a message of version v with n records to
// b, which must hold HeaderLen bytes.
func putHeader(b []byte, v int, h Header, n int, auth bool) {
	_ = b[HeaderLen-1]
	copy(b[0:4], magic[:])
	b[4] = byte(v)
	b[5] = 0
	if auth {
		b[5] = flagAuth
	}
	b[6] = byte(h.Type)
	b[7] = 0
	binary.BigEndian.PutUint16(b[8:], h.SyncID)
	binary.BigEndian.PutUint16(b[10:], uint16(n))
	a4 := h.Sender.As4()
	copy(b[12:16], a4[:])
	binary.BigEndian.PutUint32(b[16:], h.Seq)
}

// grow extends b by n bytes, reallocating only when its capacity is short.
func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b[:len(b)+n]
	}
	nb := make([]byte, len(b)+n, 2*len(b)+n)
	copy(nb, b)
	return nb
}

// Decode checks and decodes one message of either version. recs is reused
// for the result (it allocates nothing when cap(recs) >= MaxRecords).
// wantSyncID 0 accepts every sync group, as a backup IPVS daemon with
// syncid 0 does; any other value accepts only that group. With a non-empty
// key the message must carry a valid HMAC; without one it must carry none,
// so mismatched configurations fail loudly instead of half-working. Every
// length is checked before it is used, and failures wrap one of the
// package's sentinel errors. Decode accepts exactly what Encode produces: a
// message it accepts re-encodes to the same bytes. As with Encode, a key
// costs an HMAC state per call; a Conn keeps one.
func Decode(b []byte, key []byte, wantSyncID uint16, recs []Record) (Header, []Record, error) {
	return decode(b, newMAC(key), wantSyncID, recs)
}

// decode is Decode with the key's HMAC state, nil for no key.
func decode(b []byte, mac *macState, wantSyncID uint16, recs []Record) (Header, []Record, error) {
	recs = recs[:0]
	if len(b) < 5 {
		return Header{}, recs, ErrShort
	}
	if [4]byte(b[0:4]) != magic {
		return Header{}, recs, ErrMagic
	}
	// The version is checked before the length: another version may have
	// another header size.
	v := int(b[4])
	var recLen, maxRecs int
	switch v {
	case Version1:
		recLen, maxRecs = RecordLenV1, MaxRecordsV1
	case Version2:
		recLen, maxRecs = RecordLenV2, MaxRecordsV2
	default:
		return Header{}, recs, ErrVersion
	}
	if len(b) < HeaderLen {
		return Header{}, recs, ErrShort
	}
	flags := b[5]
	if flags&^flagAuth != 0 || b[7] != 0 {
		return Header{}, recs, ErrHeader
	}
	auth := flags&flagAuth != 0
	n := int(binary.BigEndian.Uint16(b[10:]))
	health := MsgType(b[6]) == MsgHealth
	if health {
		// Count is the payload's length in bytes.
		want := HeaderLen + n
		if auth {
			want += MACLen
		}
		if v != Version1 || n == 0 || n > MaxHealthPayload || len(b) != want {
			return Header{}, recs, ErrCount
		}
	} else if n > maxRecs || len(b) != EncodedLen(v, n, auth) || (v == Version2 && n == 0) {
		// A version 2 message carries at least one record: one without
		// records is version 1.
		return Header{}, recs, ErrCount
	}
	h := Header{
		Type:   MsgType(b[6]),
		SyncID: binary.BigEndian.Uint16(b[8:]),
		Sender: netip.AddrFrom4([4]byte(b[12:16])),
		Seq:    binary.BigEndian.Uint32(b[16:]),
	}
	// SyncID before authentication: messages of other groups on a shared
	// LAN are normal and need no HMAC work.
	if wantSyncID != 0 && h.SyncID != wantSyncID {
		return Header{}, recs, ErrSyncID
	}
	body := len(b)
	if auth {
		body -= MACLen
	}
	switch {
	case mac != nil && !auth:
		return Header{}, recs, fmt.Errorf("%w: message carries no MAC", ErrAuth)
	case mac == nil && auth:
		return Header{}, recs, fmt.Errorf("%w: message carries a MAC but no key is set", ErrAuth)
	case auth:
		if !mac.verify(b[:body], b[body:]) {
			return Header{}, recs, ErrAuth
		}
	}
	if health {
		h.Payload = b[HeaderLen : HeaderLen+n]
		return h, recs, nil
	}
	if h.Type < MsgUpdate || h.Type > MsgDumpEnd {
		return Header{}, recs, ErrHeader
	}
	if h.Type != MsgUpdate && n != 0 {
		return Header{}, recs, ErrCount
	}
	// Records are decoded in place: a Record is four times the size of a
	// version 1 record, and copying each one once more shows.
	if cap(recs) < n {
		recs = make([]Record, 0, n)
	}
	recs = recs[:n]
	for i, off := 0, HeaderLen; i < n; i, off = i+1, off+recLen {
		r := &recs[i]
		var ok bool
		if v == Version1 {
			ok = getRecordV1(b[off:off+RecordLenV1], r)
		} else {
			ok = getRecordV2(b[off:off+RecordLenV2], r) && validRecord(r)
		}
		if !ok {
			return Header{}, recs[:0], ErrRecord
		}
	}
	return h, recs, nil
}

// Version 1 record layout (24 bytes, big-endian):
//
//	0 kind, 1 state, 2 proto, 3 reserved (0), 4 src, 8 dst, 12 sport,
//	14 dport, 16 member, 20 TTL in milliseconds.
//
// putRecordV1 writes r to b and reports whether it is a valid record of
// version 1 (see Record): when it is not, b holds garbage. It checks the
// addresses as 32-bit numbers, which is what keeps version 1 as fast as it
// was before there was a version 2.
func putRecordV1(b []byte, r *Record) bool {
	_ = b[RecordLenV1-1]
	if !r.Src.Is4() || !r.Dst.Is4() || !r.Member.Is4() {
		return false
	}
	src, dst, member := addr4(r.Src), addr4(r.Dst), addr4(r.Member)
	b[0] = byte(r.Kind)
	b[1] = byte(r.State)
	b[2] = r.Proto
	b[3] = 0
	binary.BigEndian.PutUint32(b[4:], src)
	binary.BigEndian.PutUint32(b[8:], dst)
	binary.BigEndian.PutUint16(b[12:], r.SPort)
	binary.BigEndian.PutUint16(b[14:], r.DPort)
	binary.BigEndian.PutUint32(b[16:], member)
	binary.BigEndian.PutUint32(b[20:], uint32(r.TTL/time.Millisecond))
	return validV1(r, src, dst, member)
}

// getRecordV1 is the inverse of putRecordV1; it reports whether the record
// is valid (the reserved byte included).
func getRecordV1(b []byte, r *Record) bool {
	_ = b[RecordLenV1-1]
	src, dst, member := binary.BigEndian.Uint32(b[4:]), binary.BigEndian.Uint32(b[8:]), binary.BigEndian.Uint32(b[16:])
	*r = Record{
		Kind:   RecordKind(b[0]),
		State:  conntrack.State(b[1]),
		Proto:  b[2],
		Src:    netip.AddrFrom4([4]byte(b[4:8])),
		Dst:    netip.AddrFrom4([4]byte(b[8:12])),
		SPort:  binary.BigEndian.Uint16(b[12:]),
		DPort:  binary.BigEndian.Uint16(b[14:]),
		Member: netip.AddrFrom4([4]byte(b[16:20])),
		TTL:    time.Duration(binary.BigEndian.Uint32(b[20:])) * time.Millisecond,
	}
	return b[3] == 0 && validV1(r, src, dst, member)
}

// addr4 returns IPv4 address a as a 32-bit number.
func addr4(a netip.Addr) uint32 {
	a4 := a.As4()
	return binary.BigEndian.Uint32(a4[:])
}

// validV1 is validRecord for a record whose addresses are IPv4, given as
// 32-bit numbers.
func validV1(r *Record, src, dst, member uint32) bool {
	return src != 0 && dst != 0 && validMember4(member) && validTTL(r.TTL) && validFields(r, false)
}

// v1Shaped reports whether r has the addresses of a version 1 record: an
// IPv4 client and member (a valid record's VIP has the client's family).
func v1Shaped(r *Record) bool { return r.Src.Is4() && r.Member.Is4() }

// Version 2 record layout (60 bytes, big-endian): version 1's with the
// reserved byte holding the address flags and 16-byte addresses:
//
//	0 kind, 1 state, 2 proto, 3 flags (v2FlowIPv4, v2MemberIPv4),
//	4 src, 20 dst, 36 sport, 38 dport, 40 member, 56 TTL in milliseconds.
//
// An IPv4 address is written IPv4-mapped, which As16 returns.
// putRecordV2 writes r to b and reports whether it is a valid record of
// version 2: when it is not, b is left alone.
func putRecordV2(b []byte, r *Record) bool {
	_ = b[RecordLenV2-1]
	if v1Shaped(r) || !validRecord(r) {
		return false
	}
	b[0] = byte(r.Kind)
	b[1] = byte(r.State)
	b[2] = r.Proto
	var f byte
	if r.Src.Is4() {
		f |= v2FlowIPv4
	}
	if r.Member.Is4() {
		f |= v2MemberIPv4
	}
	b[3] = f
	s, d, m := r.Src.As16(), r.Dst.As16(), r.Member.As16()
	copy(b[4:20], s[:])
	copy(b[20:36], d[:])
	binary.BigEndian.PutUint16(b[36:], r.SPort)
	binary.BigEndian.PutUint16(b[38:], r.DPort)
	copy(b[40:56], m[:])
	binary.BigEndian.PutUint32(b[56:], uint32(r.TTL/time.Millisecond))
	return true
}

// getRecordV2 is the inverse of putRecordV2; it reports false when the
// flags are not those of a version 2 record (a reserved bit set, or both
// address bits, which make a version 1 record) or an address is not in the
// form its flag says; the caller checks the rest with validRecord.
func getRecordV2(b []byte, r *Record) bool {
	_ = b[RecordLenV2-1]
	f := b[3]
	if f&^v2Flags != 0 || f == v2Flags {
		return false
	}
	src, ok1 := getAddr16(b[4:20], f&v2FlowIPv4 != 0)
	dst, ok2 := getAddr16(b[20:36], f&v2FlowIPv4 != 0)
	member, ok3 := getAddr16(b[40:56], f&v2MemberIPv4 != 0)
	*r = Record{
		Kind:   RecordKind(b[0]),
		State:  conntrack.State(b[1]),
		Proto:  b[2],
		Src:    src,
		Dst:    dst,
		SPort:  binary.BigEndian.Uint16(b[36:]),
		DPort:  binary.BigEndian.Uint16(b[38:]),
		Member: member,
		TTL:    time.Duration(binary.BigEndian.Uint32(b[56:])) * time.Millisecond,
	}
	return ok1 && ok2 && ok3
}

// getAddr16 reads a 16-byte address field: an IPv4-mapped address when
// ipv4 is set, which it returns as IPv4, and otherwise an IPv6 address that
// is not IPv4-mapped.
func getAddr16(b []byte, ipv4 bool) (netip.Addr, bool) {
	a := netip.AddrFrom16([16]byte(b))
	if a.Is4In6() != ipv4 {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// recordVersion returns the wire version that carries r (Version1 when its
// addresses are all IPv4, Version2 otherwise), or 0 when r is invalid.
func recordVersion(r *Record) int {
	switch {
	case !validRecord(r):
		return 0
	case v1Shaped(r):
		return Version1
	}
	return Version2
}

// validRecord reports whether r can be sent and accepted: the rules Decode
// enforces (see Record), so Encode never produces what Decode rejects.
func validRecord(r *Record) bool {
	if !validTTL(r.TTL) || !validMember(r.Member) {
		return false
	}
	var ipv6 bool
	switch {
	case r.Src.Is4() && r.Dst.Is4():
		if r.Src.IsUnspecified() || r.Dst.IsUnspecified() {
			return false
		}
	case r.Src.Is6() && r.Dst.Is6():
		if !validIPv6(r.Src) || !validIPv6(r.Dst) {
			return false
		}
		ipv6 = true
	default:
		return false // a zero address, or a client and a VIP of different families
	}
	return validFields(r, ipv6)
}

// validTTL reports whether the wire can carry lifetime d.
func validTTL(d time.Duration) bool { return d >= 0 && d <= MaxTTL }

// validFields checks r's kind and the fields that depend on it: a flow's
// state against its protocol, a template's unused fields.
func validFields(r *Record, ipv6 bool) bool {
	switch r.Kind {
	case RecordFlow:
		return stateMatchesProto(r.State, r.Proto, ipv6)
	case RecordTemplate:
		// A template is keyed by client and VIP only (conntrack's
		// Template(client, vip)); anything else is garbage.
		return r.State == 0 && r.Proto == 0 && r.SPort == 0 && r.DPort == 0
	}
	return false
}

// validMember accepts the unicast addresses a frontend can have on the LAN.
func validMember(a netip.Addr) bool {
	if a.Is4() {
		return validMember4(addr4(a))
	}
	return a.Is6() && validIPv6(a)
}

// validMember4 accepts an IPv4 member address, as a 32-bit number: not
// 0.0.0.0, loopback (127/8), multicast (224/4) or 255.255.255.255.
func validMember4(a uint32) bool {
	return a != 0 && a>>24 != 127 && a>>28 != 0xe && a != 0xffffffff
}

// validIPv6 accepts the IPv6 addresses a client, a VIP and a member may
// have: global and unique-local unicast (RFC 4291, RFC 4193), without a zone
// and not IPv4-mapped (an IPv4 address is carried as IPv4).
func validIPv6(a netip.Addr) bool {
	return !a.Is4In6() && a.Zone() == "" && !a.IsUnspecified() && !a.IsLoopback() &&
		!a.IsMulticast() && !a.IsLinkLocalUnicast()
}

// stateMatchesProto mirrors how conntrack assigns a flow's first state from
// its protocol: TCP flows have TCP states, UDP and ICMP (ICMPv6 for an IPv6
// flow) their own, every other protocol StateOther.
func stateMatchesProto(s conntrack.State, proto uint8, ipv6 bool) bool {
	icmp := uint8(conntrack.ProtoICMP)
	if ipv6 {
		icmp = protoICMPv6
	}
	switch s {
	case conntrack.StateSynRecv, conntrack.StateEstablished, conntrack.StateClosing, conntrack.StateClose:
		return proto == conntrack.ProtoTCP
	case conntrack.StateUDP:
		return proto == conntrack.ProtoUDP
	case conntrack.StateICMP:
		return proto == icmp
	case conntrack.StateOther:
		return proto != conntrack.ProtoTCP && proto != conntrack.ProtoUDP && proto != icmp
	}
	return false
}

// macState is one key's HMAC-SHA256 (RFC 2104) state from crypto/hmac,
// reset for every message so that authenticating a message allocates
// nothing. It is not safe for concurrent use. A nil *macState stands for no
// key.
type macState struct {
	h   hash.Hash
	sum [MACLen]byte
}

// newMAC returns the HMAC state for key, or nil when key is empty.
func newMAC(key []byte) *macState {
	if len(key) == 0 {
		return nil
	}
	return &macState{h: hmac.New(sha256.New, key)}
}

// appendMAC appends the MAC of msg to msg, which must have MACLen bytes of
// spare capacity (Encode's grow leaves them), and returns the extended slice.
func (m *macState) appendMAC(msg []byte) []byte {
	m.h.Reset()
	m.h.Write(msg)
	return m.h.Sum(msg)
}

// verify reports whether mac is the MAC of msg, in constant time.
func (m *macState) verify(msg, mac []byte) bool {
	m.h.Reset()
	m.h.Write(msg)
	return hmac.Equal(m.h.Sum(m.sum[:0]), mac)
}
