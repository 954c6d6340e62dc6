package node

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeDrops is a DropCounter whose count the test sets.
type fakeDrops struct {
	RxSocket // nil: only RxDrops is called
	n        uint64
	err      error
}

func (f *fakeDrops) RxDrops() (uint64, error) { return f.n, f.err }

// fakePrio is a Prioritizer that records raises and restores.
type fakePrio struct {
	err              error
	raises, restores int
	raisedNow        bool
}

func (p *fakePrio) Raise() (func() error, error) {
	if p.err != nil {
		return nil, p.err
	}
	if p.raisedNow {
		panic("raised twice without a restore")
	}
	p.raises++
	p.raisedNow = true
	return func() error {
		p.restores++
		p.raisedNow = false
		return nil
	}, nil
}

// TestBoostFollowsDrops steps the boost with a fake clock: no raise while nothing drops, one
// raise at the first new drop, none more while drops go on, and a restore boostHold after the
// last drop, not before.
func TestBoostFollowsDrops(t *testing.T) {
	src := &fakeDrops{n: 500} // drops from before the worker started
	pr := &fakePrio{}
	var logs bytes.Buffer
	b := newBoost(src, pr, slog.New(slog.NewTextHandler(&logs, nil)), nil)
	if b == nil {
		t.Fatal("newBoost returned nil for a DropCounter and a Prioritizer")
	}
	step := int64(4 * time.Millisecond)
	now := int64(0)
	for range 100 {
		now += step
		b.step(now)
	}
	if pr.raises != 0 || b.raised() {
		t.Fatalf("raised %d times with no drop since the start (old drops must not count)", pr.raises)
	}
	// Overload: drops at every check for a while.
	for range 50 {
		now += step
		src.n += 7
		b.step(now)
	}
	if pr.raises != 1 || !b.raised() {
		t.Fatalf("after 50 checks with drops: %d raises, raised=%v; want 1, true", pr.raises, b.raised())
	}
	lastDrop := now
	for now+step-lastDrop < boostHold {
		now += step
		b.step(now)
		if !b.raised() {
			t.Fatalf("restored %v after the last drop, before boostHold (%v)",
				time.Duration(now-lastDrop), time.Duration(boostHold))
		}
	}
	now += step
	b.step(now)
	if b.raised() || pr.restores != 1 {
		t.Fatalf("%v after the last drop: raised=%v, %d restores; want restored once",
			time.Duration(now-lastDrop), b.raised(), pr.restores)
	}
	// A second overload raises again; end restores.
	src.n++
	now += step
	b.step(now)
	if pr.raises != 2 || !b.raised() {
		t.Fatalf("second overload: %d raises, raised=%v", pr.raises, b.raised())
	}
	b.end()
	b.end()
	if pr.restores != 2 || b.raised() {
		t.Fatalf("end: %d restores, raised=%v; want 2, false", pr.restores, b.raised())
	}
	if got := strings.Count(logs.String(), "raising its priority"); got != 1 {
		t.Fatalf("the raise was logged %d times, want once:\n%s", got, logs.String())
	}
}

// TestBoostRaiseFails checks that a Prioritizer that refuses (no CAP_SYS_NICE) is warned about
// once and never asked again, and that a socket that cannot be read changes nothing.
func TestBoostRaiseFails(t *testing.T) {
	src := &fakeDrops{}
	pr := &fakePrio{err: errors.New("operation not permitted")}
	var logs bytes.Buffer
	b := newBoost(src, pr, slog.New(slog.NewTextHandler(&logs, nil)), nil)
	for i := range 20 {
		src.n++
		b.step(int64(i) * int64(4*time.Millisecond))
	}
	if b.raised() || !b.off {
		t.Fatalf("raised=%v off=%v after a refused raise", b.raised(), b.off)
	}
	if got := strings.Count(logs.String(), "cannot raise"); got != 1 {
		t.Fatalf("the refusal was logged %d times, want once:\n%s", got, logs.String())
	}
	src2 := &fakeDrops{err: errors.New("closed")}
	pr2 := &fakePrio{}
	b2 := newBoost(src2, pr2, slog.New(slog.DiscardHandler), nil)
	b2.step(int64(time.Second))
	if pr2.raises != 0 {
		t.Fatal("a socket whose counter cannot be read raised the priority")
	}
}

// TestNewBoostNeedsBoth checks that a worker gets no boost without a drop counter or without a
// Prioritizer.
func TestNewBoostNeedsBoth(t *testing.T) {
	type plain struct{ RxSocket }
	if b := newBoost(plain{}, &fakePrio{}, slog.New(slog.DiscardHandler), nil); b != nil {
		t.Fatal("a socket without RxDrops got a boost")
	}
	if b := newBoost(&fakeDrops{}, nil, slog.New(slog.DiscardHandler), nil); b != nil {
		t.Fatal("a nil Prioritizer gave a boost")
	}
}

// TestWorkerStepsBoost checks that the worker steps its boost at the yield's pace, on the
// worker's own goroutine (where Raise must run to lock the right thread).
func TestWorkerStepsBoost(t *testing.T) {
	src := &fakeDrops{}
	pr := &fakePrio{}
	w := &worker{yield: func() {}}
	w.boost = newBoost(src, pr, slog.New(slog.DiscardHandler), nil)
	src.n = 3
	w.maybeYield(yieldEvery - 1)
	if pr.raises != 0 {
		t.Fatal("boost stepped before yieldEvery had passed")
	}
	w.maybeYield(yieldEvery)
	if pr.raises != 1 {
		t.Fatalf("%d raises after the first yield with new drops, want 1", pr.raises)
	}
}

// dropRx is a fakeRx with a kernel drop counter.
type dropRx struct {
	*fakeRx
	drops atomic.Uint64
}

func (r *dropRx) RxDrops() (uint64, error) { return r.drops.Load(), nil }

// TestFastPathStatsAcrossLives runs the node on a socket that reports drops, overloads it until
// the worker raises its priority, and checks the status side: the raise is shown while it lasts
// and ends with the worker, and the ring drops of a life's sockets survive into the next life.
func TestFastPathStatsAcrossLives(t *testing.T) {
	eng := newEngine(t, allMembers(), knownMACs())
	n := New(Config{Engine: eng, Priority: &fakePrio{}})
	n.SetActive(true)
	life := func(startDrops uint64, overload bool) {
		t.Helper()
		rx := &dropRx{fakeRx: newFakeRx()}
		rx.drops.Store(startDrops)
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- n.Run(ctx, Sockets{Workers: []RxSocket{rx}, Lo: newFakeTx()}) }()
		waitFor(t, "the socket in the status", func() bool { return n.FastPathStats().RingDrops >= startDrops })
		if overload {
			// Frames keep coming while the kernel counts drops: within a few of the worker's
			// 4 ms checks it raises itself.
			deadline := time.Now().Add(5 * time.Second)
			for n.FastPathStats().RaisedWorkers == 0 && time.Now().Before(deadline) {
				rx.drops.Add(10)
				rx.push(wire(vnetHdrT, tcpSYN(t, 30000)))
				time.Sleep(time.Millisecond)
			}
			if st := n.FastPathStats(); st.RaisedWorkers != 1 || st.PriorityRaises != 1 {
				t.Fatalf("under overload: %+v, want 1 worker raised once", st)
			}
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("Run: %v", err)
		}
	}
	life(40, true)
	st := n.FastPathStats()
	if st.RaisedWorkers != 0 {
		t.Fatalf("%d workers still raised after Run returned", st.RaisedWorkers)
	}
	first := st.RingDrops
	if first < 40 {
		t.Fatalf("ring drops %d after the first life, want >= 40", first)
	}
	life(2, false)
	if got := n.FastPathStats().RingDrops; got != first+2 {
		t.Fatalf("ring drops %d after the second life, want %d + 2", got, first)
	}
	if got := n.FastPathStats().PriorityRaises; got != 1 {
		t.Fatalf("%d raises in all, want 1", got)
	}
}
