package election

import (
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
	got := Decide(v, vips)
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
	if got := Decide(v, vips)[vips[0]]; got != "z" {
		t.Fatalf("owner %q, want z (the only candidate)", got)
	}
	v.Members = v.Members[:4]
	if got := Decide(v, vips); len(got) != 0 {
		t.Fatalf("no candidates, got owners %v", got)
	}
}

func TestDecideOrderIndependent(t *testing.T) {
	vips := vipList(50)
	ms := []Member{node("n1", 3), node("n2", 3), node("n3", 1), node("n4", 3), node("n5", 2)}
	want := Decide(View{Members: ms}, vips)
	for i := range 20 {
		sh := append([]Member(nil), ms...)
		r := rand.New(rand.NewPCG(uint64(i), 1))
		r.Shuffle(len(sh), func(a, b int) { sh[a], sh[b] = sh[b], sh[a] })
		if got := Decide(View{Members: sh}, vips); !reflect.DeepEqual(got, want) {
			t.Fatalf("order %v changed the result", sh)
		}
	}
}
