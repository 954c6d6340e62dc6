// Package vipset reads the VIP list file of the seed (/etc/sysconfig/vipaddrs)
// and holds the resulting IPv4 and IPv6 addresses in a set that can be queried
// per packet.
//
// File format (seed, setup step 4, and its ifvip-utils script, extended by
// IPv6):
//
//	# single addresses
//	72.20.112.45
//	72.20.112.46   # trailing comments are allowed
//	# a subnetwork: every address of it, network and broadcast included
//	72.20.112.48/29
//	# IPv6: an address or a prefix of /120 to /128
//	2001:db8::200
//	2001:db8::300/124
//
// One entry per line; blank lines and lines whose first non-blank character is
// '#' are ignored. An IPv4 mask shorter than /24 and an IPv6 prefix shorter
// than /120 are rejected with the seed's "Incorrect mask" message, so that one
// line expands to at most 256 addresses (256 loopback aliases) in either
// family. A prefix whose address has bits set below the mask is refused as
// ambiguous. IPv6 entries must be unicast addresses usable as a VIP: no zone
// (fe80::1%eth0), not link-local, multicast, loopback (::1) or unspecified
// (::). An IPv4-mapped IPv6 address (::ffff:192.0.2.1) is refused: write it as
// IPv4.
//
// A Set holds both families. Addrs lists the IPv4 addresses, ascending, then
// the IPv6 addresses, ascending (netip.Addr.Compare order). The per-packet
// lookups take the address bytes as they appear in the header: ContainsU32 and
// IndexU32 for IPv4 (index into Addrs4, which is also the position in Addrs),
// Contains16 and Index16 for IPv6 (index into Addrs6; the position in Addrs is
// Len4()+Index16). None of them allocates.
package vipset

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// DefaultPath is where the seed keeps the VIP list (setup step 4, helper option -f).
const DefaultPath = "/etc/sysconfig/vipaddrs"

// MinMaskBits is the shortest IPv4 subnet mask the seed accepts: its
// ifvip-utils script refuses anything below /24 so that one entry expands to at
// most 256 loopback aliases.
const MinMaskBits = 24

// MinPrefixBits6 is the shortest IPv6 prefix accepted: /120, so that an IPv6
// entry, like an IPv4 one, expands to at most 256 addresses.
const MinPrefixBits6 = 120

// maxLineBytes bounds one line of the file; a VIP entry with a comment is far
// shorter, so a longer line is a damaged or wrong file rather than a VIP list.
const maxLineBytes = 4096

// ErrIncorrectMask reports a subnet mask shorter than /24 (or longer than /32)
// for IPv4, or a prefix shorter than /120 (or longer than /128) for IPv6. The
// text is the seed's own message so that operators recognise it.
var ErrIncorrectMask = errors.New("Incorrect mask")

// ErrSyntax reports a line that is neither a comment nor a single IPv4 or IPv6
// address or subnet (an IPv6 address with a zone is a syntax error too).
var ErrSyntax = errors.New("syntax error")

// ErrNotIPv4 reported an IPv6 entry while l2lb balanced IPv4 only.
//
// Deprecated: IPv6 entries are accepted now; Parse no longer returns it. An
// IPv4-mapped IPv6 entry is reported with ErrMapped, an IPv6 address that
// cannot be a VIP with ErrNotUnicast.
var ErrNotIPv4 = errors.New("not an IPv4 address")

// ErrMapped reports an IPv4-mapped IPv6 entry (::ffff:192.0.2.1): the same
// VIP must be written as IPv4, so that a file has one spelling per address.
var ErrMapped = errors.New("IPv4-mapped IPv6 address")

// ErrNotUnicast reports an IPv6 entry that cannot be a VIP: multicast,
// link-local (it needs a zone and is never routed), loopback or unspecified.
var ErrNotUnicast = errors.New("not a unicast address usable as a VIP")

// ErrHostBits reports a subnet whose address has bits set below the mask; the
// seed's scripts would silently expand such an entry from the given address
// instead of from the network address, so it is refused as ambiguous.
var ErrHostBits = errors.New("subnet address has host bits set")

// ParseError describes a bad line of a VIP list file.
type ParseError struct {
	File string // file name as given to Parse or ParseFile
	Line int    // 1-based line number
	Text string // the offending line, surrounding blanks removed
	// Err wraps one of ErrIncorrectMask, ErrSyntax, ErrMapped, ErrNotUnicast,
	// ErrHostBits, or a read error.
	Err error
}

// Error returns "FILE:LINE: reason".
func (e *ParseError) Error() string {
	return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
}

// Unwrap returns the underlying reason so that errors.Is matches the sentinels.
func (e *ParseError) Unwrap() error { return e.Err }

// Set is an immutable, sorted, deduplicated set of IPv4 and IPv6 addresses.
// The zero value and a nil *Set are empty sets.
type Set struct {
	// u holds the IPv4 addresses as big-endian uint32 in ascending order,
	// which is the same order as netip.Addr.Compare for IPv4 and allows an
	// allocation-free binary search per packet.
	u []uint32
	// v6 holds the IPv6 addresses as two big-endian uint64 halves in
	// ascending order (again netip.Addr.Compare order).
	v6 []addr6
}

// addr6 is an IPv6 address as its high and low 64 bits, read big-endian.
type addr6 struct{ hi, lo uint64 }

func (a addr6) cmp(b addr6) int {
	switch {
	case a.hi < b.hi:
		return -1
	case a.hi > b.hi:
		return 1
	case a.lo < b.lo:
		return -1
	case a.lo > b.lo:
		return 1
	}
	return 0
}

func from16(b [16]byte) addr6 {
	return addr6{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

func (a addr6) addr() netip.Addr {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], a.hi)
	binary.BigEndian.PutUint64(b[8:], a.lo)
	return netip.AddrFrom16(b)
}

// New returns the set of the given addresses, IPv4 and IPv6. IPv4-mapped IPv6
// addresses are unmapped (they become IPv4 members); invalid addresses and
// IPv6 addresses with a zone are dropped, because a VIP is never scoped.
func New(addrs ...netip.Addr) *Set {
	u := make([]uint32, 0, len(addrs))
	var v6 []addr6
	for _, a := range addrs {
		a = a.Unmap()
		switch {
		case a.Is4():
			u = append(u, addrToU32(a))
		case a.Is6() && a.Zone() == "":
			v6 = append(v6, from16(a.As16()))
		}
	}
	return build(u, v6)
}

// build sorts and deduplicates u and v6 in place and wraps them.
func build(u []uint32, v6 []addr6) *Set {
	slices.Sort(u)
	u = slices.Compact(u)
	slices.SortFunc(v6, addr6.cmp)
	v6 = slices.Compact(v6)
	if len(v6) == 0 {
		v6 = nil
	}
	return &Set{u: slices.Clip(u), v6: slices.Clip(v6)}
}

func addrToU32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func u32ToAddr(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// ParseFile reads the VIP list file at path; errors name the path.
func ParseFile(path string) (*Set, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(f, path)
}

// Parse reads a VIP list from r. name is used in error messages (usually the
// file name). On any error no set is returned, so a caller never acts on half
// a file.
func Parse(r io.Reader, name string) (*Set, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 256), maxLineBytes)
	var (
		u  []uint32
		v6 []addr6
	)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		e, err := parseLine(text)
		if err != nil {
			return nil, &ParseError{File: name, Line: line, Text: text, Err: err}
		}
		switch {
		case e.n == 0:
			// comment or blank line
		case e.is6:
			for i := uint64(0); i < e.n; i++ {
				// A prefix of /120 or longer is aligned within the low
				// 8 bits, so lo+i never carries into hi.
				v6 = append(v6, addr6{hi: e.first6.hi, lo: e.first6.lo + i})
			}
		default:
			for v := e.first4; ; v++ {
				u = append(u, v)
				if v == e.last4 {
					break // tested before v++ so 255.255.255.255 cannot wrap to 0
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			err = fmt.Errorf("%w: line longer than %d bytes", ErrSyntax, maxLineBytes)
		}
		return nil, &ParseError{File: name, Line: line + 1, Err: err}
	}
	return build(u, v6), nil
}

// entry is what one line stands for: n addresses, an inclusive IPv4 range
// first4..last4 or n IPv6 addresses from first6 on; n is 0 for a comment or
// blank line.
type entry struct {
	is6           bool
	n             uint64
	first4, last4 uint32
	first6        addr6
}

// parseLine parses one trimmed line.
func parseLine(text string) (entry, error) {
	s, _, _ := strings.Cut(text, "#")
	s = strings.TrimSpace(s)
	if s == "" {
		return entry{}, nil
	}
	if strings.ContainsAny(s, " \t\v\f\r") {
		return entry{}, fmt.Errorf("%w: %q: one address or subnet per line", ErrSyntax, s)
	}
	addrText, maskText, hasMask := strings.Cut(s, "/")
	a, perr := netip.ParseAddr(addrText)
	if perr != nil {
		return entry{}, fmt.Errorf("%w: %q is not an IPv4 or IPv6 address or subnet", ErrSyntax, s)
	}
	bitLen, minBits := 32, MinMaskBits
	if a.Is6() {
		switch {
		case a.Zone() != "":
			return entry{}, fmt.Errorf("%w: %q: a VIP has no zone", ErrSyntax, s)
		case a.Is4In6():
			return entry{}, fmt.Errorf("%w: %s (write it as IPv4%s)", ErrMapped, s, unmappedHint(a, maskText, hasMask))
		}
		bitLen, minBits = 128, MinPrefixBits6
	}
	bits := bitLen
	if hasMask {
		var valid bool
		bits, valid = parseBits(maskText)
		if !valid {
			return entry{}, fmt.Errorf("%w: %q: mask must be a decimal number of bits", ErrSyntax, s)
		}
		if bits < minBits || bits > bitLen {
			return entry{}, fmt.Errorf("%w: %s (mask must be /%d to /%d)", ErrIncorrectMask, s, minBits, bitLen)
		}
		p := netip.PrefixFrom(a, bits)
		if p.Masked().Addr() != a {
			return entry{}, fmt.Errorf("%w: %s (the network address would be %s)", ErrHostBits, s, p.Masked())
		}
	}
	if a.Is6() && (a.IsMulticast() || a.IsLinkLocalUnicast() || a.IsLoopback() || a.IsUnspecified()) {
		return entry{}, fmt.Errorf("%w: %s (multicast, link-local, loopback and unspecified addresses cannot be VIPs)", ErrNotUnicast, s)
	}
	n := uint64(1) << (bitLen - bits)
	if a.Is6() {
		return entry{is6: true, n: n, first6: from16(a.As16())}, nil
	}
	first := addrToU32(a)
	return entry{n: n, first4: first, last4: first | uint32(n-1)}, nil
}

// unmappedHint spells an IPv4-mapped entry as IPv4 (": 192.0.2.0/24") when
// its mask can be carried over; "" otherwise.
func unmappedHint(a netip.Addr, maskText string, hasMask bool) string {
	if !hasMask {
		return ": " + a.Unmap().String()
	}
	if bits, ok := parseBits(maskText); ok && bits >= 96 && bits <= 128 {
		return ": " + netip.PrefixFrom(a.Unmap(), bits-96).String()
	}
	return ""
}

// parseBits parses a mask length: decimal digits without sign or leading zero,
// at most three of them so that a silly /1000 still reads as a syntax error
// and /200 as a (wrong) number.
func parseBits(s string) (int, bool) {
	if s == "" || len(s) > 3 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// Addrs returns the IPv4 addresses in ascending order followed by the IPv6
// addresses in ascending order (netip.Addr.Compare order); the slice is a
// copy. IndexU32 is a position in it; Index16 is a position in Addrs6, which
// is Len4()+Index16 in it.
func (s *Set) Addrs() []netip.Addr {
	if s == nil {
		return nil
	}
	out := make([]netip.Addr, 0, len(s.u)+len(s.v6))
	for _, v := range s.u {
		out = append(out, u32ToAddr(v))
	}
	for _, v := range s.v6 {
		out = append(out, v.addr())
	}
	return out
}

// Addrs4 returns the IPv4 addresses in ascending order (a copy): IndexU32 is
// a position in it.
func (s *Set) Addrs4() []netip.Addr {
	if s == nil {
		return nil
	}
	out := make([]netip.Addr, len(s.u))
	for i, v := range s.u {
		out[i] = u32ToAddr(v)
	}
	return out
}

// Addrs6 returns the IPv6 addresses in ascending order (a copy): Index16 is
// a position in it.
func (s *Set) Addrs6() []netip.Addr {
	if s == nil {
		return nil
	}
	out := make([]netip.Addr, len(s.v6))
	for i, v := range s.v6 {
		out[i] = v.addr()
	}
	return out
}

// Len returns the number of addresses, IPv4 and IPv6.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.u) + len(s.v6)
}

// Len4 returns the number of IPv4 addresses.
func (s *Set) Len4() int {
	if s == nil {
		return 0
	}
	return len(s.u)
}

// Len6 returns the number of IPv6 addresses.
func (s *Set) Len6() int {
	if s == nil {
		return 0
	}
	return len(s.v6)
}

// Contains reports whether a is in the set. An IPv4-mapped IPv6 address is
// looked up as the IPv4 address it maps (as New stores it); an address with a
// zone is never a member.
func (s *Set) Contains(a netip.Addr) bool {
	a = a.Unmap()
	switch {
	case a.Is4():
		return s.ContainsU32(addrToU32(a))
	case a.Is6() && a.Zone() == "":
		return s.Contains16(a.As16())
	}
	return false
}

// ContainsU32 reports whether the IPv4 address ip is in the set, where ip is
// the four address bytes as they appear in the packet read as a big-endian
// uint32 (binary.BigEndian.Uint32(hdr[16:20]) for an IPv4 destination). It
// does not allocate and is meant for the per-packet path.
func (s *Set) ContainsU32(ip uint32) bool {
	return s.IndexU32(ip) >= 0
}

// IndexU32 returns the position of ip in Addrs4 (ascending order), which is
// also its position in Addrs, or -1 when ip is not in the set. Like
// ContainsU32 it is allocation-free, for per-VIP counters in the fast path.
func (s *Set) IndexU32(ip uint32) int {
	if s == nil {
		return -1
	}
	u := s.u
	lo, hi := 0, len(u)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if u[m] < ip {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(u) && u[lo] == ip {
		return lo
	}
	return -1
}

// Contains16 reports whether the IPv6 address ip is in the set, where ip is
// the 16 address bytes as they appear in the packet ([16]byte(hdr[24:40]) for
// an IPv6 destination). An IPv4-mapped ip is never a member: the set holds
// IPv4 VIPs as IPv4 only, and an IPv6 packet to ::ffff:a.b.c.d is not IPv4
// traffic. It does not allocate and is meant for the per-packet path.
func (s *Set) Contains16(ip [16]byte) bool {
	return s.Index16(ip) >= 0
}

// Index16 returns the position of ip in Addrs6 (ascending order), or -1 when
// ip is not in the set; its position in Addrs is Len4()+Index16. Like
// Contains16 it is allocation-free, for per-VIP counters in the fast path.
func (s *Set) Index16(ip [16]byte) int {
	if s == nil {
		return -1
	}
	v := s.v6
	k := from16(ip)
	lo, hi := 0, len(v)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if e := v[m]; e.hi < k.hi || (e.hi == k.hi && e.lo < k.lo) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(v) && v[lo] == k {
		return lo
	}
	return -1
}

// Equal reports whether s and o hold the same addresses.
func (s *Set) Equal(o *Set) bool {
	var a, b Set
	if s != nil {
		a = *s
	}
	if o != nil {
		b = *o
	}
	return slices.Equal(a.u, b.u) && slices.Equal(a.v6, b.v6)
}

// String lists the addresses in the order of Addrs separated by ", "
// ("192.0.2.200, 192.0.2.201, 2001:db8::200"); an empty set is "".
func (s *Set) String() string {
	if s.Len() == 0 {
		return ""
	}
	var b strings.Builder
	b.Grow(len(s.u)*16 + len(s.v6)*24)
	for i, a := range s.Addrs() {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(a.String())
	}
	return b.String()
}
