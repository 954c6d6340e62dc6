package conntrack

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/memlat"
)

// benchKey maps i one-to-one onto a key spread over many clients and ports.
func benchKey(i uint32) Key {
	return Key{Src: 0x0a000000 | i>>6, Dst: 0xc6336401, SPort: 1024 + uint16(i&63)*997, DPort: 443, Proto: ProtoTCP}
}

func filled(b *testing.B, n int) (*Table, []Key) {
	b.Helper()
	tb := New(Config{MaxEntries: 2 * n})
	keys := make([]Key, n)
	for i := range keys {
		keys[i] = benchKey(uint32(i))
		if err := tb.Insert(keys[i], uint32(i%16), FlagSYN, t0); err != nil {
			b.Fatal(err)
		}
	}
	// Look flows up in random order so the benchmark pays the cache misses
	// a real mix of flows causes.
	r := rand.New(rand.NewPCG(3, 4))
	r.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	return tb, keys
}

// BenchmarkTouch1M measures the hot-path lookup with 1 M flows; it also
// reports the median of individually timed lookups (p50-ns, which includes
// the ~20 ns cost of reading the clock twice).
func BenchmarkTouch1M(b *testing.B) {
	const n = 1 << 20
	tb, keys := filled(b, n)
	now := t0
	i := 0
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		// 100 ns between frames: about 10 M frames per second.
		now += 100
		if _, ok := tb.Touch(keys[i&(n-1)], FlagACK, now); !ok {
			b.Fatal("miss")
		}
		i++
	}
	b.StopTimer()
	lat := make([]int64, 100000)
	for j := range lat {
		now += 100
		k := keys[(i+j)&(n-1)]
		start := time.Now()
		tb.Touch(k, FlagACK, now)
		lat[j] = int64(time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2]), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100]), "p99-ns")
}

// BenchmarkTouchHot is BenchmarkTouch1M on 1 K flows, which stay in cache:
// what a lookup costs the CPU (hash, lock, probe, state update) without the
// cache misses that dominate BenchmarkTouch1M.
func BenchmarkTouchHot(b *testing.B) {
	const n = 1 << 10
	tb, keys := filled(b, n)
	now := t0
	i := 0
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		now += 100
		if _, ok := tb.Touch(keys[i&(n-1)], FlagACK, now); !ok {
			b.Fatal("miss")
		}
		i++
	}
}

// BenchmarkTouch1MParallel is BenchmarkTouch1M from GOMAXPROCS goroutines,
// as several fast-path receive queues would call it.
func BenchmarkTouch1MParallel(b *testing.B) {
	const n = 1 << 20
	tb, keys := filled(b, n)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := rand.IntN(n)
		now := t0
		for pb.Next() {
			now += 100
			tb.Touch(keys[i&(n-1)], FlagACK, now)
			i++
		}
	})
}

// BenchmarkInsert measures recording new flows with persistence on, starting
// a fresh table every 2 M flows.
func BenchmarkInsert(b *testing.B) { benchInsert(b, nil) }

// BenchmarkInsertHooked is BenchmarkInsert with a SetOnInsert hook that
// counts flows, the least a sync sender's hook does.
func BenchmarkInsertHooked(b *testing.B) {
	var n int
	benchInsert(b, func(Key, uint32, State) { n++ })
	if n < b.N {
		b.Fatalf("hook ran %d times for %d inserts", n, b.N)
	}
}

// BenchmarkInsertPortTimeouts is BenchmarkInsert with the port timeouts of
// a mail/VoIP cluster configured (none matching the benchmark's port 443),
// so each Insert pays the class lookup.
func BenchmarkInsertPortTimeouts(b *testing.B) {
	benchInsertCfg(b, Config{PortTimeouts: mailVoIP}, nil)
}

// BenchmarkInsertFull measures Insert into a full table of 1 M half-open
// flows, a SYN flood's steady state: every Insert evicts one flow
// (evict.go) before recording its own.
func BenchmarkInsertFull(b *testing.B) {
	const n = 1 << 20
	tb := New(Config{MaxEntries: n, Persistence: 15 * time.Second})
	now := t0
	for i := range uint32(n) {
		if err := tb.Insert(benchKey(i), i%16, FlagSYN, now); err != nil {
			b.Fatal(err)
		}
	}
	i := uint32(n)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		now += 100
		if err := tb.Insert(benchKey(i), i%16, FlagSYN, now); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.StopTimer()
	if f, _ := tb.Len(); f != n {
		b.Fatalf("Len = %d, want %d", f, n)
	}
	b.ReportMetric(float64(tb.Evictions().Live)/float64(b.N), "evictions/op")
}

func benchInsert(b *testing.B, hook func(Key, uint32, State)) { benchInsertCfg(b, Config{}, hook) }

func benchInsertCfg(b *testing.B, cfg Config, hook func(Key, uint32, State)) {
	const batch = 1 << 21
	cfg.MaxEntries, cfg.Persistence = batch, 15*time.Second
	tb := New(cfg)
	tb.SetOnInsert(hook)
	now := t0
	i := uint32(0)
	b.ReportAllocs()
	for b.Loop() {
		if i == batch {
			b.StopTimer()
			tb, i = New(cfg), 0
			tb.SetOnInsert(hook)
			b.StartTimer()
		}
		now += 100
		if err := tb.Insert(benchKey(i), i%16, FlagSYN, now); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkMemoryPerEntry10M reports the heap a table of 10 M flows uses per
// flow (bytes/entry). It needs about 1 GB and several seconds, so -short
// skips it.
func BenchmarkMemoryPerEntry10M(b *testing.B) {
	if testing.Short() {
		b.Skip("skipped with -short: inserts 10 M flows")
	}
	const n = 10_000_000
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		tb := New(Config{MaxEntries: n})
		for i := uint32(0); i < n; i++ {
			if err := tb.Insert(benchKey(i), i%16, FlagSYN, t0); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if f, _ := tb.Len(); f != n {
			b.Fatalf("Len = %d", f)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/entry")
		runtime.KeepAlive(tb)
	}
}

// BenchmarkTouchBatch1M measures lookups as the fast path makes them: a
// batch of random keys over a 1 M-flow table is Prefetched, then each key
// is Touched, so the batch's cache misses overlap (see PrefetchBatch). It
// runs batches of 8, 16 and 32, and 16 without Prefetch for reference.
// ns/lookup is the mean; p50-ns is the median over 20 000 individually
// timed batches of batch time / batch size (the two clock reads are shared
// by the whole batch).
//
// Measured on the 2-core KVM guest (AMD EPYC), medians of 5 runs (-count
// 5), ns/lookup and p50-ns: batch=8 101.2 and 96.5, batch=16 103.9 and
// 100.8, batch=32 103.3 and 101.1, 16 without Prefetch 196.1 and 192.2;
// BenchmarkTouch1M 220 (p50 220), BenchmarkDRAMLatency 151.5. A lookup's
// CPU work alone (hash, lock, probe, plus a second hash in Prefetch) is
// ~70 ns on a warm table, so beyond 8 in flight there is nothing left to
// overlap; 8 is the default (PrefetchBatch) because it is as fast as the
// larger batches and holds back fewer frames.
func BenchmarkTouchBatch1M(b *testing.B) {
	const n = 1 << 20
	tb, keys := filled(b, n)
	now := t0
	for _, c := range []struct {
		size     int
		prefetch bool
	}{{8, true}, {16, true}, {32, true}, {16, false}} {
		name := fmt.Sprintf("batch=%d", c.size)
		if !c.prefetch {
			name += "/noprefetch"
		}
		b.Run(name, func(b *testing.B) {
			batch := func(i int) {
				ks := keys[i&(n-1) : i&(n-1)+c.size]
				if c.prefetch {
					for _, k := range ks {
						tb.Prefetch(k)
					}
				}
				for _, k := range ks {
					now += 100
					if _, ok := tb.Touch(k, FlagACK, now); !ok {
						b.Fatal("miss")
					}
				}
			}
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				batch(i)
				i += c.size
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*c.size), "ns/lookup")
			lat := make([]int64, 20000)
			for j := range lat {
				start := time.Now()
				batch(i)
				lat[j] = int64(time.Since(start))
				i += c.size
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2])/float64(c.size), "p50-ns")
		})
	}
}

// BenchmarkDRAMLatency is the machine's reference for BenchmarkTouch1M: a
// dependent pointer chase through 64 MB (far beyond any cache) in random
// order, one cache line per hop, so each hop is one full DRAM miss. A lone
// cold lookup cannot beat it; ns/op is ns per hop.
func BenchmarkDRAMLatency(b *testing.B) {
	chain := memlat.Chain(64 << 20)
	p := uint64(0)
	b.ResetTimer()
	for b.Loop() {
		p = chain[p]
	}
	runtime.KeepAlive(p)
}
