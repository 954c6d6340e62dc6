package node

import (
	"runtime"
	"time"
	"unsafe"

	"github.com/l2lb/l2lb/afpacket"
	"github.com/l2lb/l2lb/dataplane"
)

// maxBatch bounds the frames a worker queues before sending them with one sendmmsg(2). Larger
// batches buy nothing measurable (issue 14, l2lb bench pps on the 2-CPU VM): at saturation a
// sendmmsg already carries ~40 frames on average (6 250 calls/s for 253 k frames/s, 2 workers),
// so its ~1 µs of syscall entry and exit is ~25 ns of the ~4-8 µs a frame costs, nearly all of
// it the kernel's transmit and the receivers' stack run inside the call on veth; 256-frame
// batches (with afpacket's release batch raised to match) delivered 206-208 k against 238-253 k
// frames/s with 2 workers, within this VM's run-to-run noise or worse.
const maxBatch = 64

// worker is one fast-path goroutine: one receive socket, one frame at a time. Frames to send are
// queued while the ring is walked and sent with one SendBatch per wake-up and destination socket,
// before the ring slots go back to the kernel (the queued slices point into the ring).
type worker struct {
	eng        *dataplane.Engine
	rx         RxSocket
	lo         TxSocket
	c          *dataplane.Counters
	node       *Node
	handleFn   func(*afpacket.Frame)
	flushFn    func()
	prefetchFn func([]byte)
	hints      hintQueue
	out, loq   batch
	scratch    [afpacket.VnetHdrLen + 128]byte
	// ticked is set once the engine clock was advanced for the current batch (see flush).
	ticked bool
	// yielded is the engine time of the last yield (see flush); yield is runtime.Gosched.
	yielded int64
	yield   func()
	// boost raises the worker's priority while its socket drops frames (nil: off).
	boost *boost
	// flows is the XDP flow cache (nil: none); gen is the flow generation read before the
	// batch's first frame, memo the recent installs (flowcache.go).
	flows FlowCache
	gen   uint32
	memo  *installMemo
}

// batch is a queue of frames for one socket and the results to count once they are sent.
type batch struct {
	frames [][]byte
	res    []dataplane.Result
	lens   []int
}

func newBatch() batch {
	return batch{frames: make([][]byte, 0, maxBatch), res: make([]dataplane.Result, 0, maxBatch),
		lens: make([]int, 0, maxBatch)}
}

func newWorker(n *Node, rx RxSocket, lo TxSocket, c *dataplane.Counters) *worker {
	w := &worker{eng: n.eng, rx: rx, lo: lo, c: c, node: n, out: newBatch(), loq: newBatch(), yield: runtime.Gosched}
	// Method values allocate; made once here, not per wake-up.
	w.handleFn, w.flushFn, w.prefetchFn = w.handle, w.flush, w.prefetch
	w.boost = newBoost(rx, n.cfg.Priority, n.log, &n.boosts)
	return w
}

func (w *worker) run() error {
	// The ring runs Prefetch a few frames ahead of handle, so the connection-table slot a frame
	// needs is on its way from memory while the frames before it are handled (issue 5: a cold
	// lookup at 1 M flows costs ~220 ns, ~100 ns with the loads of a batch overlapped).
	// The prefetch's key and hash are kept for the frame's Process (hintQueue).
	w.rx.SetPrefetch(w.prefetchFn)
	if w.boost != nil {
		defer w.boost.end()
	}
	for {
		if _, err := w.rx.ReceiveBlocks(w.handleFn, w.flushFn); err != nil {
			return err
		}
	}
}

// prefetch is the ring's prefetch hook: it starts the frame's table-slot load and keeps the key
// and hash for handle.
func (w *worker) prefetch(frame []byte) {
	w.eng.PrefetchHint(frame, w.hints.put(frame))
}

// hintQueueLen bounds the prefetch hints a worker holds: the ring prefetches 4 frames ahead
// (afpacket's prefetchAhead) and may prefetch a few of them twice across wake-ups.
const hintQueueLen = 8

// hintQueue hands each frame's PrefetchHint to its Process. The ring prefetches frames in ring
// order and handles them in the same order, but it may skip a frame on either side (a slot not
// yet ready when its prefetch was due, a slot it cannot parse) or prefetch one twice (the first
// frames of a wake-up), so hints are matched to frames by the frame's address, not by position.
// A miss only costs Process the hash (dataplane.FlowHint), never a wrong answer.
type hintQueue struct {
	frames     [hintQueueLen]*byte
	hints      [hintQueueLen]dataplane.FlowHint
	head, tail uint32
}

// put returns the hint to fill for frame, dropping the oldest if the queue is full.
func (q *hintQueue) put(frame []byte) *dataplane.FlowHint {
	if q.tail-q.head == hintQueueLen {
		q.head++
	}
	i := q.tail % hintQueueLen
	q.tail++
	q.frames[i] = unsafe.SliceData(frame)
	return &q.hints[i]
}

// take returns frame's hint, or nil, and forgets it and every older hint.
func (q *hintQueue) take(frame []byte) *dataplane.FlowHint {
	p := unsafe.SliceData(frame)
	for j := q.head; j != q.tail; j++ {
		if i := j % hintQueueLen; q.frames[i] == p {
			q.frames[i] = nil
			q.head = j + 1
			return &q.hints[i]
		}
	}
	return nil
}

// handle processes one frame: decide, count, queue.
func (w *worker) handle(f *afpacket.Frame) {
	if f.PktType == pktOutgoing {
		return
	}
	if f.Truncated {
		w.c.Drop(dataplane.ReasonCaptureTruncated)
		return
	}
	if !w.ticked {
		// One clock read per batch: the first frame after a wait must not see the time the
		// wait began.
		w.eng.Tick()
		w.ticked = true
		if w.flows != nil {
			// Before the batch's first Process: every decision of the batch is then made
			// under this generation or a later one (dataplane/flowcache.go).
			w.gen = w.eng.FlowGeneration()
		}
	}
	res := w.eng.ProcessHint(f.Data, f.VLANValid, w.scratch[afpacket.VnetHdrLen:], w.hints.take(f.Data))
	switch res.Verdict {
	case dataplane.VerdictIgnored:
		if res.Conflict {
			w.c.Record(&res, len(f.Data))
			w.node.logConflict(f.Data)
		}
	case dataplane.VerdictForward:
		w.queue(&w.out, w.rx, f, res)
	case dataplane.VerdictLocal:
		w.queue(&w.loq, w.lo, f, res)
	case dataplane.VerdictARPReply, dataplane.VerdictNDPReply:
		clear(w.scratch[:afpacket.VnetHdrLen])
		if err := w.rx.Send(w.scratch[:afpacket.VnetHdrLen+len(res.Reply)]); err != nil {
			w.c.Drop(dataplane.ReasonTxError)
			return
		}
		w.c.Record(&res, len(f.Data))
	default:
		w.c.Record(&res, len(f.Data))
	}
}

func (w *worker) queue(b *batch, s TxSocket, f *afpacket.Frame, res dataplane.Result) {
	b.frames = append(b.frames, f.SendBuf())
	b.res = append(b.res, res)
	b.lens = append(b.lens, len(f.Data))
	if len(b.frames) == maxBatch {
		w.send(b, s)
	}
}

// yieldEvery is how often, in engine time, a busy worker passes through the Go scheduler.
//
// A worker never blocks in the scheduler: it waits in poll(2) and sends with sendto(2). To the
// runtime's sysmon (retake in runtime/proc.go) a goroutine whose P has not been rescheduled
// between two of sysmon's checks, which are at most 10 ms apart, is running too long, and once
// it is, sysmon takes its P away whenever it finds it in a system call, starting a thread to run
// the P, and resets its own polling to every 20 µs because it found a P to take. Issue 14
// measured the cycle on the 1-worker balancer at 50 000 frames/s (`perf stat -e
// syscalls:sys_enter_nanosleep` on the process, strace of sysmon's thread): ~2 200 nanosleeps a
// second, mostly of 20 µs, and sysmon's thread at 16-27 % of the process's CPU in `perf record`;
// with a yield every 1 ms, 100 a second. A Gosched is not free here: with an idle P it wakes a
// thread to look for work (wakep), ~14 µs on this VM, so it comes every 4 ms, well inside
// sysmon's longest period.
const yieldEvery = int64(4 * time.Millisecond)

// flush sends what the wake-up queued; called before the ring slots go back to the kernel.
func (w *worker) flush() {
	w.ticked = false
	w.send(&w.out, w.rx)
	w.send(&w.loq, w.lo)
	w.maybeYield(w.eng.Now())
}

// maybeYield calls w.yield (runtime.Gosched) when yieldEvery has passed since the last call,
// and steps the boost at the same pace (one getsockopt(2) per 4 ms of a busy worker).
func (w *worker) maybeYield(now int64) {
	if now-w.yielded >= yieldEvery {
		w.yielded = now
		if w.boost != nil {
			w.boost.step(now)
		}
		w.yield()
	}
}

func (w *worker) send(b *batch, s TxSocket) {
	if len(b.frames) == 0 {
		return
	}
	sent, err := s.SendBatch(b.frames)
	if err != nil {
		// One frame the kernel refuses (EMSGSIZE, say) must not take the rest of the batch
		// with it: send the remainder one by one.
		for i := sent; i < len(b.frames); i++ {
			if i > sent {
				if s.Send(b.frames[i]) == nil {
					continue
				}
			}
			b.res[i].Verdict, b.res[i].Reason = dataplane.VerdictDrop, dataplane.ReasonTxError
		}
	}
	if w.flows != nil && b == &w.out {
		// Only now, with the batch handed to the socket: a datagram the cache forwarded
		// before its flow's earlier datagrams were would overtake them. (A kick the AF_XDP
		// socket defers to the next poll, at most a millisecond, still leaves that window
		// once per install: README, The XDP flow cache.)
		for i := range b.res {
			if r := &b.res[i]; r.Cacheable && r.Verdict == dataplane.VerdictForward {
				buf := b.frames[i]
				w.install(buf[len(buf)-b.lens[i]:], r.Member)
			}
		}
	}
	// One atomic add per counter the batch touched, not three to five per frame (issue 14).
	w.c.RecordBatch(b.res, b.lens)
	clear(b.frames) // do not keep pointers into the ring
	b.frames, b.res, b.lens = b.frames[:0], b.res[:0], b.lens[:0]
}
