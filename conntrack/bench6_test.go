package conntrack

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"
)

// benchKey6 maps i one-to-one onto an IPv6 key spread over many clients
// and ports, as benchKey does for IPv4.
func benchKey6(i uint32) Key6 {
	return Key6{Src: ip6(i >> 6), Dst: vip6, SPort: 1024 + uint16(i&63)*997, DPort: 443, Proto: ProtoTCP}
}

func filled6(b *testing.B, n int) (*Table, []Key6) {
	b.Helper()
	tb := New(Config{MaxEntries: 2 * n})
	keys := make([]Key6, n)
	for i := range keys {
		keys[i] = benchKey6(uint32(i))
		if err := tb.Insert6(keys[i], uint32(i%16), FlagSYN, t0); err != nil {
			b.Fatal(err)
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	r.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	return tb, keys
}

// BenchmarkTouch6 is BenchmarkTouch1M for IPv6 flows: 1 M of them, looked
// up in random order.
func BenchmarkTouch6(b *testing.B) {
	const n = 1 << 20
	tb, keys := filled6(b, n)
	now := t0
	i := 0
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		now += 100
		if _, ok := tb.Touch6(keys[i&(n-1)], FlagACK, now); !ok {
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
		tb.Touch6(k, FlagACK, now)
		lat[j] = int64(time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2]), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100]), "p99-ns")
}

// BenchmarkTouch6Hot is BenchmarkTouchHot for IPv6 flows.
func BenchmarkTouch6Hot(b *testing.B) {
	const n = 1 << 10
	tb, keys := filled6(b, n)
	now := t0
	i := 0
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		now += 100
		if _, ok := tb.Touch6(keys[i&(n-1)], FlagACK, now); !ok {
			b.Fatal("miss")
		}
		i++
	}
}

// BenchmarkTouch6Batch1M is BenchmarkTouchBatch1M for IPv6 flows, batches
// of PrefetchBatch with and without Prefetch6.
func BenchmarkTouch6Batch1M(b *testing.B) {
	const n = 1 << 20
	tb, keys := filled6(b, n)
	now := t0
	for _, prefetch := range []bool{true, false} {
		name := fmt.Sprintf("batch=%d", PrefetchBatch)
		if !prefetch {
			name += "/noprefetch"
		}
		b.Run(name, func(b *testing.B) {
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				ks := keys[i&(n-1) : i&(n-1)+PrefetchBatch]
				if prefetch {
					for _, k := range ks {
						tb.Prefetch6(k)
					}
				}
				for _, k := range ks {
					now += 100
					if _, ok := tb.Touch6(k, FlagACK, now); !ok {
						b.Fatal("miss")
					}
				}
				i += PrefetchBatch
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*PrefetchBatch), "ns/lookup")
		})
	}
}

// BenchmarkInsert6 is BenchmarkInsert for IPv6 flows.
func BenchmarkInsert6(b *testing.B) {
	const batch = 1 << 21
	tb := New(Config{MaxEntries: batch, Persistence: 15 * time.Second})
	now := t0
	i := uint32(0)
	b.ReportAllocs()
	for b.Loop() {
		if i == batch {
			b.StopTimer()
			tb, i = New(Config{MaxEntries: batch, Persistence: 15 * time.Second}), 0
			b.StartTimer()
		}
		now += 100
		if err := tb.Insert6(benchKey6(i), i%16, FlagSYN, now); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkMemoryPerEntry6_10M is BenchmarkMemoryPerEntry10M for IPv6
// flows: 64-byte slots instead of 32, so twice the bytes per flow.
func BenchmarkMemoryPerEntry6_10M(b *testing.B) {
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
			if err := tb.Insert6(benchKey6(i), i%16, FlagSYN, t0); err != nil {
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
