package election

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeBus is an in-memory membership shared by fake nodes: an UpdateMeta is
// visible to every node at once and signals all of them.
type fakeBus struct {
	mu    sync.Mutex
	metas map[string]NodeMeta
	alive map[string]bool
	chans map[string]chan struct{}
	// events records apply calls in order across nodes.
	events []string
}

type fakeMember struct {
	bus  *fakeBus
	name string
}

func (b *fakeBus) join(meta NodeMeta) *fakeMember {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.metas[meta.Name] = meta
	b.alive[meta.Name] = true
	b.chans[meta.Name] = make(chan struct{}, 1)
	return &fakeMember{b, meta.Name}
}

func (f *fakeMember) View() View {
	f.bus.mu.Lock()
	defer f.bus.mu.Unlock()
	v := View{Self: f.name}
	for name, m := range f.bus.metas {
		v.Members = append(v.Members, Member{NodeMeta: m, Alive: f.bus.alive[name]})
	}
	return v
}

func (f *fakeMember) Updated() <-chan struct{} {
	f.bus.mu.Lock()
	defer f.bus.mu.Unlock()
	return f.bus.chans[f.name]
}

func (f *fakeMember) UpdateMeta(m NodeMeta) error {
	f.bus.mu.Lock()
	defer f.bus.mu.Unlock()
	m.Active = slices.Clone(m.Active)
	f.bus.metas[f.name] = m
	for _, ch := range f.bus.chans {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return nil
}

func (b *fakeBus) record(name string) func(acq, rel []netip.Addr) {
	return func(acq, rel []netip.Addr) {
		b.mu.Lock()
		defer b.mu.Unlock()
		if len(acq) > 0 {
			b.events = append(b.events, fmt.Sprintf("%s+%d", name, len(acq)))
		}
		if len(rel) > 0 {
			b.events = append(b.events, fmt.Sprintf("%s-%d", name, len(rel)))
		}
	}
}

func TestRunnerHandover(t *testing.T) {
	bus := &fakeBus{metas: map[string]NodeMeta{}, alive: map[string]bool{}, chans: map[string]chan struct{}{}}
	vips := vipList(2)
	var runners []*Runner
	for i, name := range []string{"a", "b"} {
		meta := NodeMeta{Name: name, Priority: uint8(10 - i), Healthy: true, Capable: true}
		r := NewRunner(bus.join(meta), NewElector(name, vips, Options{}, testLogger(t)), meta, bus.record(name))
		runners = append(runners, r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, r := range runners {
		wg.Add(1)
		go func() { defer wg.Done(); r.Run(ctx, testLogger(t)) }()
	}
	defer func() { cancel(); wg.Wait() }()

	waitFor(t, "a elected", 2*time.Second, func() bool { return len(runners[0].Owned()) == 2 })
	if len(runners[1].Owned()) != 0 {
		t.Fatal("b serves VIPs while a is elected")
	}

	hctx, hcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer hcancel()
	if err := runners[0].Handover(hctx); err != nil {
		t.Fatalf("hand-over: %v", err)
	}
	if len(runners[0].Owned()) != 0 || len(runners[1].Owned()) != 2 {
		t.Fatalf("after hand-over a owns %v, b owns %v", runners[0].Owned(), runners[1].Owned())
	}
	bus.mu.Lock()
	ev := slices.Clone(bus.events)
	bus.mu.Unlock()
	// b must have started serving before a stopped: no gap.
	if !slices.Equal(ev, []string{"a+2", "b+2", "a-2"}) {
		t.Fatalf("apply order %v", ev)
	}
}

func TestRunnerHandoverAloneTimesOut(t *testing.T) {
	bus := &fakeBus{metas: map[string]NodeMeta{}, alive: map[string]bool{}, chans: map[string]chan struct{}{}}
	meta := NodeMeta{Name: "a", Healthy: true, Capable: true}
	r := NewRunner(bus.join(meta), NewElector("a", vipList(1), Options{}, testLogger(t)), meta, bus.record("a"))
	if err := r.Sync(); err != nil || len(r.Owned()) != 1 {
		t.Fatalf("sole node not elected: %v %v", r.Owned(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := r.Handover(ctx); err != context.DeadlineExceeded {
		t.Fatalf("hand-over with nobody to take over: %v", err)
	}
	if len(r.Owned()) != 0 || !slices.Equal(bus.events, []string{"a+1", "a-1"}) {
		t.Fatalf("after timed-out hand-over: owned %v, events %v", r.Owned(), bus.events)
	}
	if got := bus.metas["a"]; len(got.Active) != 0 || !got.Draining {
		t.Fatalf("announced %+v after stop", got)
	}
}
