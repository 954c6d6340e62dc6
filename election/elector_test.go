package election

import (
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// sim is a fake membership: nodes with electors, a reachability relation for
// partitions, and views built from it. No timers, no sockets.
type sim struct {
	t     *testing.T
	vips  []netip.Addr
	opt   Options
	nodes map[string]*simNode
	names []string
	cut   map[[2]string]bool // pairs that cannot see each other
	logs  []string
	quiet bool // do not copy log lines to the test log
}

type simNode struct {
	meta NodeMeta
	e    *Elector
	up   bool
}

func newSim(t *testing.T, vips []netip.Addr, opt Options, prio map[string]uint8) *sim {
	s := &sim{t: t, vips: vips, opt: opt, nodes: map[string]*simNode{}, cut: map[[2]string]bool{}}
	for name, p := range prio {
		s.names = append(s.names, name)
		s.nodes[name] = &simNode{meta: NodeMeta{Name: name, Priority: p, Healthy: true, Capable: true, TableReady: true}}
		s.start(name)
	}
	slices.Sort(s.names)
	return s
}

// Write stores one log record as slog's text handler renders it (the sim
// runs on the test's goroutine) and copies it to the test log.
func (s *sim) Write(p []byte) (int, error) {
	line := strings.TrimSuffix(string(p), "\n")
	s.logs = append(s.logs, line)
	if !s.quiet {
		s.t.Log(line)
	}
	return len(p), nil
}

// logger returns a logger writing to s, without the time.
func (s *sim) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(s, &slog.HandlerOptions{ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}))
}

// start (re)starts a node: fresh elector, nothing served, table not synced.
func (s *sim) start(name string) {
	n := s.nodes[name]
	n.up = true
	n.meta.Active = nil
	n.e = NewElector(name, s.vips, s.opt, s.logger())
}

func (s *sim) sees(a, b string) bool {
	return !s.cut[[2]string{a, b}] && !s.cut[[2]string{b, a}]
}

func (s *sim) partition(groupA ...string) {
	for _, a := range groupA {
		for _, b := range s.names {
			if !slices.Contains(groupA, b) {
				s.cut[[2]string{a, b}] = true
			}
		}
	}
}

func (s *sim) heal() { clear(s.cut) }

func (s *sim) view(self string) View {
	v := View{Self: self}
	for _, name := range s.names {
		n := s.nodes[name]
		v.Members = append(v.Members, Member{NodeMeta: n.meta, Alive: n.up && s.sees(self, name)})
	}
	return v
}

// step runs one node's elector and publishes its Active list, as the real
// loop does with UpdateMeta.
func (s *sim) step(name string) (acq, rel []netip.Addr) {
	n := s.nodes[name]
	acq, rel = n.e.Step(s.view(name))
	n.meta.Active = n.e.Owned()
	return acq, rel
}

// settle steps every live node until nothing changes.
func (s *sim) settle() {
	for range 10 {
		changed := false
		for _, name := range s.names {
			if s.nodes[name].up {
				a, r := s.step(name)
				changed = changed || len(a)+len(r) > 0
			}
		}
		if !changed {
			return
		}
	}
	s.t.Fatal("election does not settle")
}

func (s *sim) owners(vip netip.Addr) []string {
	var out []string
	for _, name := range s.names {
		if n := s.nodes[name]; n.up && slices.Contains(n.meta.Active, vip) {
			out = append(out, name)
		}
	}
	return out
}

func (s *sim) wantOwner(want string) {
	s.t.Helper()
	for _, vip := range s.vips {
		if got := s.owners(vip); len(got) != 1 || got[0] != want {
			s.t.Fatalf("%s owned by %v, want [%s]", vip, got, want)
		}
	}
}

func (s *sim) logged(substr string) bool {
	for _, l := range s.logs {
		if strings.Contains(l, substr) {
			return true
		}
	}
	return false
}

var abc = map[string]uint8{"a": 30, "b": 20, "c": 10}

func TestElectorFailoverNoPreempt(t *testing.T) {
	s := newSim(t, vipList(3), Options{}, abc)
	s.settle()
	s.wantOwner("a")

	// a crashes: b, next by priority, acquires on its first step.
	s.nodes["a"].up = false
	if acq, _ := s.step("b"); len(acq) != 3 {
		t.Fatalf("b acquired %v after a crashed", acq)
	}
	if acq, _ := s.step("c"); len(acq) != 0 {
		t.Fatalf("c acquired %v although b is elected", acq)
	}
	s.wantOwner("b")

	// a restarts with a synced table: no preemption, b keeps serving.
	s.start("a")
	s.settle()
	s.wantOwner("b")
	if !s.logged(`not preempting" node=a vip=198.51.100.1 holders=b`) {
		t.Fatal("a did not log that it does not preempt")
	}
	// b crashes later: a, the Decide winner, takes over.
	s.nodes["b"].up = false
	s.settle()
	s.wantOwner("a")
}

func TestElectorPreemptWaitsForTable(t *testing.T) {
	s := newSim(t, vipList(2), Options{Preempt: true}, abc)
	s.settle()
	s.nodes["a"].up = false
	s.settle()
	s.wantOwner("b")

	s.start("a")
	s.nodes["a"].meta.TableReady = false
	s.settle()
	s.wantOwner("b")
	if !s.logged("waiting for the synced table") {
		t.Fatal("a did not log that it waits for the table")
	}

	s.nodes["a"].meta.TableReady = true
	if acq, _ := s.step("a"); len(acq) != 2 {
		t.Fatalf("synced a acquired %v", acq)
	}
	if _, rel := s.step("b"); len(rel) != 2 {
		t.Fatalf("b released %v when preempted", rel)
	}
	s.settle()
	s.wantOwner("a")
}

func TestElectorDrainingHandsOver(t *testing.T) {
	s := newSim(t, vipList(2), Options{}, abc)
	s.settle()
	s.wantOwner("a")

	// SIGTERM on a: it announces Draining and keeps serving until b has
	// taken over, so the VIPs are never unserved.
	s.nodes["a"].meta.Draining = true
	if _, rel := s.step("a"); len(rel) != 0 {
		t.Fatalf("draining a released %v before anyone took over", rel)
	}
	if acq, _ := s.step("b"); len(acq) != 2 {
		t.Fatalf("b acquired %v from draining a", acq)
	}
	if _, rel := s.step("a"); len(rel) != 2 {
		t.Fatalf("a released %v after b took over", rel)
	}
	if len(s.nodes["a"].e.Owned()) != 0 {
		t.Fatal("a still owns VIPs after hand-over")
	}
	s.settle()
	s.wantOwner("b")
	if !s.logged(`msg="handed the VIP over" node=a vip=198.51.100.1 to=b`) {
		t.Fatal("hand-over not logged")
	}
}

func TestElectorUnhealthyActiveHandsOver(t *testing.T) {
	s := newSim(t, vipList(1), Options{}, abc)
	s.settle()
	s.nodes["a"].meta.Healthy = false
	s.settle()
	s.wantOwner("b")
}

func TestElectorLastNodeKeepsServingWhileDraining(t *testing.T) {
	s := newSim(t, vipList(1), Options{}, map[string]uint8{"a": 1})
	s.settle()
	s.nodes["a"].meta.Draining = true
	s.settle()
	s.wantOwner("a")
	if got := s.nodes["a"].e.ReleaseAll(); len(got) != 1 {
		t.Fatalf("ReleaseAll returned %v", got)
	}
	if len(s.nodes["a"].e.Owned()) != 0 {
		t.Fatal("ReleaseAll left VIPs owned")
	}
}

func TestElectorSplitBrain(t *testing.T) {
	for _, first := range []string{"a", "b"} {
		t.Run("first="+first, func(t *testing.T) {
			s := newSim(t, vipList(2), Options{}, abc)
			s.partition("a")
			s.settle()
			if got := s.owners(s.vips[0]); !slices.Equal(got, []string{"a", "b"}) {
				t.Fatalf("partitioned owners %v, want a and b", got)
			}
			s.heal()
			// Whatever order the nodes notice, the loser (b, lower
			// priority) yields at its first step and a keeps.
			for _, n := range []string{first, map[string]string{"a": "b", "b": "a"}[first]} {
				_, rel := s.step(n)
				if n == "a" && len(rel) != 0 {
					t.Fatalf("winner a released %v", rel)
				}
				if n == "b" && len(rel) != 2 {
					t.Fatalf("loser b released %v, want both VIPs", rel)
				}
			}
			s.settle()
			s.wantOwner("a")
			if !s.logged(`yielding" node=b vip=198.51.100.1 others=a winner=a`) {
				t.Fatal("loser did not log the conflict")
			}
			if first == "a" && !s.logged(`keeping it, they must yield" node=a vip=198.51.100.1 others=b`) {
				t.Fatal("winner did not log the conflict")
			}
		})
	}
}

// TestElectorRandomHeal drives random crashes, restarts, partitions and
// health changes, then heals everything: every VIP must end with exactly one
// owner, and with Preempt it must be the one Decide names.
func TestElectorRandomHeal(t *testing.T) {
	names := map[string]uint8{"n0": 1, "n1": 2, "n2": 2, "n3": 3, "n4": 0}
	for _, opt := range []Options{{}, {Preempt: true}} {
		for seed := range 30 {
			s := newSim(t, vipList(8), opt, names)
			s.quiet = true
			r := rand.New(rand.NewPCG(uint64(seed), 7))
			for range 25 {
				n := s.names[r.IntN(len(s.names))]
				switch r.IntN(5) {
				case 0:
					s.nodes[n].up = false
				case 1:
					if !s.nodes[n].up {
						s.start(n)
					}
				case 2:
					s.heal()
					s.partition(s.names[:r.IntN(len(s.names))]...)
				case 3:
					s.nodes[n].meta.Healthy = !s.nodes[n].meta.Healthy
				case 4:
					s.nodes[n].meta.TableReady = !s.nodes[n].meta.TableReady
				}
				for _, name := range s.names {
					if s.nodes[name].up && r.IntN(2) == 0 {
						s.step(name)
					}
				}
			}
			s.heal()
			for _, n := range s.names {
				s.nodes[n].meta.Healthy = true
				s.nodes[n].meta.TableReady = true
			}
			s.settle()
			var up []string
			for _, n := range s.names {
				if s.nodes[n].up {
					up = append(up, n)
				}
			}
			want := Decide(s.view(s.names[0]), s.vips)
			for _, vip := range s.vips {
				got := s.owners(vip)
				if len(up) > 0 && len(got) != 1 {
					t.Fatalf("%+v seed %d: %s owned by %v (up %v)", opt, seed, vip, got, up)
				}
				if len(up) > 0 && opt.Preempt && got[0] != want[vip] {
					t.Fatalf("%+v seed %d: %s owned by %v, Decide says %s", opt, seed, vip, got, want[vip])
				}
			}
		}
	}
}
