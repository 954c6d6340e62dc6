package healthcheck

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/l2lb/l2lb/services"
)

// DefaultQuorumRepeat is how often the monitor repeats the below-quorum
// error while the condition lasts, so it is not lost in a log rotation.
const DefaultQuorumRepeat = time.Minute

// idleWait is how long Run sleeps when nothing is scheduled (no targets or
// no checks); SetTargets wakes it earlier.
const idleWait = time.Minute

// ErrNoVIP reports a service whose check has no address to probe: no
// explicit vip and no VIP of a family with a probe source.
var ErrNoVIP = errors.New("healthcheck: no VIP to probe")

// Spec is one service check as the monitor runs it against every target.
type Spec struct {
	// Service is the stanza from the services file; Service.Check.Kind is
	// not empty.
	Service services.Service
	// Addr is where the probe connects: the VIP and the service port.
	Addr netip.AddrPort
	// Probe runs the check; nil means ProbeFor(kind, proto).
	Probe ProbeFunc
}

// SpecsFor returns the specs of the services in f that have a check. A
// service's probe goes to its explicit vip, else to vip4 if f has an IPv4
// probe source and vip4 is valid, else to vip6 likewise: the default of
// the services file, "the first VIP of the family in the VIP file", with
// the families in that order. A check with no usable VIP is an error
// wrapping ErrNoVIP.
func SpecsFor(f *services.File, vip4, vip6 netip.Addr) ([]Spec, error) {
	var specs []Spec
	for _, s := range f.Services {
		if s.Check.Kind == "" {
			continue
		}
		vip := s.VIP
		if !vip.IsValid() {
			switch {
			case vip4.IsValid() && f.ProbeSource4.IsValid():
				vip = vip4
			case vip6.IsValid() && f.ProbeSource6.IsValid():
				vip = vip6
			default:
				return nil, fmt.Errorf("%s:%d: service %s: %w (no vip line, and no VIP of a family with a probe-source)", f.Path, s.Line, s.Name, ErrNoVIP)
			}
		}
		probe, err := ProbeFor(s.Check.Kind, s.Proto)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: service %s: %w", f.Path, s.Line, s.Name, err)
		}
		specs = append(specs, Spec{Service: s, Addr: netip.AddrPortFrom(vip, s.Port), Probe: probe})
	}
	return specs, nil
}

// Config configures a Monitor.
type Config struct {
	// Specs are the checks run against every target.
	Specs []Spec
	// Quorum is the number of targets that should be healthy; while fewer
	// are (counting targets still proving themselves after being added as
	// healthy), the monitor logs at Error level. 0 turns it off.
	Quorum int
	// QuorumRepeat is how often the below-quorum error repeats; 0 means
	// DefaultQuorumRepeat.
	QuorumRepeat time.Duration
	// Logger receives state changes; nil discards them.
	Logger *slog.Logger
	// NoJitter starts every new check at once instead of at a random point
	// of its first interval; tests use it for determinism.
	NoJitter bool
}

// Monitor runs the checks of every (target, service) pair and keeps their
// health. Drive it with Run (real time) or RunOnce (a test's clock); read it
// with Status, Healthy, Snapshot and Changes. All methods are safe for
// concurrent use.
type Monitor struct {
	cfg     Config
	log     *slog.Logger
	changes chan struct{}
	wake    chan struct{}

	mu          sync.Mutex
	targets     map[netip.Addr]*target
	below       bool      // below quorum, as last logged
	belowLogged time.Time // last below-quorum log
}

type target struct {
	addr    netip.Addr
	dialer  Dialer
	checks  []*checkState // parallel to cfg.Specs
	healthy bool
}

type checkState struct {
	h         Health
	next      time.Time
	scheduled bool
	inflight  bool
	results   int
	lastErr   error
	since     time.Time
	lastProbe time.Time
}

// NewMonitor checks cfg and returns a Monitor with no targets.
func NewMonitor(cfg Config) (*Monitor, error) {
	if cfg.Quorum < 0 {
		return nil, fmt.Errorf("healthcheck: quorum %d: %w", cfg.Quorum, ErrBadThreshold)
	}
	cfg.Specs = slices.Clone(cfg.Specs)
	for i := range cfg.Specs {
		sp := &cfg.Specs[i]
		c := sp.Service.Check
		if c.Rise < 1 || c.Fall < 1 {
			return nil, fmt.Errorf("healthcheck: service %s: %w", sp.Service.Name, ErrBadThreshold)
		}
		if c.Interval <= 0 || c.Timeout <= 0 {
			return nil, fmt.Errorf("healthcheck: service %s: interval and timeout must be positive: %w", sp.Service.Name, ErrBadThreshold)
		}
		if !sp.Addr.IsValid() {
			return nil, fmt.Errorf("healthcheck: service %s: %w", sp.Service.Name, ErrNoVIP)
		}
		if sp.Probe == nil {
			p, err := ProbeFor(c.Kind, sp.Service.Proto)
			if err != nil {
				return nil, fmt.Errorf("healthcheck: service %s: %w", sp.Service.Name, err)
			}
			sp.Probe = p
		}
	}
	if cfg.QuorumRepeat <= 0 {
		cfg.QuorumRepeat = DefaultQuorumRepeat
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Monitor{
		cfg:     cfg,
		log:     log,
		changes: make(chan struct{}, 1),
		wake:    make(chan struct{}, 1),
		targets: map[netip.Addr]*target{},
	}, nil
}

// Changes returns a channel that receives a value after the health of a
// target or service changes or the target set changes. Notifications
// coalesce (the channel holds at most one), so a slow reader sees the
// latest state through Snapshot or Status, never a backlog.
func (m *Monitor) Changes() <-chan struct{} { return m.changes }

func (m *Monitor) notify() {
	select {
	case m.changes <- struct{}{}:
	default:
	}
}

func (m *Monitor) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// SetTargets replaces the set of targets: frontend address -> the Dialer
// whose connections reach the services through that frontend. Targets that
// stay keep their state (and get the new Dialer); new ones start unhealthy
// and must pass rise probes of every check.
func (m *Monitor) SetTargets(targets map[netip.Addr]Dialer) {
	m.mu.Lock()
	changed := false
	for addr, t := range m.targets {
		if _, ok := targets[addr]; !ok {
			delete(m.targets, addr)
			changed = true
			m.log.Info("health check target removed", "target", t.addr)
		}
	}
	for addr, d := range targets {
		if t, ok := m.targets[addr]; ok {
			t.dialer = d
			continue
		}
		t := &target{addr: addr, dialer: d, healthy: len(m.cfg.Specs) == 0}
		for _, sp := range m.cfg.Specs {
			t.checks = append(t.checks, &checkState{h: Health{rise: sp.Service.Check.Rise, fall: sp.Service.Check.Fall}})
		}
		m.targets[addr] = t
		changed = true
		m.log.Info("health check target added", "target", addr)
	}
	if changed {
		m.evalQuorum(time.Now())
	}
	m.mu.Unlock()
	if changed {
		m.notify()
	}
	m.poke()
}

// job is one probe to run.
type job struct {
	t      *target
	st     *checkState
	spec   *Spec
	dialer Dialer
}

// startDue marks the probes due at now as in flight and returns them. A
// check seen for the first time is scheduled at a random point of its first
// interval, so the probes of many targets spread out.
func (m *Monitor) startDue(now time.Time) []job {
	m.mu.Lock()
	defer m.mu.Unlock()
	var jobs []job
	for _, t := range m.targets {
		for i, st := range t.checks {
			sp := &m.cfg.Specs[i]
			if st.inflight {
				continue
			}
			if !st.scheduled {
				st.scheduled = true
				st.next = now
				if !m.cfg.NoJitter {
					st.next = now.Add(rand.N(sp.Service.Check.Interval))
				}
			}
			if st.next.After(now) {
				continue
			}
			st.inflight = true
			st.next = st.next.Add(sp.Service.Check.Interval)
			if !st.next.After(now) {
				// Fell behind (a suspended process, a slow RunOnce
				// caller): resume the cadence from now, do not burst.
				st.next = now.Add(sp.Service.Check.Interval)
			}
			jobs = append(jobs, job{t: t, st: st, spec: sp, dialer: t.dialer})
		}
	}
	return jobs
}

// nextDue returns the earliest time a probe that is not in flight is due,
// or false if there is none.
func (m *Monitor) nextDue() (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var next time.Time
	found := false
	for _, t := range m.targets {
		for _, st := range t.checks {
			if st.inflight {
				continue
			}
			if !st.scheduled {
				return time.Time{}, true // schedule at once
			}
			if !found || st.next.Before(next) {
				next, found = st.next, true
			}
		}
	}
	return next, found
}

func (j job) run(ctx context.Context) error {
	if j.dialer == nil {
		return fmt.Errorf("%w: target %s has no dialer", ErrConnect, j.t.addr)
	}
	return j.spec.Probe(ctx, j.dialer, j.spec.Addr, j.spec.Service.Check)
}

// finish records the result of j, finished at now.
func (m *Monitor) finish(j job, err error, now time.Time) {
	m.mu.Lock()
	j.st.inflight = false
	if m.targets[j.t.addr] != j.t {
		m.mu.Unlock()
		return // removed while the probe ran
	}
	st := j.st
	st.results++
	st.lastProbe = now
	st.lastErr = err
	healthy, changed := st.h.Observe(err == nil)
	svc := j.spec.Service
	if changed {
		st.since = now
		if healthy {
			m.log.Info("service healthy", "target", j.t.addr, "service", svc.Name, "port", svc.Key(), "vip", j.spec.Addr)
		} else {
			m.log.Warn("service unhealthy", "target", j.t.addr, "service", svc.Name, "port", svc.Key(), "vip", j.spec.Addr, "err", err)
		}
	}
	tchanged := m.updateTarget(j.t)
	if tchanged {
		m.evalQuorum(now)
	}
	m.mu.Unlock()
	if changed || tchanged {
		m.notify()
	}
}

// abort forgets the in-flight probe j without recording a result.
func (m *Monitor) abort(j job) {
	m.mu.Lock()
	j.st.inflight = false
	m.mu.Unlock()
}

// updateTarget recomputes the overall health of t (all checks healthy) and
// reports whether it changed. The caller holds m.mu.
func (m *Monitor) updateTarget(t *target) bool {
	all := true
	for _, st := range t.checks {
		all = all && st.h.Healthy()
	}
	if all == t.healthy {
		return false
	}
	t.healthy = all
	if all {
		m.log.Info("frontend healthy", "target", t.addr)
	} else {
		m.log.Warn("frontend unhealthy", "target", t.addr)
	}
	return true
}

// quorumCount returns the healthy targets and those still warming up (not
// healthy, with a check that has had fewer than rise probes). The caller
// holds m.mu.
func (m *Monitor) quorumCount() (healthy, warming int) {
	for _, t := range m.targets {
		if t.healthy {
			healthy++
			continue
		}
		for i, st := range t.checks {
			if !st.h.Healthy() && st.results < m.cfg.Specs[i].Service.Check.Rise {
				warming++
				break
			}
		}
	}
	return healthy, warming
}

// evalQuorum logs the quorum state: at Error when the cluster falls below
// it and every QuorumRepeat while it stays there, at Warn once when it
// recovers. Targets still warming up count as healthy, so a restart does not
// raise the alarm before the first probes are in. The caller holds m.mu.
func (m *Monitor) evalQuorum(now time.Time) {
	if m.cfg.Quorum == 0 {
		return
	}
	healthy, warming := m.quorumCount()
	below := healthy+warming < m.cfg.Quorum
	switch {
	case below && (!m.below || now.Sub(m.belowLogged) >= m.cfg.QuorumRepeat):
		m.log.Error("fewer healthy frontends than the quorum: the cluster may not carry the load",
			"healthy", healthy, "quorum", m.cfg.Quorum, "frontends", len(m.targets))
		m.belowLogged = now
	case !below && m.below:
		m.log.Warn("healthy frontends back at quorum", "healthy", healthy, "quorum", m.cfg.Quorum, "frontends", len(m.targets))
	}
	m.below = below
}

// RunOnce runs every probe due at now, waits for them and records their
// results as of now. It is the steppable form of Run for tests and
// simulations: each call with now advanced by a check's interval runs that
// check once per target.
func (m *Monitor) RunOnce(ctx context.Context, now time.Time) {
	jobs := m.startDue(now)
	var wg sync.WaitGroup
	errs := make([]error, len(jobs))
	for i, j := range jobs {
		wg.Go(func() { errs[i] = j.run(ctx) })
	}
	wg.Wait()
	for i, j := range jobs {
		m.finish(j, errs[i], now)
	}
	m.mu.Lock()
	if m.below {
		m.evalQuorum(now) // the periodic repeat
	}
	m.mu.Unlock()
}

// Run runs the probes on their intervals in real time until ctx ends, then
// waits for the probes in flight and returns ctx.Err(). Each probe runs in
// its own goroutine, so a slow service does not delay the others.
func (m *Monitor) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		for _, j := range m.startDue(time.Now()) {
			wg.Go(func() {
				err := j.run(ctx)
				if ctx.Err() == nil {
					m.finish(j, err, time.Now())
				} else {
					m.abort(j) // cancelled: not a result
				}
				m.poke()
			})
		}
		m.mu.Lock()
		if m.below {
			m.evalQuorum(time.Now())
		}
		m.mu.Unlock()
		wait := idleWait
		if next, ok := m.nextDue(); ok {
			wait = max(time.Until(next), 0)
		}
		if m.below && m.cfg.QuorumRepeat < wait {
			wait = m.cfg.QuorumRepeat
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		case <-m.wake:
		}
	}
}

// ServiceStatus is the detail of one check of one target.
type ServiceStatus struct {
	// Name, Port and Proto identify the service.
	Name  string
	Port  uint16
	Proto string
	// Addr is where the probe connects.
	Addr netip.AddrPort
	// Healthy is the state after rise/fall.
	Healthy bool
	// LastErr is the error of the latest probe, nil if it passed.
	LastErr error
	// Since is when Healthy last changed; zero if it never did.
	Since time.Time
	// LastProbe is when the latest probe finished; Probes counts them (a restored view counts
	// as Rise probes).
	LastProbe time.Time
	Probes    int
	// Rise is the check's rise count: a check with fewer Probes is still proving itself.
	Rise int
}

// TargetStatus is the detail of one target.
type TargetStatus struct {
	// Addr is the frontend's address.
	Addr netip.Addr
	// Healthy is true when every check of the target is healthy.
	Healthy bool
	// Services holds one entry per check, in Config.Specs order.
	Services []ServiceStatus
}

// Status returns the detail of every target, ordered by address.
func (m *Monitor) Status() []TargetStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]TargetStatus, 0, len(m.targets))
	for _, t := range m.targets {
		ts := TargetStatus{Addr: t.addr, Healthy: t.healthy}
		for i, st := range t.checks {
			sp := &m.cfg.Specs[i]
			ts.Services = append(ts.Services, ServiceStatus{
				Name: sp.Service.Name, Port: sp.Service.Port, Proto: sp.Service.Proto, Addr: sp.Addr,
				Healthy: st.h.Healthy(), LastErr: st.lastErr, Since: st.since, LastProbe: st.lastProbe, Probes: st.results,
				Rise: sp.Service.Check.Rise,
			})
		}
		out = append(out, ts)
	}
	slices.SortFunc(out, func(a, b TargetStatus) int { return a.Addr.Compare(b.Addr) })
	return out
}

// Healthy reports whether the target at addr passes all its checks; an
// unknown target is not healthy.
func (m *Monitor) Healthy(addr netip.Addr) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.targets[addr]
	return ok && t.healthy
}

// Quorum returns the number of healthy targets, the configured quorum and
// whether the cluster is at or above it (always true with quorum 0).
func (m *Monitor) Quorum() (healthy, quorum int, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h, _ := m.quorumCount()
	return h, m.cfg.Quorum, h >= m.cfg.Quorum
}

// Snapshot returns the healthy flags of every target and check, ordered by
// target address and then service protocol and port, for gossip to a
// standby.
func (m *Monitor) Snapshot() Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Snapshot{Targets: make([]TargetHealth, 0, len(m.targets))}
	for _, t := range m.targets {
		th := TargetHealth{Addr: t.addr, Healthy: t.healthy, Services: make([]ServiceHealth, 0, len(t.checks))}
		for i, st := range t.checks {
			sp := &m.cfg.Specs[i]
			th.Services = append(th.Services, ServiceHealth{Port: sp.Service.Port, Proto: sp.Service.Proto, Healthy: st.h.Healthy()})
		}
		slices.SortFunc(th.Services, compareService)
		s.Targets = append(s.Targets, th)
	}
	slices.SortFunc(s.Targets, func(a, b TargetHealth) int { return a.Addr.Compare(b.Addr) })
	return s
}

func compareService(a, b ServiceHealth) int {
	return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port))
}

// Restore adopts the view in s, typically gossiped by the node this one
// takes over from: every check of a current target that s lists gets the
// healthy flag of s, as if it had passed (or failed) rise (fall) probes.
// Targets and services s does not know keep their own state; entries of s
// for unknown targets are ignored, so call SetTargets first.
func (m *Monitor) Restore(s Snapshot) {
	m.mu.Lock()
	changed := false
	for _, th := range s.Targets {
		t, ok := m.targets[th.Addr]
		if !ok {
			continue
		}
		for _, sh := range th.Services {
			for i, st := range t.checks {
				svc := m.cfg.Specs[i].Service
				if svc.Port != sh.Port || svc.Proto != sh.Proto {
					continue
				}
				if st.h.Healthy() != sh.Healthy {
					changed = true
				}
				st.h.Set(sh.Healthy)
				st.results = max(st.results, svc.Check.Rise)
			}
		}
		if m.updateTarget(t) {
			changed = true
		}
	}
	m.evalQuorum(time.Now())
	m.mu.Unlock()
	if changed {
		m.notify()
	}
}
