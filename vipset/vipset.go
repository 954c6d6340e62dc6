// Package vipset reads the VIP list file of the seed (/etc/sysconfig/vipaddrs)
// and holds the resulting IPv4 addresses in a set that can be queried per packet.
//
// File format (seed, setup step 4, and its ifvip-utils script):
//
//	# single addresses
//	72.20.112.45
//	72.20.112.46   # trailing comments are allowed
//	# a subnetwork: every address of it, network and broadcast included
//	72.20.112.48/29
//
// One entry per line; blank lines and lines whose first non-blank character is
// '#' are ignored. A subnet mask shorter than /24 is rejected with the seed's
// "Incorrect mask" message.
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

// MinMaskBits is the shortest subnet mask the seed accepts: its ifvip-utils
// script refuses anything below /24 so that one entry expands to at most 256
// loopback aliases.
const MinMaskBits = 24

// maxLineBytes bounds one line of the file; a VIP entry with a comment is far
// shorter, so a longer line is a damaged or wrong file rather than a VIP list.
const maxLineBytes = 4096

// ErrIncorrectMask reports a subnet mask shorter than /24 (or longer than /32).
// The text is the seed's own message so that operators recognise it.
var ErrIncorrectMask = errors.New("Incorrect mask")

// ErrSyntax reports a line that is neither a comment nor a single IPv4 address
// or subnet.
var ErrSyntax = errors.New("syntax error")

// ErrNotIPv4 reports an IPv6 entry; l2lb balances IPv4 only.
var ErrNotIPv4 = errors.New("not an IPv4 address")

// ErrHostBits reports a subnet whose address has bits set below the mask; the
// seed's scripts would silently expand such an entry from the given address
// instead of from the network address, so it is refused as ambiguous.
var ErrHostBits = errors.New("subnet address has host bits set")

// ParseError describes a bad line of a VIP list file.
type ParseError struct {
	File string // file name as given to Parse or ParseFile
	Line int    // 1-based line number
	Text string // the offending line, surrounding blanks removed
	Err  error  // wraps one of ErrIncorrectMask, ErrSyntax, ErrNotIPv4, ErrHostBits, or a read error
}

// Error returns "FILE:LINE: reason".
func (e *ParseError) Error() string {
	return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
}

// Unwrap returns the underlying reason so that errors.Is matches the sentinels.
func (e *ParseError) Unwrap() error { return e.Err }

// Set is an immutable, sorted, deduplicated set of IPv4 addresses. The zero
// value and a nil *Set are empty sets.
type Set struct {
	// u holds the addresses as big-endian uint32 in ascending order, which is
	// the same order as netip.Addr.Compare for IPv4 and allows an
	// allocation-free binary search per packet.
	u []uint32
}

// New returns the set of the given addresses. IPv4-mapped IPv6 addresses are
// unmapped; other IPv6 addresses and invalid addresses are dropped, because a
// Set only ever holds IPv4 VIPs.
func New(addrs ...netip.Addr) *Set {
	u := make([]uint32, 0, len(addrs))
	for _, a := range addrs {
		a = a.Unmap()
		if !a.Is4() {
			continue
		}
		u = append(u, addrToU32(a))
	}
	return fromU32(u)
}

// fromU32 sorts and deduplicates u in place and wraps it.
func fromU32(u []uint32) *Set {
	slices.Sort(u)
	u = slices.Compact(u)
	return &Set{u: slices.Clip(u)}
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
	var u []uint32
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		first, last, ok, err := parseLine(text)
		if err != nil {
			return nil, &ParseError{File: name, Line: line, Text: text, Err: err}
		}
		if !ok {
			continue // comment or blank line
		}
		for v := first; ; v++ {
			u = append(u, v)
			if v == last {
				break // tested before v++ so 255.255.255.255 cannot wrap to 0
			}
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			err = fmt.Errorf("%w: line longer than %d bytes", ErrSyntax, maxLineBytes)
		}
		return nil, &ParseError{File: name, Line: line + 1, Err: err}
	}
	return fromU32(u), nil
}

// parseLine parses one trimmed line and returns the inclusive address range it
// stands for; ok is false for a comment or blank line.
func parseLine(text string) (first, last uint32, ok bool, err error) {
	entry, _, _ := strings.Cut(text, "#")
	entry = strings.TrimSpace(entry)
	if entry == "" {
		return 0, 0, false, nil
	}
	if strings.ContainsAny(entry, " \t\v\f\r") {
		return 0, 0, false, fmt.Errorf("%w: %q: one address or subnet per line", ErrSyntax, entry)
	}
	addrText, maskText, hasMask := strings.Cut(entry, "/")
	a, perr := netip.ParseAddr(addrText)
	if perr != nil {
		return 0, 0, false, fmt.Errorf("%w: %q is not an IPv4 address or subnet", ErrSyntax, entry)
	}
	if !a.Is4() {
		return 0, 0, false, fmt.Errorf("%w: %s (l2lb balances IPv4 only)", ErrNotIPv4, entry)
	}
	if !hasMask {
		v := addrToU32(a)
		return v, v, true, nil
	}
	bits, valid := parseBits(maskText)
	if !valid {
		return 0, 0, false, fmt.Errorf("%w: %q: mask must be a decimal number of bits", ErrSyntax, entry)
	}
	if bits < MinMaskBits || bits > 32 {
		return 0, 0, false, fmt.Errorf("%w: %s (mask must be /%d to /32)", ErrIncorrectMask, entry, MinMaskBits)
	}
	p := netip.PrefixFrom(a, bits)
	if p.Masked().Addr() != a {
		return 0, 0, false, fmt.Errorf("%w: %s (the network address would be %s)", ErrHostBits, entry, p.Masked())
	}
	first = addrToU32(a)
	last = first | (1<<(32-bits) - 1)
	return first, last, true, nil
}

// parseBits parses a mask length: decimal digits without sign or leading zero,
// at most three of them so that a silly /100 still reads as a (wrong) number.
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

// Addrs returns the addresses in ascending order; the slice is a copy.
func (s *Set) Addrs() []netip.Addr {
	if s == nil {
		return nil
	}
	out := make([]netip.Addr, len(s.u))
	for i, v := range s.u {
		out[i] = u32ToAddr(v)
	}
	return out
}

// Len returns the number of addresses.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.u)
}

// Contains reports whether a (IPv4, or IPv4-mapped IPv6) is in the set.
func (s *Set) Contains(a netip.Addr) bool {
	a = a.Unmap()
	if !a.Is4() {
		return false
	}
	return s.ContainsU32(addrToU32(a))
}

// ContainsU32 reports whether the IPv4 address ip is in the set, where ip is
// the four address bytes as they appear in the packet read as a big-endian
// uint32 (binary.BigEndian.Uint32(hdr[16:20]) for an IPv4 destination). It
// does not allocate and is meant for the per-packet path.
func (s *Set) ContainsU32(ip uint32) bool {
	return s.IndexU32(ip) >= 0
}

// IndexU32 returns the position of ip in Addrs (ascending order), or -1 when ip is not in the
// set. Like ContainsU32 it is allocation-free, for per-VIP counters in the fast path.
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

// Equal reports whether s and o hold the same addresses.
func (s *Set) Equal(o *Set) bool {
	var a, b []uint32
	if s != nil {
		a = s.u
	}
	if o != nil {
		b = o.u
	}
	return slices.Equal(a, b)
}

// String lists the addresses in ascending order separated by ", "
// ("192.0.2.200, 192.0.2.201"); an empty set is "".
func (s *Set) String() string {
	if s.Len() == 0 {
		return ""
	}
	var b strings.Builder
	b.Grow(len(s.u) * 16)
	for i, v := range s.u {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(u32ToAddr(v).String())
	}
	return b.String()
}
