package election

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"
)

func node(name string, prio uint8) Member {
	return Member{NodeMeta: NodeMeta{Name: name, Priority: prio, Healthy: true, Capable: true}, Alive: true}
}

func vipList(n int) []netip.Addr {
	var out []netip.Addr
	a := netip.MustParseAddr("198.51.100.1")
	for range n {
		out = append(out, a)
		a = a.Next()
	}
	return out
}

func TestDecidePriorityThenName(t *testing.T) {
	vips := vipList(3)
	v := View{Members: []Member{node("c", 5), node("b", 9), node("a", 5), node("d", 9)}}
	got := Decide(v, vips, Options{})
	for _, vip := range vips {
		if got[vip] != "b" {
			t.Fatalf("%s owned by %q, want b (priority 9, then name)", vip, got[vip])
		}
	}
}

func TestDecideExcludesIneligible(t *testing.T) {
	vips := vipList(1)
	dead, sick, incapable, draining := node("a", 9), node("b", 9), node("c", 9), node("d", 9)
	dead.Alive = false
	sick.Healthy = false
	incapable.Capable = false
	draining.Draining = true
	v := View{Members: []Member{dead, sick, incapable, draining, node("z", 1)}}
	if got := Decide(v, vips, Options{})[vips[0]]; got != "z" {
		t.Fatalf("owner %q, want z (the only candidate)", got)
	}
	v.Members = v.Members[:4]
	for _, opt := range []Options{{}, {Spread: true}} {
		if got := Decide(v, vips, opt); len(got) != 0 {
			t.Fatalf("%+v: no candidates, got owners %v", opt, got)
		}
	}
}

func TestDecideOrderIndependent(t *testing.T) {
	vips := vipList(50)
	ms := []Member{node("n1", 3), node("n2", 3), node("n3", 1), node("n4", 3), node("n5", 2)}
	for _, opt := range []Options{{}, {Spread: true}} {
		want := Decide(View{Members: ms}, vips, opt)
		for i := range 20 {
			sh := append([]Member(nil), ms...)
			r := rand.New(rand.NewPCG(uint64(i), 1))
			r.Shuffle(len(sh), func(a, b int) { sh[a], sh[b] = sh[b], sh[a] })
			if got := Decide(View{Members: sh}, vips, opt); !reflect.DeepEqual(got, want) {
				t.Fatalf("%+v: order %v changed the result", opt, sh)
			}
		}
	}
}

func TestDecideSpreadConsistent(t *testing.T) {
	vips := vipList(600)
	var ms []Member
	for i := range 4 {
		ms = append(ms, node(fmt.Sprintf("lb%d", i), 0))
	}
	before := Decide(View{Members: ms}, vips, Options{Spread: true})
	count := map[string]int{}
	for _, n := range before {
		count[n]++
	}
	// 150 expected per node; a fair hash stays well within ±50.
	for _, m := range ms {
		if c := count[m.Name]; c < 100 || c > 200 {
			t.Fatalf("uneven spread %v", count)
		}
	}
	// Adding a node moves VIPs only to it.
	added := Decide(View{Members: append(ms, node("lb4", 0))}, vips, Options{Spread: true})
	moved := 0
	for _, vip := range vips {
		if added[vip] != before[vip] {
			if added[vip] != "lb4" {
				t.Fatalf("%s moved from %s to %s, not to the new node", vip, before[vip], added[vip])
			}
			moved++
		}
	}
	if moved < 60 || moved > 180 { // about 600/5
		t.Fatalf("adding a fifth node moved %d of 600 VIPs", moved)
	}
	// Removing a node moves only its VIPs.
	removed := Decide(View{Members: ms[1:]}, vips, Options{Spread: true})
	for _, vip := range vips {
		if before[vip] != "lb0" && removed[vip] != before[vip] {
			t.Fatalf("%s moved from %s to %s though lb0 did not own it", vip, before[vip], removed[vip])
		}
		if removed[vip] == "lb0" {
			t.Fatalf("%s still owned by removed node", vip)
		}
	}
}
