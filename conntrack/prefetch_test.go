package conntrack

import (
	"sync"
	"testing"
	"unsafe"
)

// checkPublished checks that every shard's published base and mask describe
// its current slot arrays, and that every flow's home slot, as Prefetch
// computes it, is where find starts probing for it.
func checkPublished(t *testing.T, tb *Table) {
	t.Helper()
	checkPublishedFam(t, v4{tb})
	checkPublishedFam(t, v6{tb})
}

func checkPublishedFam[K packedKey[K, T], T comparable](t *testing.T, f fam[K, T]) {
	t.Helper()
	for i := range f.shards {
		s := &f.shards[i]
		ft := &f.of(s).flows
		s.mu.Lock()
		base, mask := ft.pfBase.Load(), ft.pfMask.Load()
		if len(ft.slots) == 0 {
			if base != 0 {
				t.Fatalf("shard %d: empty array published as %#x", i, base)
			}
		} else if base != uintptr(unsafe.Pointer(&ft.slots[0])) || int(mask) != len(ft.slots)-1 {
			t.Fatalf("shard %d: published %#x/%d, array at %p len %d", i, base, mask, &ft.slots[0], len(ft.slots))
		}
		s.mu.Unlock()
	}
	// rangeFlows holds the lock of k's shard while it calls fn.
	f.rangeFlows(func(k K, _ Entry) bool {
		s, h := flowShard(f.Table, k)
		ft := &f.of(s).flows
		want := uintptr(unsafe.Pointer(&ft.slots[h&uint32(len(ft.slots)-1)]))
		if got := f.homeAddr(k); got != want {
			t.Fatalf("home of %+v: Prefetch %#x, find %#x", k, got, want)
		}
		return true
	})
}

// TestPrefetchTracksResizes grows every shard, shrinks it through Expire,
// and checks after each step that Prefetch aims at the current arrays.
func TestPrefetchTracksResizes(t *testing.T) {
	tb := New(Config{shards: 4, MaxEntries: 1 << 16})
	checkPublished(t, tb)
	tb.Prefetch(tcpKey(1)) // empty table: nothing to prefetch, must not crash
	for i := uint32(0); i < 20000; i++ {
		mustInsert(t, tb, tcpKey(i), i%2, FlagSYN, t0)
		if i&(i-1) == 0 {
			checkPublished(t, tb)
		}
	}
	checkPublished(t, tb)
	// Every flow is still in SYN_RECV's timeout; an hour later all expire
	// and the arrays shrink to their minimum.
	tb.Expire(t0 + 3600*sec)
	checkPublished(t, tb)
	for i := range tb.shards {
		if n := len(tb.shards[i].v4.flows.slots); n != minSlots {
			t.Fatalf("shard %d kept %d slots", i, n)
		}
	}
}

// TestPrefetchAllocs checks that Prefetch allocates nothing, on an empty and
// on a filled table.
func TestPrefetchAllocs(t *testing.T) {
	tb := New(Config{})
	k := tcpKey(7)
	if n := testing.AllocsPerRun(1000, func() { tb.Prefetch(k) }); n != 0 {
		t.Fatalf("Prefetch on an empty table allocates %v, want 0", n)
	}
	for i := uint32(0); i < 1000; i++ {
		mustInsert(t, tb, tcpKey(i), 1, FlagSYN, t0)
	}
	i := uint32(0)
	if n := testing.AllocsPerRun(1000, func() { tb.Prefetch(tcpKey(i)); i++ }); n != 0 {
		t.Fatalf("Prefetch allocates %v, want 0", n)
	}
}

// TestPrefetchConcurrent prefetches while another goroutine grows and
// shrinks the very shards looked at; under -race this shows Prefetch reads
// nothing it should not without the lock.
func TestPrefetchConcurrent(t *testing.T) {
	tb := New(Config{shards: 2, MaxEntries: 1 << 16})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		now := t0
		for round := 0; ; round++ {
			select {
			case <-stop:
				return
			default:
			}
			for i := uint32(0); i < 2000; i++ {
				_ = tb.Insert(tcpKey(i), 1, FlagSYN, now)
			}
			now += 3600 * sec
			tb.Expire(now)
		}
	}()
	for j := 0; j < 200000; j++ {
		k := tcpKey(uint32(j % 2000))
		tb.Prefetch(k)
		tb.Touch(k, FlagACK, t0)
	}
	close(stop)
	wg.Wait()
}

// TestPrefetch6TracksResizes is TestPrefetchTracksResizes for IPv6 flows,
// in a table whose IPv4 arrays grow too.
func TestPrefetch6TracksResizes(t *testing.T) {
	tb := New(Config{shards: 4, MaxEntries: 1 << 16})
	tb.Prefetch6(tcpKey6(1)) // no IPv6 array yet: nothing to prefetch
	for i := uint32(0); i < 20000; i++ {
		k := Key6{Src: ip6(i), Dst: vip6, SPort: uint16(i), DPort: 443, Proto: ProtoTCP}
		mustInsert6(t, tb, k, i%2, FlagSYN, t0)
		if i%4 == 0 {
			mustInsert(t, tb, tcpKey(i), i%2, FlagSYN, t0)
		}
		if i&(i-1) == 0 {
			checkPublished(t, tb)
		}
	}
	checkPublished(t, tb)
	tb.Expire(t0 + 3600*sec)
	checkPublished(t, tb)
	for i := range tb.shards {
		if n := len(tb.shards[i].v6.flows.slots); n != minSlots {
			t.Fatalf("shard %d kept %d IPv6 slots", i, n)
		}
	}
}

// TestPrefetch6Concurrent is TestPrefetchConcurrent for IPv6 flows.
func TestPrefetch6Concurrent(t *testing.T) {
	tb := New(Config{shards: 2, MaxEntries: 1 << 16})
	key := func(i uint32) Key6 { return Key6{Src: ip6(i), Dst: vip6, SPort: uint16(i), Proto: ProtoTCP} }
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		now := t0
		for {
			select {
			case <-stop:
				return
			default:
			}
			for i := uint32(0); i < 2000; i++ {
				_ = tb.Insert6(key(i), 1, FlagSYN, now)
			}
			now += 3600 * sec
			tb.Expire(now)
		}
	}()
	for j := 0; j < 200000; j++ {
		k := key(uint32(j % 2000))
		tb.Prefetch6(k)
		tb.Touch6(k, FlagACK, t0)
	}
	close(stop)
	wg.Wait()
}
