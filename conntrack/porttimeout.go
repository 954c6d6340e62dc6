package conntrack

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// This file is per-service idle timeouts (issue 13): Config.PortTimeouts
// gives the flows of one VIP port and protocol a longer (or shorter) life in
// their established phase than the IPVS defaults, e.g. IMAP IDLE clients,
// which may stay silent for 29 minutes (RFC 2177, section 3), against the
// 900 s of TCP ESTABLISHED.
//
// # How a flow finds its timeout, and why this way
//
// Insert and Import resolve the flow's timeout class once, from its key's
// protocol and destination port, and keep it in the slot (slot.class, a
// byte that the slot's alignment padding already had spare, so neither
// family's slot grows: TestSlotSizes). Touch then reads its timeout from a
// per-class row, Table.timeouts[class][state]: one more byte from the slot
// line it already holds and an index into a 14 KB array whose few used rows
// stay in cache, so it costs Touch nothing measurable (see the
// BenchmarkTouch* figures in the package's report, and porttimeout_test.go).
// The alternative, a per-protocol port lookup consulted whenever a flow's
// state changes, would put a search on the path of every handshake's
// completing ACK and on every Import, and still need the class for the
// refresh of an established flow on each frame.
//
// A class is one distinct Timeout value: its row is the table's default
// timeouts with every "established-phase" state (TCP ESTABLISHED and the
// single states of UDP, ICMP and every other protocol) replaced by that
// value. One row serves every protocol because a flow's protocol decides
// which states it can ever be in; so ports with the same timeout share a
// class, and the 255 classes a byte leaves (class 0 is the defaults) bound
// the number of distinct timeout values, not of ports.

// MaxTimeout is the longest idle timeout the table can hold, per-port or
// per-state. Expiries are 32-bit counts of 2^24 ns ticks compared as RFC
// 1982 serial numbers, so an expiry must lie less than 2^31 ticks (2^55 ns,
// ~417 days) after the time it was set; a year leaves ~52 days of that
// range unused, so a rounded-up tick or a lagging shard clock can never
// carry an expiry across the half-way point (which would make a fresh flow
// look expired).
const MaxTimeout = 365 * 24 * time.Hour

// maxClasses is the number of timeout classes a slot's class byte can
// name; class 0 is the table's default timeouts.
const maxClasses = 256

// Errors returned by Config.Validate.
var (
	// ErrBadTimeout means a PortTimeout's Timeout is not positive, or a
	// timeout (per-port or in Timeouts) is above MaxTimeout, or the port
	// timeouts use more distinct values than the table can tell apart
	// (255).
	ErrBadTimeout = errors.New("conntrack: timeout out of range")
	// ErrDuplicatePortTimeout means two PortTimeouts name the same protocol
	// and port.
	ErrDuplicatePortTimeout = errors.New("conntrack: duplicate port timeout")
)

// PortTimeout is the idle timeout of one service's flows in their
// established phase: the flows, of either address family, whose key has
// protocol Proto and destination port Port (flows are keyed client to VIP,
// so Port is the VIP's service port). For TCP, Timeout replaces the
// ESTABLISHED timeout only: a flow in SYN_RECV or a closing state keeps the
// table's timeout for it, so a half-open flood on a long-lived port still
// ages as fast as anywhere. For UDP and any other protocol number
// (including numbers a caller reserves for its own keys) it replaces the
// protocol's single state's timeout. An IPv4 flow's Proto is the IPv4
// Protocol field and an IPv6 flow's the final Next Header, as in Key and
// Key6, so a PortTimeout for ProtoICMP applies to IPv4 ICMP and to IPv6
// flows of protocol 1.
type PortTimeout struct {
	// Proto is the IP protocol number (ProtoTCP, ProtoUDP, ...).
	Proto uint8
	// Port is the destination (VIP) port; zero matches the flows of a
	// protocol without ports, which are keyed with zero ports.
	Port uint16
	// Timeout is the idle timeout, above zero and at most MaxTimeout.
	Timeout time.Duration
}

// Validate reports whether New would use cfg as given. New never fails: it
// takes defaults for zero fields and drops the PortTimeouts that Validate
// rejects (keeping the first of duplicates), so a caller that takes the
// configuration from an operator calls Validate first and reports its
// error. The error wraps ErrBadTimeout or ErrDuplicatePortTimeout.
func (cfg Config) Validate() error {
	for s, d := range cfg.Timeouts.byState() {
		if d > MaxTimeout {
			return fmt.Errorf("%w: %v timeout %v is above %v", ErrBadTimeout, State(s), d, MaxTimeout)
		}
	}
	_, err := cfg.portClasses()
	return err
}

// portKey is the sorted lookup key of a protocol and destination port.
func portKey(proto uint8, port uint16) uint32 { return uint32(proto)<<16 | uint32(port) }

// portClass is a resolved PortTimeout: its lookup key and timeout class.
type portClass struct {
	key   uint32
	class uint8
}

// portClassSet is the result of resolving Config.PortTimeouts: the valid
// entries sorted by key, and the timeout of each class from 1 on.
type portClassSet struct {
	ports    []portClass
	timeouts []time.Duration // timeouts[c-1] is class c's
}

// portClasses resolves cfg.PortTimeouts into classes. It returns the valid
// entries (the first of duplicates) together with the first error found.
func (cfg Config) portClasses() (portClassSet, error) {
	var set portClassSet
	var first error
	fail := func(err error) {
		if first == nil {
			first = err
		}
	}
	seen := make(map[uint32]bool, len(cfg.PortTimeouts))
	for _, pt := range cfg.PortTimeouts {
		key := portKey(pt.Proto, pt.Port)
		switch {
		case pt.Timeout <= 0 || pt.Timeout > MaxTimeout:
			fail(fmt.Errorf("%w: protocol %d port %d: timeout %v is not in (0, %v]",
				ErrBadTimeout, pt.Proto, pt.Port, pt.Timeout, MaxTimeout))
			continue
		case seen[key]:
			fail(fmt.Errorf("%w: protocol %d port %d", ErrDuplicatePortTimeout, pt.Proto, pt.Port))
			continue
		}
		c := slices.Index(set.timeouts, pt.Timeout)
		if c < 0 {
			if len(set.timeouts) == maxClasses-1 {
				fail(fmt.Errorf("%w: more than %d distinct port timeouts (protocol %d port %d)",
					ErrBadTimeout, maxClasses-1, pt.Proto, pt.Port))
				continue
			}
			set.timeouts = append(set.timeouts, pt.Timeout)
			c = len(set.timeouts) - 1
		}
		seen[key] = true
		set.ports = append(set.ports, portClass{key: key, class: uint8(c + 1)})
	}
	slices.SortFunc(set.ports, func(a, b portClass) int { return int(a.key) - int(b.key) })
	return set, first
}

// setTimeouts fills t.timeouts from the default per-state timeouts and the
// resolved port classes.
func (t *Table) setTimeouts(def [numStates]time.Duration, set portClassSet) {
	for s, d := range def {
		t.timeouts[0][s] = int64(d)
	}
	for i, d := range set.timeouts {
		row := &t.timeouts[i+1]
		*row = t.timeouts[0]
		// The established phase of every protocol: see the file comment.
		for _, s := range [...]State{StateEstablished, StateUDP, StateICMP, StateOther} {
			row[s] = int64(d)
		}
	}
	t.ports = set.ports
}

// classOf returns the timeout class of the flows of proto to destination
// port port: 0 (the defaults) unless a PortTimeout names them. It is a
// binary search over the configured ports, skipped when there are none, and
// does not allocate; Insert and Import call it once per new flow. The check
// for none is kept small enough to inline, so a table without port
// timeouts pays no call.
func (t *Table) classOf(proto uint8, port uint16) uint8 {
	if len(t.ports) == 0 {
		return 0
	}
	return t.searchClass(proto, port)
}

// searchClass is classOf's search.
func (t *Table) searchClass(proto uint8, port uint16) uint8 {
	key := portKey(proto, port)
	i, ok := slices.BinarySearchFunc(t.ports, key, func(p portClass, k uint32) int { return int(p.key) - int(k) })
	if !ok {
		return 0
	}
	return t.ports[i].class
}
