package node

import (
	"context"
	"encoding/binary"
	"sync/atomic"
	"time"

	"github.com/l2lb/l2lb/afxdp"
	"github.com/l2lb/l2lb/conntrack"
)

// FlowCache is an XDP program's flow cache (afxdp.Program) as the node drives it: workers
// install the flows the engine marks cacheable, and one goroutine publishes the engine's flow
// generation and sweeps the cache (dataplane/flowcache.go says why that keeps the engine's
// decisions). A fake stands in for it in tests.
type FlowCache interface {
	// InstallFlow caches the flow of frame, just rewritten for member under generation gen.
	InstallFlow(frame []byte, member, gen uint32) error
	// SetGeneration makes gen the generation the cache serves.
	SetGeneration(gen uint32) error
	// SweepFlows calls fn for every cached flow and deletes those fn returns false for.
	SweepFlows(fn func(k *afxdp.FlowKey, e *afxdp.FlowEntry) bool) error
}

// FlowSweepInterval is how often the node sweeps the flow cache: how late the counters show
// the datagrams the cache forwarded, how long a flow idle in the cache stays there (one to two
// sweeps), and how long a flow whose table entry moved without a configuration change (a sync
// import) may still be served from the cache. It is far below the shortest flow timeout
// (seconds), so the sweep's refresh keeps every cached flow alive in the table.
const FlowSweepInterval = time.Second

// FlowCacheStats are the flow cache's counters.
type FlowCacheStats struct {
	// Installs counts flows installed, InstallErrors failed installs (a full map of a kind
	// that does not evict, a kernel refusal).
	Installs, InstallErrors uint64
	// Entries is the number of flows in the cache at the last sweep.
	Entries uint64
	// Forwarded counts the frames (UDP datagrams, TCP ACKs) the cache forwarded, as of the last
	// sweep.
	Forwarded uint64
}

// flowCacheCounters are FlowCacheStats as the workers and the sweep update them.
type flowCacheCounters struct {
	installs, installErrors, entries, forwarded atomic.Uint64
}

func (c *flowCacheCounters) stats() FlowCacheStats {
	return FlowCacheStats{Installs: c.installs.Load(), InstallErrors: c.installErrors.Load(),
		Entries: c.entries.Load(), Forwarded: c.forwarded.Load()}
}

// installMemoSize is the number of recent installs a worker remembers. A flow's datagrams that
// were already on the ring when the first of them installed it come to user space too; the
// memo saves a bpf(2) call for each of them.
const installMemoSize = 256

// installMemoTTL is how long a remembered install holds back another: long enough for the
// datagrams that were on the ring or on their way when the flow was installed (a few batches),
// short enough that a flow the sweep or the kernel's LRU dropped is installed again at once.
const installMemoTTL = int64(10 * time.Millisecond)

// installMemo is a direct-mapped memory of a worker's recent installs.
type installMemo struct {
	keys [installMemoSize]afxdp.FlowKey
	gens [installMemoSize]uint32
	at   [installMemoSize]int64
}

// fresh reports whether k was installed under gen within installMemoTTL of now, and if not
// remembers it as installed now.
func (m *installMemo) fresh(k *afxdp.FlowKey, gen uint32, now int64) bool {
	h := binary.LittleEndian.Uint32(k[0:4]) ^ binary.LittleEndian.Uint32(k[4:8])*0x9e3779b1 ^
		binary.LittleEndian.Uint32(k[8:12])*0x85ebca6b
	i := ((h * 0xc2b2ae35) >> 24) % installMemoSize
	if m.keys[i] == *k && m.gens[i] == gen && now-m.at[i] < installMemoTTL && m.at[i] != 0 {
		return true
	}
	m.keys[i], m.gens[i], m.at[i] = *k, gen, now
	return false
}

// install caches the flow of frame, which the engine rewrote for member (Result.Cacheable) and
// the worker has sent, under the generation read before the batch.
func (w *worker) install(frame []byte, member uint32) {
	k, ok := afxdp.FlowKeyOf(frame)
	if !ok || w.memo.fresh(&k, w.gen, w.eng.Now()) {
		return
	}
	if err := w.flows.InstallFlow(frame, member, w.gen); err != nil {
		w.node.flowStats.installErrors.Add(1)
		return
	}
	w.node.flowStats.installs.Add(1)
}

// flowSweep is the sweep's memory of the counts each cached flow had at the previous sweep.
type flowSweep struct {
	prev  map[afxdp.FlowKey]flowCounts
	round uint64
}

type flowCounts struct {
	packets, bytes uint64
	round          uint64 // the sweep that saw them
}

// runFlowCache publishes the engine's flow generation to fc whenever it moves on and sweeps fc
// every FlowSweepInterval, until ctx ends.
func (n *Node) runFlowCache(ctx context.Context, fc FlowCache) {
	t := time.NewTicker(FlowSweepInterval)
	defer t.Stop()
	sw := &flowSweep{prev: map[afxdp.FlowKey]flowCounts{}}
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.eng.FlowGenerationChanged():
			n.publishGeneration(fc)
		case <-t.C:
			n.sweepFlows(fc, sw)
		}
	}
}

// publishGeneration sets fc's generation to the engine's.
func (n *Node) publishGeneration(fc FlowCache) {
	if err := fc.SetGeneration(n.eng.FlowGeneration()); err != nil {
		n.log.Warn("flow cache: cannot publish the generation", "err", err)
	}
}

// sweepFlows hands the datagrams fc forwarded since the last sweep to the engine and deletes the
// flows of an old generation, those that forwarded nothing since the sweep before (idle: their
// next datagram takes the AF_XDP path and installs them again) and those the engine disowns
// (ForwardedByCache).
func (n *Node) sweepFlows(fc FlowCache, sw *flowSweep) {
	gen := n.eng.FlowGeneration()
	sw.round++
	var entries, forwarded uint64
	err := fc.SweepFlows(func(k *afxdp.FlowKey, e *afxdp.FlowEntry) bool {
		if e.Gen != gen {
			return false
		}
		p, seen := sw.prev[*k]
		dp, db := e.Packets-p.packets, e.Bytes-p.bytes
		if e.Packets < p.packets {
			// Installed again since (its counts started over).
			dp, db = e.Packets, e.Bytes
		}
		if dp == 0 {
			if seen {
				return false // idle for a whole sweep interval
			}
			sw.prev[*k] = flowCounts{round: sw.round}
			entries++
			return true
		}
		if !n.eng.ForwardedByCache(flowKey4(k), e.Member, dp, db, n.cached) {
			return false
		}
		sw.prev[*k] = flowCounts{packets: e.Packets, bytes: e.Bytes, round: sw.round}
		entries++
		forwarded += dp
		return true
	})
	if err != nil {
		n.log.Warn("flow cache: sweep failed", "err", err)
	}
	for k, p := range sw.prev {
		if p.round != sw.round {
			delete(sw.prev, k) // deleted, evicted or of an old generation
		}
	}
	n.flowStats.entries.Store(entries)
	n.flowStats.forwarded.Add(forwarded)
}

// flowKey4 is the connection-table key of a flow cache key.
func flowKey4(k *afxdp.FlowKey) conntrack.Key {
	return conntrack.Key{Src: binary.BigEndian.Uint32(k[0:4]), Dst: binary.BigEndian.Uint32(k[4:8]),
		SPort: binary.BigEndian.Uint16(k[8:10]), DPort: binary.BigEndian.Uint16(k[10:12]), Proto: k[12]}
}

// FlowCacheStats returns the flow cache's counters (zero without one).
func (n *Node) FlowCacheStats() FlowCacheStats { return n.flowStats.stats() }
