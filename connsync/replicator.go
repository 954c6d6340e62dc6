package connsync

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Replicator tuning. Each value says why it is what it is.
const (
	// DefaultRefresh is the refresh interval when NewReplicator is given
	// zero: every live entry is re-sent this often, so a standby misses an
	// entry for at most about this long after a lost datagram, while 1 M
	// flows cost about 40 Mbit/s (1 M / 56 records = 17.9 k messages of
	// 1400 bytes every 5 s).
	DefaultRefresh = 5 * time.Second
	// QueueLen bounds the Notify queue: about 146 full messages, one
	// FlushDelay's worth of new flows at 800 k new flows a second. Beyond
	// that Notify drops, and the next refresh heals.
	QueueLen = 8192
	// FlushDelay is how long a partly filled batch of new entries waits
	// for more before it is sent: new flows reach the standby within
	// ~10 ms, and at a few thousand new flows per second batches still
	// fill (56 records per message instead of one).
	FlushDelay = 10 * time.Millisecond
	// refreshSpan is the share of the refresh interval a refresh cycle is
	// spread over; the rest is slack so a slow cycle ends before the next
	// one starts.
	refreshSpanNum, refreshSpanDen = 3, 4
	// dumpBurst messages are sent back to back during a bulk dump, then
	// the dump pauses for dumpPause: about 1.8 M records a second, while a
	// burst (about 45 KiB) fits a receiver's default socket buffer even if
	// it could not enlarge it.
	dumpBurst = 32
	dumpPause = time.Millisecond
)

// ReplicatorStats counts what a Replicator did.
type ReplicatorStats struct {
	// Notified counts records accepted by Notify.
	Notified uint64
	// Dropped counts records Notify dropped because the queue was full.
	Dropped uint64
	// Invalid counts records skipped because they could not be encoded
	// (see ErrRecord); a TTL above MaxTTL is clamped instead.
	Invalid uint64
	// Refreshed counts records sent by refresh cycles.
	Refreshed uint64
	// Cycles counts completed refresh cycles.
	Cycles uint64
	// Dumps counts bulk dumps sent, and Dumped their records.
	Dumps, Dumped uint64
}

// Replicator decides what the active balancer sends: new entries as they
// appear, every live entry once per refresh interval, and a bulk dump when
// a standby asks. Notify and Dump may be called from any goroutine; Run
// from one.
type Replicator struct {
	c       *Conn
	rangeFn func(fn func(Record) bool)
	refresh time.Duration

	// The Notify queue is a ring: qhead is the oldest record.
	mu    sync.Mutex
	queue [QueueLen]Record
	qhead int
	qlen  int

	wake chan struct{} // Notify -> Run, capacity 1
	dump chan struct{} // Dump -> Run, capacity 1

	notified, dropped, invalid, refreshed, cycles, dumps, dumped atomic.Uint64

	// Owned by Run.
	snap      []byte // the refresh cycle's records, wire-encoded
	snapTime  time.Time
	snapSent  int  // records of snap sent so far
	cycleDone bool // the current cycle has been sent and counted
	dumpSnap  []byte
	batch     [MaxRecords]Record
}

// NewReplicator returns a Replicator that sends through c. rangeFn must
// call fn for every live flow and template (stopping when fn returns false)
// with the TTL each has left; Run calls it from its own goroutine, once per
// refresh cycle and once per dump, and it should hold locks only while it
// calls fn (fn itself only copies). refresh is the refresh interval; zero
// means DefaultRefresh.
func NewReplicator(c *Conn, rangeFn func(fn func(Record) bool), refresh time.Duration) *Replicator {
	if refresh <= 0 {
		refresh = DefaultRefresh
	}
	return &Replicator{
		c:       c,
		rangeFn: rangeFn,
		refresh: refresh,
		wake:    make(chan struct{}, 1),
		dump:    make(chan struct{}, 1),
	}
}

// Notify queues a new or changed entry for sending. It never blocks on the
// network and never allocates, so the fast path may call it; when the queue
// is full the record is dropped and counted, and the next refresh sends it.
func (r *Replicator) Notify(rec Record) {
	r.mu.Lock()
	if r.qlen == len(r.queue) {
		r.mu.Unlock()
		r.dropped.Add(1)
		return
	}
	r.queue[(r.qhead+r.qlen)%QueueLen] = rec
	r.qlen++
	r.mu.Unlock()
	r.notified.Add(1)
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Dump asks Run for a bulk dump of every live entry, followed by a
// MsgDumpEnd; it does not block. Several requests before the dump starts
// make one dump. Wire it to Conn.Receive's onDumpRequest.
func (r *Replicator) Dump() {
	select {
	case r.dump <- struct{}{}:
	default:
	}
}

// Stats returns a snapshot of the counters.
func (r *Replicator) Stats() ReplicatorStats {
	return ReplicatorStats{
		Notified:  r.notified.Load(),
		Dropped:   r.dropped.Load(),
		Invalid:   r.invalid.Load(),
		Refreshed: r.refreshed.Load(),
		Cycles:    r.cycles.Load(),
		Dumps:     r.dumps.Load(),
		Dumped:    r.dumped.Load(),
	}
}

// Run sends until ctx is done (it then returns nil) or the connection is
// closed (ErrClosed). Failed sends are counted by the Conn and otherwise
// ignored: the refresh resends.
func (r *Replicator) Run(ctx context.Context) error {
	refreshT := time.NewTicker(r.refresh)
	defer refreshT.Stop()
	// The pace tick sends the share of the cycle that is due; it is fine
	// enough that a short test interval still spreads over many ticks.
	pace := min(max(r.refresh/50, time.Millisecond), 20*time.Millisecond)
	paceT := time.NewTicker(pace)
	defer paceT.Stop()
	flushT := time.NewTimer(FlushDelay)
	flushT.Stop()
	flushArmed := false

	r.startCycle()
	for {
		var err error
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
			r.mu.Lock()
			full := r.qlen >= MaxRecords
			r.mu.Unlock()
			if full {
				err = r.flushQueue()
			} else if !flushArmed {
				flushT.Reset(FlushDelay)
				flushArmed = true
			}
		case <-flushT.C:
			flushArmed = false
			err = r.flushQueue()
		case <-r.dump:
			err = r.sendDump(ctx)
		case <-refreshT.C:
			r.startCycle()
		case <-paceT.C:
			err = r.sendDue()
		}
		if err != nil {
			return err
		}
	}
}

// flushQueue sends every queued record, MaxRecords at a time. The lock is
// held only to copy a batch out, never while sending.
func (r *Replicator) flushQueue() error {
	for {
		n := r.take(r.batch[:])
		if n == 0 {
			return nil
		}
		k := 0
		for _, rec := range r.batch[:n] {
			if r.fix(&rec) {
				r.batch[k] = rec
				k++
			}
		}
		if err := r.sendBatch(r.batch[:k]); err != nil {
			return err
		}
	}
}

// take moves up to len(dst) of the oldest queued records to dst and
// returns how many.
func (r *Replicator) take(dst []Record) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := min(r.qlen, len(dst))
	for i := range n {
		dst[i] = r.queue[(r.qhead+i)%QueueLen]
	}
	r.qhead = (r.qhead + n) % QueueLen
	r.qlen -= n
	return n
}

// fix clamps an over-long TTL and reports whether rec can be sent; invalid
// records are counted. Expired records (TTL <= 0) are skipped silently.
func (r *Replicator) fix(rec *Record) bool {
	if rec.TTL <= 0 {
		return false
	}
	rec.TTL = min(rec.TTL, MaxTTL)
	if !validRecord(rec) {
		r.invalid.Add(1)
		return false
	}
	return true
}

// sendBatch sends recs; only a closed connection is an error for Run.
func (r *Replicator) sendBatch(recs []Record) error {
	if len(recs) == 0 {
		return nil
	}
	if err := r.c.Send(recs); errors.Is(err, ErrClosed) {
		return err
	}
	return nil
}

// snapshot walks rangeFn and appends every sendable record to buf in wire
// encoding (24 bytes a record, less than half of a Record), so a refresh
// cycle over 1 M flows holds 24 MB rather than the table's locks.
func (r *Replicator) snapshot(buf []byte) []byte {
	buf = buf[:0]
	r.rangeFn(func(rec Record) bool {
		if r.fix(&rec) {
			buf = grow(buf, RecordLen)
			putRecord(buf[len(buf)-RecordLen:], &rec)
		}
		return true
	})
	return buf
}

// startCycle begins a refresh cycle: what the previous one has not sent
// yet is abandoned (this one covers it), and a new snapshot is taken.
func (r *Replicator) startCycle() {
	r.snap = r.snapshot(r.snap)
	r.snapTime = time.Now()
	r.snapSent = 0
	r.cycleDone = false
}

// sendDue sends the records of the cycle that are due by now, so that the
// whole snapshot goes out evenly over refreshSpan of the interval.
func (r *Replicator) sendDue() error {
	total := len(r.snap) / RecordLen
	if r.cycleDone {
		return nil
	}
	span := r.refresh * refreshSpanNum / refreshSpanDen
	elapsed := time.Since(r.snapTime)
	due := total
	if elapsed < span {
		due = int(int64(total) * int64(elapsed) / int64(span))
		// Round up to whole messages: the last one of a tick may be full.
		due = min(total, (due+MaxRecords-1)/MaxRecords*MaxRecords)
	}
	for r.snapSent < due {
		n := min(due-r.snapSent, MaxRecords)
		k := r.decodeSnap(r.snap, r.snapSent, n, elapsed)
		r.snapSent += n
		r.refreshed.Add(uint64(k))
		if err := r.sendBatch(r.batch[:k]); err != nil {
			return err
		}
	}
	if r.snapSent >= total {
		r.cycles.Add(1)
		r.cycleDone = true
	}
	return nil
}

// decodeSnap fills r.batch with n records of snap starting at record i,
// aged by elapsed (they were snapshot that long ago); records that expired
// meanwhile are left out. It returns how many were kept.
func (r *Replicator) decodeSnap(snap []byte, i, n int, elapsed time.Duration) int {
	k := 0
	for j := i; j < i+n; j++ {
		rec := &r.batch[k]
		getRecord(snap[j*RecordLen:(j+1)*RecordLen], rec)
		rec.TTL -= elapsed
		if rec.TTL > 0 {
			k++
		}
	}
	return k
}

// sendDump sends every live entry at once, in bursts, then MsgDumpEnd.
// Run does nothing else meanwhile (about half a second for 1 M entries), so
// Notify may drop during a dump; the dump itself carries those entries if
// they were live when it started, and the refresh carries the rest.
func (r *Replicator) sendDump(ctx context.Context) error {
	r.dumpSnap = r.snapshot(r.dumpSnap)
	start := time.Now()
	total := len(r.dumpSnap) / RecordLen
	burst := 0
	for i := 0; i < total; i += MaxRecords {
		n := min(total-i, MaxRecords)
		k := r.decodeSnap(r.dumpSnap, i, n, time.Since(start))
		if err := r.sendBatch(r.batch[:k]); err != nil {
			return err
		}
		r.dumped.Add(uint64(k))
		if burst++; burst == dumpBurst {
			burst = 0
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(dumpPause):
			}
		}
	}
	r.dumps.Add(1)
	if err := r.c.SendDumpEnd(); errors.Is(err, ErrClosed) {
		return err
	}
	return nil
}
