package node

import (
	"testing"
	"time"

	"github.com/l2lb/l2lb/dataplane"
)

// TestHintQueue checks that hints are matched to frames by address whatever the ring skipped or
// prefetched twice, and that a frame without a hint gets none.
func TestHintQueue(t *testing.T) {
	var q hintQueue
	buf := make([]byte, 16*64)
	frame := func(i int) []byte { return buf[i*64 : i*64+60] }
	given := map[*dataplane.FlowHint]int{}
	put := func(i int) { given[q.put(frame(i))] = i }
	check := func(i int) {
		t.Helper()
		h := q.take(frame(i))
		if j, ok := given[h]; h == nil || !ok || j != i {
			t.Fatalf("frame %d got the hint of frame %d (%p)", i, j, h)
		}
	}
	for i := range 4 {
		put(i)
	}
	put(1) // prefetched twice
	check(1)
	if h := q.take(frame(0)); h != nil {
		t.Fatal("frame 0, skipped by the ring, still had a hint after frame 1 took its own")
	}
	if h := q.take(frame(5)); h != nil {
		t.Fatal("frame 5 was never prefetched but got a hint")
	}
	check(2)
	check(3)
	// The duplicate of frame 1 is still queued; overflow drops it and the oldest.
	clear(given)
	for i := 6; i < 6+2*hintQueueLen; i++ {
		put(i % 16)
	}
	check((6 + 2*hintQueueLen - 1) % 16)
	if q.head != q.tail {
		t.Fatalf("queue holds %d hints after its newest was taken", q.tail-q.head)
	}
}

// TestWorkerPrefetchedForward runs the worker's whole per-frame path, prefetch hook included, and
// checks that it allocates nothing and that the frames reach the node's and the VIP's counters
// (which the worker now adds to once per batch).
func TestWorkerPrefetchedForward(t *testing.T) {
	n := forwardWithoutAllocs(t, true)
	var pkts uint64
	for _, v := range n.eng.VIPStats() {
		pkts += v.Packets
	}
	if pkts != forwardRuns+1 {
		t.Fatalf("VIP counters hold %d frames, want %d", pkts, forwardRuns+1)
	}
}

// TestWorkerYields checks the worker's pass through the scheduler (yieldEvery): once per
// yieldEvery of engine time, from the flush of a wake-up, never more often.
func TestWorkerYields(t *testing.T) {
	_, w, _, f := forwardSetup(t)
	yields := 0
	w.yield = func() { yields++ }
	ms := int64(time.Millisecond)
	for _, c := range []struct {
		now  int64
		want int
	}{{1 * ms, 0}, {4 * ms, 1}, {5 * ms, 1}, {7*ms + ms/2, 1}, {8 * ms, 2}, {30 * ms, 3}, {33 * ms, 3}} {
		w.maybeYield(c.now)
		if yields != c.want {
			t.Fatalf("at %v: %d yields, want %d", time.Duration(c.now), yields, c.want)
		}
	}
	// flush yields by the engine's clock: a wake-up yieldEvery after the last yield does.
	w.yielded = w.eng.Tick() - yieldEvery
	before := yields
	copy(f.Data[0:6], vmacT)
	w.handle(f)
	w.flush()
	if yields != before+1 {
		t.Errorf("flush after yieldEvery: %d yields, want %d", yields-before, 1)
	}
	last := w.yielded
	copy(f.Data[0:6], vmacT)
	w.handle(f)
	w.flush()
	if w.eng.Now()-last < yieldEvery && yields != before+1 {
		t.Errorf("a second flush within yieldEvery yielded again")
	}
}

// BenchmarkWorkerForwardPrefetched is BenchmarkWorkerForward with the ring's prefetch hook, as
// the worker runs on a real ring (the hint hands the hash to Process).
func BenchmarkWorkerForwardPrefetched(b *testing.B) {
	_, w, _, f := forwardSetup(b)
	b.ReportAllocs()
	for b.Loop() {
		copy(f.Data[0:6], vmacT)
		w.prefetch(f.Data)
		w.handle(f)
		w.flush()
	}
}
