package healthcheck

import "errors"

// ErrBadThreshold reports a rise or fall count below 1.
var ErrBadThreshold = errors.New("healthcheck: rise and fall must be at least 1")

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

// NewHealth returns a Health driven by probe (which may be nil for a
// Health fed only through Observe). It returns ErrBadThreshold if rise or
// fall is below 1.
func NewHealth(probe func() bool, rise, fall int) (*Health, error) {
	if rise < 1 || fall < 1 {
		return nil, ErrBadThreshold
	}
	return &Health{probe: probe, rise: rise, fall: fall}, nil
}

// Step runs the probe once and returns the resulting state and whether this
// step changed it. A Health without a probe counts the step as a failure.
func (h *Health) Step() (healthy, changed bool) {
	return h.Observe(h.probe != nil && h.probe())
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

// Healthy returns the current state.
func (h *Health) Healthy() bool { return h.healthy }

// Set forces the state, clearing any streak; a standby uses it to adopt the
// view of the node it takes over from.
func (h *Health) Set(healthy bool) {
	h.healthy = healthy
	h.streak = 0
}
