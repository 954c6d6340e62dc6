package election

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestHealthHysteresis(t *testing.T) {
	if _, err := NewHealth(func() bool { return true }, 0, 1); !errors.Is(err, ErrBadThreshold) {
		t.Fatalf("rise 0: %v", err)
	}
	results := []bool{}
	next := 0
	h, err := NewHealth(func() bool { r := results[next]; next++; return r }, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	// Probe results and, after each, the expected state and change.
	steps := []struct {
		in, healthy, changed bool
	}{
		{true, false, false}, // 1 of rise 2: still down (starts unhealthy)
		{false, false, false},
		{true, false, false},
		{true, true, true}, // 2 consecutive successes
		{false, true, false},
		{false, true, false},
		{true, true, false}, // resets the failure streak
		{false, true, false},
		{false, true, false},
		{false, false, true}, // 3 consecutive failures
		{false, false, false},
		{true, false, false},
		{true, true, true},
	}
	for i, st := range steps {
		results = append(results, st.in)
		healthy, changed := h.Step()
		if healthy != st.healthy || changed != st.changed || h.Healthy() != st.healthy {
			t.Fatalf("step %d (probe %v): got healthy=%v changed=%v, want %v %v", i, st.in, healthy, changed, st.healthy, st.changed)
		}
	}
}

func TestTCPProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	up := netip.MustParseAddrPort(ln.Addr().String())
	// A port that was just free: bind, note, close.
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := netip.MustParseAddrPort(ln2.Addr().String())
	ln2.Close()

	if !TCPProbe([]netip.AddrPort{up}, time.Second)() {
		t.Fatal("probe of a listening port failed")
	}
	if TCPProbe([]netip.AddrPort{up, down}, time.Second)() {
		t.Fatal("probe succeeded although one port is closed")
	}
	if TCPProbe([]netip.AddrPort{down}, time.Second)() {
		t.Fatal("probe of a closed port succeeded")
	}
	if !TCPProbe(nil, time.Second)() {
		t.Fatal("probe with nothing to check failed")
	}
}

func TestParsePortRange(t *testing.T) {
	lo, hi, err := ParsePortRange("50000\t54000\n")
	if err != nil || lo != 50000 || hi != 54000 {
		t.Fatalf("got %d %d %v", lo, hi, err)
	}
	for _, bad := range []string{"", "1", "5 4", "0 10", "1 70000", "a b", "1 2 3"} {
		if _, _, err := ParsePortRange(bad); !errors.Is(err, ErrPortRange) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	// The host's own value must parse; it is only read.
	if lo, hi, err := LocalPortRange(); err != nil || lo > hi {
		t.Fatalf("host ip_local_port_range: %d %d %v", lo, hi, err)
	}
}
