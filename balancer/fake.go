package balancer

import (
	"slices"
	"sync"

	"github.com/l2lb/l2lb/control"
)

// Fake is a Control without sockets for testing control planes: it records the roles and member
// lists it is given, answers Status from them, and lets the test inject events and errors.
type Fake struct {
	mu sync.Mutex
	// Roles are the roles set, in order; Lists the member lists.
	roles     []Role
	lists     [][]Member
	announces int
	// roleErr, when set, is returned by SetRole(RoleActive) (the role is still recorded).
	roleErr error
	status  control.Status
	events  chan Event
}

var _ Control = (*Fake)(nil)

// NewFake returns a Fake in the standby role whose Status starts as st.
func NewFake(st control.Status) *Fake {
	if st.Role == "" {
		st.Role = control.RoleStandby
	}
	return &Fake{status: st, events: make(chan Event, 16)}
}

// SetRole implements Control.
func (f *Fake) SetRole(r Role) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.roles = append(f.roles, r)
	f.status.Role = control.RoleStandby
	if r != RoleActive {
		return nil
	}
	if f.roleErr == nil {
		f.status.Role = control.RoleActive
	}
	return f.roleErr
}

// SetMembers implements Control. Members appear in Status as ready, with their weights (0 for a
// Down member) and health.
func (f *Fake) SetMembers(ms []Member) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists = append(f.lists, slices.Clone(ms))
	f.status.Members = f.status.Members[:0]
	for _, m := range ms {
		w := m.Weight
		if m.Down {
			w = 0
		}
		f.status.Members = append(f.status.Members, control.Member{Addr: m.Addr.String(), Weight: w,
			Local: m.Local, Ready: w > 0, Healthy: !m.Down, PortLo: m.Ports.Lo, PortHi: m.Ports.Hi})
	}
	return nil
}

// Announce implements Control.
func (f *Fake) Announce() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.announces++
}

// Status implements Control.
func (f *Fake) Status() control.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.status
	st.Members = slices.Clone(st.Members)
	return st
}

// Events implements Control.
func (f *Fake) Events() <-chan Event { return f.events }

// Emit delivers ev to the control plane as the balancer would.
func (f *Fake) Emit(ev Event) { f.events <- ev }

// SetRoleErr makes later SetRole(RoleActive) calls fail with err (nil: succeed), as a balancer
// without VIPs or sockets does; the role is recorded anyway.
func (f *Fake) SetRoleErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.roleErr = err
}

// EditStatus changes the status Status answers (counters, member readiness...).
func (f *Fake) EditStatus(edit func(*control.Status)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	edit(&f.status)
}

// Role returns the last role set (RoleStandby if none).
func (f *Fake) Role() Role {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.roles) == 0 {
		return RoleStandby
	}
	return f.roles[len(f.roles)-1]
}

// Roles returns every role set, in order.
func (f *Fake) Roles() []Role {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.roles)
}

// Members returns the last member list set (nil if none).
func (f *Fake) Members() []Member {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.lists) == 0 {
		return nil
	}
	return slices.Clone(f.lists[len(f.lists)-1])
}

// MemberLists returns how many member lists were set.
func (f *Fake) MemberLists() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.lists)
}

// Announces returns how many times Announce was called.
func (f *Fake) Announces() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.announces
}
