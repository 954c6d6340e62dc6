package election

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// resyncInterval re-runs the election even without membership events, so a
// lost Updated signal or a failed UpdateMeta is repaired within a second.
const resyncInterval = time.Second

// Runner drives an Elector from a Membership: on every membership change it
// steps the elector, applies the result, and announces what this node serves.
// Its methods may be called from several goroutines.
type Runner struct {
	m     Membership
	e     *Elector
	apply func(acquire, release []netip.Addr)

	mu   sync.Mutex
	meta NodeMeta
}

// NewRunner returns a Runner for this node. meta is the node's metadata as
// announced (Active is managed by the Runner); apply starts serving the
// acquired VIPs (gratuitous ARP, dataplane) and stops serving the released
// ones, and must not block for long.
func NewRunner(m Membership, e *Elector, meta NodeMeta, apply func(acquire, release []netip.Addr)) *Runner {
	return &Runner{m: m, e: e, apply: apply, meta: meta}
}

// Sync runs one election step against the current view. It returns the error
// of announcing a changed Active list; the step itself is applied anyway.
func (r *Runner) Sync() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.syncLocked()
}

func (r *Runner) syncLocked() error {
	v := r.m.View()
	// Our own entry comes from what we announce, not from possibly stale
	// gossip.
	for i := range v.Members {
		if v.Members[i].Name == r.meta.Name {
			v.Members[i] = Member{NodeMeta: r.meta, Alive: true}
		}
	}
	acq, rel := r.e.Step(v)
	if len(acq)+len(rel) > 0 {
		r.apply(acq, rel)
	}
	owned := r.e.Owned()
	if slices.Equal(owned, r.meta.Active) {
		return nil
	}
	r.meta.Active = owned
	return r.m.UpdateMeta(r.meta)
}

// Update changes this node's announced metadata (for example Healthy from a
// Health check, or TableReady once the connection table is synced), announces
// it and runs the election.
func (r *Runner) Update(change func(*NodeMeta)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	change(&r.meta)
	if err := r.m.UpdateMeta(r.meta); err != nil {
		return err
	}
	return r.syncLocked()
}

// Run steps the election on every membership change, and every second
// regardless, until ctx ends. Announcement errors are logged to log at Warn;
// nil discards them.
func (r *Runner) Run(ctx context.Context, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := time.NewTicker(resyncInterval)
	defer t.Stop()
	for {
		if err := r.Sync(); err != nil {
			log.Warn("announcing metadata failed", "node", r.name(), "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-r.m.Updated():
		case <-t.C:
		}
	}
}

// Handover is the SIGTERM path: it announces Draining, keeps serving until
// other nodes have taken every VIP over (or ctx ends, for example when no
// other candidate exists), then releases whatever is left. It returns
// ctx.Err() if the hand-over did not complete.
func (r *Runner) Handover(ctx context.Context) error {
	if err := r.Update(func(m *NodeMeta) { m.Draining = true }); err != nil {
		return err
	}
	t := time.NewTicker(resyncInterval / 10)
	defer t.Stop()
	var err error
	for len(r.Owned()) > 0 && err == nil {
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-r.m.Updated():
		case <-t.C:
		}
		_ = r.Sync()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if rest := r.e.ReleaseAll(); len(rest) > 0 {
		r.apply(nil, rest)
		r.meta.Active = nil
		_ = r.m.UpdateMeta(r.meta)
	}
	return err
}

// name returns this node's name.
func (r *Runner) name() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.meta.Name
}

// Owned returns the VIPs this node serves now.
func (r *Runner) Owned() []netip.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.e.Owned()
}
