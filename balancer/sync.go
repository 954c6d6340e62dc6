package balancer

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane"
)

// syncer connects the engine's connection table to the connsync channel, IPVS's sync daemon
// rewritten: while the balancer is active it replicates new flows at once and every flow and
// template periodically; while it is a standby it imports what the active node sends.
type syncer struct {
	eng    *dataplane.Engine
	conn   *connsync.Conn
	repl   *connsync.Replicator
	b      *Balancer
	peers  []string
	active atomic.Bool
	lastRx atomic.Int64 // unix nanoseconds of the last accepted message
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// openSyncLocked opens the sync channel if it is configured, not open and not tried within
// syncRetry. A failure is reported in the status and retried; balancing goes on without sync.
func (b *Balancer) openSyncLocked(now time.Time) {
	if b.cfg.Sync == nil || b.sync != nil || now.Sub(b.syncTried) < syncRetry {
		return
	}
	b.syncTried = now
	cfg := *b.cfg.Sync
	cfg.Interface = b.cfg.Interface
	if cfg.Log == nil {
		cfg.Log = b.log.With("part", "sync")
	}
	c, err := connsync.Listen(cfg)
	if err != nil {
		if b.syncErr == nil || b.syncErr.Error() != err.Error() {
			b.log.Error("connection sync unavailable; retrying", "err", err)
		}
		b.syncErr = err
		return
	}
	if b.syncErr != nil {
		b.log.Info("connection sync open", "was", b.syncErr.Error())
	}
	b.syncErr = nil
	s := &syncer{eng: b.eng, conn: c, b: b, peers: syncPeers(cfg)}
	s.repl = connsync.NewReplicator(c, s.export, 0)
	b.eng.Table().SetOnInsert(s.onInsert)
	b.eng.Table().SetOnInsert6(s.onInsert6)
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := s.repl.Run(ctx); err != nil && ctx.Err() == nil {
			b.log.Warn("sync replicator stopped", "err", err)
		}
	}()
	go func() { defer s.wg.Done(); s.receive() }()
	b.sync = s
	s.setActive(b.role == RoleActive && b.vipErr == nil && b.running)
	// A (re)joining node asks the active one for the table before it may take over.
	if err := c.RequestDump(); err != nil {
		b.log.Warn("sync: asking for a bulk dump", "err", err)
	}
}

// closeSync stops replication and closes the channel.
func (b *Balancer) closeSync() {
	b.mu.Lock()
	s := b.sync
	b.sync = nil
	b.mu.Unlock()
	if s == nil {
		return
	}
	b.eng.Table().SetOnInsert(nil)
	b.eng.Table().SetOnInsert6(nil)
	s.cancel()
	s.conn.Close()
	s.wg.Wait()
}

// setActive switches between replicating (true) and importing (false). Becoming active sends a
// bulk dump, so every standby holds the new active node's view at once.
func (s *syncer) setActive(on bool) {
	if was := s.active.Swap(on); on && !was {
		s.repl.Dump()
	}
}

// status returns the channel's counters for the status.
func (s *syncer) status() control.Sync {
	ss := s.conn.Stats()
	out := control.Sync{Peers: s.peers, SentMessages: ss.SentMessages, ReceivedMessages: ss.ReceivedMessages,
		Rejected: ss.Rejected(), RejectedByReason: map[string]uint64{
			"short": ss.RejectedShort, "magic": ss.RejectedMagic, "version": ss.RejectedVersion,
			"header": ss.RejectedHeader, "count": ss.RejectedCount, "sync_id": ss.RejectedSyncID,
			"auth": ss.RejectedAuth, "record": ss.RejectedRecord, "peer": ss.RejectedPeer}}
	if n := s.lastRx.Load(); n != 0 {
		out.LastReceived = time.Unix(0, n)
	}
	return out
}

// onInsert runs in the fast path for every new flow: it must not block or allocate.
func (s *syncer) onInsert(k conntrack.Key, member uint32, state conntrack.State) {
	if !s.active.Load() {
		return
	}
	if r, ok := s.eng.RecordOf(k, member, state); ok {
		s.repl.Notify(r)
	}
}

// onInsert6 is onInsert for IPv6 flows.
func (s *syncer) onInsert6(k conntrack.Key6, member uint32, state conntrack.State) {
	if !s.active.Load() {
		return
	}
	if r, ok := s.eng.RecordOf6(k, member, state); ok {
		s.repl.Notify(r)
	}
}

// export is the Replicator's view of the table for its refresh cycles and dumps: the whole table
// while this node is active, nothing while it is a standby. A standby re-sending its table would
// hand the other standbys (and the active node, which imports too) its own copy of every flow,
// with the state it had when that copy arrived: a flow the active node has seen established could
// bounce back to SYN_RECV on the standbys indefinitely (TestIPv6PlannedHandover found it).
func (s *syncer) export(fn func(connsync.Record) bool) {
	if s.active.Load() {
		s.eng.Export(fn)
	}
}

// receive imports what others replicate. A node imports even while active: in a split brain both
// tables then hold both sides' flows, which is what the surviving owner needs after the heal.
func (s *syncer) receive() {
	err := s.conn.Receive(func(from netip.Addr, h connsync.Header, recs []connsync.Record) {
		s.lastRx.Store(time.Now().UnixNano())
		switch h.Type {
		case connsync.MsgDumpEnd:
			s.b.emit(Event{Kind: EventTableSynced, From: from})
			return
		case connsync.MsgHealth:
			s.b.onHealthView(h.Payload)
			return
		}
		if err := s.eng.Import(recs); err != nil {
			s.b.log.Debug("sync import", "from", from, "err", err)
		}
	}, func(netip.Addr) {
		if s.active.Load() {
			s.repl.Dump()
		}
	})
	if err != nil && !errors.Is(err, connsync.ErrClosed) {
		s.b.log.Warn("sync receiver stopped", "err", err)
	}
}

// syncPeers names where sync messages go: the unicast peers, or the multicast group.
func syncPeers(c connsync.Config) []string {
	if len(c.Peers) == 0 {
		g := c.Group
		if !g.IsValid() {
			g = connsync.DefaultGroup
		}
		return []string{g.String() + " (multicast)"}
	}
	out := make([]string, 0, len(c.Peers))
	for _, p := range c.Peers {
		out = append(out, p.String())
	}
	return out
}
