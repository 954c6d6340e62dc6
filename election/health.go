package election

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"
)

// ErrBadThreshold reports a rise or fall count below 1.
var ErrBadThreshold = errors.New("election: rise and fall must be at least 1")

// Health turns a service probe into a healthy flag with hysteresis: rise
// consecutive successes make an unhealthy node healthy, fall consecutive
// failures make a healthy node unhealthy (the scheme of keepalived and
// HAProxy checks), so one lost probe does not move traffic around.
//
// A new Health starts unhealthy: a node must prove its services answer
// before it attracts flows or the balancer role. Health is not safe for
// concurrent use; one goroutine steps it.
type Health struct {
	probe      func() bool
	rise, fall int
	healthy    bool
	streak     int // consecutive results that disagree with healthy
}

// NewHealth returns a Health driven by probe. It returns ErrBadThreshold if
// rise or fall is below 1.
func NewHealth(probe func() bool, rise, fall int) (*Health, error) {
	if rise < 1 || fall < 1 {
		return nil, ErrBadThreshold
	}
	return &Health{probe: probe, rise: rise, fall: fall}, nil
}

// Step runs the probe once and returns the resulting state and whether this
// step changed it.
func (h *Health) Step() (healthy, changed bool) {
	return h.Observe(h.probe())
}

// Observe feeds one probe result without running the probe, for callers that
// probe elsewhere; it returns the same as Step.
func (h *Health) Observe(ok bool) (healthy, changed bool) {
	if ok == h.healthy {
		h.streak = 0
		return h.healthy, false
	}
	h.streak++
	need := h.fall
	if ok {
		need = h.rise
	}
	if h.streak >= need {
		h.healthy = ok
		h.streak = 0
		return h.healthy, true
	}
	return h.healthy, false
}

// TCPProbe returns a probe that succeeds when a TCP connection to every one
// of addrs is accepted within timeout; the connections are closed at once.
// The addresses are tried in parallel so a probe lasts at most timeout. With
// no addresses the probe always succeeds (nothing to check).
func TCPProbe(addrs []netip.AddrPort, timeout time.Duration) func() bool {
	addrs = append([]netip.AddrPort(nil), addrs...)
	return func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok := true
		for _, a := range addrs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var d net.Dialer
				c, err := d.DialContext(ctx, "tcp", a.String())
				if err != nil {
					mu.Lock()
					ok = false
					mu.Unlock()
					return
				}
				_ = c.Close()
			}()
		}
		wg.Wait()
		return ok
	}
}
