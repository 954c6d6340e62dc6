package bench

import (
	"context"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"slices"
	"time"

	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/internal/memlat"
)

// tableKey maps i one-to-one onto a flow key spread over many clients and
// source ports, as real client populations are.
func tableKey(i uint32) conntrack.Key {
	return conntrack.Key{Src: 0x0a000000 | i>>6, Dst: 0xc00002c8, SPort: 1024 + uint16(i&63)*997, DPort: 443, Proto: 6}
}

// tableLookups is how many lookups are timed one by one per size; the
// median of 200 000 is stable to a nanosecond or two.
const tableLookups = 200_000

// tableBatch is how many lookups the batched measurement prefetches at
// once: the fast path's batch (see conntrack.PrefetchBatch).
const tableBatch = conntrack.PrefetchBatch

// tableResult is one run at one table size.
type tableResult struct {
	bytesPerEntry float64
	insertNs      float64 // mean per insert while filling
	lookupMedian  float64 // ns, one Touch timed alone (includes ~2 clock reads)
	lookupMean    float64 // ns, back-to-back Touch calls
	// lookupBatch is the median over batches of (batch time / tableBatch),
	// each batch Prefetching its keys and then Touching them, as the fast
	// path does.
	lookupBatch float64
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
	lat = lat[:len(keys)/tableBatch]
	for i := range lat {
		batch := keys[i*tableBatch : (i+1)*tableBatch]
		t0 := time.Now()
		for _, k := range batch {
			tb.Prefetch(k)
		}
		miss := false
		for _, k := range batch {
			now += 100
			_, ok := tb.Touch(k, 0x10 /* ACK */, now)
			miss = miss || !ok
		}
		lat[i] = int64(time.Since(t0))
		if miss {
			return r, ErrTableMiss
		}
	}
	slices.Sort(lat)
	r.lookupBatch = float64(lat[len(lat)/2]) / tableBatch

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

// dramChaseBytes is the pointer chase's working set: far larger than any
// cache of the machines l2lb runs on, and as large as a 1 M-flow table's
// slot arrays.
const dramChaseBytes = 64 << 20

// dramLatency returns the mean time of one dependent load from DRAM: a
// pointer chase through dramChaseBytes in a random single-cycle order, one
// cache line per hop, so every hop waits for the previous one's miss. It is
// the floor of a lone lookup in a table too big for the cache.
func dramLatency(hops int) float64 {
	chain := memlat.Chain(dramChaseBytes)
	runtime.KeepAlive(memlat.Walk(chain, len(chain)/8)) // warm the TLB and page tables once
	start := time.Now()
	p := memlat.Walk(chain, hops)
	d := time.Since(start)
	runtime.KeepAlive(p)
	return float64(d.Nanoseconds()) / float64(hops)
}

// runTable is one run of the table scenario at every configured size.
func runTable(ctx context.Context, o Options, sc *Scenario) error {
	sc.note("in-process conntrack.Table (default 256 shards), random-order lookups; memory = Go heap growth after GC / entries")
	sc.note("lookup median (single, cold) = one Touch timed alone, including two clock reads: it waits for one DRAM miss, so it cannot beat DRAM latency (a dependent pointer chase through %d MB, measured in the same run)", dramChaseBytes>>20)
	sc.note("lookup median (batch of %d, prefetched) = median over batches of batch time / %d, each batch calling Prefetch on its %d keys and then Touch on each, so their cache misses overlap; the fast path looks flows up this way (a ring hands a worker several frames at once), so the lookup bar is judged on this figure", tableBatch, tableBatch, tableBatch)
	logf(o.Logf, "table: DRAM latency")
	sc.add("DRAM latency", "ns", dramLatency(2_000_000))
	debug.FreeOSMemory()
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
		sc.add(p+"lookup median (single, cold)", "ns", r.lookupMedian)
		sc.add(p+"lookup median (batch of "+itoa(tableBatch)+", prefetched)", "ns", r.lookupBatch)
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
