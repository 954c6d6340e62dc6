package memlat

import "testing"

// The chain is one cycle through every line: a walk of as many hops as
// there are lines visits each once and comes back to the start.
func TestChainIsOneCycle(t *testing.T) {
	const size = 1 << 20
	chain := Chain(size)
	lines := size / 64
	seen := make([]bool, lines)
	p := uint64(0)
	for i := range lines {
		if p%stride != 0 || p >= uint64(len(chain)) {
			t.Fatalf("hop %d: index %d is not a line start inside the chain", i, p)
		}
		if seen[p/stride] {
			t.Fatalf("hop %d: line %d visited twice", i, p/stride)
		}
		seen[p/stride] = true
		p = chain[p]
	}
	if p != 0 {
		t.Errorf("after %d hops the walk is at %d, want back at 0", lines, p)
	}
	if Walk(chain, lines) != 0 {
		t.Error("Walk of a full cycle does not end at the start")
	}
}
