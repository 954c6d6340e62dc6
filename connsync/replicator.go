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
	// IPv4 flows cost about 40 Mbit/s (1 M / 56 records = 17.9 k messages
	// of 1400 bytes every 5 s) and 1 M IPv6 flows about 100 Mbit/s (1 M /
	// 22 records = 45.5 k messages of 1372 bytes).
	DefaultRefresh = 5 * time.Second
	// QueueLen bounds the Notify queue: about 146 full version 1 messages
	// (372 version 2), one FlushDelay's worth of new flows at 800 k new
	// flows a second. Beyond that Notify drops, and the next refresh heals.
	QueueLen = 8192
	// FlushDelay is how long a partly filled batch of new entries waits
	// for more before it is sent: new flows reach the standby within
	// ~10 ms, and at a few thousand new flows per second batches still
	// fill (56 IPv4 or 22 IPv6 records per message instead of one).
	FlushDelay = 10 * time.Millisecond
	// refreshSpan is the share of the refresh interval a refresh cycle is
	// spread over; the rest is slack so a slow cycle ends before the next
	// one starts.
	refreshSpanNum, refreshSpanDen = 3, 4
	// dumpBurst messages are sent back to back during a bulk dump, then
	// the dump pauses for dumpPause: about 1.8 M IPv4 records a second
	// (0.7 M IPv6), while a burst (about 45 KiB) fits a receiver's default
	// socket buffer even if it could not enlarge it.
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
	snap      snapshot // the refresh cycle's records
	snapTime  time.Time
	snapSent  int  // messages of snap sent so far
	cycleDone bool // the current cycle has been sent and counted
	dumpSnap  snapshot
	batch     [MaxRecords]Record // a message's records, decoded from a snapshot
	// The Notify queue's records on their way out, one message of each
	// version being filled, so that a flush sends full messages and at
	// most one partly filled message of each version.
	stage1 [MaxRecordsV1]Record
	stage2 [MaxRecordsV2]Record
	n1, n2 int
}

// snapshot holds a cycle's or a dump's records in wire encoding, in one
// buffer per version: 24 bytes an IPv4 record, 60 another, where a Record
// takes 104.
type snapshot struct {
	v1, v2 []byte
}

// messages returns how many messages the snapshot makes: m1 of version 1,
// then m2 of version 2.
func (s *snapshot) messages() (m1, m2 int) {
	n1, n2 := len(s.v1)/RecordLenV1, len(s.v2)/RecordLenV2
	return (n1 + MaxRecordsV1 - 1) / MaxRecordsV1, (n2 + MaxRecordsV2 - 1) / MaxRecordsV2
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

// flushQueue sends every queued record, sorting them into the version 1
// and version 2 messages being filled and sending each one when it is
// full, then what is left of both. The lock is held only to copy a batch
// out, never while sending.
func (r *Replicator) flushQueue() error {
	for {
		n := r.take(r.batch[:])
		if n == 0 {
			break
		}
		for i := range r.batch[:n] {
			rec := &r.batch[i]
			switch r.fix(rec) {
			case Version1:
				r.stage1[r.n1] = *rec
				if r.n1++; r.n1 == MaxRecordsV1 {
					r.n1 = 0
					if err := r.sendBatch(r.stage1[:]); err != nil {
						return err
					}
				}
			case Version2:
				r.stage2[r.n2] = *rec
				if r.n2++; r.n2 == MaxRecordsV2 {
					r.n2 = 0
					if err := r.sendBatch(r.stage2[:]); err != nil {
						return err
					}
				}
			}
		}
	}
	n1, n2 := r.n1, r.n2
	r.n1, r.n2 = 0, 0
	if err := r.sendBatch(r.stage1[:n1]); err != nil {
		return err
	}
	return r.sendBatch(r.stage2[:n2])
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

// fix clamps an over-long TTL and returns the wire version that carries
// rec, or 0 when it is not to be sent: invalid records are counted, expired
// ones (TTL <= 0) skipped silently.
func (r *Replicator) fix(rec *Record) int {
	if rec.TTL <= 0 {
		return 0
	}
	rec.TTL = min(rec.TTL, MaxTTL)
	v := recordVersion(rec)
	if v == 0 {
		r.invalid.Add(1)
	}
	return v
}

// sendBatch sends recs, one message when they are all of one version and
// fit; only a closed connection is an error for Run.
func (r *Replicator) sendBatch(recs []Record) error {
	if len(recs) == 0 {
		return nil
	}
	if err := r.c.Send(recs); errors.Is(err, ErrClosed) {
		return err
	}
	return nil
}

// takeSnapshot walks rangeFn and stores every sendable record in s in wire
// encoding, so that a refresh cycle over 1 M flows holds 24 MB (IPv4) to
// 60 MB (IPv6) rather than the table's locks.
func (r *Replicator) takeSnapshot(s *snapshot) {
	s.v1, s.v2 = s.v1[:0], s.v2[:0]
	r.rangeFn(func(rec Record) bool {
		// fix checks rec, so the puts succeed.
		switch r.fix(&rec) {
		case Version1:
			s.v1 = grow(s.v1, RecordLenV1)
			putRecordV1(s.v1[len(s.v1)-RecordLenV1:], &rec)
		case Version2:
			s.v2 = grow(s.v2, RecordLenV2)
			putRecordV2(s.v2[len(s.v2)-RecordLenV2:], &rec)
		}
		return true
	})
}

// startCycle begins a refresh cycle: what the previous one has not sent
// yet is abandoned (this one covers it), and a new snapshot is taken.
func (r *Replicator) startCycle() {
	r.takeSnapshot(&r.snap)
	r.snapTime = time.Now()
	r.snapSent = 0
	r.cycleDone = false
}

// sendDue sends the messages of the cycle that are due by now, so that the
// whole snapshot goes out evenly over refreshSpan of the interval.
func (r *Replicator) sendDue() error {
	if r.cycleDone {
		return nil
	}
	m1, m2 := r.snap.messages()
	total := m1 + m2
	span := r.refresh * refreshSpanNum / refreshSpanDen
	elapsed := time.Since(r.snapTime)
	due := total
	if elapsed < span {
		// Rounded up: the message of a tick is sent whole.
		due = int((int64(total)*int64(elapsed) + int64(span) - 1) / int64(span))
	}
	for ; r.snapSent < due; r.snapSent++ {
		k, err := r.sendSnap(&r.snap, r.snapSent, elapsed)
		r.refreshed.Add(uint64(k))
		if err != nil {
			return err
		}
	}
	if r.snapSent >= total {
		r.cycles.Add(1)
		r.cycleDone = true
	}
	return nil
}

// sendSnap sends message j of snapshot s (the version 1 messages first),
// its records aged by elapsed (they were taken that long ago); records that
// expired meanwhile are left out. It returns how many were sent.
func (r *Replicator) sendSnap(s *snapshot, j int, elapsed time.Duration) (int, error) {
	m1, _ := s.messages()
	buf, recLen, maxRecs, get := s.v1, RecordLenV1, MaxRecordsV1, getRecordV1
	if j >= m1 {
		j -= m1
		buf, recLen, maxRecs, get = s.v2, RecordLenV2, MaxRecordsV2, getRecordV2
	}
	i, n := j*maxRecs, min(maxRecs, len(buf)/recLen-j*maxRecs)
	k := 0
	for ; n > 0; i, n = i+1, n-1 {
		rec := &r.batch[k]
		get(buf[i*recLen:(i+1)*recLen], rec)
		rec.TTL -= elapsed
		if rec.TTL > 0 {
			k++
		}
	}
	return k, r.sendBatch(r.batch[:k])
}

// sendDump sends every live entry at once, in bursts, then MsgDumpEnd.
// Run does nothing else meanwhile (about half a second for 1 M entries), so
// Notify may drop during a dump; the dump itself carries those entries if
// they were live when it started, and the refresh carries the rest.
func (r *Replicator) sendDump(ctx context.Context) error {
	r.takeSnapshot(&r.dumpSnap)
	start := time.Now()
	m1, m2 := r.dumpSnap.messages()
	burst := 0
	for j := range m1 + m2 {
		k, err := r.sendSnap(&r.dumpSnap, j, time.Since(start))
		if err != nil {
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
