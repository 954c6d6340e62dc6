// Package conntrack is the balancer's connection table: which member each
// client-to-VIP flow was scheduled to, with IPVS timeouts, TCP state tracking
// for a direct-routing balancer and IPVS persistence templates (ipvsadm -p).
//
// One Table holds IPv4 flows (Key; Touch, Insert, ...) and IPv6 flows (Key6;
// Touch6, Insert6, ..., the same methods with a 6): one MaxEntries limit,
// one Active counter per member, one Expire and one Len count both.
//
// The table never reads a clock. Every call that needs the time takes "now",
// a monotonic nanosecond count chosen by the caller, so tests and replays are
// deterministic.
//
// # Layout and why
//
// Entries live in 256 independent shards, each a mutex and, per address
// family, an open-addressing flow table (see flowTab for why not a Go map)
// and a Go map of persistence templates, which are only consulted when a flow
// misses. The shard is picked by the low bits of the key's hash, the slot by
// its high bits. Touch updates the slot in place, so a hit costs one hash,
// one lock and usually one cache line.
//
// IPv4 slots are 32 bytes: a 16-byte packed key (addresses, ports,
// protocol) and 13 bytes of expiry, member, state, flags, hash and timeout
// class, two slots to a cache line. An IPv6 key is 37 bytes (two 16-byte
// addresses, ports, protocol), so its slot is padded to 64 bytes, one line:
// with a power-of-two
// slot size and a power-of-two array no slot straddles two lines, and a hit
// reads one. The families have separate slot arrays because one slot size
// for both would double the bytes of every IPv4 flow (BenchmarkMemory*:
// 53.7 bytes per IPv4 flow, 107.4 per IPv6 flow, at 10 M flows). The code is
// one generic implementation over the packed key (fam, flowTab). A shard's
// IPv6 slot array and template map are allocated with its first IPv6 flow
// or template, so an IPv4-only balancer pays nothing per entry for IPv6.
// IPv4 templates are keyed by client and VIP in one uint64, IPv6 ones by
// both full addresses (32 bytes).
//
// The hash is keyed with a random seed per table (hash/maphash), as IPVS
// keys its connection hash with a random ip_vs_conn_rnd
// (net/netfilter/ipvs/ip_vs_conn.c): with a fixed, public hash function a
// client choosing source addresses and ports (a spoofed SYN flood, say) can
// precompute keys that share one home slot, and linear probing then makes
// every lookup in that shard walk the whole cluster. The seeded hash costs
// ~12 ns for a key against ~5 ns for the unseeded xxhash it replaced.
//
// # Time
//
// Expiries are stored in ticks of 2^24 ns (about 16.8 ms), rounded up, so a
// flow never expires early and lives at most one tick longer than its
// timeout. Ticks are compared with serial-number arithmetic (RFC 1982), so
// the 32-bit counter may wrap (every ~2.3 years) as long as Expire runs more
// often than every ~1.1 years; the same range bounds every timeout
// (MaxTimeout).
//
// Per-service timeouts (Config.PortTimeouts) replace the timeout of the
// established phase of the flows to one VIP port and protocol; a flow's
// timeout class is resolved once when it is recorded and kept in its slot
// (porttimeout.go).
//
// # A full table
//
// At MaxEntries flows, Insert and Import evict one flow near the new key's
// home slot to make room: an expired one first, then the non-established
// flow closest to its expiry, never a live TCP ESTABLISHED one; only when
// none is found within a bounded search do they return ErrFull (evict.go,
// Evictions).
//
// # Replication
//
// A connection-sync channel keeps standbys' tables close to the active's:
// the active learns new flows from the SetOnInsert hook and dumps the table
// with Range and RangeTemplates, whose expiries are absolute times in its
// clock; it sends the remaining lifetimes, and a standby records them with
// Import and ImportTemplate against its own clock. Import never calls the
// hook, so replicated flows are not sent back. IPv6 flows take the same path
// through SetOnInsert6, Range6, RangeTemplates6, Import6 and
// ImportTemplate6.
package conntrack

import (
	"errors"
	"hash/maphash"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// MaxMember is the largest member ID the table accepts; Active keeps one
// counter per possible ID in a fixed array.
const MaxMember = 1<<16 - 1

// Errors returned by Insert, Import and ImportTemplate.
var (
	// ErrFull means the table already holds MaxEntries flows and none
	// near the new one could be evicted (from ImportTemplate: MaxEntries
	// templates); the entry was not recorded.
	ErrFull = errors.New("conntrack: flow table full")
	// ErrExists means the flow is already tracked and live, typically because
	// another goroutine inserted it first; use Touch to learn its member.
	ErrExists = errors.New("conntrack: flow already tracked")
	// ErrBadMember means the member ID is above MaxMember.
	ErrBadMember = errors.New("conntrack: member ID out of range")
	// ErrBadState means Import was given a state that a flow of the key's
	// protocol can never be in (see State), such as a TCP state for UDP.
	ErrBadState = errors.New("conntrack: state does not fit the protocol")
	// ErrNoPersistence means ImportTemplate was called on a table with
	// persistence off; the template was not recorded.
	ErrNoPersistence = errors.New("conntrack: persistence is off")
)

const (
	// tickShift sets the expiry granularity: 2^24 ns. IPVS timeouts are
	// whole seconds, so a coarse tick costs nothing and lets a 32-bit expiry
	// cover years, keeping a slot at 32 bytes.
	tickShift = 24
	tickNs    = int64(1) << tickShift

	defaultShards     = 256
	defaultMaxEntries = 1 << 20

	// flagTemplate marks a flow that holds a reference on its persistence
	// template and must release it when it ends.
	flagTemplate = 1
)

// Key identifies a flow as seen by the balancer, client to VIP. IPs are IPv4
// addresses as big-endian uint32; ports are zero for protocols without them.
type Key struct {
	Src, Dst     uint32
	SPort, DPort uint16
	Proto        uint8
}

// Entry is a flow as reported by Range, or a persistence template as
// reported by RangeTemplates.
type Entry struct {
	// Member is the member the flow or template points at.
	Member uint32
	// State is the flow's protocol state; it is zero for a template.
	State State
	// Expires is the absolute time at which the flow expires unless touched
	// again, in the same clock as the "now" the caller passes to the table
	// (so Expires - now is the remaining lifetime), rounded up to the
	// table's tick.
	Expires int64
}

// Config sets up a Table. Zero fields take their defaults.
type Config struct {
	// MaxEntries bounds the number of flows, IPv4 and IPv6 together;
	// persistence templates (of both families) are bounded separately by
	// the same number. Default 1<<20.
	MaxEntries int
	// Timeouts are the per-state idle timeouts; zero fields take the IPVS
	// defaults (see DefaultTimeouts).
	Timeouts Timeouts
	// Persistence is IPVS's -p: a new flow from a client to a VIP goes to the
	// member its earlier flows went to while any of them lives and for
	// Persistence after the last activity. Zero turns persistence off.
	Persistence time.Duration
	// PortTimeouts override the established-phase timeout of the flows of
	// given VIP ports and protocols (see PortTimeout); Validate checks them.
	PortTimeouts []PortTimeout

	// shards replaces defaultShards when positive (tests), rounded up to a
	// power of two.
	shards int
}

// flowKey is Key packed into two words, so the table hashes and compares 16
// bytes with no padding holes.
type flowKey struct{ a, b uint64 }

// packedKey is a flow key as the shards store it (flowKey, flowKey6), T
// the key of its persistence templates. The table's code is generic over
// the pair (see fam).
type packedKey[K, T comparable] interface {
	comparable
	// tmplKey is the key of the flow's persistence template: client and VIP.
	tmplKey() T
}

// tmplVal is the value of a persistence template.
type tmplVal struct {
	exp    uint32 // expiry tick once no flow holds the template
	member uint16
	flows  uint32 // live flows holding a reference
}

type shard struct {
	// Pad to whole cache lines so neighbouring shards' locks do not share
	// one (a fixed pad drifted when fields were added: the struct was 104
	// bytes). The pad comes first because a zero-length last field would
	// still take space, and shardState is exactly two lines (128 bytes, the
	// size the IPv4-only shard had with its pad).
	_ [(64 - unsafe.Sizeof(shardState{})%64) % 64]byte
	shardState
}

type shardState struct {
	mu sync.Mutex
	// now is the latest time seen under mu; operations without a "now"
	// argument (Delete, SetMember, Range) use it.
	now int64
	v4  shardFam[flowKey, uint64]
	// v6's slot array and template map are allocated by the shard's first
	// IPv6 flow or template, so an IPv4-only table pays nothing per entry
	// for IPv6.
	v6 shardFam[flowKey6, tmplKey6]
}

// shardFam is one shard's flows and templates of one key type.
type shardFam[K comparable, T comparable] struct {
	flows flowTab[K]
	// tmpls is made by the first template stored.
	tmpls map[T]tmplVal
}

// Table is a sharded connection table safe for concurrent use.
type Table struct {
	shards  []shard
	mask    uint64
	max     int64
	persist int64 // ns; 0 = off
	nflows  atomic.Int64
	ntmpls  atomic.Int64
	// seed keys the flow and template hashes (see the package comment).
	seed maphash.Seed
	// timeouts[c][s] is the idle timeout in ns of a flow of timeout class c
	// (slot.class) in state s; row 0 is Config.Timeouts, the others come
	// from Config.PortTimeouts (see porttimeout.go). A fixed array indexed
	// by a byte needs no bounds check on the class. It follows the fields
	// every Touch reads (shards, mask, seed), so that they and row 0 share
	// the struct's first lines, as they did before classes.
	timeouts [maxClasses][numStates]int64
	// ports maps Config.PortTimeouts' protocol and port to a class, sorted
	// by key for classOf.
	ports []portClass
	// evictedLive and evictedExpired count the flows a full table removed
	// to make room (see Evictions).
	evictedLive, evictedExpired atomic.Uint64
	// onInsert is the SetOnInsert hook; nil (the usual case) costs Insert
	// one load.
	onInsert  atomic.Pointer[func(k Key, member uint32, state State)]
	onInsert6 atomic.Pointer[func(k Key6, member uint32, state State)]
	// active counts the flows of each member, of both families.
	active [MaxMember + 1]atomic.Int64
	// tmplActive counts the stored persistence templates of each member, of both families,
	// maintained wherever a template is created, re-pointed or removed (under its shard's
	// lock), so that status pages and metrics need not walk every template under the fast
	// path's shard locks (issue 14).
	tmplActive [MaxMember + 1]atomic.Int64
}

// fam is the table's code for flows keyed by K with templates keyed by T;
// the exported methods are thin wrappers that pack their keys and call it.
type fam[K packedKey[K, T], T comparable] struct{ *Table }

// v4 and v6 are the code for IPv4 and for IPv6 flows.
type (
	v4 = fam[flowKey, uint64]
	v6 = fam[flowKey6, tmplKey6]
)

// New returns an empty table configured by cfg. It does not fail: zero
// fields take their defaults and PortTimeouts that Config.Validate rejects
// are left out, so validate an operator's configuration first.
func New(cfg Config) *Table {
	n := cfg.shards
	if n <= 0 {
		n = defaultShards
	}
	n = 1 << bits.Len(uint(n-1)) // round up to a power of two
	max := cfg.MaxEntries
	if max <= 0 {
		max = defaultMaxEntries
	}
	t := &Table{
		shards: make([]shard, n),
		mask:   uint64(n - 1),
		max:    int64(max),
		seed:   maphash.MakeSeed(),
	}
	if cfg.Persistence > 0 {
		t.persist = int64(cfg.Persistence)
	}
	def := cfg.Timeouts.withDefaults().byState()
	for s, d := range def {
		// An out-of-range timeout (Validate's error) is clamped rather
		// than left to break the serial-number comparison of expiries.
		def[s] = min(d, MaxTimeout)
	}
	classes, _ := cfg.portClasses() // the error is Validate's to report
	t.setTimeouts(def, classes)
	return t
}

func (k Key) pack() flowKey {
	return flowKey{
		a: uint64(k.Src)<<32 | uint64(k.Dst),
		b: uint64(k.SPort)<<24 | uint64(k.DPort)<<8 | uint64(k.Proto),
	}
}

func (f flowKey) unpack() Key {
	return Key{
		Src:   uint32(f.a >> 32),
		Dst:   uint32(f.a),
		SPort: uint16(f.b >> 24),
		DPort: uint16(f.b >> 8),
		Proto: uint8(f.b),
	}
}

// tmplKey is the persistence template key of a flow: client and VIP, all
// ports and protocols (IPVS -p without a netmask or port).
func (f flowKey) tmplKey() uint64 { return f.a }

// tmplKey4 is the template key of an IPv4 client and VIP.
func tmplKey4(client, vip uint32) uint64 { return uint64(client)<<32 | uint64(vip) }

// of returns s's flows and templates of t's key type. The type assertions
// compare type words: no call, unlike a method of K, which would cost an
// indirect call through the generic dictionary.
func (t fam[K, T]) of(s *shard) *shardFam[K, T] {
	if sf, ok := any(&s.v4).(*shardFam[K, T]); ok {
		return sf
	}
	return any(&s.v6).(*shardFam[K, T])
}

// flowShard returns f's shard and the hash bits its slot index comes from
// (the high half, independent of the low bits that chose the shard).
func flowShard[K comparable](t *Table, f K) (*shard, uint32) {
	h := maphash.Comparable(t.seed, f)
	return &t.shards[h&t.mask], uint32(h >> 32)
}

func tmplShard[T comparable](t *Table, tk T) *shard {
	return &t.shards[maphash.Comparable(t.seed, tk)&t.mask]
}

// expiryTick is the tick at or after now+d.
func expiryTick(now, d int64) uint32 {
	return uint32((now + d + tickNs - 1) >> tickShift)
}

// expired reports whether a tick expiry has passed at now, comparing ticks as
// RFC 1982 serial numbers.
func expired(exp uint32, now int64) bool {
	return int32(uint32(now>>tickShift)-exp) >= 0
}

// laterTick is the later of two serial-number ticks.
func laterTick(a, b uint32) uint32 {
	if int32(b-a) > 0 {
		return b
	}
	return a
}

// tickTime turns a tick back into nanoseconds, taking the wrap nearest to ref.
func tickTime(exp uint32, ref int64) int64 {
	base := ref >> tickShift
	return (base + int64(int32(exp-uint32(base)))) << tickShift
}

// flowEnd is when a flow with expiry tick exp, removed at now, ended: its
// expiry if that already passed, otherwise now.
func flowEnd(exp uint32, now int64) int64 {
	if expired(exp, now) {
		return tickTime(exp, now)
	}
	return now
}

func (s *shard) advance(now int64) {
	if now > s.now {
		s.now = now
	}
}

// Touch finds k, advances its TCP state from the frame's TCP flags (0 for
// non-TCP), refreshes its expiry, and returns the member it belongs to. A
// flow whose expiry passed but that Expire has not yet removed is a miss.
// Touch does not allocate.
func (t *Table) Touch(k Key, tcpFlags uint8, now int64) (member uint32, ok bool) {
	return v4{t}.touch(k.pack(), tcpFlags, now)
}

func (t fam[K, T]) touch(f K, tcpFlags uint8, now int64) (member uint32, ok bool) {
	return t.touchHash(f, maphash.Comparable(t.seed, f), tcpFlags, now)
}

// touchHash is touch for a flow whose full hash (flowShard's) is fh.
func (t fam[K, T]) touchHash(f K, fh uint64, tcpFlags uint8, now int64) (member uint32, ok bool) {
	s, h := &t.shards[fh&t.mask], uint32(fh>>32)
	ft := &t.of(s).flows
	s.mu.Lock()
	s.advance(now)
	i := ft.find(f, h)
	if i < 0 {
		s.mu.Unlock()
		return 0, false
	}
	v := &ft.slots[i]
	if expired(v.exp, now) {
		s.mu.Unlock()
		return 0, false
	}
	v.state = nextState(v.state, tcpFlags)
	v.exp = expiryTick(now, t.timeouts[v.class][v.state])
	member = uint32(v.member)
	s.mu.Unlock()
	return member, true
}

// Insert records a new flow k forwarded to member, whose first frame carries
// tcpFlags. At MaxEntries flows it evicts an expired or non-established flow
// to make room (see Evictions) and returns ErrFull when it finds none (the
// caller still forwards the frame by its scheduler). It returns ErrExists
// when k is already live, and ErrBadMember for a member above MaxMember. A
// flow that expired but was not yet removed is replaced. The flow's idle
// timeouts are those of its VIP port (Config.PortTimeouts), if any, or the
// table's. With Persistence on, Insert also creates or refreshes the
// template of (k.Src, k.Dst) and points it at member; if MaxEntries
// templates exist already the flow is still recorded, without persistence.
// After a successful Insert it calls the SetOnInsert hook, if any.
func (t *Table) Insert(k Key, member uint32, tcpFlags uint8, now int64) error {
	state := firstState(k.Proto, tcpFlags)
	if err := (v4{t}).insert(k.pack(), member, state, t.classOf(k.Proto, k.DPort), now); err != nil {
		return err
	}
	if fn := t.onInsert.Load(); fn != nil {
		(*fn)(k, member, state)
	}
	return nil
}

// insert is Insert up to the hook, for a flow of timeout class class whose
// first state is state.
func (t fam[K, T]) insert(f K, member uint32, state State, class uint8, now int64) error {
	if member > MaxMember {
		return ErrBadMember
	}
	return t.record(f, member, state, class, expiryTick(now, t.timeouts[class][state]), now, false)
}

// SetOnInsert sets fn to be called after every successful Insert with the
// new flow's key, member and first state, so that a connection-sync sender
// can learn of new flows; nil removes the hook. Import does not call it, so
// flows learnt from the sync channel are not echoed back into it. fn is
// called on the fast path of the goroutine that called Insert, after every
// table lock is released: it must not block and should not allocate (hand
// the flow to a preallocated ring, say), as it delays the frame that created
// the flow. Unset, the hook costs Insert one pointer load. SetOnInsert is
// safe to call while other goroutines use the table; an Insert running at
// the same time may call either the old or the new fn.
func (t *Table) SetOnInsert(fn func(k Key, member uint32, state State)) {
	if fn == nil {
		t.onInsert.Store(nil)
		return
	}
	t.onInsert.Store(&fn)
}

// record adds flow f of timeout class class in state with expiry tick exp,
// taking a template reference with persistence on, for Insert and Import. A
// flow that expired but was not yet removed is replaced. When f is live
// already, record returns ErrExists, or with update set updates f as Import
// does. At MaxEntries flows it first makes room (see makeRoom), and returns
// ErrFull if it cannot.
func (t fam[K, T]) record(f K, member uint32, state State, class uint8, exp uint32, now int64, update bool) error {
	s, h := flowShard(t.Table, f)
	if t.nflows.Add(1) > t.max && !t.makeRoom(s, f, h, now) {
		t.nflows.Add(-1)
		return ErrFull
	}
	tk := f.tmplKey()
	flags := uint8(flagUsed)
	// Take the template reference before the flow is visible, so a
	// concurrent Delete of the flow can never release it first.
	if t.persist > 0 && t.acquireTemplate(tk, member, now) {
		flags |= flagTemplate
	}
	ft := &t.of(s).flows
	s.mu.Lock()
	s.advance(now)
	var old slot[K]
	exists := false
	var v *slot[K]
	if i := ft.find(f, h); i >= 0 {
		v = &ft.slots[i]
		if !expired(v.exp, now) {
			err := ErrExists
			if update {
				err = nil
				updateSlot(t.Table, v, member, state, exp)
				if v.flags&flagTemplate == 0 && flags&flagTemplate != 0 {
					// The flow has no reference yet: it keeps ours.
					v.flags |= flagTemplate
					flags &^= flagTemplate
				}
			}
			s.mu.Unlock()
			t.nflows.Add(-1)
			if flags&flagTemplate != 0 {
				t.releaseTemplate(tk, now)
			}
			return err
		}
		old, exists = *v, true
		t.active[old.member].Add(-1)
	} else {
		v = ft.add(f, h)
	}
	v.member, v.state, v.flags, v.class = uint16(member), state, flags, class
	v.exp = exp
	t.active[member].Add(1)
	s.mu.Unlock()
	if exists {
		t.nflows.Add(-1)
		if old.flags&flagTemplate != 0 {
			t.releaseTemplate(tk, tickTime(old.exp, now))
		}
	}
	return nil
}

// templateForUpdate returns template tk of sf (whose shard the caller locked) to be changed and
// stored back, creating it with expiry exp when absent, and points it at member (keeping the
// per-member counts, so the caller must store it back). It reports false when no room is left
// for a new template.
func (t fam[K, T]) templateForUpdate(sf *shardFam[K, T], tk T, exp uint32, member uint32) (tmplVal, bool) {
	v, ok := sf.tmpls[tk]
	if !ok {
		if t.ntmpls.Add(1) > t.max {
			t.ntmpls.Add(-1)
			return v, false
		}
		if sf.tmpls == nil {
			sf.tmpls = make(map[T]tmplVal)
		}
		v.exp = exp
		v.member = uint16(member)
		t.tmplActive[member].Add(1)
		return v, true
	}
	t.repoint(&v, member)
	return v, true
}

// repoint points template v at member, moving it between the members' template counts.
func (t *Table) repoint(v *tmplVal, member uint32) {
	if uint32(v.member) != member {
		t.tmplActive[v.member].Add(-1)
		t.tmplActive[member].Add(1)
		v.member = uint16(member)
	}
}

// Templates returns how many persistence templates point at member, IPv4 and IPv6, including
// those whose persistence period passed but that Expire has not yet removed (as Len counts
// them). It is O(1) and lock-free: a status page or metrics scrape reads it instead of walking
// every template under the fast path's shard locks.
func (t *Table) Templates(member uint32) int64 {
	if member > MaxMember {
		return 0
	}
	return t.tmplActive[member].Load()
}

// acquireTemplate takes a flow's reference on template tk, creating it or
// pointing it at member, and restarts its persistence period at now. It
// reports false when the template could not be created for lack of room.
func (t fam[K, T]) acquireTemplate(tk T, member uint32, now int64) bool {
	s := tmplShard(t.Table, tk)
	sf := t.of(s)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advance(now)
	exp := expiryTick(now, t.persist)
	v, ok := t.templateForUpdate(sf, tk, exp, member)
	if !ok {
		return false
	}
	// The caller is the authority on where the flow goes: normally it asked
	// Template first, and it only picks another member when the template's
	// one can no longer take flows (IPVS then drops the old template too).
	v.member = uint16(member)
	v.flows++
	v.exp = laterTick(v.exp, exp)
	sf.tmpls[tk] = v
	return true
}

// releaseTemplate drops a flow's reference on template tk; the flow ended at
// end, which starts the template's last persistence period.
func (t fam[K, T]) releaseTemplate(tk T, end int64) {
	s := tmplShard(t.Table, tk)
	sf := t.of(s)
	s.mu.Lock()
	v, ok := sf.tmpls[tk]
	if ok && v.flows > 0 {
		v.flows--
		v.exp = laterTick(v.exp, expiryTick(end, t.persist))
		sf.tmpls[tk] = v
	}
	s.mu.Unlock()
}

// Template returns the member the persistence template for (client, vip)
// holds, if the template is live: some flow of the pair lives, or the
// persistence period after the last activity has not passed.
func (t *Table) Template(client, vip uint32, now int64) (member uint32, ok bool) {
	return v4{t}.template(tmplKey4(client, vip), now)
}

func (t fam[K, T]) template(tk T, now int64) (member uint32, ok bool) {
	s := tmplShard(t.Table, tk)
	sf := t.of(s)
	s.mu.Lock()
	s.advance(now)
	v, ok := sf.tmpls[tk]
	s.mu.Unlock()
	if !ok || (v.flows == 0 && expired(v.exp, now)) {
		return 0, false
	}
	return uint32(v.member), true
}

// SetMember re-points flow k at member, for rescheduling a flow whose member
// went away. It reports whether k was tracked and member is valid.
func (t *Table) SetMember(k Key, member uint32) bool {
	return v4{t}.setMember(k.pack(), member)
}

func (t fam[K, T]) setMember(f K, member uint32) bool {
	if member > MaxMember {
		return false
	}
	s, h := flowShard(t.Table, f)
	ft := &t.of(s).flows
	s.mu.Lock()
	defer s.mu.Unlock()
	i := ft.find(f, h)
	if i < 0 {
		return false
	}
	v := &ft.slots[i]
	if uint32(v.member) != member {
		t.active[v.member].Add(-1)
		t.active[member].Add(1)
		v.member = uint16(member)
	}
	return true
}

// Delete removes flow k and reports whether it was tracked. Its template, if
// any, starts its last persistence period at the latest time the flow's
// shard has seen.
func (t *Table) Delete(k Key) bool {
	return v4{t}.delete(k.pack())
}

func (t fam[K, T]) delete(f K) bool {
	s, h := flowShard(t.Table, f)
	ft := &t.of(s).flows
	s.mu.Lock()
	i := ft.find(f, h)
	if i < 0 {
		s.mu.Unlock()
		return false
	}
	v := ft.slots[i]
	ft.removeAt(i)
	t.active[v.member].Add(-1)
	end := flowEnd(v.exp, s.now)
	s.mu.Unlock()
	t.nflows.Add(-1)
	if v.flags&flagTemplate != 0 {
		t.releaseTemplate(f.tmplKey(), end)
	}
	return true
}

// release is a template reference dropped while a shard was locked, applied
// after the lock is released so no two shard locks are ever held at once.
type release[T comparable] struct {
	tk  T
	end int64
}

// Expire removes the flows whose expiry passed at now, then the templates
// that no flow holds and whose persistence period passed, of both families.
// It locks one shard at a time, so the fast path waits at most for one
// shard's sweep. It returns how many flows and templates it removed.
func (t *Table) Expire(now int64) (flows, templates int) {
	var rel []release[uint64]
	var rel6 []release[tmplKey6]
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		s.advance(now)
		var n, n6 int
		n, rel = v4{t}.sweep(&s.v4, now, rel[:0])
		n6, rel6 = v6{t}.sweep(&s.v6, now, rel6[:0])
		s.mu.Unlock()
		// Free capacity shard by shard so Insert can use it at once.
		t.nflows.Add(-int64(n + n6))
		flows += n + n6
		v4{t}.releaseAll(rel)
		v6{t}.releaseAll(rel6)
	}
	if t.persist == 0 {
		return flows, 0
	}
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		templates += v4{t}.expireTemplates(&s.v4, now)
		templates += v6{t}.expireTemplates(&s.v6, now)
		s.mu.Unlock()
	}
	t.ntmpls.Add(-int64(templates))
	return flows, templates
}

// sweep removes sf's flows whose expiry passed at now, under its shard's
// lock, and returns how many it removed and, appended to rel, the template
// references they held.
func (t fam[K, T]) sweep(sf *shardFam[K, T], now int64, rel []release[T]) (int, []release[T]) {
	ft := &sf.flows
	n := 0
	for i := 0; i < len(ft.slots); {
		v := &ft.slots[i]
		if v.flags&flagUsed == 0 || !expired(v.exp, now) {
			i++
			continue
		}
		t.active[v.member].Add(-1)
		n++
		if v.flags&flagTemplate != 0 {
			rel = append(rel, release[T]{v.key.tmplKey(), tickTime(v.exp, now)})
		}
		ft.removeAt(i) // slot i may now hold another flow: look again
	}
	ft.shrink()
	return n, rel
}

func (t fam[K, T]) releaseAll(rel []release[T]) {
	for _, r := range rel {
		t.releaseTemplate(r.tk, r.end)
	}
}

// expireTemplates removes sf's templates that no flow holds and whose
// persistence period passed at now, under its shard's lock, and returns how
// many it removed.
func (t fam[K, T]) expireTemplates(sf *shardFam[K, T], now int64) int {
	n := 0
	for tk, v := range sf.tmpls {
		if !expired(v.exp, now) {
			continue
		}
		if v.flows > 0 {
			// Held by flows: keep the expiry within serial-number
			// range of now (RFC 1982) for when the last flow ends.
			v.exp = expiryTick(now, t.persist)
			sf.tmpls[tk] = v
			continue
		}
		delete(sf.tmpls, tk)
		t.tmplActive[v.member].Add(-1)
		n++
	}
	return n
}

// Len returns how many flows and persistence templates the table holds, of
// both families, including expired ones Expire has not yet removed.
func (t *Table) Len() (flows, templates int) {
	return int(t.nflows.Load()), int(t.ntmpls.Load())
}

// Active returns how many flows member has in the table, IPv4 and IPv6 (for
// weighted least-connection scheduling and status). It is O(1) and
// lock-free.
func (t *Table) Active(member uint32) int64 {
	if member > MaxMember {
		return 0
	}
	return t.active[member].Load()
}

// Range calls fn for each flow, shard by shard, until fn returns false. fn
// runs with the flow's shard locked, so it must not call back into t. Flows
// inserted or removed during Range may or may not be seen.
//
// Entry.Expires is an absolute time in the caller's clock, the one it passes
// as "now" (the stored tick is turned back into nanoseconds against the
// latest time the flow's shard has seen), so Expires - now is the flow's
// remaining lifetime and can be handed to another table's Import as
// otherNow + (Expires - now). Flows whose expiry passed but that Expire has
// not yet removed are included, with Expires at or before the time they
// expired; a sync sender should skip them (Import ignores them anyway).
func (t *Table) Range(fn func(k Key, e Entry) bool) {
	v4{t}.rangeFlows(func(f flowKey, e Entry) bool { return fn(f.unpack(), e) })
}

func (t fam[K, T]) rangeFlows(fn func(f K, e Entry) bool) {
	for i := range t.shards {
		s := &t.shards[i]
		ft := &t.of(s).flows
		s.mu.Lock()
		for i := range ft.slots {
			v := &ft.slots[i]
			if v.flags&flagUsed == 0 {
				continue
			}
			e := Entry{Member: uint32(v.member), State: v.state, Expires: tickTime(v.exp, s.now)}
			if !fn(v.key, e) {
				s.mu.Unlock()
				return
			}
		}
		s.mu.Unlock()
	}
}
