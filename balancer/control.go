package balancer

import (
	"context"
	"errors"
	"net/netip"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane"
)

// Control is the narrow interface through which a control plane drives a balancer: the static
// member list of `l2lb run --member`, the standalone cluster's election (package cluster) and
// CommuniGate Pro's helper commands (package cgphelper) all say only "you are active or standby,
// these are the members with their weights and health" through it. *Balancer implements it on
// real sockets; *Fake records the calls, so each control plane is tested without sockets.
type Control interface {
	// SetRole makes the balancer active, standby or releasing. The role is kept even when it
	// cannot take effect yet (no VIP could be read, the fast path is not running): the error
	// says why, and the balancer takes the role as soon as the cause is repaired.
	SetRole(r Role) error
	// SetMembers replaces the frontend list. Flows to members that stay are not disturbed.
	SetMembers(ms []Member) error
	// Announce sends the gratuitous ARP announcements again, if the balancer is active.
	Announce()
	// Status returns the balancer's state and counters.
	Status() control.Status
	// Events delivers what the balancer notices that a control plane may act on. Events are
	// dropped, not queued without bound, when nobody reads them.
	Events() <-chan Event
}

// Plane is a control plane: Run drives a Control until ctx ends, and on the way out hands the
// active role over if it can (the balancer is still running then).
type Plane interface {
	Run(ctx context.Context) error
}

// Role is a balancer's part in its group.
type Role uint8

const (
	// RoleStandby answers nothing for the VIPs and forwards nothing; it imports the active
	// node's connection table from the sync channel so that it can take over.
	RoleStandby Role = iota
	// RoleActive answers ARP for the VIPs with the virtual MAC, announces them, forwards their
	// traffic and replicates its connection table.
	RoleActive
	// RoleReleasing stops answering ARP at once and keeps forwarding for ReleaseGrace what is
	// still sent to it while the switch learns the successor's port; then it is a standby. It
	// is the step down of a planned hand-over or a split brain resolved.
	RoleReleasing
)

var roleNames = [...]string{RoleStandby: control.RoleStandby, RoleActive: control.RoleActive, RoleReleasing: "releasing"}

// String returns "standby", "active" or "releasing".
func (r Role) String() string {
	if int(r) < len(roleNames) {
		return roleNames[r]
	}
	return "unknown"
}

// Member is one frontend as a control plane names it.
type Member struct {
	// Addr is the frontend's real address, IPv4 or IPv6: its MAC is resolved on it (ARP or NDP),
	// and frames for VIPs of both families go to that MAC. It also names the member for
	// consistent hashing, so every balancer of a group agrees on where a flow goes.
	Addr netip.Addr
	// Weight is its relative weight; 0 quiesces it (no new flows, existing ones continue). An
	// operator's `l2lb weight` overrides it.
	Weight uint32
	// Local marks this node itself: its share is re-injected on lo instead of sent out.
	Local bool
	// Ports is the member's source-port range for its own outgoing connections (seed step 7):
	// replies to those ports go to it. Ranges that overlap another member's are not used.
	Ports dataplane.PortRange
	// Down marks a member whose health check fails: it gets no new flows, its established flows
	// continue while they last (its kernel may well answer them).
	Down bool
	// Leaving marks a member that leaves the group on purpose (a standalone node announcing
	// Draining): it keeps its established flows but gets no new connections, persistent
	// clients' included, and it stays leaving after it vanishes from the list (issue 13).
	Leaving bool
}

// EventKind says what an Event reports.
type EventKind uint8

const (
	// EventConflict: another host claims one of our VIPs while we answer ARP for them (a
	// frontend without arp_ignore, or a second active balancer).
	EventConflict EventKind = iota + 1
	// EventTableSynced: a bulk dump of the connection table from the active node (From) is
	// complete, so this node holds the group's flows.
	EventTableSynced
)

// Event is something the balancer noticed.
type Event struct {
	Kind EventKind
	// From is the other node: the sender of the dump, or the VIP claimed for a conflict.
	From netip.Addr
}

// Errors of the balancer.
var (
	// ErrNoVIPs means no VIP could be read from the VIP file (or it lists none).
	ErrNoVIPs = errors.New("no VIP could be read")
	// ErrNotRunning means the fast path is not running (yet, or since a socket failed).
	ErrNotRunning = errors.New("fast path not running")
	// ErrNoInterface means the interface that receives VIP traffic does not exist.
	ErrNoInterface = errors.New("interface missing")
	// ErrBadMember means a member list the balancer cannot apply (not an IP address, listed
	// twice, too many members).
	ErrBadMember = errors.New("bad member list")
)
