package healthcheck

import (
	"errors"
	"testing"
)

func TestHealthHysteresis(t *testing.T) {
	if _, err := NewHealth(func() bool { return true }, 0, 1); !errors.Is(err, ErrBadThreshold) {
		t.Fatalf("rise 0: %v", err)
	}
	var next bool
	h, err := NewHealth(func() bool { return next }, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct{ in, healthy, changed bool }{
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
		{true, false, false},
		{true, true, true},
	}
	for i, st := range steps {
		next = st.in
		healthy, changed := h.Step()
		if healthy != st.healthy || changed != st.changed || h.Healthy() != st.healthy {
			t.Fatalf("step %d (probe %v): got %v %v, want %v %v", i, st.in, healthy, changed, st.healthy, st.changed)
		}
	}
	h.Observe(false) // streak 1 of fall 3
	h.Set(true)
	if _, changed := h.Observe(false); changed || !h.Healthy() {
		t.Fatal("Set did not clear the streak")
	}
}
