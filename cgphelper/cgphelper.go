// Package cgphelper is l2lb's CommuniGate Pro "External Load Balancer" helper: it implements the
// role commands of helperproto (ACTIVE, STANDBY, STATUS) on top of the dataplane, as the seed's
// IPVSHelper.sh did on top of ipvs. See ../shared/cgp-helper-protocol.md for the contract.
package cgphelper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/election"
	"github.com/l2lb/l2lb/hostcfg"
	"github.com/l2lb/l2lb/scheduler"
	"github.com/l2lb/l2lb/tablesync"
	"github.com/l2lb/l2lb/vipset"
)

// Sentinel errors answered to CGP as "<seq> ERROR <text>".
var (
	// ErrNoVIPs means the VIP file could not be read or lists nothing.
	ErrNoVIPs = errors.New("no VIP could be read")
	// ErrNoInterface means the -i interface does not exist.
	ErrNoInterface = errors.New("interface missing")
	// ErrNotStarted means the fast path failed to start.
	ErrNotStarted = errors.New("fast path not running")
)

// activeReadyWait bounds how long ACTIVE waits for the members' MACs to resolve before it
// answers: the contract asks for forwarding within one second.
const activeReadyWait = 800 * time.Millisecond

// Options are the helper's settings, from the seed's option letters.
type Options struct {
	Persistence time.Duration // -p
	Interface   string        // -i
	SyncID      int           // -s
	VIPFile     string        // -f
	SelfWeight  uint32        // -r
	DryRun      bool          // -m: change nothing on the host, forward nothing, log actions
	Scheduler   scheduler.Kind
	VirtualMAC  net.HardwareAddr
	Workers     int
	// Sync configures the connection-sync channel (SyncID is taken from -s). NoSync turns it off.
	Sync   connsync.Config
	NoSync bool
	// GossipPort is the memberlist port used to learn the other members' source-port ranges
	// (seed step 7); 0 turns membership off.
	GossipPort uint16
}

// Host is the privileged plumbing the helper needs, behind a narrow interface so tests can fake
// it.
type Host interface {
	// LocalAddrs returns the IPv4 addresses configured on this host.
	LocalAddrs() map[netip.Addr]bool
	// InterfaceMAC returns the MAC of the named interface.
	InterfaceMAC(name string) (net.HardwareAddr, error)
	// Doctor runs the host checks of `l2lb doctor`.
	Doctor(iface string, vips []netip.Addr) []hostcfg.Finding
}

// Helper implements helperproto.Handler.
type Helper struct {
	opt  Options
	host Host
	info func(format string, args ...any)
	log  *slog.Logger

	mu          sync.Mutex
	vips        *vipset.Set
	vipErr      error
	eng         *dataplane.Engine
	node        *dataplane.Node
	sync        *tablesync.Syncer
	cl          *election.Cluster
	cancel      context.CancelFunc
	done        chan error
	role        string
	since       time.Time
	members     []netip.Addr
	startErr    error
	transitions uint64
	weights     map[netip.Addr]uint32 // operator overrides (l2lb weight / drain)
}

// New returns a helper in the standby role. info writes "* " lines to CGP's log.
func New(opt Options, host Host, info func(string, ...any), log *slog.Logger) *Helper {
	if opt.Workers <= 0 {
		opt.Workers = 1
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Helper{opt: opt, host: host, info: info, log: log, role: "standby", since: time.Now()}
	h.vips, h.vipErr = vipset.ParseFile(opt.VIPFile)
	if h.vipErr != nil {
		// ErrNoVIPs covers an unreadable file too, so callers can test for one error.
		h.vipErr = fmt.Errorf("%w: %w", ErrNoVIPs, h.vipErr)
	} else if h.vips.Len() == 0 {
		h.vipErr = fmt.Errorf("%w: %s lists none", ErrNoVIPs, opt.VIPFile)
	}
	return h
}

// check reports VIP-file and host problems (as `l2lb doctor` finds them) as info lines; none of
// them stops the helper.
func (h *Helper) check() {
	if h.vipErr != nil {
		h.info("VIP file: %v", h.vipErr)
		return
	}
	for _, f := range h.host.Doctor(h.opt.Interface, h.vips.Addrs()) {
		if !f.OK {
			fix := ""
			if f.Fix != "" {
				fix = "; fix: " + f.Fix
			}
			h.info("host check %s: have %s, want %s%s", f.Check, f.Have, f.Want, fix)
		}
	}
}

// Start checks the host and opens the fast path in the standby role, so that a later ACTIVE
// only flips a switch. With DryRun nothing is opened.
func (h *Helper) Start() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.check()
	if h.opt.DryRun {
		h.info("-m: no sockets opened, no packets forwarded; actions are listed here instead")
		return nil
	}
	if h.vipErr != nil {
		return nil // ACTIVE will answer the error; STANDBY works without VIPs
	}
	return h.startLocked()
}

func (h *Helper) startLocked() error {
	if h.node != nil {
		return nil
	}
	mac, err := h.host.InterfaceMAC(h.opt.Interface)
	if err != nil {
		h.startErr = fmt.Errorf("%w: %s: %v", ErrNoInterface, h.opt.Interface, err)
		return h.startErr
	}
	eng := dataplane.New(conntrack.Config{Timeouts: conntrack.DefaultTimeouts(), Persistence: h.opt.Persistence})
	cfg := dataplane.Config{VirtualMAC: h.opt.VirtualMAC, InterfaceMAC: mac, VIPs: h.vips,
		Scheduler: h.opt.Scheduler, Persistence: h.opt.Persistence}
	if err := eng.Configure(cfg); err != nil {
		h.startErr = err
		return err
	}
	node, err := dataplane.NewNode(dataplane.NodeConfig{Interface: h.opt.Interface, Workers: h.opt.Workers,
		Engine: eng, Logger: h.log})
	if err != nil {
		h.startErr = fmt.Errorf("%w: %v", ErrNoInterface, err)
		return h.startErr
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- node.Run(ctx) }()
	h.eng, h.node, h.cancel, h.done, h.startErr = eng, node, cancel, done, nil
	if !h.opt.NoSync {
		// The sync channel replaces ipvsadm's sync daemon (--syncid -s): the active node
		// replicates its table, standbys import it so that they can take over without cutting
		// connections. A failure here is reported but does not stop balancing.
		sc := h.opt.Sync
		sc.SyncID, sc.Interface = uint16(h.opt.SyncID), h.opt.Interface
		s, err := tablesync.Start(eng, sc, h.log, nil)
		if err != nil {
			h.info("connection sync unavailable: %v", err)
		} else {
			h.sync = s
			s.RequestDump()
		}
	}
	if h.opt.GossipPort != 0 {
		h.startMembership(mac)
	}
	return nil
}

// startMembership joins the group's memberlist (the members CGP names are joined as they come) to
// learn every member's source-port range (seed step 7): replies to a frontend's outgoing
// connections then reach it. A failure is reported and balancing goes on without the ranges.
func (h *Helper) startMembership(mac net.HardwareAddr) {
	self, err := hostcfg.InterfaceIPv4(h.opt.Interface)
	if err != nil {
		h.info("membership unavailable: %v", err)
		return
	}
	lo, hi, err := election.LocalPortRange()
	if err != nil {
		h.info("membership: reading net.ipv4.ip_local_port_range: %v", err)
		return
	}
	cl, err := election.Join(election.ClusterConfig{Name: self.String(), Bind: netip.AddrPortFrom(self, h.opt.GossipPort),
		Meta: election.NodeMeta{Name: self.String(), Addr: self, MAC: mac, PortLo: lo, PortHi: hi, Weight: 100, Healthy: true},
		Log:  h.log})
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
			if h.role == "active" && h.eng != nil {
				h.applyMembersLocked()
			}
			h.mu.Unlock()
		}
	}()
}

// portRanges returns the source-port ranges the membership knows, by member address, reporting
// overlaps (seed step 7 requires disjoint ranges; an overlapping one is not used).
func (h *Helper) portRanges() map[netip.Addr]dataplane.PortRange {
	out := map[netip.Addr]dataplane.PortRange{}
	if h.cl == nil {
		return out
	}
	v := h.cl.View()
	bad := map[string]bool{}
	if o := election.Overlaps(v); len(o) > 0 {
		h.info("members' source-port ranges overlap (seed step 7): %v; those ranges are not used", o)
		for _, p := range o {
			bad[p[0]], bad[p[1]] = true, true
		}
	}
	for _, m := range v.Members {
		if m.Alive && m.Addr.Is4() && m.PortLo != 0 && !bad[m.Name] {
			out[m.Addr] = dataplane.PortRange{Lo: m.PortLo, Hi: m.PortHi}
		}
	}
	return out
}

// applyMembersLocked re-applies the last ACTIVE list with the current port ranges.
func (h *Helper) applyMembersLocked() {
	cfg := h.eng.Config()
	ranges := h.portRanges()
	ms := append([]dataplane.Member(nil), cfg.Members...)
	changed := false
	for i := range ms {
		if r := ranges[ms[i].Addr]; r != ms[i].Ports {
			ms[i].Ports, changed = r, true
		}
	}
	if !changed {
		return
	}
	cfg.Members = ms
	if err := h.eng.Configure(cfg); err != nil {
		h.info("applying members' port ranges: %v", err)
	}
}

// Active implements helperproto.Handler: this node becomes (or stays) the active balancer for
// members. Repeating it with the same list changes nothing; a different list changes membership
// without disturbing flows to members that stay.
func (h *Helper) Active(members []netip.Addr) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.vipErr != nil {
		return h.vipErr
	}
	local := h.host.LocalAddrs()
	if h.cl != nil {
		var peers []string
		for _, a := range members {
			if !local[a] {
				peers = append(peers, netip.AddrPortFrom(a, h.opt.GossipPort).String())
			}
		}
		go h.cl.JoinPeers(peers) // may wait for TCP; the ranges are applied when they arrive
	}
	ranges := h.portRanges()
	ms := make([]dataplane.Member, 0, len(members))
	var desc []string
	for _, a := range members {
		m := dataplane.Member{Addr: a, Weight: 100, Ports: ranges[a]}
		if local[a] {
			// Every member weighs 100; this server weighs -r while it is the active balancer.
			m.Local, m.Weight = true, h.opt.SelfWeight
		}
		if w, ok := h.weights[a]; ok {
			m.Weight = w // an operator's l2lb weight / drain outlives CGP's list updates
		}
		if m.Local {
			desc = append(desc, fmt.Sprintf("%s (self, weight %d)", a, m.Weight))
		} else if m.Weight != 100 {
			desc = append(desc, fmt.Sprintf("%s (weight %d)", a, m.Weight))
		} else {
			desc = append(desc, a.String())
		}
		ms = append(ms, m)
	}
	summary := fmt.Sprintf("VIPs %s on %s, members %s", h.vips, h.opt.Interface, strings.Join(desc, " "))
	if h.opt.DryRun {
		h.info("would answer ARP for %s on %s with %s and announce them", h.vips, h.opt.Interface, h.opt.VirtualMAC)
		h.info("would forward VIP traffic to members %s", strings.Join(desc, " "))
		h.setRole("active", members)
		return nil
	}
	if err := h.startLocked(); err != nil {
		return err
	}
	cfg := h.eng.Config()
	cfg.Members = ms
	if err := h.eng.Configure(cfg); err != nil {
		return err
	}
	wasActive := h.role == "active"
	if !wasActive {
		// Resolve the members' MACs before taking traffic (the resolver works while standby):
		// flows synced from the previous active node must go on to their frontends, and a
		// member without a MAC would get none of the first new connections. Bounded so that
		// OK still comes within a second.
		deadline := time.Now().Add(activeReadyWait)
		for time.Now().Before(deadline) && !allReady(h.eng) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	h.node.SetActive(true)
	if h.sync != nil {
		h.sync.SetActive(true)
	}
	h.info("active: %s", summary)
	h.setRole("active", members)
	return nil
}

func allReady(e *dataplane.Engine) bool {
	for _, m := range e.Members() {
		if m.Weight > 0 && !m.Ready {
			return false
		}
	}
	return true
}

func (h *Helper) setRole(role string, members []netip.Addr) {
	if h.role != role {
		h.since = time.Now()
		h.transitions++
		h.log.Info("role change", "role", role)
	}
	h.role = role
	h.members = append(h.members[:0], members...)
}

// Standby implements helperproto.Handler: stop answering ARP and forwarding before answering.
// The connection table is kept, so a later ACTIVE continues the flows it knows.
func (h *Helper) Standby(active netip.Addr) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.opt.DryRun {
		if h.role == "active" {
			h.info("would stop answering ARP for %s and stop forwarding", h.vips)
		}
		h.setRole("standby", nil)
		return nil
	}
	if h.node != nil {
		h.node.SetActive(false)
	}
	if h.sync != nil {
		h.sync.SetActive(false)
	}
	if active.IsValid() {
		h.info("standby: active balancer is %s", active)
	}
	h.setRole("standby", nil)
	return nil
}

// Status implements helperproto.Handler.
func (h *Helper) Status() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "role=%s since=%s iface=%s", h.role, h.since.UTC().Format(time.RFC3339), h.opt.Interface)
	if h.vipErr != nil {
		fmt.Fprintf(&b, " vips=error(%v)", h.vipErr)
	} else {
		fmt.Fprintf(&b, " vips=%s", strings.ReplaceAll(h.vips.String(), " ", ""))
	}
	if h.eng != nil {
		var ms []string
		for _, m := range h.eng.Members() {
			st := "ready"
			if !m.Ready {
				st = "unresolved"
				if m.Weight == 0 {
					st = "quiescent"
				}
			}
			ms = append(ms, fmt.Sprintf("%s/%d/%s/%d", m.Addr, m.Weight, st, m.Flows))
		}
		flows, tmpl := h.eng.Table().Len()
		s := h.node.Stats()
		fmt.Fprintf(&b, " members=%s connections=%d templates=%d forwarded=%d local=%d dropped=%d",
			strings.Join(ms, ","), flows, tmpl, s.Verdicts["forwarded"], s.Verdicts["local"], s.Verdicts["dropped"])
	} else if len(h.members) > 0 {
		var ms []string
		for _, m := range h.members {
			ms = append(ms, m.String())
		}
		fmt.Fprintf(&b, " members=%s", strings.Join(ms, ","))
	}
	if h.opt.DryRun {
		b.WriteString(" dry-run")
	}
	if h.startErr != nil {
		fmt.Fprintf(&b, " error=%q", h.startErr.Error())
	}
	return b.String()
}

// Periodic implements helperproto.Handler. The node's own housekeeping re-announces the VIPs,
// expires entries and refreshes MACs on its timers; here the helper only notices a fast path that
// died, and reports it.
func (h *Helper) Periodic() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done == nil {
		return
	}
	select {
	case err := <-h.done:
		h.info("fast path stopped: %v", err)
		h.startErr = fmt.Errorf("%w: %v", ErrNotStarted, err)
		h.cancel()
		if h.sync != nil {
			h.sync.Close()
			h.sync = nil
		}
		h.eng, h.node, h.cancel, h.done = nil, nil, nil, nil
		if h.role == "active" {
			h.role = "standby"
		}
	default:
	}
}

// Close implements helperproto.Handler: stop forwarding, close every socket (the virtual MAC's
// membership goes with them) and wait for the fast path to end.
func (h *Helper) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.node == nil {
		return nil
	}
	h.node.SetActive(false)
	if h.sync != nil {
		h.sync.Close()
		h.sync = nil
	}
	if h.cl != nil {
		h.cl.Leave(200 * time.Millisecond)
		h.cl.Shutdown()
		h.cl = nil
	}
	h.cancel()
	var err error
	select {
	case err = <-h.done:
	case <-time.After(900 * time.Millisecond):
		err = errors.New("fast path did not stop within 900 ms")
	}
	h.eng, h.node, h.cancel, h.done = nil, nil, nil, nil
	return err
}

// Engine returns the fast path's engine and node, or nils before Start (or with -m).
func (h *Helper) Engine() (*dataplane.Engine, *dataplane.Node) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.eng, h.node
}

// RoleInfo returns whether the helper is active, since when and how many role changes it saw.
func (h *Helper) RoleInfo() (active bool, since time.Time, transitions uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.role == "active", h.since, h.transitions
}

// SyncStats returns the sync channel's counters, if it runs.
func (h *Helper) SyncStats() (connsync.Stats, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sync == nil {
		return connsync.Stats{}, false
	}
	return h.sync.Stats(), true
}

// SyncLast returns when the last sync message from another node arrived.
func (h *Helper) SyncLast() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sync == nil {
		return time.Time{}
	}
	return h.sync.LastReceived()
}

// SetWeight overrides a member's weight (l2lb weight / drain) for as long as the helper runs, also
// across later ACTIVE lists; weight 0 quiesces the member.
func (h *Helper) SetWeight(member netip.Addr, weight uint32) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.eng == nil {
		return ErrNotStarted
	}
	cfg := h.eng.Config()
	ms := append([]dataplane.Member(nil), cfg.Members...)
	found := false
	for i := range ms {
		if ms[i].Addr == member {
			ms[i].Weight, found = weight, true
		}
	}
	if !found {
		return fmt.Errorf("%v is not a member of the group", member)
	}
	if h.weights == nil {
		h.weights = map[netip.Addr]uint32{}
	}
	h.weights[member] = weight
	cfg.Members = ms
	return h.eng.Configure(cfg)
}

// ReloadVIPs re-reads the VIP file; a bad file is reported with file:line and changes nothing.
func (h *Helper) ReloadVIPs() error {
	vips, err := vipset.ParseFile(h.opt.VIPFile)
	if err == nil && vips.Len() == 0 {
		err = fmt.Errorf("%w: %s lists none", ErrNoVIPs, h.opt.VIPFile)
	}
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.eng != nil {
		if err := h.eng.SetVIPs(vips); err != nil {
			return err
		}
		h.node.Announce()
	}
	h.vips, h.vipErr = vips, nil
	return nil
}

// SystemHost is the real Host: this machine's interfaces, /proc/sys and netlink.
type SystemHost struct{}

// LocalAddrs implements Host.
func (SystemHost) LocalAddrs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return out
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap().Is4() {
				out[ip.Unmap()] = true
			}
		}
	}
	return out
}

// InterfaceMAC implements Host.
func (SystemHost) InterfaceMAC(name string) (net.HardwareAddr, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, err
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("%s has no Ethernet address", name)
	}
	return ifi.HardwareAddr, nil
}

// Doctor implements Host.
func (SystemHost) Doctor(iface string, vips []netip.Addr) []hostcfg.Finding {
	return hostcfg.Doctor(hostcfg.ProcSysctl(), hostcfg.NetlinkAddrs(), hostcfg.DoctorInput{Iface: iface, VIPs: vips})
}
