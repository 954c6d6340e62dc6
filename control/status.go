// Package control is the operator's window into a running l2lb: one data model (Status, Conn) for
// `l2lb status`, `l2lb conns`, the metrics and the status page; a root-only unix socket served by
// every running balancer; a client for the CLI; and the plain-text views modelled on
// `ipvsadm -Ln --stats` and `ipvsadm -Lnc`.
//
// The package never touches the fast path: a Provider implemented on the running balancer builds a
// Status from plain counters whenever somebody asks.
package control

import (
	"errors"
	"net/netip"
	"time"
)

// Roles a node reports in Status.Role.
const (
	// RoleActive is the node that answers ARP for the VIPs and forwards their traffic.
	RoleActive = "active"
	// RoleStandby is a node ready to take over; it forwards nothing.
	RoleStandby = "standby"
)

// Modes a balancer reports in Status.Mode.
const (
	// ModeRun is a standalone `l2lb run` with static members.
	ModeRun = "run"
	// ModeCluster is `l2lb run --peers`: a node of a memberlist cluster with election and sync.
	ModeCluster = "cluster"
	// ModeHelper is `l2lb helper`, driven by CommuniGate Pro over stdin/stdout.
	ModeHelper = "helper"
)

// ErrUnknownMember is what a Provider returns (wrapped) when asked about a member it does not have.
var ErrUnknownMember = errors.New("control: unknown member")

// Status is the one data model behind `l2lb status --json`, the text view, the web status page and
// the Prometheus metrics, so that the four can never disagree.
type Status struct {
	// Time is when the snapshot was taken.
	Time time.Time `json:"time,omitzero"`
	// Mode is how the balancer runs: ModeRun, ModeCluster or ModeHelper.
	Mode string `json:"mode"`
	// Node is this node's name or address.
	Node string `json:"node"`
	// Role is RoleActive or RoleStandby.
	Role string `json:"role"`
	// Since is when the node took its current role.
	Since time.Time `json:"since,omitzero"`
	// Transitions counts role changes since the process started.
	Transitions uint64 `json:"transitions"`
	// Ready is true while the fast path runs on open sockets: the balancer can take the active
	// role. Tests and service managers wait for it (control.Client.WaitReady).
	Ready bool `json:"ready"`
	// Problems lists what keeps the balancer from working as configured (a VIP file that
	// cannot be read, a fast path that cannot open its sockets, sync unavailable, overlapping
	// port ranges), one sentence each; empty when all is well.
	Problems []string `json:"problems,omitempty"`
	// Interface is the network interface that receives VIP traffic.
	Interface string `json:"interface"`
	// VirtualMAC is the MAC address ARP answers for the VIPs carry.
	VirtualMAC string `json:"virtual_mac"`
	// FastPath describes the sockets of the running fast path; absent while it is not open.
	FastPath *FastPath `json:"fast_path,omitempty"`
	// VIPs lists the virtual addresses (or prefixes) being balanced.
	VIPs []string `json:"vips"`
	// Members lists the frontends traffic is balanced to.
	Members []Member `json:"members"`
	// Table describes the connection table.
	Table Table `json:"table"`
	// Sync describes the connection-sync channel between balancer nodes.
	Sync Sync `json:"sync"`
	// Verdicts counts frames by what the fast path did with them, keyed by verdict name.
	Verdicts map[string]uint64 `json:"verdicts,omitempty"`
	// Drops counts dropped frames keyed by reason.
	Drops map[string]uint64 `json:"drops,omitempty"`
	// ARP counts ARP answers, announcements and conflicts.
	ARP ARP `json:"arp"`
	// PerVIP holds traffic per VIP when the provider counts it; it may be empty.
	PerVIP map[string]Traffic `json:"per_vip,omitempty"`
}

// FastPath describes the fast path's sockets, as `l2lb run --backend` and its options opened
// them.
type FastPath struct {
	// Backend is "afpacket" or "afxdp".
	Backend string `json:"backend"`
	// Sockets is the number of receive sockets, one worker goroutine each.
	Sockets int `json:"sockets"`
	// Queues is the number of receive queues with an AF_XDP socket (afxdp only).
	Queues int `json:"queues,omitempty"`
	// XDPMode is how the XDP program is attached: "native" or "generic" (afxdp only).
	XDPMode string `json:"xdp_mode,omitempty"`
	// TCP is where TCP frames go on the afxdp backend: "kernel" (GRO, then AF_PACKET rings) or
	// "xsk" (the AF_XDP sockets).
	TCP string `json:"tcp,omitempty"`
	// ZeroCopy is true when the AF_XDP sockets run in zero-copy mode.
	ZeroCopy bool `json:"zero_copy,omitempty"`
	// FlowCache is the XDP flow cache's state (afxdp with --xdp-flows only).
	FlowCache *FlowCache `json:"flow_cache,omitempty"`
	// RingDrops counts frames the kernel dropped because a worker socket's ring was full: the
	// workers fell behind (since the process started).
	RingDrops uint64 `json:"ring_drops"`
	// RaisedWorkers is the number of workers running at the raised priority of
	// `--overload-nice` now; PriorityRaises counts the raises since the process started.
	RaisedWorkers  int    `json:"raised_workers"`
	PriorityRaises uint64 `json:"priority_raises"`
}

// FlowCache is the state of the XDP flow cache, which forwards the datagrams of known UDP flows
// and the ACK-only segments of known TCP flows in the kernel (`l2lb run --xdp-flows`). Its
// frames are in the verdict, member and VIP counters too, at most a sweep (a second) late.
type FlowCache struct {
	// Size is the most flows the cache holds; Flows is how many it held at the last sweep.
	Size  int    `json:"size"`
	Flows uint64 `json:"flows"`
	// Installs counts flows installed, InstallErrors installs the kernel refused.
	Installs      uint64 `json:"installs"`
	InstallErrors uint64 `json:"install_errors"`
	// Forwarded counts the frames (datagrams and ACKs) the cache forwarded.
	Forwarded uint64 `json:"forwarded"`
}

// Member is one frontend as seen by the balancer.
type Member struct {
	// Addr is the frontend's real IP address.
	Addr string `json:"addr"`
	// MAC is the frontend's MAC address, where frames for it are sent.
	MAC string `json:"mac"`
	// Weight is the relative share of new connections; zero means quiescent (draining).
	Weight uint32 `json:"weight"`
	// Local is true for this node's own frontend, whose frames are re-injected on lo.
	Local bool `json:"local"`
	// Ready is true when the member may receive new connections (CGP's "Ready" state, or static).
	Ready bool `json:"ready"`
	// Healthy is the result of the latest health check; an unhealthy member gets no new
	// connections, its established ones continue.
	Healthy bool `json:"healthy"`
	// Leaving is true for a member that left the list but keeps its established flows until
	// they end (weight 0).
	Leaving bool `json:"leaving,omitempty"`
	// PortConflict is true when the member's source-port range overlaps another member's, so
	// neither range is used (PortLo and PortHi are then zero).
	PortConflict bool `json:"port_conflict,omitempty"`
	// PortLo is the first port of the member's outgoing source-port range; zero if it has none.
	PortLo uint16 `json:"port_lo"`
	// PortHi is the last port of the member's outgoing source-port range.
	PortHi uint16 `json:"port_hi"`
	// Flows is the number of connection-table entries pointing at the member.
	Flows int64 `json:"flows"`
	// Templates is the number of persistence templates pointing at the member.
	Templates int64 `json:"templates"`
	// Packets counts frames forwarded to the member.
	Packets uint64 `json:"packets"`
	// Bytes counts bytes forwarded to the member.
	Bytes uint64 `json:"bytes"`
	// Checks are the member's service health checks (the services file), if any.
	Checks []Check `json:"checks,omitempty"`
}

// Check is one service health check of a member.
type Check struct {
	// Service names the service (the services file's stanza); Port and Proto are its port.
	Service string `json:"service"`
	Port    uint16 `json:"port"`
	Proto   string `json:"proto"`
	// Healthy is the state after rise/fall hysteresis.
	Healthy bool `json:"healthy"`
	// Error is the latest probe's failure, empty when it passed.
	Error string `json:"error,omitempty"`
	// Since is when Healthy last changed; zero if it never did.
	Since time.Time `json:"since,omitzero"`
}

// Table describes the connection table.
type Table struct {
	// Flows is the number of connection entries.
	Flows int `json:"flows"`
	// Templates is the number of persistence templates.
	Templates int `json:"templates"`
	// Limit is the maximum number of entries; zero means unlimited.
	Limit int `json:"limit"`
	// Evicted counts live flows evicted to make room in a full table (never an established TCP
	// flow), EvictedExpired expired ones evicted before the expiry sweep removed them.
	Evicted        uint64 `json:"evicted"`
	EvictedExpired uint64 `json:"evicted_expired"`
}

// Sync describes the connection-sync channel.
type Sync struct {
	// Peers lists the nodes this one exchanges sync messages with.
	Peers []string `json:"peers"`
	// SentMessages counts sync messages sent.
	SentMessages uint64 `json:"sent_messages"`
	// ReceivedMessages counts sync messages accepted.
	ReceivedMessages uint64 `json:"received_messages"`
	// Rejected counts sync messages refused (bad authentication, wrong group, malformed...).
	Rejected uint64 `json:"rejected"`
	// RejectedByReason splits Rejected by reason.
	RejectedByReason map[string]uint64 `json:"rejected_by_reason,omitempty"`
	// LastReceived is when the latest sync message was accepted; the lag is now minus this.
	LastReceived time.Time `json:"last_received,omitzero"`
}

// ARP counts the balancer's neighbour resolution for the VIPs: ARP for IPv4, NDP for IPv6.
type ARP struct {
	// Replies counts ARP requests for a VIP that were answered.
	Replies uint64 `json:"replies"`
	// NDPReplies counts IPv6 neighbour solicitations for a VIP that were answered.
	NDPReplies uint64 `json:"ndp_replies"`
	// Announced counts announcements sent (gratuitous ARPs and unsolicited neighbour
	// advertisements) when taking the active role and to refresh it.
	Announced uint64 `json:"announced"`
	// Conflicts counts ARP or NDP frames from another host claiming a VIP or our virtual MAC.
	Conflicts uint64 `json:"conflicts"`
}

// Traffic counts packets and bytes.
type Traffic struct {
	// Packets is a packet count.
	Packets uint64 `json:"packets"`
	// Bytes is a byte count.
	Bytes uint64 `json:"bytes"`
}

// Conn is one connection-table entry, the row of `l2lb conns` (like `ipvsadm -Lnc`).
type Conn struct {
	// Proto is "TCP", "UDP" or another protocol name; templates use "TPL" or similar.
	Proto string `json:"proto"`
	// Client is the client's address and port.
	Client string `json:"client"`
	// VIP is the virtual address and port the client talks to.
	VIP string `json:"vip"`
	// Member is the frontend's address (and port) the entry points at.
	Member string `json:"member"`
	// State is the connection state, e.g. "ESTABLISHED" or "FIN_WAIT".
	State string `json:"state"`
	// ExpiresIn is how long the entry lives without further traffic (nanoseconds in JSON).
	ExpiresIn time.Duration `json:"expires_in_ns"`
}

// Provider is implemented by the running balancer; the control server and the metrics call it.
// Every method may be called from several goroutines at once.
type Provider interface {
	// Status returns a snapshot of the balancer's state and counters.
	Status() Status
	// Conns returns the connection table, filtered by VIP and member; a zero Addr does not filter.
	Conns(vip, member netip.Addr) []Conn
	// SetWeight changes a member's weight; zero makes it quiescent, keeping its flows.
	SetWeight(member netip.Addr, weight uint32) error
	// Reload re-reads the VIP file and configuration atomically; on error the running
	// configuration stays and the error text names file:line.
	Reload() error
}

// FindMember returns the member of s whose Addr is addr, and whether there is one.
func (s Status) FindMember(addr netip.Addr) (Member, bool) {
	for _, m := range s.Members {
		a, err := netip.ParseAddr(m.Addr)
		if err == nil && a == addr {
			return m, true
		}
	}
	return Member{}, false
}
