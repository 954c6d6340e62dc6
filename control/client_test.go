package control

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDrainWaitsForFlowsAndTemplates(t *testing.T) {
	member := netip.MustParseAddr("192.0.2.12")
	f := &fakeProvider{status: sampleStatus()}
	// Each look at the status ends one flow, then one template once the flows are gone.
	f.onStatus = func(s *Status) {
		for i := range s.Members {
			m := &s.Members[i]
			if m.Addr != member.String() || m.Weight != 0 {
				continue
			}
			if m.Flows > 0 {
				m.Flows--
			} else if m.Templates > 0 {
				m.Templates--
			}
		}
	}
	c := Dial(startServer(t, f))
	c.pollInterval = 5 * time.Millisecond
	var seen [][2]int64
	err := c.Drain(member, true, 10*time.Second, func(flows, templates int64) {
		seen = append(seen, [2]int64{flows, templates})
	})
	if err != nil {
		t.Fatal(err)
	}
	// Member 192.0.2.12 starts with 3 flows and 1 template.
	want := [][2]int64{{2, 1}, {1, 1}, {0, 1}, {0, 0}}
	if !reflect.DeepEqual(seen, want) {
		t.Errorf("progress %v, want %v", seen, want)
	}
	if f.weights[member] != 0 || len(f.weights) != 1 {
		t.Errorf("weights set %v, want only %v at 0", f.weights, member)
	}
	other, _ := f.Status().FindMember(netip.MustParseAddr("192.0.2.11"))
	if other.Weight != 100 || other.Flows != 6 {
		t.Errorf("the other member changed: %+v", other)
	}
}

func TestDrainTimeout(t *testing.T) {
	member := netip.MustParseAddr("192.0.2.11")
	f := &fakeProvider{status: sampleStatus()}
	c := Dial(startServer(t, f))
	c.pollInterval = 20 * time.Millisecond
	start := time.Now()
	polls := 0
	err := c.Drain(member, true, 150*time.Millisecond, func(int64, int64) { polls++ })
	took := time.Since(start)
	if !errors.Is(err, ErrDrainTimeout) || !strings.Contains(err.Error(), "6 flows and 2 templates") {
		t.Fatalf("Drain of a member whose flows never end: %v, want ErrDrainTimeout with the counts", err)
	}
	if took < 150*time.Millisecond || took > 5*time.Second {
		t.Errorf("Drain gave up after %v, want about 150ms", took)
	}
	if polls < 3 {
		t.Errorf("only %d polls in 150ms at a 20ms interval", polls)
	}
	if s := f.Status(); s.Members[0].Weight != 0 {
		t.Errorf("weight after a timed-out drain %d, want 0 (quiescent stays)", s.Members[0].Weight)
	}
}

func TestDrainWithoutWait(t *testing.T) {
	member := netip.MustParseAddr("192.0.2.11")
	f := &fakeProvider{status: sampleStatus()}
	c := Dial(startServer(t, f))
	called := false
	if err := c.Drain(member, false, time.Second, func(int64, int64) { called = true }); err != nil {
		t.Fatal(err)
	}
	if called || f.weights[member] != 0 {
		t.Errorf("drain without wait: progress called %v, weights %v", called, f.weights)
	}
	if _, ok := f.weights[member]; !ok {
		t.Errorf("drain without wait did not set the weight")
	}
}

func TestDrainUnknownMember(t *testing.T) {
	c := Dial(startServer(t, &fakeProvider{status: sampleStatus()}))
	err := c.Drain(netip.MustParseAddr("192.0.2.99"), true, time.Second, nil)
	var re *RemoteError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "unknown member") {
		t.Errorf("Drain of an unknown member: %v", err)
	}
}

func TestDrainMemberRemovedMeanwhile(t *testing.T) {
	member := netip.MustParseAddr("192.0.2.12")
	f := &fakeProvider{status: sampleStatus()}
	f.onStatus = func(s *Status) {
		if s.Members[1].Weight == 0 {
			s.Members = s.Members[:1]
		}
	}
	c := Dial(startServer(t, f))
	c.pollInterval = 5 * time.Millisecond
	if err := c.Drain(member, true, time.Second, nil); err != nil {
		t.Errorf("Drain of a member that went away: %v, want done", err)
	}
}
