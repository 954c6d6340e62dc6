package static

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/balancer"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/vipset"
)

func TestParseMembers(t *testing.T) {
	self := netip.MustParseAddr("192.0.2.11")
	vips := vipset.New(netip.MustParseAddr("192.0.2.200"))
	ms, err := ParseMembers([]string{"192.0.2.11", "192.0.2.12=50", "192.0.2.13,192.0.2.14"},
		[]string{"192.0.2.12=55000-59000"}, 30, map[netip.Addr]bool{self: true}, vips)
	if err != nil {
		t.Fatal(err)
	}
	want := []balancer.Member{
		{Addr: self, Weight: 30, Local: true},
		{Addr: netip.MustParseAddr("192.0.2.12"), Weight: 50, Ports: dataplane.PortRange{Lo: 55000, Hi: 59000}},
		{Addr: netip.MustParseAddr("192.0.2.13"), Weight: 100},
		{Addr: netip.MustParseAddr("192.0.2.14"), Weight: 100},
	}
	if len(ms) != len(want) {
		t.Fatalf("got %+v", ms)
	}
	for i := range want {
		if ms[i] != want[i] {
			t.Errorf("member %d: got %+v, want %+v", i, ms[i], want[i])
		}
	}
	for _, bad := range []struct {
		members, ranges []string
		msg             string
	}{
		{[]string{"192.0.2.300"}, nil, "not an IPv4 or IPv6"},
		{[]string{"::ffff:192.0.2.12"}, nil, "not an IPv4 or IPv6"},
		{[]string{"192.0.2.200"}, nil, "that is a VIP"},
		{[]string{"192.0.2.12", "192.0.2.12"}, nil, "given twice"},
		{[]string{"192.0.2.12=x"}, nil, "bad weight"},
		{[]string{"192.0.2.12"}, []string{"192.0.2.13=1-2"}, "not a --member"},
		{[]string{"192.0.2.12"}, []string{"192.0.2.12=9-2"}, "LO <= HI"},
	} {
		_, err := ParseMembers(bad.members, bad.ranges, 100, nil, vips)
		if !errors.Is(err, ErrMember) || !strings.Contains(err.Error(), bad.msg) {
			t.Errorf("%v %v: err %v, want ErrMember saying %q", bad.members, bad.ranges, err, bad.msg)
		}
	}
}

// TestPlaneDrivesTheBalancer: the static plane sets its members, takes the active role for as
// long as it runs, and steps down when it stops.
func TestPlaneDrivesTheBalancer(t *testing.T) {
	f := balancer.NewFake(control.Status{})
	ms := []balancer.Member{{Addr: netip.MustParseAddr("192.0.2.11"), Weight: 100, Local: true},
		{Addr: netip.MustParseAddr("192.0.2.12"), Weight: 100}}
	p, err := New(f, ms)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Members(); len(got) != 2 || f.Role() != balancer.RoleStandby {
		t.Fatalf("before Run: members %+v role %v, want the members set and still standby", got, f.Role())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	deadline := time.Now().Add(2 * time.Second)
	for f.Role() != balancer.RoleActive {
		if time.Now().After(deadline) {
			t.Fatal("the plane did not make the balancer active")
		}
		time.Sleep(time.Millisecond)
	}
	if got := f.Members(); len(got) != 2 || got[0] != ms[0] || got[1] != ms[1] {
		t.Errorf("members %+v, want %+v", got, ms)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if roles := f.Roles(); len(roles) != 2 || roles[0] != balancer.RoleActive || roles[1] != balancer.RoleStandby {
		t.Errorf("roles %v, want active then standby", roles)
	}
}
