// Package static is the control plane of `l2lb run --member ...`: a fixed member list given on the
// command line, and this node the active balancer for as long as it runs. It drives the balancer
// through balancer.Control like the standalone cluster and CGP's helper do.
package static

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/l2lb/l2lb/balancer"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/vipset"
)

// ErrMember reports a --member or --port-range flag that cannot be used.
var ErrMember = errors.New("static: bad member")

// ParseMembers turns --member `ADDR[=WEIGHT]` flags (each may list several, separated by commas
// or spaces; ADDR is IPv4 or IPv6, the address the frontend's MAC is resolved on) and --port-range `ADDR=LO-HI` flags into members. A member address configured on
// this host (local) is this node itself and weighs selfWeight (-r) unless a weight is given. A
// VIP is refused as a member: a frontend is named by its real address.
func ParseMembers(specs, ranges []string, selfWeight uint32, local map[netip.Addr]bool, vips *vipset.Set) ([]balancer.Member, error) {
	var ms []balancer.Member
	idx := map[netip.Addr]int{}
	for _, s := range specs {
		for _, one := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
			addrS, wS, hasW := strings.Cut(one, "=")
			a, err := netip.ParseAddr(addrS)
			if err != nil || a.Is4In6() || a.Zone() != "" {
				return nil, fmt.Errorf("%w: --member %q: not an IPv4 or IPv6 address", ErrMember, one)
			}
			if vips != nil && vips.Contains(a) {
				return nil, fmt.Errorf("%w: --member %q: that is a VIP; give the frontend's real address", ErrMember, one)
			}
			m := balancer.Member{Addr: a, Weight: 100, Local: local[a]}
			if m.Local {
				m.Weight = selfWeight
			}
			if hasW {
				w, err := strconv.ParseUint(wS, 10, 32)
				if err != nil {
					return nil, fmt.Errorf("%w: --member %q: bad weight", ErrMember, one)
				}
				m.Weight = uint32(w)
			}
			if _, dup := idx[a]; dup {
				return nil, fmt.Errorf("%w: --member %s given twice", ErrMember, a)
			}
			idx[a] = len(ms)
			ms = append(ms, m)
		}
	}
	for _, r := range ranges {
		addrS, rng, ok := strings.Cut(r, "=")
		a, err := netip.ParseAddr(addrS)
		if !ok || err != nil {
			return nil, fmt.Errorf("%w: --port-range %q: want ADDR=LO-HI", ErrMember, r)
		}
		i, known := idx[a]
		if !known {
			return nil, fmt.Errorf("%w: --port-range %q: %s is not a --member", ErrMember, r, a)
		}
		loS, hiS, ok := strings.Cut(rng, "-")
		lo, err1 := strconv.ParseUint(loS, 10, 16)
		hi, err2 := strconv.ParseUint(hiS, 10, 16)
		if !ok || err1 != nil || err2 != nil || lo == 0 || lo > hi {
			return nil, fmt.Errorf("%w: --port-range %q: want ADDR=LO-HI with 0 < LO <= HI <= 65535", ErrMember, r)
		}
		ms[i].Ports = dataplane.PortRange{Lo: uint16(lo), Hi: uint16(hi)}
	}
	return ms, nil
}

// Plane makes its balancer active with a fixed member list.
type Plane struct {
	b balancer.Control
}

// New gives b its members at once, so that the balancer can be operated (`l2lb weight`) before
// Run, and returns the static control plane of b.
func New(b balancer.Control, members []balancer.Member) (*Plane, error) {
	if err := b.SetMembers(members); err != nil {
		return nil, err
	}
	return &Plane{b: b}, nil
}

// Run takes the active role, then waits for ctx to end. The role is set even when it cannot take
// effect yet (the fast path still opening): the balancer takes it as soon as it can.
func (p *Plane) Run(ctx context.Context) error {
	p.b.SetRole(balancer.RoleActive)
	<-ctx.Done()
	p.b.SetRole(balancer.RoleStandby)
	return nil
}
