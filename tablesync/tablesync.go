// Package tablesync connects a dataplane engine's connection table to the connsync channel: while
// the node is active it replicates new flows at once and every flow and template periodically;
// while it is a standby it imports what the active node sends. Both the standalone cluster and the
// CGP helper use it.
package tablesync

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/dataplane"
)

// Syncer replicates or imports the table of one engine.
type Syncer struct {
	eng    *dataplane.Engine
	conn   *connsync.Conn
	repl   *connsync.Replicator
	log    *slog.Logger
	active atomic.Bool
	lastRx atomic.Int64 // unix nanoseconds of the last accepted message
	ready  func(from netip.Addr)
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// Start opens the sync channel for eng and starts replicating (while SetActive(true)) and
// importing. onDumpEnd, if set, is called when a bulk dump from the active node is complete.
func Start(eng *dataplane.Engine, cfg connsync.Config, log *slog.Logger, onDumpEnd func(from netip.Addr)) (*Syncer, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Log == nil {
		cfg.Log = log.With("part", "sync")
	}
	c, err := connsync.Listen(cfg)
	if err != nil {
		return nil, err
	}
	s := &Syncer{eng: eng, conn: c, log: log, ready: onDumpEnd}
	s.repl = connsync.NewReplicator(c, s.export, 0)
	eng.Table().SetOnInsert(s.onInsert)
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := s.repl.Run(ctx); err != nil && ctx.Err() == nil {
			log.Warn("sync replicator stopped", "err", err)
		}
	}()
	go func() { defer s.wg.Done(); s.receive() }()
	return s, nil
}

// SetActive switches between replicating (true) and importing (false). Becoming active sends a
// bulk dump, so every standby holds the new active node's view at once.
func (s *Syncer) SetActive(on bool) {
	if was := s.active.Swap(on); on && !was {
		s.repl.Dump()
	}
}

// RequestDump asks the active node for its whole table (a standby that (re)joins).
func (s *Syncer) RequestDump() error { return s.conn.RequestDump() }

// Dump sends the whole table now (before a planned hand-over, say).
func (s *Syncer) Dump() { s.repl.Dump() }

// Stats returns the channel's counters.
func (s *Syncer) Stats() connsync.Stats { return s.conn.Stats() }

// LastReceived returns when the last valid message from another node arrived (zero if none):
// the replication lag an operator sees in the status.
func (s *Syncer) LastReceived() time.Time {
	if n := s.lastRx.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Close stops replication and closes the channel.
func (s *Syncer) Close() error {
	var err error
	s.once.Do(func() {
		s.eng.Table().SetOnInsert(nil)
		s.cancel()
		err = s.conn.Close()
		s.wg.Wait()
	})
	return err
}

// onInsert runs in the fast path for every new flow: it must not block or allocate.
func (s *Syncer) onInsert(k conntrack.Key, member uint32, state conntrack.State) {
	if !s.active.Load() {
		return
	}
	if r, ok := s.eng.SyncRecordOf(k, member, state); ok {
		s.repl.Notify(connsync.Record{Kind: connsync.RecordFlow, Key: r.Key, Member: r.Member, State: r.State, TTL: r.TTL})
	}
}

func (s *Syncer) export(fn func(connsync.Record) bool) {
	s.eng.Export(func(r dataplane.SyncRecord) bool {
		kind := connsync.RecordFlow
		if r.Template {
			kind = connsync.RecordTemplate
		}
		return fn(connsync.Record{Kind: kind, Key: r.Key, Member: r.Member, State: r.State, TTL: r.TTL})
	})
}

// receive imports what others replicate. A node imports even while active: in a split brain both
// tables then hold both sides' flows, which is what the surviving owner needs after the heal.
func (s *Syncer) receive() {
	var buf []dataplane.SyncRecord
	err := s.conn.Receive(func(from netip.Addr, h connsync.Header, recs []connsync.Record) {
		s.lastRx.Store(time.Now().UnixNano())
		if h.Type == connsync.MsgDumpEnd {
			if s.ready != nil {
				s.ready(from)
			}
			return
		}
		buf = buf[:0]
		for _, r := range recs {
			buf = append(buf, dataplane.SyncRecord{Template: r.Kind == connsync.RecordTemplate, Key: r.Key,
				Member: r.Member, State: r.State, TTL: r.TTL})
		}
		if err := s.eng.Import(buf); err != nil {
			s.log.Debug("sync import", "from", from, "err", err)
		}
	}, func(from netip.Addr) {
		if s.active.Load() {
			s.repl.Dump()
		}
	})
	if err != nil && !errors.Is(err, connsync.ErrClosed) {
		s.log.Warn("sync receiver stopped", "err", err)
	}
}
