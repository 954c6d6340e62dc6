package dataplane

import "sync"

// fragTimeout is how long the frontend of a fragmented datagram is remembered after its first
// fragment: the kernel's own reassembly gives up after 30 s (net.ipv4.ipfrag_time default,
// Documentation/networking/ip-sysctl.rst), so later fragments are useless anyway.
const fragTimeout = int64(30e9)

// fragShards spreads fragment lookups over independent locks.
const fragShards = 64

// fragMaxPerShard bounds memory under a fragment flood: the oldest entries are simply not
// added, and later fragments of such datagrams are dropped as unknown.
const fragMaxPerShard = 4096

type fragKey struct {
	src, dst uint32
	id       uint16
	proto    uint8
}

type fragEntry struct {
	member  uint32
	expires int64
}

// fragTable maps a fragmented datagram (source, destination, protocol, IP ID: RFC 791's
// reassembly key) to the member its first fragment went to. Non-first fragments carry no ports,
// so this is how they reach the same frontend (SIP over UDP fragments, issue 2 item 9). Linux
// sends the fragments of a datagram in order, first one first.
type fragTable struct {
	shards [fragShards]struct {
		mu sync.Mutex
		m  map[fragKey]fragEntry
		_  [40]byte // keep shards on separate cache lines
	}
}

func newFragTable() *fragTable {
	t := &fragTable{}
	for i := range t.shards {
		t.shards[i].m = make(map[fragKey]fragEntry)
	}
	return t
}

func (k fragKey) shard() int {
	return int((k.src ^ k.dst*2654435761 ^ uint32(k.id)*40503) % fragShards)
}

func (t *fragTable) insert(k fragKey, member uint32, now int64) {
	s := &t.shards[k.shard()]
	s.mu.Lock()
	if len(s.m) < fragMaxPerShard {
		s.m[k] = fragEntry{member: member, expires: now + fragTimeout}
	} else if _, ok := s.m[k]; ok {
		s.m[k] = fragEntry{member: member, expires: now + fragTimeout}
	}
	s.mu.Unlock()
}

func (t *fragTable) lookup(k fragKey, now int64) (uint32, bool) {
	s := &t.shards[k.shard()]
	s.mu.Lock()
	e, ok := s.m[k]
	s.mu.Unlock()
	if !ok || e.expires < now {
		return 0, false
	}
	return e.member, true
}

func (t *fragTable) expire(now int64) {
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
