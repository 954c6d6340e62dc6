package dataplane

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cespare/xxhash/v2"
	"github.com/l2lb/l2lb/conntrack"
)

// SIP Call-ID affinity (issue 13). On the UDP destination ports of Config.CallIDPorts a new
// datagram is scheduled by the Call-ID of the SIP message it carries instead of its 5-tuple, so
// every request of a dialog reaches one frontend, even when the client sends them from several
// source ports or addresses (a SIP proxy, a NAT rebinding, a phone re-registering).
//
// Design. A dialog is an entry of the ordinary connection table: its key is the dialog's hash
// (DialogHash of the Call-ID, VIP and port) packed into the source fields of a conntrack.Key (44
// bits, see dialogRef) or Key6 (64 bits) with protocol DialogProto, the VIP as destination and the
// Call-ID port as destination port. So a dialog gets everything a flow has for free: a stable
// member, the sync channel's SetOnInsert hook, Export and Import to standbys, expiry, per-member
// counts and the no-destination policy. A new dialog is scheduled by
// scheduler.Pick(DialogHash(Call-ID, VIP, port)) over the same members as flows: with Maglev, two
// balancers with the same members agree on every Call-ID without sharing state (the round-robin
// and least-connection schedulers do not hash, and rely on sync instead). An existing dialog keeps
// its member across membership changes, as a flow does, and follows the NoDest policy when its
// member goes. Each datagram also touches, or creates, its own 5-tuple flow pointing at the
// dialog's member, so that listings, counts, ICMP errors, keep-alives without a Call-ID and the
// non-first fragments of the datagram (through the fragment map) follow it. One 5-tuple may carry
// several dialogs (a SIP trunk from one proxy address and port): the dialog decides per datagram
// and the flow entry is re-pointed at the dialog's member.
//
// A dialog entry is a protocol the table does not know, so it lives for Timeouts.Other after its
// last datagram (60 s by default). When it has expired, the dialog's next request is scheduled by
// its hash again: the same frontend unless the members changed meanwhile. A Call-ID overrides
// persistence (ipvsadm -p) on its ports: dialogs ignore the client's template, which points at
// the frontend its first SIP flow was created for (re-pointing a flow leaves it alone).
//
// A datagram on a Call-ID port without a Call-ID (an RFC 5626 §4.4.1 CRLF keep-alive, a STUN
// binding, a non-SIP datagram, a first fragment cut before the end of the Call-ID line) takes the
// 5-tuple path and sets Result.NoCallID. A Call-ID port that is also inside a member's source-port
// range keeps the range's rule (replies to that frontend's own outgoing traffic go to it).

// DialogProto is the protocol number of dialog entries in the connection table: 253, reserved for
// experimentation by RFC 3692 (IANA protocol numbers registry). It can never clash with a real
// flow: a frame's own flow key carries the frame's protocol, and a real protocol-253 frame has no
// ports (its key's DPort is 0), while a dialog's DPort is its Call-ID port, never 0.
const DialogProto = 253

// MaxSIPScan bounds the bytes of a datagram CallID reads: 4 KiB. RFC 3261 §18.1.1 makes a SIP
// request over UDP switch to a congestion-controlled transport when it is within 200 bytes of
// the path MTU or larger than 1300 bytes with an unknown MTU, so the header section of a SIP
// datagram fits in its first Ethernet-sized fragment (1500-byte MTU, RFC 894) with room to spare;
// 4 KiB also covers a 4 KiB jumbo-frame first fragment whole. The bound keeps the worst case of a
// frame crafted to look like endless headers to a fixed cost per frame.
const MaxSIPScan = 4096

// ErrBadCallIDPort is returned by Configure for a Call-ID port that is zero or listed twice.
var ErrBadCallIDPort = errors.New("dataplane: bad Call-ID port")

// dialogNet4 and dialogNet6 are where dialog entries' source "addresses" (their hash bits) live:
// 240.0.0.0/4, reserved since RFC 1112 §4 and never a host's address, and 100::/64, the IPv6
// discard-only prefix (RFC 6666), never a packet's source. So a dialog's key is recognisable in a
// listing, it passes the sync wire's address checks (not unspecified, loopback, link-local,
// multicast or IPv4-mapped), and the persistence template the table keys by its "client" and VIP
// (with persistence on) can never be one of a real client.
const (
	dialogNet4 = 0xf0000000
	dialogNet6 = 0x01
)

// IsDialog reports whether a connection-table entry of protocol proto and destination port dport
// is a SIP dialog (see DialogProto) rather than a flow, for listings and status pages that show
// them apart. Its source address is then hash bits in 240.0.0.0/4 or 100::/64, not a client.
func IsDialog(proto uint8, dport uint16) bool { return proto == DialogProto && dport != 0 }

// CallID returns the value of the Call-ID header of the SIP message at the start of msg, a UDP
// payload, as a subslice of msg (no copy), or false when msg carries none. It reads at most
// MaxSIPScan bytes and never allocates or panics.
//
// The rules are RFC 3261's (§7 message format, §7.3 header fields, §20.8 Call-ID):
//   - CRLFs before the start line are skipped (§7.5); the start line must be a request line
//     ending in " SIP/2.0" or a status line starting with "SIP/2.0 " (§7.1, the version compared
//     case-insensitively), so a non-SIP datagram and a CRLF keep-alive (RFC 5626 §4.4.1) are
//     not found.
//   - header lines end in CRLF, or a bare LF (§7.5 asks for tolerance); the header section ends
//     at the first empty line, after which nothing is read;
//   - the header name is "Call-ID" or its compact form "i" (§7.3.3), case-insensitively (§7.3.1),
//     with optional spaces or tabs before the colon (HCOLON, §25.1); the value's leading and
//     trailing spaces and tabs are trimmed; the first Call-ID header counts;
//   - line folding (§7.3.1): a value that starts on a continuation line ("Call-ID:" CRLF SP
//     "abc") is read from it; continuation lines after a non-empty value are ignored, as a
//     Call-ID (word ["@" word], §25.1) holds no whitespace;
//   - a Call-ID line must end inside the bytes read: one cut short by the end of a fragment or by
//     MaxSIPScan is not found, never returned truncated (another message of the same dialog
//     would otherwise hash differently). An empty value, or one with whitespace or a control
//     character inside (see visible), is not found.
//
// The value is compared byte by byte, case-sensitively, as §19.3 says Call-IDs are.
func CallID(msg []byte) ([]byte, bool) {
	if len(msg) > MaxSIPScan {
		msg = msg[:MaxSIPScan]
	}
	i := 0
	for i < len(msg) && (msg[i] == '\r' || msg[i] == '\n') {
		i++
	}
	n := bytes.IndexByte(msg[i:], '\n')
	if n < 0 || !isSIPStartLine(trimCR(msg[i:i+n])) {
		return nil, false
	}
	i += n + 1
	for i < len(msg) {
		n := bytes.IndexByte(msg[i:], '\n')
		if n < 0 {
			return nil, false // the line runs past the bytes we may read
		}
		line := trimCR(msg[i : i+n])
		i += n + 1
		if len(line) == 0 {
			return nil, false // end of the header section
		}
		v, ok := callIDValue(line)
		if !ok {
			continue
		}
		if v = trimSpace(v); len(v) > 0 {
			return visible(v)
		}
		// "Call-ID:" with the value folded onto continuation lines.
		for i < len(msg) && (msg[i] == ' ' || msg[i] == '\t') {
			n := bytes.IndexByte(msg[i:], '\n')
			if n < 0 {
				return nil, false
			}
			v = trimSpace(trimCR(msg[i : i+n]))
			i += n + 1
			if len(v) > 0 {
				return visible(v)
			}
		}
		return nil, false
	}
	return nil, false
}

// visible returns v when it holds no whitespace or control character: a Call-ID is one or two
// words of visible characters (RFC 3261 §25.1, word ["@" word]). Bytes above 0x7e are let
// through (UTF-8 from sloppy implementations hashes as well as ASCII); a value with a space, a
// bare CR or another control byte is malformed and not found.
func visible(v []byte) ([]byte, bool) {
	for _, c := range v {
		if c <= ' ' || c == 0x7f {
			return nil, false
		}
	}
	return v, true
}

// isSIPStartLine reports whether line is a SIP request line (Method SP Request-URI SP
// SIP-Version) or status line (SIP-Version SP Status-Code SP Reason-Phrase), RFC 3261 §7.1 and
// §7.2, judged by where its SIP-Version is.
func isSIPStartLine(line []byte) bool {
	const v = "SIP/2.0"
	if len(line) < len(v)+1 {
		return false
	}
	return (line[len(v)] == ' ' && asciiEqualFold(line[:len(v)], v)) ||
		(line[len(line)-len(v)-1] == ' ' && asciiEqualFold(line[len(line)-len(v):], v))
}

// callIDValue returns the rest of line after the colon when line is a Call-ID header line.
func callIDValue(line []byte) ([]byte, bool) {
	var j int
	switch line[0] | 0x20 {
	case 'i':
		j = 1
	case 'c':
		const name = "call-id"
		if len(line) < len(name) || !asciiEqualFold(line[:len(name)], name) {
			return nil, false
		}
		j = len(name)
	default:
		return nil, false // also a continuation line (SP, HTAB): 0x20|0x20, 0x09|0x20
	}
	for j < len(line) && (line[j] == ' ' || line[j] == '\t') {
		j++
	}
	if j == len(line) || line[j] != ':' {
		return nil, false
	}
	return line[j+1:], true
}

// asciiEqualFold compares b with the ASCII string s case-insensitively.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c, d := b[i], s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

// trimCR removes the CR of a CRLF line end.
func trimCR(b []byte) []byte {
	if len(b) > 0 && b[len(b)-1] == '\r' {
		return b[:len(b)-1]
	}
	return b
}

// trimSpace removes leading and trailing spaces and tabs (SWS/LWS, RFC 3261 §25.1).
func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// DialogHash is the scheduler hash of a SIP dialog: xxhash64 of the 8 bytes of
// xxhash64(callID) in little-endian order, followed by the VIP's address bytes (4 for IPv4, 16
// for IPv6, network order) and the Call-ID port (2 bytes, network order). Every balancer must
// compute it the same way for two of them to agree without sync, so it is part of the wire
// contract between versions: do not change it.
func DialogHash(callID, vip []byte, port uint16) uint64 {
	var buf [8 + 16 + 2]byte
	binary.LittleEndian.PutUint64(buf[0:8], xxhash.Sum64(callID))
	n := 8 + copy(buf[8:24], vip)
	binary.BigEndian.PutUint16(buf[n:n+2], port)
	return xxhash.Sum64(buf[:n+2])
}

// portSet is a set of UDP ports, one bit each (8 KiB): one load and a bit test per UDP frame.
type portSet [1 << 16 / 64]uint64

func (s *portSet) has(p uint16) bool { return s[p>>6]&(1<<(p&63)) != 0 }

// newPortSet validates a Call-ID port list and returns its set, nil for an empty list.
func newPortSet(ports []uint16) (*portSet, error) {
	if len(ports) == 0 {
		return nil, nil
	}
	s := new(portSet)
	for _, p := range ports {
		if p == 0 {
			return nil, fmt.Errorf("%w: port 0", ErrBadCallIDPort)
		}
		if s.has(p) {
			return nil, fmt.Errorf("%w: port %d listed twice", ErrBadCallIDPort, p)
		}
		s[p>>6] |= 1 << (p & 63)
	}
	return s, nil
}

// udpPayload4 returns the UDP payload of an IPv4 frame ParseIPv4 accepted as UDP, a whole
// datagram or a first fragment: up to the UDP length for a whole datagram, the fragment's bytes
// for a first fragment (its UDP length is the reassembled datagram's).
func udpPayload4(b []byte, p *Packet) []byte {
	ip := b[p.L3:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	return udpPayload(ip[ihl:total], p.Fragment)
}

// udpPayload6 is udpPayload4 for an IPv6 frame ParseIPv6 accepted as UDP.
func udpPayload6(b []byte, p *Packet6) []byte {
	end := ethHeaderLen + ipv6HdrLen + int(binary.BigEndian.Uint16(b[ethHeaderLen+4:ethHeaderLen+6]))
	return udpPayload(b[p.L4:end], p.Fragment)
}

// udpPayload returns the payload of the UDP datagram (or first fragment) l4.
func udpPayload(l4 []byte, fragment bool) []byte {
	if len(l4) < udpHeaderLen {
		return nil
	}
	pl := l4[udpHeaderLen:]
	// RFC 768: the length covers header and data. A length of 0 (an IPv6 jumbogram, RFC 2675)
	// or one beyond the bytes present leaves the payload as the IP layer bounds it.
	if ul := int(binary.BigEndian.Uint16(l4[4:6])); !fragment && ul >= udpHeaderLen && ul-udpHeaderLen < len(pl) {
		pl = pl[:ul-udpHeaderLen]
	}
	return pl
}

// dialogRef returns the table entry of the dialog with hash h for the flow f (a UDP flow to a
// Call-ID port): same family, the VIP and port of f, protocol DialogProto.
func dialogRef(f *flowRef, h uint64) flowRef {
	d := flowRef{v6: f.v6}
	if f.v6 {
		d.k6 = conntrack.Key6{Dst: f.k6.Dst, DPort: f.k6.DPort, Proto: DialogProto}
		d.k6.Src[0] = dialogNet6
		binary.BigEndian.PutUint64(d.k6.Src[8:16], h)
	} else {
		// 44 bits of the hash (28 in the address, 16 in the port): a collision only makes two
		// dialogs share a frontend.
		d.k4 = conntrack.Key{Src: dialogNet4 | uint32(h>>36), SPort: uint16(h >> 20), Dst: f.k4.Dst, DPort: f.k4.DPort,
			Proto: DialogProto}
	}
	return d
}

func (f *flowRef) touch(ct *conntrack.Table, now int64) (uint32, bool) {
	if f.v6 {
		return ct.Touch6(f.k6, f.flags, now)
	}
	return ct.Touch(f.k4, f.flags, now)
}

// sipOwner4 is sipOwner for the IPv4 UDP frame b (parsed into p, flow key k).
func (e *Engine) sipOwner4(st *state, b []byte, p *Packet, k conntrack.Key, now int64, res *Result) (uint32, Reason, bool) {
	f := flowRef{k4: k}
	var vip [4]byte
	binary.BigEndian.PutUint32(vip[:], p.Dst)
	return e.sipOwner(st, &f, udpPayload4(b, p), vip[:], now, res)
}

// sipOwner6 is sipOwner for the IPv6 UDP frame b (parsed into p, flow key k).
func (e *Engine) sipOwner6(st *state, b []byte, p *Packet6, k conntrack.Key6, now int64, res *Result) (uint32, Reason, bool) {
	f := flowRef{v6: true, k6: k}
	return e.sipOwner(st, &f, udpPayload6(b, p), p.Dst[:], now, res)
}

// sipOwner decides the member of a UDP datagram to a Call-ID port whose payload carries a SIP
// message, and reports false when it carries no Call-ID (the caller takes the 5-tuple path).
// vip is the destination address's bytes.
func (e *Engine) sipOwner(st *state, f *flowRef, payload, vip []byte, now int64, res *Result) (uint32, Reason, bool) {
	_, dport := f.ports()
	if len(st.ranges) > 0 {
		if _, ok := st.rangeOwner(dport); ok {
			return 0, ReasonNone, false
		}
	}
	cid, ok := CallID(payload)
	if !ok {
		res.NoCallID = true
		return 0, ReasonNone, false
	}
	h := DialogHash(cid, vip, dport)
	d := dialogRef(f, h)
	id, hit := d.touch(e.ct, now)
	if !hit || int(id) >= len(st.members) || !st.members[id].usable() {
		var r Reason
		if id, r = e.dialogOwner(st, &d, id, hit, h, now, res); r != ReasonNone {
			return 0, r, true
		}
	}
	// The datagram's own flow follows its dialog.
	if fid, ok := f.touch(e.ct, now); !ok {
		res.NewFlow = true
		if err := f.insert(e.ct, id, now); err != nil && !errors.Is(err, conntrack.ErrExists) {
			res.TableFull = true
		}
	} else if fid != id {
		f.setMember(e.ct, id)
	}
	return id, ReasonNone, true
}

// dialogOwner finds or schedules the member of dialog d (hash h) whose table lookup (id, hit)
// did not give a usable member: flowOwner's rules without port ranges and persistence, which a
// Call-ID overrides.
func (e *Engine) dialogOwner(st *state, d *flowRef, id uint32, hit bool, h uint64, now int64, res *Result) (uint32, Reason) {
	if hit {
		if int(id) < len(st.members) {
			if m := &st.members[id]; m.usable() {
				return id, ReasonNone
			} else if m.pending() {
				// Wait for the MAC rather than move the dialog: SIP over UDP retransmits
				// (RFC 3261 §17.1.1.2, Timer A from 500 ms).
				return 0, ReasonMemberPending
			}
		}
		if st.nodest == NoDestExpire {
			d.remove(e.ct)
			return 0, ReasonMemberGone
		}
		nid, ok := e.pick(st, h)
		if !ok {
			return 0, ReasonNoMember
		}
		d.setMember(e.ct, nid)
		return nid, ReasonNone
	}
	id, ok := e.pick(st, h)
	if !ok {
		return 0, ReasonNoMember
	}
	res.NewDialog = true
	if err := d.insert(e.ct, id, now); err != nil && !errors.Is(err, conntrack.ErrExists) {
		// At the table limit the dialog is still forwarded by its hash, consistently.
		res.TableFull = true
	}
	return id, ReasonNone
}
