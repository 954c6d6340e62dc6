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

// Wire-format constants of version 1 (see the package documentation for the
// byte layout).
const (
	// Version is the wire-format version this package speaks.
	Version = 1
	// HeaderLen is the size of a message header in bytes.
	HeaderLen = 20
	// RecordLen is the size of one encoded record in bytes.
	RecordLen = 24
	// MACLen is the size of the HMAC-SHA256 trailer (RFC 2104, FIPS 180-4)
	// present when a key is set.
	MACLen = sha256.Size
	// MaxMessage bounds an encoded message. An IPv4 datagram on a
	// 1500-byte Ethernet MTU (RFC 894) carries 1472 bytes of UDP payload
	// after the 20-byte IPv4 (RFC 791) and 8-byte UDP (RFC 768) headers;
	// 1400 leaves room for a VLAN tag or a tunnel on the path, so a sync
	// message is never fragmented and one lost fragment never costs a
	// whole batch.
	MaxMessage = 1400
	// MaxRecords is the largest number of records in one message: what
	// fits in MaxMessage after the header and the MAC. It is the same with
	// and without a key so that batching does not depend on configuration.
	MaxRecords = (MaxMessage - HeaderLen - MACLen) / RecordLen
	// MaxTTL is the largest record lifetime the wire can carry: the TTL
	// field is an unsigned 32-bit count of milliseconds (about 49.7 days,
	// far above any IPVS timeout).
	MaxTTL = time.Duration(1<<32-1) * time.Millisecond
)

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
	// ErrVersion means the message uses another wire-format version.
	ErrVersion = errors.New("connsync: unsupported version")
	// ErrHeader means the header carries an unknown message type, unknown
	// flags, non-zero reserved bits or an invalid sender address.
	ErrHeader = errors.New("connsync: bad header")
	// ErrCount means the record count disagrees with the message length,
	// exceeds MaxRecords, or is non-zero for a message without records.
	ErrCount = errors.New("connsync: bad record count")
	// ErrSyncID means the message belongs to another sync group.
	ErrSyncID = errors.New("connsync: other SyncID")
	// ErrAuth means the HMAC is wrong, or present when no key is set, or
	// absent when one is.
	ErrAuth = errors.New("connsync: authentication failed")
	// ErrRecord means a record has an unknown kind, an invalid state,
	// protocol or address, non-zero reserved fields, or an out-of-range TTL.
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
)

// String names the message type.
func (t MsgType) String() string {
	switch t {
	case MsgUpdate:
		return "update"
	case MsgDumpRequest:
		return "dump-request"
	case MsgDumpEnd:
		return "dump-end"
	}
	return fmt.Sprintf("MsgType(%d)", uint8(t))
}

// Record is one replicated item: a flow (Key, member address, state and
// remaining lifetime) or a persistence template (client and VIP to member
// address, remaining lifetime).
type Record struct {
	// Kind says whether this is a flow or a template.
	Kind RecordKind
	// Key is the flow's key. For a template Src is the client, Dst the VIP
	// and every other field is zero.
	Key conntrack.Key
	// Member is the IPv4 real address of the frontend the flow or client
	// goes to. It is an address, not a local member ID, because IDs are
	// assigned per node and differ between balancers.
	Member netip.Addr
	// State is the flow's protocol state; zero for a template.
	State conntrack.State
	// TTL is the remaining lifetime at the sender; the receiver adds it to
	// its own clock, so the nodes' clocks need not agree. It travels in
	// whole milliseconds (shorter remainders are truncated).
	TTL time.Duration
}

// Header is the decoded header of a message. The record count is the
// length of the record slice and the authentication flag follows from the
// key, so neither appears here.
type Header struct {
	// Type is the message type.
	Type MsgType
	// SyncID is the sender's sync group (IPVS --syncid); 0 is a valid
	// group of its own.
	SyncID uint16
	// Sender is the IPv4 real address of the sending balancer.
	Sender netip.Addr
	// Seq numbers the sender's messages, so a receiver can spot loss.
	Seq uint32
}

// EncodedLen returns the size of a message with n records, with or without
// the MAC trailer.
func EncodedLen(n int, authenticated bool) int {
	l := HeaderLen + n*RecordLen
	if authenticated {
		l += MACLen
	}
	return l
}

// Encode appends the message made of h and recs to dst and returns the
// extended slice. With a non-empty key the message ends with an
// HMAC-SHA256 over everything before it. Without a key it allocates nothing
// when dst has room for EncodedLen(len(recs), false) more bytes; with one it
// sets up an HMAC state for the call (crypto/hmac allocates it), which a
// Conn instead keeps and reuses. It fails with ErrHeader, ErrCount or
// ErrRecord (wrapped) on input Decode would reject, leaving dst unchanged.
func Encode(dst []byte, h Header, recs []Record, key []byte) ([]byte, error) {
	return encode(dst, h, recs, newMAC(key))
}

// encode is Encode with the key's HMAC state, nil for no key.
func encode(dst []byte, h Header, recs []Record, mac *macState) ([]byte, error) {
	if h.Type < MsgUpdate || h.Type > MsgDumpEnd || !h.Sender.Is4() {
		return dst, ErrHeader
	}
	if len(recs) > MaxRecords || (h.Type != MsgUpdate && len(recs) != 0) {
		return dst, ErrCount
	}
	for i := range recs {
		if !validRecord(&recs[i]) {
			return dst, fmt.Errorf("%w: record %d", ErrRecord, i)
		}
	}
	start := len(dst)
	dst = grow(dst, EncodedLen(len(recs), mac != nil))
	b := dst[start:]
	copy(b[0:4], magic[:])
	b[4] = Version
	b[5] = 0
	if mac != nil {
		b[5] = flagAuth
	}
	b[6] = byte(h.Type)
	b[7] = 0
	binary.BigEndian.PutUint16(b[8:], h.SyncID)
	binary.BigEndian.PutUint16(b[10:], uint16(len(recs)))
	a4 := h.Sender.As4()
	copy(b[12:16], a4[:])
	binary.BigEndian.PutUint32(b[16:], h.Seq)
	off := HeaderLen
	for i := range recs {
		putRecord(b[off:off+RecordLen], &recs[i])
		off += RecordLen
	}
	if mac != nil {
		mac.appendMAC(b[:off])
	}
	return dst, nil
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

// Decode checks and decodes one message. recs is reused for the result
// (it allocates nothing when cap(recs) >= MaxRecords). wantSyncID 0 accepts
// every sync group, as a backup IPVS daemon with syncid 0 does; any other
// value accepts only that group. With a non-empty key the message must
// carry a valid HMAC; without one it must carry none, so mismatched
// configurations fail loudly instead of half-working. Every length is
// checked before it is used, and failures wrap one of the package's
// sentinel errors. As with Encode, a key costs an HMAC state per call; a
// Conn keeps one.
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
	if b[4] != Version {
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
	if n > MaxRecords || len(b) != EncodedLen(n, auth) {
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
	if h.Type < MsgUpdate || h.Type > MsgDumpEnd {
		return Header{}, recs, ErrHeader
	}
	if h.Type != MsgUpdate && n != 0 {
		return Header{}, recs, ErrCount
	}
	for off := HeaderLen; off < body; off += RecordLen {
		var r Record
		if !getRecord(b[off:off+RecordLen], &r) || !validRecord(&r) {
			return Header{}, recs[:0], ErrRecord
		}
		recs = append(recs, r)
	}
	return h, recs, nil
}

// Record layout (24 bytes, big-endian):
//
//	0 kind, 1 state, 2 proto, 3 reserved (0), 4 src, 8 dst, 12 sport,
//	14 dport, 16 member, 20 TTL in milliseconds.
func putRecord(b []byte, r *Record) {
	_ = b[RecordLen-1]
	b[0] = byte(r.Kind)
	b[1] = byte(r.State)
	b[2] = r.Key.Proto
	b[3] = 0
	binary.BigEndian.PutUint32(b[4:], r.Key.Src)
	binary.BigEndian.PutUint32(b[8:], r.Key.Dst)
	binary.BigEndian.PutUint16(b[12:], r.Key.SPort)
	binary.BigEndian.PutUint16(b[14:], r.Key.DPort)
	m := r.Member.As4()
	copy(b[16:20], m[:])
	binary.BigEndian.PutUint32(b[20:], uint32(r.TTL/time.Millisecond))
}

// getRecord is the inverse of putRecord; it reports false when the
// reserved byte is set.
func getRecord(b []byte, r *Record) bool {
	_ = b[RecordLen-1]
	*r = Record{
		Kind:  RecordKind(b[0]),
		State: conntrack.State(b[1]),
		Key: conntrack.Key{
			Proto: b[2],
			Src:   binary.BigEndian.Uint32(b[4:]),
			Dst:   binary.BigEndian.Uint32(b[8:]),
			SPort: binary.BigEndian.Uint16(b[12:]),
			DPort: binary.BigEndian.Uint16(b[14:]),
		},
		Member: netip.AddrFrom4([4]byte(b[16:20])),
		TTL:    time.Duration(binary.BigEndian.Uint32(b[20:])) * time.Millisecond,
	}
	return b[3] == 0
}

// validRecord reports whether r can be sent and accepted: the rules Decode
// enforces, so Encode never produces what Decode rejects.
func validRecord(r *Record) bool {
	if r.TTL < 0 || r.TTL > MaxTTL || !validMember(r.Member) || r.Key.Src == 0 || r.Key.Dst == 0 {
		return false
	}
	switch r.Kind {
	case RecordFlow:
		return stateMatchesProto(r.State, r.Key.Proto)
	case RecordTemplate:
		// A template is keyed by client and VIP only (conntrack's
		// Template(client, vip)); anything else is garbage.
		return r.State == 0 && r.Key.Proto == 0 && r.Key.SPort == 0 && r.Key.DPort == 0
	}
	return false
}

// validMember accepts the IPv4 unicast addresses a frontend can have.
func validMember(a netip.Addr) bool {
	return a.Is4() && !a.IsUnspecified() && !a.IsMulticast() && !a.IsLoopback() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// stateMatchesProto mirrors how conntrack assigns a flow's first state from
// its protocol: TCP flows have TCP states, UDP and ICMP their own, every
// other protocol StateOther.
func stateMatchesProto(s conntrack.State, proto uint8) bool {
	switch s {
	case conntrack.StateSynRecv, conntrack.StateEstablished, conntrack.StateClosing, conntrack.StateClose:
		return proto == conntrack.ProtoTCP
	case conntrack.StateUDP:
		return proto == conntrack.ProtoUDP
	case conntrack.StateICMP:
		return proto == conntrack.ProtoICMP
	case conntrack.StateOther:
		return proto != conntrack.ProtoTCP && proto != conntrack.ProtoUDP && proto != conntrack.ProtoICMP
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
