package main

import (
	"runtime"
	"testing"

	"github.com/l2lb/l2lb/balancer"
)

// TestReserveProcs checks the Ps reserved for the fast path's waiting goroutines: one per socket
// the backend may open on top of the runtime's own, none when the operator set GOMAXPROCS.
func TestReserveProcs(t *testing.T) {
	old := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(old) })
	t.Setenv("GOMAXPROCS", "")
	for _, c := range []struct {
		backend string
		workers int
		want    int
	}{{"afpacket", 1, 1}, {"afpacket", 2, 2}, {"afxdp", 1, 2}, {"afxdp", 2, 4}} {
		runtime.GOMAXPROCS(old)
		reserveProcs(balancer.Flags{Backend: c.backend, Workers: c.workers})
		if got := runtime.GOMAXPROCS(0); got != old+c.want {
			t.Errorf("%s with %d workers: GOMAXPROCS %d, want %d + %d", c.backend, c.workers, got, old, c.want)
		}
	}
	runtime.GOMAXPROCS(3)
	t.Setenv("GOMAXPROCS", "3")
	reserveProcs(balancer.Flags{Backend: "afpacket", Workers: 4})
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Errorf("GOMAXPROCS=3 in the environment: GOMAXPROCS %d after reserveProcs, want 3", got)
	}
}
