package dataplane

import (
	"encoding/binary"
	"sync"
)

// fragTimeout is how long the frontend of a fragmented datagram is remembered after its first
// fragment: the kernel's own reassembly gives up after 30 s (net.ipv4.ipfrag_time default,
// Documentation/networking/ip-sysctl.rst), so later fragments are useless anyway.
const fragTimeout = int64(30e9)

// fragShards spreads fragment lookups over independent locks.
const fragShards = 64

// fragMaxPerShard bounds memory under a fragment flood: the oldest entries are simply not
// added, and later fragments of such datagrams are dropped as unknown.
const fragMaxPerShard = 4096

// fragKey is RFC 791's reassembly key of an IPv4 datagram.
type fragKey struct {
	src, dst uint32
	id       uint16
	proto    uint8
}

// fragKey6 is RFC 8200 §4.5's reassembly key of an IPv6 packet (no protocol: the Identification
// is unique per source and destination).
type fragKey6 struct {
	src, dst [16]byte
	id       uint32
}

// fragKeyer is a reassembly key of either family.
type fragKeyer interface {
	comparable
	shard() int
}

type fragEntry struct {
	member  uint32
	expires int64
}

// fragTable maps a fragmented datagram (its reassembly key K) to the member its first fragment
// went to. Non-first fragments carry no ports, so this is how they reach the same frontend (SIP
// over UDP fragments, issue 2 item 9). Linux sends the fragments of a datagram in order, first
// one first.
type fragTable[K fragKeyer] struct {
	shards [fragShards]struct {
		mu sync.Mutex
		m  map[K]fragEntry
		_  [40]byte // keep shards on separate cache lines
	}
}

func newFragTable[K fragKeyer]() *fragTable[K] {
	t := &fragTable[K]{}
	for i := range t.shards {
		t.shards[i].m = make(map[K]fragEntry)
	}
	return t
}

func (k fragKey) shard() int {
	return int((k.src ^ k.dst*2654435761 ^ uint32(k.id)*40503) % fragShards)
}

func (k fragKey6) shard() int {
	a := binary.BigEndian.Uint32(k.src[12:]) ^ binary.BigEndian.Uint32(k.dst[12:])*2654435761
	return int((a ^ k.id*40503) % fragShards)
}

func (t *fragTable[K]) insert(k K, member uint32, now int64) {
	s := &t.shards[k.shard()]
	s.mu.Lock()
	if len(s.m) < fragMaxPerShard {
		s.m[k] = fragEntry{member: member, expires: now + fragTimeout}
	} else if _, ok := s.m[k]; ok {
		s.m[k] = fragEntry{member: member, expires: now + fragTimeout}
	}
	s.mu.Unlock()
}

func (t *fragTable[K]) lookup(k K, now int64) (uint32, bool) {
	s := &t.shards[k.shard()]
	s.mu.Lock()
	e, ok := s.m[k]
	s.mu.Unlock()
	if !ok || e.expires < now {
		return 0, false
	}
	return e.member, true
}

func (t *fragTable[K]) expire(now int64) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for k, e := range s.m {
			if e.expires < now {
				delete(s.m, k)
			}
		}
		s.mu.Unlock()
	}
}
