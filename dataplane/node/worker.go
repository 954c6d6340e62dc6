package node

import (
	"github.com/l2lb/l2lb/afpacket"
	"github.com/l2lb/l2lb/dataplane"
)

// maxBatch bounds the frames a worker queues before sending them with one sendmmsg(2).
const maxBatch = 64

// worker is one fast-path goroutine: one receive socket, one frame at a time. Frames to send are
// queued while the ring is walked and sent with one SendBatch per wake-up and destination socket,
// before the ring slots go back to the kernel (the queued slices point into the ring).
type worker struct {
	eng      *dataplane.Engine
	rx       RxSocket
	lo       TxSocket
	c        *dataplane.Counters
	node     *Node
	handleFn func(*afpacket.Frame)
	flushFn  func()
	out, loq batch
	scratch  [afpacket.VnetHdrLen + 128]byte
	// ticked is set once the engine clock was advanced for the current batch (see flush).
	ticked bool
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
	w := &worker{eng: n.eng, rx: rx, lo: lo, c: c, node: n, out: newBatch(), loq: newBatch()}
	// Method values allocate; made once here, not per wake-up.
	w.handleFn, w.flushFn = w.handle, w.flush
	return w
}

func (w *worker) run() error {
	// The ring runs Prefetch a few frames ahead of handle, so the connection-table slot a frame
	// needs is on its way from memory while the frames before it are handled (issue 5: a cold
	// lookup at 1 M flows costs ~220 ns, ~100 ns with the loads of a batch overlapped).
	w.rx.SetPrefetch(w.eng.Prefetch)
	for {
		if _, err := w.rx.ReceiveBlocks(w.handleFn, w.flushFn); err != nil {
			return err
		}
	}
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
	}
	res := w.eng.Process(f.Data, f.VLANValid, w.scratch[afpacket.VnetHdrLen:])
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

// flush sends what the wake-up queued; called before the ring slots go back to the kernel.
func (w *worker) flush() {
	w.ticked = false
	w.send(&w.out, w.rx)
	w.send(&w.loq, w.lo)
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
	for i := range b.res {
		if b.res[i].Verdict == dataplane.VerdictDrop {
			w.c.Drop(dataplane.ReasonTxError)
			continue
		}
		w.c.Record(&b.res[i], b.lens[i])
	}
	clear(b.frames) // do not keep pointers into the ring
	b.frames, b.res, b.lens = b.frames[:0], b.res[:0], b.lens[:0]
}
