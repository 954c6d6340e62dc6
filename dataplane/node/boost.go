package node

import (
	"log/slog"
	"sync/atomic"
	"time"
)

// DropCounter is implemented by receive sockets whose kernel counts the frames it could not
// queue to them: *afpacket.Socket (tp_drops) and *afxdp.Socket (XDP_STATISTICS).
type DropCounter interface {
	// RxDrops returns the frames dropped for want of room since the socket opened.
	RxDrops() (uint64, error)
}

// Prioritizer raises the scheduling priority of the calling goroutine's thread. The real one is
// hostcfg.ThreadNice; tests use a fake.
type Prioritizer interface {
	// Raise locks the calling goroutine to its OS thread and raises the thread's priority.
	// restore, called from the same goroutine, puts the priority back and unlocks the
	// goroutine. On error the goroutine is left unlocked and the priority unchanged.
	Raise() (restore func() error, err error)
}

// boostHold is how long a worker keeps its raised priority after the last frame its socket
// dropped. Under sustained overload the raised worker still drops a little (issue 14: ~3 % of
// the offered frames at saturation, against ~24 % unraised), so the priority stays up while the
// overload lasts; a second is long next to the 4 ms checks and short next to an operator's
// look at the graphs.
const boostHold = int64(time.Second)

// boost raises a worker's scheduling priority while its receive socket drops frames.
//
// A user-space forwarder competes for the CPU with everything else on the node (on the active
// balancer, the mail or VoIP server it fronts), while the kernel's own forwarding runs in
// softirq, ahead of every process. At a rate the worker can follow that costs nothing: the
// frames wait in the ring until the worker's turn, and the longer the turn takes the more
// frames one wake-up handles, which is why an unraised worker spends ~2 µs of CPU per frame at
// 50 000 frames/s. A worker raised all the time preempts the process it shares the CPU with at
// every frame and spends ~3.6 µs. Once the ring overflows, though, the wait costs frames, and
// then a raised worker is what the kernel would be: issue 14 measured the 1-worker AF_XDP
// balancer at saturation delivering 0.97 of the kernel router with RPS with every thread
// reniced to -10, 0.82 without. So the priority goes up at the first check that sees new drops
// and back down boostHold after the last.
//
// step runs on the worker's goroutine, from maybeYield (every yieldEvery while frames arrive):
// Raise locks the goroutine to its thread, so the priority follows the worker.
type boost struct {
	src      DropCounter
	pr       Prioritizer
	log      *slog.Logger
	drops    uint64
	lastDrop int64        // engine time of the last check that saw new drops
	restore  func() error // non-nil while raised
	off      bool         // Raise failed once (no CAP_SYS_NICE, say): not tried again
	raises   uint64
	stats    *boostStats // the node's, for the status (nil in tests)
}

// boostStats are the node's totals over its workers' boosts.
type boostStats struct {
	raised atomic.Int32  // workers raised now
	raises atomic.Uint64 // raises since the node started
}

// newBoost returns a boost for src, or nil when there is nothing to watch or nothing to raise.
func newBoost(src RxSocket, pr Prioritizer, log *slog.Logger, stats *boostStats) *boost {
	dc, ok := src.(DropCounter)
	if !ok || pr == nil {
		return nil
	}
	b := &boost{src: dc, pr: pr, log: log, stats: stats}
	// Drops from before the worker started (another life of the fast path) are not overload.
	b.drops, _ = dc.RxDrops()
	return b
}

// step checks the socket's drop counter at engine time now and raises or restores the priority.
func (b *boost) step(now int64) {
	d, err := b.src.RxDrops()
	if err != nil {
		return // a closed socket: the worker is about to end, and end restores
	}
	if d != b.drops {
		b.drops, b.lastDrop = d, now
		if b.restore == nil && !b.off {
			restore, err := b.pr.Raise()
			if err != nil {
				b.off = true
				b.log.Warn("fast path: cannot raise the worker's priority while its ring overflows; it stays as it is",
					"err", err)
				return
			}
			b.restore = restore
			b.raises++
			if b.stats != nil {
				b.stats.raised.Add(1)
				b.stats.raises.Add(1)
			}
			if b.raises == 1 {
				b.log.Info("fast path: worker's receive ring overflows; raising its priority until it keeps up")
			}
		}
		return
	}
	if b.restore != nil && now-b.lastDrop >= boostHold {
		b.end()
	}
}

// raised reports whether the worker runs at the raised priority.
func (b *boost) raised() bool { return b.restore != nil }

// end restores the priority if it is raised.
func (b *boost) end() {
	if b.restore == nil {
		return
	}
	if err := b.restore(); err != nil {
		b.log.Warn("fast path: cannot restore the worker's priority", "err", err)
	}
	b.restore = nil
	if b.stats != nil {
		b.stats.raised.Add(-1)
	}
}
