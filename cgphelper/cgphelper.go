// Package cgphelper is the control plane of `l2lb helper`, CommuniGate Pro's "External Load
// Balancer" helper: it turns CGP's role commands (ACTIVE, STANDBY, STATUS; see helperproto) into
// calls on a balancer.Control, as the seed's IPVSHelper.sh turned them into ipvsadm commands. The
// contract is docs/cgp-helper-protocol.md.
package cgphelper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/l2lb/l2lb/balancer"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/election"
	"github.com/l2lb/l2lb/helperproto"
	"github.com/l2lb/l2lb/hostcfg"
	"github.com/l2lb/l2lb/vipset"
)

// Errors answered to CGP as "<seq> ERROR <text>" are the balancer's (balancer.ErrNoVIPs,
// ErrNoInterface, ErrNotRunning); these are the helper's own.
var (
	// ErrClosed means a command arrived after Close.
	ErrClosed = errors.New("helper is closed")
)

// activeReadyWait bounds how long ACTIVE waits for the members' MACs to resolve before it
// answers: the contract asks for forwarding within one second.
const activeReadyWait = 800 * time.Millisecond

// Options are the helper's settings, from the seed's option letters.
type Options struct {
	// Interface is -i, for the messages and the membership's address.
	Interface string
	// VIPFile is -f, read for the host checks at start (the balancer owns the VIPs).
	VIPFile string
	// SelfWeight is -r: this server's weight while it is the active balancer.
	SelfWeight uint32
	// GossipPort is the memberlist port used to learn the other members' source-port ranges
	// (seed step 7); 0 turns membership off. GossipKey, if set, encrypts that gossip (16, 24 or
	// 32 bytes, AES).
	GossipPort uint16
	GossipKey  []byte
	// Join joins the membership (default: election.Join over memberlist); tests inject a fake.
	Join func(election.ClusterConfig) (Membership, error)
}

// Membership is the group as the helper sees it: election.Cluster over memberlist, or a fake.
type Membership interface {
	View() election.View
	Updated() <-chan struct{}
	JoinPeers(peers []string) error
	Leave(timeout time.Duration) error
	Shutdown() error
}

// Host is the privileged plumbing the helper needs, behind a narrow interface so tests can fake
// it.
type Host interface {
	// LocalAddrs returns the addresses configured on this host.
	LocalAddrs() map[netip.Addr]bool
	// Interface returns the real IPv4 address and the MAC of the named interface.
	Interface(name string) (netip.Addr, net.HardwareAddr, error)
	// Doctor runs the host checks of `l2lb doctor`.
	Doctor(iface string, vips []netip.Addr) []hostcfg.Finding
}

// Helper implements helperproto.Handler on a balancer.
type Helper struct {
	b    balancer.Control
	opt  Options
	host Host
	info func(format string, args ...any)
	log  *slog.Logger

	mu       sync.Mutex
	members  []netip.Addr // the last ACTIVE list
	active   bool         // CGP wants this node active
	cl       Membership
	problems []string // reported last, see Periodic
	closed   bool
}

// New returns a helper driving b, in the standby role. info writes "* " lines to CGP's log.
func New(b balancer.Control, host Host, opt Options, info func(string, ...any), log *slog.Logger) *Helper {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opt.Join == nil {
		opt.Join = func(c election.ClusterConfig) (Membership, error) { return election.Join(c) }
	}
	return &Helper{b: b, opt: opt, host: host, info: info, log: log}
}

// Start checks the host as `l2lb doctor` does and reports what it finds as info lines (none of it
// stops the helper), then joins the group's membership for the source-port ranges.
func (h *Helper) Start() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	vips, err := vipset.ParseFile(h.opt.VIPFile)
	switch {
	case err != nil:
		h.info("VIP file: %v", err)
	case vips.Len() == 0:
		h.info("VIP file: %s lists none", h.opt.VIPFile)
	default:
		for _, f := range h.host.Doctor(h.opt.Interface, vips.Addrs()) {
			if !f.OK {
				fix := ""
				if f.Fix != "" {
					fix = "; fix: " + f.Fix
				}
				h.info("host check %s: have %s, want %s%s", f.Check, f.Have, f.Want, fix)
			}
		}
	}
	if h.b.Status().Mode == ModeDryRun {
		h.info("-m: no sockets opened, no packets forwarded; actions are listed here instead")
		return nil
	}
	if h.opt.GossipPort != 0 {
		h.startMembershipLocked()
	}
	return nil
}

// startMembershipLocked joins the group's memberlist (the members CGP names are joined as they
// come) to learn every member's source-port range (seed step 7): replies to a frontend's outgoing
// connections then reach it. A failure is reported and balancing goes on without the ranges.
func (h *Helper) startMembershipLocked() {
	self, mac, err := h.host.Interface(h.opt.Interface)
	if err != nil {
		h.info("membership unavailable: %v", err)
		return
	}
	lo, hi, err := election.LocalPortRange()
	if err != nil {
		h.info("membership: reading net.ipv4.ip_local_port_range: %v", err)
		return
	}
	cl, err := h.opt.Join(election.ClusterConfig{Name: self.String(), Bind: netip.AddrPortFrom(self, h.opt.GossipPort),
		Meta: election.NodeMeta{Name: self.String(), Addr: self, MAC: mac, PortLo: lo, PortHi: hi, Weight: 100, Healthy: true},
		Log:  h.log.With("part", "membership"), SecretKey: h.opt.GossipKey})
	if err != nil {
		h.info("membership unavailable: %v", err)
		return
	}
	h.cl = cl
	go func() {
		for range cl.Updated() {
			h.mu.Lock()
			if h.cl != cl {
				h.mu.Unlock()
				return
			}
			if h.active {
				if err := h.applyLocked(); err != nil {
					h.info("applying members' port ranges: %v", err)
				}
			}
			h.mu.Unlock()
		}
	}()
}

// portRangesLocked returns the source-port ranges the membership knows, by member address. The
// balancer enforces the one overlap rule (overlapping ranges are not used).
func (h *Helper) portRangesLocked() map[netip.Addr]dataplane.PortRange {
	out := map[netip.Addr]dataplane.PortRange{}
	if h.cl == nil {
		return out
	}
	for _, m := range h.cl.View().Members {
		if m.Alive && m.Addr.Is4() && m.PortLo != 0 {
			out[m.Addr] = dataplane.PortRange{Lo: m.PortLo, Hi: m.PortHi}
		}
	}
	return out
}

// applyLocked gives the balancer the last ACTIVE list: every member weighs 100, this server -r
// (an operator's `l2lb weight` overrides both, in the balancer), with the known port ranges.
func (h *Helper) applyLocked() error {
	local := h.host.LocalAddrs()
	ranges := h.portRangesLocked()
	ms := make([]balancer.Member, 0, len(h.members))
	for _, a := range h.members {
		m := balancer.Member{Addr: a, Weight: 100, Ports: ranges[a]}
		if local[a] {
			m.Local, m.Weight = true, h.opt.SelfWeight
		}
		ms = append(ms, m)
	}
	return h.b.SetMembers(ms)
}

// Active implements helperproto.Handler: this node becomes (or stays) the active balancer for
// members. Repeating it with the same list changes nothing; a different list changes membership
// without disturbing flows to members that stay. When the role cannot be taken (no VIP could be
// read, the fast path is not running) the error is answered, and the balancer takes the role as
// soon as the cause is repaired: CGP's wish is kept until STANDBY.
func (h *Helper) Active(members []netip.Addr) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return ErrClosed
	}
	if h.cl != nil {
		local := h.host.LocalAddrs()
		var peers []string
		for _, a := range members {
			if !local[a] {
				peers = append(peers, netip.AddrPortFrom(a, h.opt.GossipPort).String())
			}
		}
		go h.cl.JoinPeers(peers) // may wait for TCP; the ranges are applied when they arrive
	}
	changed := !h.active || !slices.Equal(h.members, members)
	h.members = slices.Clone(members)
	if err := h.applyLocked(); err != nil {
		return err
	}
	st := h.b.Status()
	wasActive := st.Role == control.RoleActive
	if !wasActive {
		// Wait for the fast path (it opens its sockets as the helper starts, so the first
		// ACTIVE may come before it runs), then for the members' MACs (the resolver works
		// while standby): flows synced from the previous active node must go on to their
		// frontends, and a member without a MAC would get none of the first new connections.
		// Bounded so that OK still comes within a second.
		deadline := time.Now().Add(activeReadyWait)
		for time.Now().Before(deadline) && !(st.Ready && allReady(st)) {
			time.Sleep(5 * time.Millisecond)
			st = h.b.Status()
		}
	}
	h.active = true
	if err := h.b.SetRole(balancer.RoleActive); err != nil {
		return err
	}
	if (changed || !wasActive) && h.b.Status().Mode != ModeDryRun {
		h.info("active: %s", h.summary())
	}
	return nil
}

// summary describes the VIPs and members for the active line.
func (h *Helper) summary() string {
	st := h.b.Status()
	return fmt.Sprintf("VIPs %s on %s, members %s", strings.Join(st.VIPs, " "), h.opt.Interface, describe(st.Members))
}

// describe lists members as the active and -m lines name them: this server with its -r weight,
// the others by address, with their weight when it is not the default 100.
func describe(ms []control.Member) string {
	desc := make([]string, 0, len(ms))
	for _, m := range ms {
		switch {
		case m.Leaving:
			desc = append(desc, fmt.Sprintf("%s (leaving, %d flows)", m.Addr, m.Flows))
		case m.Local:
			desc = append(desc, fmt.Sprintf("%s (self, weight %d)", m.Addr, m.Weight))
		case m.Weight != 100:
			desc = append(desc, fmt.Sprintf("%s (weight %d)", m.Addr, m.Weight))
		default:
			desc = append(desc, m.Addr)
		}
	}
	return strings.Join(desc, " ")
}

func allReady(st control.Status) bool {
	for _, m := range st.Members {
		if m.Weight > 0 && !m.Ready {
			return false
		}
	}
	return true
}

// Standby implements helperproto.Handler: stop answering ARP and forwarding before answering.
// The connection table is kept, so a later ACTIVE continues the flows it knows.
func (h *Helper) Standby(active netip.Addr) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.active = false
	if err := h.b.SetRole(balancer.RoleStandby); err != nil {
		return err
	}
	if active.IsValid() && h.b.Status().Mode != ModeDryRun {
		h.info("standby: active balancer is %s", active)
	}
	return nil
}

// Status implements helperproto.Handler: one line for CGP's STATUS.
func (h *Helper) Status() string {
	return StatusLine(h.b.Status())
}

// StatusLine is the one-line summary CGP's STATUS gets: role, since, interface, VIPs, members as
// address/weight/state/flows, connections, templates and the forwarding counters, and what keeps
// the balancer from working.
func StatusLine(st control.Status) string {
	var b strings.Builder
	fmt.Fprintf(&b, "role=%s since=%s iface=%s", st.Role, st.Since.UTC().Format(time.RFC3339), st.Interface)
	if len(st.VIPs) == 0 {
		fmt.Fprintf(&b, " vips=error(%s)", vipProblem(st))
	} else {
		fmt.Fprintf(&b, " vips=%s", strings.Join(st.VIPs, ","))
	}
	if len(st.Members) > 0 {
		ms := make([]string, 0, len(st.Members))
		for _, m := range st.Members {
			if st.Mode == ModeDryRun {
				ms = append(ms, m.Addr)
				continue
			}
			state := "ready"
			switch {
			case m.Leaving:
				state = "leaving"
			case m.Weight == 0:
				state = "quiescent"
			case !m.Ready:
				state = "unresolved"
			}
			ms = append(ms, fmt.Sprintf("%s/%d/%s/%d", m.Addr, m.Weight, state, m.Flows))
		}
		fmt.Fprintf(&b, " members=%s", strings.Join(ms, ","))
	}
	if st.Verdicts != nil {
		fmt.Fprintf(&b, " connections=%d templates=%d forwarded=%d local=%d dropped=%d", st.Table.Flows,
			st.Table.Templates, st.Verdicts["forwarded"], st.Verdicts["local"], st.Verdicts["dropped"])
	}
	if st.Mode == ModeDryRun {
		b.WriteString(" dry-run")
	} else if len(st.Problems) > 0 {
		fmt.Fprintf(&b, " error=%q", strings.Join(st.Problems, "; "))
	}
	return b.String()
}

// vipProblem returns the VIP file's problem from a status.
func vipProblem(st control.Status) string {
	for _, p := range st.Problems {
		if strings.HasPrefix(p, balancer.ErrNoVIPs.Error()) {
			return p
		}
	}
	return "none listed"
}

// Periodic implements helperproto.Handler. The balancer re-announces the VIPs, expires entries,
// refreshes MACs and reopens a failed fast path on its own timers; here the helper reports the
// problems that appeared or went away since the last time as info lines, so CGP's log shows them.
func (h *Helper) Periodic() {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.b.Status().Problems
	for _, p := range now {
		if !slices.Contains(h.problems, p) {
			h.info("problem: %s", p)
		}
	}
	for _, p := range h.problems {
		if !slices.Contains(now, p) {
			h.info("repaired: %s", p)
		}
	}
	h.problems = now
}

// Close implements helperproto.Handler: stop answering and forwarding and leave the membership.
// The balancer's sockets close when its Run ends (balancer.RunWith ends it with the session).
func (h *Helper) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	h.closed, h.active = true, false
	err := h.b.SetRole(balancer.RoleStandby)
	if h.cl != nil {
		h.cl.Leave(200 * time.Millisecond)
		h.cl.Shutdown()
		h.cl = nil
	}
	return err
}

// SystemHost is the real Host: this machine's interfaces, /proc/sys and netlink.
type SystemHost struct{}

// LocalAddrs implements Host.
func (SystemHost) LocalAddrs() map[netip.Addr]bool { return hostcfg.LocalAddrs() }

// Interface implements Host.
func (SystemHost) Interface(name string) (netip.Addr, net.HardwareAddr, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Addr{}, nil, err
	}
	a, err := hostcfg.InterfaceIPv4(name)
	if err != nil {
		return netip.Addr{}, nil, err
	}
	return a, ifi.HardwareAddr, nil
}

// Doctor implements Host.
func (SystemHost) Doctor(iface string, vips []netip.Addr) []hostcfg.Finding {
	return hostcfg.Doctor(hostcfg.ProcSysctl(), hostcfg.NetlinkAddrs(), hostcfg.DoctorInput{Iface: iface, VIPs: vips})
}

// Plane returns the helper as a balancer.Plane serving CGP's session sess: Run starts the helper,
// answers commands until QUIT or the end of input, or until ctx ends (SIGTERM), which closes the
// helper.
func (h *Helper) Plane(sess *helperproto.Session) balancer.Plane { return sessionPlane{h, sess} }

type sessionPlane struct {
	h    *Helper
	sess *helperproto.Session
}

// Run implements balancer.Plane.
func (p sessionPlane) Run(ctx context.Context) error {
	p.h.Start()
	done := make(chan error, 1)
	go func() { done <- p.sess.Run() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return p.h.Close()
	}
}
