package cgphelper

import (
	"net"
	"slices"
	"sync"
	"time"

	"github.com/l2lb/l2lb/balancer"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/vipset"
)

// ModeDryRun is the Mode of the status of a helper started with -m.
const ModeDryRun = "helper -m"

// DryRun is the balancer of `l2lb helper -m`: it opens nothing, changes nothing on the host and
// forwards nothing; every action a real balancer would take is written as an info line for CGP's
// log instead (the seed's -m: hand the commands to CGP instead of running them).
type DryRun struct {
	iface string
	vmac  net.HardwareAddr
	info  func(string, ...any)

	mu      sync.Mutex
	vips    *vipset.Set
	vipErr  error
	role    balancer.Role
	since   time.Time
	members []balancer.Member
	events  chan balancer.Event
}

var _ balancer.Control = (*DryRun)(nil)

// NewDryRun returns the -m balancer for the interface, the VIPs of vipFile and the virtual MAC.
func NewDryRun(iface, vipFile string, vmac net.HardwareAddr, info func(string, ...any)) *DryRun {
	d := &DryRun{iface: iface, vmac: vmac, info: info, since: time.Now(), events: make(chan balancer.Event)}
	d.vips, d.vipErr = balancer.ReadVIPs(vipFile)
	return d
}

// SetRole implements balancer.Control by describing what the role would do.
func (d *DryRun) SetRole(r balancer.Role) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if r == balancer.RoleActive && d.vipErr != nil {
		return d.vipErr
	}
	switch {
	case r == balancer.RoleActive:
		d.info("would answer ARP for %s on %s with %s and announce them", d.vips, d.iface, d.vmac)
		d.info("would forward VIP traffic to members %s", describe(d.statusMembers()))
	case d.role == balancer.RoleActive:
		d.info("would stop answering ARP for %s and stop forwarding", d.vips)
		d.members = nil
	default:
		d.members = nil
	}
	if (r == balancer.RoleActive) != (d.role == balancer.RoleActive) {
		d.since = time.Now()
	}
	d.role = r
	return nil
}

// SetMembers implements balancer.Control; the list is described when the role is set.
func (d *DryRun) SetMembers(ms []balancer.Member) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.members = slices.Clone(ms)
	return nil
}

// Announce implements balancer.Control.
func (d *DryRun) Announce() {}

// Events implements balancer.Control: a dry run notices nothing.
func (d *DryRun) Events() <-chan balancer.Event { return d.events }

// Status implements balancer.Control.
func (d *DryRun) Status() control.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	// Ready: a dry run can take any role at once, having nothing to open.
	st := control.Status{Mode: ModeDryRun, Role: control.RoleStandby, Since: d.since, Interface: d.iface,
		VirtualMAC: d.vmac.String(), Ready: true}
	if d.role == balancer.RoleActive {
		st.Role = control.RoleActive
	}
	if d.vipErr != nil {
		st.Problems = []string{d.vipErr.Error()}
	} else {
		for _, v := range d.vips.Addrs() {
			st.VIPs = append(st.VIPs, v.String())
		}
	}
	st.Members = d.statusMembers()
	return st
}

// statusMembers returns the members as the status lists them: ready (a dry run resolves
// nothing and waits for nothing).
func (d *DryRun) statusMembers() []control.Member {
	out := make([]control.Member, 0, len(d.members))
	for _, m := range d.members {
		out = append(out, control.Member{Addr: m.Addr.String(), Weight: m.Weight, Local: m.Local, Ready: true, Healthy: !m.Down})
	}
	return out
}
