package bench

import (
	"context"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"slices"
	"time"

	"github.com/l2lb/l2lb/conntrack"
)

// tableKey maps i one-to-one onto a flow key spread over many clients and
// source ports, as real client populations are.
func tableKey(i uint32) conntrack.Key {
	return conntrack.Key{Src: 0x0a000000 | i>>6, Dst: 0xc00002c8, SPort: 1024 + uint16(i&63)*997, DPort: 443, Proto: 6}
}

// tableLookups is how many lookups are timed one by one per size; the
// median of 200 000 is stable to a nanosecond or two.
const tableLookups = 200_000

// tableResult is one run at one table size.
type tableResult struct {
	bytesPerEntry float64
	insertNs      float64 // mean per insert while filling
	lookupMedian  float64 // ns, one Touch timed alone (includes ~2 clock reads)
	lookupMean    float64 // ns, back-to-back Touch calls
}

// measureTable fills a conntrack.Table with n flows and measures the heap
// it takes and the time of a lookup in random order (so every lookup pays
// the cache and TLB misses a real mix of flows causes).
func measureTable(ctx context.Context, n int) (tableResult, error) {
	var r tableResult
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	tb := conntrack.New(conntrack.Config{MaxEntries: n})
	now := int64(time.Hour)
	start := time.Now()
	for i := range n {
		if i%(1<<20) == 0 && ctx.Err() != nil {
			return r, ctx.Err()
		}
		if err := tb.Insert(tableKey(uint32(i)), uint32(i%16), 0x02 /* SYN */, now); err != nil {
			return r, err
		}
	}
	r.insertNs = float64(time.Since(start).Nanoseconds()) / float64(n)
	after := heap()
	r.bytesPerEntry = float64(after-before) / float64(n)

	rng := rand.New(rand.NewPCG(uint64(n), 5))
	keys := make([]conntrack.Key, tableLookups)
	for i := range keys {
		keys[i] = tableKey(uint32(rng.IntN(n)))
	}
	lat := make([]int64, len(keys))
	for i, k := range keys {
		now += 100
		t0 := time.Now()
		_, ok := tb.Touch(k, 0x10 /* ACK */, now)
		lat[i] = int64(time.Since(t0))
		if !ok {
			return r, ErrTableMiss
		}
	}
	slices.Sort(lat)
	r.lookupMedian = float64(lat[len(lat)/2])
	for i := range keys {
		keys[i] = tableKey(uint32(rng.IntN(n)))
	}
	t0 := time.Now()
	for _, k := range keys {
		now += 100
		tb.Touch(k, 0x10, now)
	}
	r.lookupMean = float64(time.Since(t0).Nanoseconds()) / float64(len(keys))
	runtime.KeepAlive(tb)
	return r, nil
}

// runTable is one run of the table scenario at every configured size.
func runTable(ctx context.Context, o Options, sc *Scenario) error {
	sc.note("in-process conntrack.Table (default 256 shards), random-order lookups; memory = Go heap growth after GC / entries; lookup median = one Touch timed alone, including two clock reads")
	for _, n := range o.TableSizes {
		logf(o.Logf, "table: %s entries", count(n))
		r, err := measureTable(ctx, n)
		// Hand the table's memory back before the next size or scenario.
		debug.FreeOSMemory()
		if err != nil {
			return err
		}
		p := count(n) + " "
		sc.add(p+"memory/entry", "bytes", r.bytesPerEntry)
		sc.add(p+"insert", "ns", r.insertNs)
		sc.add(p+"lookup median", "ns", r.lookupMedian)
		sc.add(p+"lookup mean", "ns", r.lookupMean)
	}
	return nil
}

// count prints 1000000 as 1M and 10000 as 10k.
func count(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return itoa(n/1_000_000) + "M"
	case n >= 1000 && n%1000 == 0:
		return itoa(n/1000) + "k"
	}
	return itoa(n)
}
