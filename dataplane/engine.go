package dataplane

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/scheduler"
	"github.com/l2lb/l2lb/vipset"
)

// MaxMembers bounds the number of distinct frontends an engine has known. Member IDs index fixed
// per-worker counter arrays, so the bound keeps those small.
const MaxMembers = 4096

// Sentinel errors returned by the engine's configuration calls.
var (
	// ErrTooManyMembers is returned when a configuration names more than MaxMembers frontends.
	ErrTooManyMembers = errors.New("dataplane: too many members")
	// ErrBadMember is returned for a member without an IPv4 address or with a bad port range.
	ErrBadMember = errors.New("dataplane: bad member")
	// ErrBadMAC is returned for a virtual or interface MAC that is not 6 bytes long.
	ErrBadMAC = errors.New("dataplane: bad MAC address")
	// ErrPortRangeOverlap is returned when two members' source-port ranges overlap.
	ErrPortRangeOverlap = errors.New("dataplane: overlapping port ranges")
)

// NoDestPolicy says what happens to a flow whose frontend was removed from the member list.
type NoDestPolicy uint8

const (
	// NoDestReschedule moves the flow to a frontend picked by the scheduler on its next frame, so
	// the new frontend answers at once (for TCP with a reset, which the client sees immediately).
	NoDestReschedule NoDestPolicy = iota
	// NoDestExpire drops the frame and forgets the flow, as IPVS does with expire_nodest_conn=1
	// (Documentation/networking/ipvs-sysctl.rst); the flow's next frame is scheduled anew.
	NoDestExpire
)

// ParseNoDestPolicy parses "reschedule" or "expire".
func ParseNoDestPolicy(s string) (NoDestPolicy, error) {
	switch s {
	case "reschedule", "":
		return NoDestReschedule, nil
	case "expire":
		return NoDestExpire, nil
	}
	return 0, fmt.Errorf("dataplane: unknown no-destination policy %q (want reschedule or expire)", s)
}

// PortRange is a frontend's own source-port range for outgoing connections (seed step 7). The
// zero value means no range.
type PortRange struct{ Lo, Hi uint16 }

// Overlaps reports whether r and o are both ranges and share a port.
func (r PortRange) Overlaps(o PortRange) bool {
	return r != PortRange{} && o != PortRange{} && r.Lo <= o.Hi && o.Lo <= r.Hi
}

// Member is one frontend as configured.
type Member struct {
	// Addr is the frontend's real address, IPv4 or IPv6: its MAC is resolved by ARP or by NDP on
	// it, and it names the member for consistent hashing. Frames for VIPs of either family go to
	// that MAC (DSR needs only the frontend's MAC and the VIPs on its lo).
	Addr netip.Addr
	// Weight is its relative weight; 0 quiesces it (no new flows, existing ones continue).
	Weight uint32
	// Local marks this node itself: its flows are re-injected on lo instead of sent out.
	Local bool
	// Ports is the member's source-port range, if it has one.
	Ports PortRange
	// Leaving marks a member that left the list while still reachable (issue 13, graceful
	// leave): its established flows continue, but it must have weight 0 and persistence
	// templates no longer send a client's new connections to it, unlike a quiesced member.
	Leaving bool
}

// Config is the engine's whole configuration. It is applied atomically by Engine.Configure.
type Config struct {
	// VirtualMAC is the MAC the balancer answers ARP with; frames to it are balancer input.
	VirtualMAC net.HardwareAddr
	// InterfaceMAC is the interface's own MAC, used as the source of forwarded frames.
	InterfaceMAC net.HardwareAddr
	// VIPs is the set of virtual addresses.
	VIPs *vipset.Set
	// Members is the frontend list, this node included when it takes connections.
	Members []Member
	// Scheduler picks frontends for new flows.
	Scheduler scheduler.Kind
	// NoDest is the removed-member policy.
	NoDest NoDestPolicy
	// CallIDPorts are the UDP destination ports with SIP Call-ID affinity (issue 13; typically
	// 5060, RFC 3261 §19.1.2): a datagram to a VIP on one of them that carries a SIP message with
	// a Call-ID is scheduled by its dialog, not its 5-tuple (see sip.go). No port may be zero or
	// listed twice (ErrBadCallIDPort). Empty turns the feature off.
	CallIDPorts []uint16
	// ProbeSources are the health probes' own addresses (the services file's probe-source,
	// answered by dsrprobe with the virtual MAC): frames to them reach the fast path's sockets
	// too and are not balancer input, so they are ignored rather than dropped as not-VIP.
	ProbeSources []netip.Addr
}

// member is the fast path's view of one frontend, indexed by its stable ID.
type member struct {
	addr    netip.Addr
	mac     [6]byte
	hasMAC  bool // resolved at least once: flows can be sent to it
	failed  bool // resolution failed repeatedly: the frontend is presumed down
	present bool // in the configured member list
	local   bool
	leaving bool // left the list: established flows only
	weight  uint32
}

type portRange struct {
	lo, hi uint16
	id     uint32
}

// state is an immutable snapshot read by the fast path without locks.
type state struct {
	vips    *vipset.Set
	vmac    [6]byte
	ourMAC  [6]byte
	members []member
	sched   scheduler.Scheduler
	ranges  []portRange
	nodest  NoDestPolicy
	// callID is the set of Config.CallIDPorts, nil when there is none.
	callID *portSet
	// probe4 and probe6 are Config.ProbeSources (probe4 0 and probe6 zero when not set).
	probe4    uint32
	probe6    [16]byte
	hasProbe6 bool
	// vipCounters[i] counts the traffic of the i-th IPv4 VIP in ascending order (vipset's
	// IndexU32), vipCounters6[i] that of the i-th IPv6 VIP (Index16).
	vipCounters, vipCounters6 []*vipCounter
}

// Engine decides, one frame at a time, what happens to balancer input. It holds the connection
// table, the fragment map and the current configuration; it does no I/O, so it can be tested by
// feeding it frames and asserting verdicts.
type Engine struct {
	ct        *conntrack.Table
	timeouts  conntrack.Timeouts
	frags     *fragTable[fragKey]
	frags6    *fragTable[fragKey6]
	vipCtrs   map[netip.Addr]*vipCounter // survive reloads for the VIPs that stay
	persist   bool
	state     atomic.Pointer[state]
	active    atomic.Bool
	answering atomic.Bool // answers ARP for the VIPs (active and not draining)
	clock     atomic.Int64
	clockRate int64 // SetClockRate; 1 in production
	// flowGen is the generation of the configuration the XDP flow cache's entries must carry
	// (flowcache.go): it moves on with every change of the state or of the active flag, after
	// the change is visible, and flowGenCh tells the cache's owner.
	flowGen   atomic.Uint32
	flowGenCh chan struct{}

	mu     sync.Mutex // serialises configuration changes
	cfg    Config
	ids    map[netip.Addr]uint32
	macs   map[netip.Addr]net.HardwareAddr
	failed map[netip.Addr]bool
	nextID uint32
	base   time.Time
}

// New returns an engine with the given connection-table settings. The engine starts inactive and
// unconfigured; call Configure and SetActive.
func New(ct conntrack.Config) *Engine {
	e := &Engine{
		ct:        conntrack.New(ct),
		timeouts:  withDefaults(ct.Timeouts),
		frags:     newFragTable[fragKey](),
		frags6:    newFragTable[fragKey6](),
		persist:   ct.Persistence > 0,
		ids:       make(map[netip.Addr]uint32),
		macs:      make(map[netip.Addr]net.HardwareAddr),
		failed:    make(map[netip.Addr]bool),
		base:      time.Now(),
		clockRate: 1,
		flowGenCh: make(chan struct{}, 1),
	}
	e.state.Store(&state{vips: vipset.New()})
	e.Tick()
	return e
}

// Table returns the engine's connection table.
func (e *Engine) Table() *conntrack.Table { return e.ct }

// Tick advances the engine's coarse clock to the current monotonic time and returns it. The fast
// path reads the clock instead of calling time.Now per frame: each worker ticks it once per batch
// of frames it takes from its ring, and the node ticks it every clockInterval while idle, both
// far finer than any timeout (seconds). Two workers may race; the clock never goes back.
func (e *Engine) Tick() int64 {
	now := int64(time.Since(e.base)) * e.clockRate
	for {
		old := e.clock.Load()
		if now <= old {
			return old
		}
		if e.clock.CompareAndSwap(old, now) {
			return now
		}
	}
}

// SetClockRate makes the engine's clock, and with it every flow, template and fragment timeout,
// run rate times faster than real time. It exists for end-to-end tests of long timeouts (an IMAP
// connection idle for 20 minutes under a 30-minute port timeout, in 20 s at rate 60); a balancer
// in service never sets it. Call it before the engine handles frames.
func (e *Engine) SetClockRate(rate int64) {
	if rate >= 1 {
		e.clockRate = rate
	}
}

// Now returns the engine's coarse clock.
func (e *Engine) Now() int64 { return e.clock.Load() }

// SetActive makes the engine answer ARP and forward (true) or drop VIP input (false).
func (e *Engine) SetActive(on bool) {
	e.active.Store(on)
	e.answering.Store(on)
	e.newFlowGeneration()
}

// SetDraining keeps forwarding but stops answering ARP: the state of a node that has just handed
// its VIPs over. Frames already on their way to it (the switch or a client may still send to it
// for a moment) are forwarded instead of dropped, while its ARP answers no longer pull the
// virtual MAC back from the new active node.
func (e *Engine) SetDraining() {
	e.answering.Store(false)
}

// Active reports whether the engine is active.
func (e *Engine) Active() bool { return e.active.Load() }

// Configure validates cfg and applies it atomically: frames processed after it returns see the
// new configuration, flows to members that stay are not disturbed. On error nothing changes.
func (e *Engine) Configure(cfg Config) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.applyLocked(cfg)
}

// SetMAC records the resolved MAC of a member address, or (nil) that resolving it failed
// repeatedly. A member whose MAC is not known yet is pending: it gets no new flows, and frames of
// its existing flows and persistent clients are dropped (TCP retransmits them) rather than moved to
// another frontend, which would reset them — a standby that just became active resolves its
// members in milliseconds. A member whose resolution failed is presumed down: its flows follow
// the no-destination policy.
func (e *Engine) SetMAC(addr netip.Addr, mac net.HardwareAddr) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	old, had := e.macs[addr]
	if mac == nil {
		if !had && e.failed[addr] {
			return nil
		}
		delete(e.macs, addr)
		e.failed[addr] = true
	} else {
		if had && bytes.Equal(old, mac) && !e.failed[addr] {
			return nil
		}
		e.macs[addr] = append(net.HardwareAddr(nil), mac...)
		delete(e.failed, addr)
	}
	if e.cfg.VirtualMAC == nil {
		return nil // not configured yet: Configure will use the MAC
	}
	return e.applyLocked(e.cfg)
}

// SetVIPs replaces the VIP set atomically (a reload); flows of the VIPs that stay are untouched.
func (e *Engine) SetVIPs(v *vipset.Set) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	cfg := e.cfg
	cfg.VIPs = v
	return e.applyLocked(cfg)
}

// Config returns the configuration in force.
func (e *Engine) Config() Config {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfg
}

// MemberID returns the stable ID of a member address, if it has one.
func (e *Engine) MemberID(addr netip.Addr) (uint32, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	id, ok := e.ids[addr]
	return id, ok
}

// MemberStatus is a member's state as the fast path sees it.
type MemberStatus struct {
	ID     uint32
	Addr   netip.Addr
	MAC    net.HardwareAddr
	Weight uint32
	Local  bool
	Ready  bool // may receive new flows
	Flows  int64
	Ports  PortRange
}

// Members returns the configured members with their state.
func (e *Engine) Members() []MemberStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.state.Load()
	out := make([]MemberStatus, 0, len(e.cfg.Members))
	for _, m := range e.cfg.Members {
		id := e.ids[m.Addr]
		sm := st.members[id]
		ms := MemberStatus{ID: id, Addr: m.Addr, Weight: m.Weight, Local: m.Local,
			Ready: sm.weight > 0 && (sm.local || sm.hasMAC), Flows: e.ct.Active(id), Ports: m.Ports}
		if mac, ok := e.macs[m.Addr]; ok {
			ms.MAC = mac
		}
		out = append(out, ms)
	}
	return out
}

func (e *Engine) applyLocked(cfg Config) error {
	if cfg.VIPs == nil {
		// No VIP yet (a helper started with a VIP file it cannot read): nothing is balancer
		// input until a reload gives some.
		cfg.VIPs = vipset.New()
	}
	if len(cfg.VirtualMAC) != 6 {
		return fmt.Errorf("%w: the virtual MAC must be 6 bytes", ErrBadMAC)
	}
	if len(cfg.InterfaceMAC) != 6 && len(cfg.InterfaceMAC) != 0 {
		// Empty while the interface is not known yet: nothing is forwarded before the fast
		// path runs on it, and the balancer configures the MAC before that.
		return fmt.Errorf("%w: the interface MAC must be 6 bytes", ErrBadMAC)
	}
	seen := make(map[netip.Addr]bool)
	newIDs := 0
	for _, m := range cfg.Members {
		if !m.Addr.IsValid() || m.Addr.Is4In6() || m.Addr.Zone() != "" {
			return fmt.Errorf("%w: %v is not an IPv4 or IPv6 address", ErrBadMember, m.Addr)
		}
		if seen[m.Addr] {
			return fmt.Errorf("%w: %v listed twice", ErrBadMember, m.Addr)
		}
		seen[m.Addr] = true
		if m.Ports.Lo > m.Ports.Hi {
			return fmt.Errorf("%w: %v port range %d-%d", ErrBadMember, m.Addr, m.Ports.Lo, m.Ports.Hi)
		}
		if m.Leaving && m.Weight != 0 {
			return fmt.Errorf("%w: %v is leaving with weight %d", ErrBadMember, m.Addr, m.Weight)
		}
		if _, ok := e.ids[m.Addr]; !ok {
			newIDs++
		}
	}
	if int(e.nextID)+newIDs > MaxMembers {
		return ErrTooManyMembers
	}
	callID, err := newPortSet(cfg.CallIDPorts)
	if err != nil {
		return err
	}
	var ranges []portRange
	for _, m := range cfg.Members {
		if m.Ports != (PortRange{}) {
			ranges = append(ranges, portRange{lo: m.Ports.Lo, hi: m.Ports.Hi})
		}
	}
	sort.Slice(ranges, func(i, j int) bool { return ranges[i].lo < ranges[j].lo })
	for i := 1; i < len(ranges); i++ {
		if ranges[i].lo <= ranges[i-1].hi {
			return fmt.Errorf("%w: %d-%d and %d-%d", ErrPortRangeOverlap,
				ranges[i-1].lo, ranges[i-1].hi, ranges[i].lo, ranges[i].hi)
		}
	}
	// Validation passed: from here on nothing fails except the scheduler build, which is done
	// before anything is stored.
	for _, m := range cfg.Members {
		if _, ok := e.ids[m.Addr]; !ok {
			e.ids[m.Addr] = e.nextID
			e.nextID++
		}
	}
	cfg.CallIDPorts = append([]uint16(nil), cfg.CallIDPorts...) // the caller may reuse its slice
	st := &state{vips: cfg.VIPs, nodest: cfg.NoDest, callID: callID}
	for _, a := range cfg.ProbeSources {
		if a.Is4() {
			st.probe4 = binary.BigEndian.Uint32(a.AsSlice())
		} else if a.Is6() {
			st.probe6, st.hasProbe6 = a.As16(), true
		}
	}
	cfg.ProbeSources = slices.Clone(cfg.ProbeSources)
	if e.vipCtrs == nil {
		e.vipCtrs = map[netip.Addr]*vipCounter{}
	}
	for _, a := range cfg.VIPs.Addrs() {
		c := e.vipCtrs[a]
		if c == nil {
			c = new(vipCounter)
			e.vipCtrs[a] = c
		}
		if a.Is4() {
			st.vipCounters = append(st.vipCounters, c)
		} else {
			st.vipCounters6 = append(st.vipCounters6, c)
		}
	}
	copy(st.vmac[:], cfg.VirtualMAC)
	copy(st.ourMAC[:], cfg.InterfaceMAC)
	st.members = make([]member, e.nextID)
	for addr, id := range e.ids {
		st.members[id].addr = addr
		if mac, ok := e.macs[addr]; ok {
			copy(st.members[id].mac[:], mac)
			st.members[id].hasMAC = true
		}
		st.members[id].failed = e.failed[addr]
	}
	var sm []scheduler.Member
	st.ranges = st.ranges[:0]
	for _, m := range cfg.Members {
		id := e.ids[m.Addr]
		mm := &st.members[id]
		mm.present, mm.local, mm.weight, mm.leaving = true, m.Local, m.Weight, m.Leaving
		if m.Ports != (PortRange{}) {
			st.ranges = append(st.ranges, portRange{lo: m.Ports.Lo, hi: m.Ports.Hi, id: id})
		}
		// A frontend whose MAC is unknown gets no new flows until it resolves (issue 2, item 5).
		if m.Weight > 0 && (m.Local || mm.hasMAC) {
			sm = append(sm, scheduler.Member{ID: id, Key: m.Addr.String(), Weight: m.Weight})
		}
	}
	sort.Slice(st.ranges, func(i, j int) bool { return st.ranges[i].lo < st.ranges[j].lo })
	kind := cfg.Scheduler
	if kind == "" {
		kind = scheduler.Kind("maglev")
	}
	if len(sm) > 0 {
		s, err := scheduler.New(kind, sm, e.ct.Active)
		if err != nil {
			return err
		}
		st.sched = s
	}
	e.cfg = cfg
	e.state.Store(st)
	e.newFlowGeneration()
	return nil
}

// keeps reports whether a frame with tcpFlags of a known flow stays with the flow's member m: m is
// usable and, when it is leaving, the frame is not a new connection. A client that reuses the
// 4-tuple of a closed flow sends a bare SYN, which IPVS gives to the flow's old server; for a
// leaving member that would be a new connection to it (issue 13), so the SYN is scheduled again.
func (m *member) keeps(tcpFlags uint8) bool {
	return m.usable() && (!m.leaving || tcpFlags&(conntrack.FlagSYN|conntrack.FlagACK) != conntrack.FlagSYN)
}

// usable reports a member that can receive frames now.
func (m *member) usable() bool { return m.present && (m.local || m.hasMAC) }

// pending reports a configured member whose MAC is still being resolved.
func (m *member) pending() bool { return m.present && !m.local && !m.hasMAC && !m.failed }

// rangeOwner returns the member whose source-port range holds port.
func (st *state) rangeOwner(port uint16) (uint32, bool) {
	r := st.ranges
	lo, hi := 0, len(r)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if r[mid].hi < port {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo < len(r) && r[lo].lo <= port && port <= r[lo].hi {
		return r[lo].id, true
	}
	return 0, false
}

// VIPTraffic is what one VIP carried since the engine started (frames forwarded or delivered
// locally, and their bytes).
type VIPTraffic struct{ Packets, Bytes uint64 }

// vipCounter counts one VIP's traffic. The workers share it, so they add to it once per batch
// (Counters.RecordBatch), not per frame.
type vipCounter struct {
	packets, bytes atomic.Uint64
	_              [48]byte // keep VIPs on separate cache lines
}

func (c *vipCounter) add(packets, bytes uint64) {
	c.packets.Add(packets)
	c.bytes.Add(bytes)
}

// VIPStats returns the traffic per VIP.
func (e *Engine) VIPStats() map[netip.Addr]VIPTraffic {
	st := e.state.Load()
	out := make(map[netip.Addr]VIPTraffic, len(st.vipCounters)+len(st.vipCounters6))
	i4, i6 := 0, 0
	for _, a := range st.vips.Addrs() {
		var c *vipCounter
		if a.Is4() && i4 < len(st.vipCounters) {
			c, i4 = st.vipCounters[i4], i4+1
		} else if a.Is6() && i6 < len(st.vipCounters6) {
			c, i6 = st.vipCounters6[i6], i6+1
		}
		if c != nil {
			out[a] = VIPTraffic{Packets: c.packets.Load(), Bytes: c.bytes.Load()}
		}
	}
	return out
}

// Process decides what to do with one received frame b and, for VerdictForward and VerdictLocal,
// rewrites its Ethernet addresses in place (only those: the IP destination stays the VIP, which is
// what makes direct server return work). scratch is the caller's buffer for an ARP or NDP reply
// (at least 128 bytes). Process is safe for concurrent use by several workers and allocates
// nothing for IPv4 and IPv6 data frames; ARP and NDP frames, which are rare, may allocate.
func (e *Engine) Process(b []byte, vlanTagged bool, scratch []byte) Result {
	return e.process(b, vlanTagged, scratch, nil, true)
}

// ProcessHint is Process for a worker that prefetches and counts through its own Counters. It
// takes the flow's table hash from hint instead of computing it again; hint may be nil or hold
// another frame's flow, which only costs the hash. Unlike Process it does not count the frame on
// its VIP's counter, which all workers share (two locked adds per frame): Counters.Record or
// RecordBatch does, once per batch in the worker's case, when given the Result. A caller that
// drops the Result uncounted leaves the frame out of VIPStats.
func (e *Engine) ProcessHint(b []byte, vlanTagged bool, scratch []byte, hint *FlowHint) Result {
	return e.process(b, vlanTagged, scratch, hint, false)
}

// process is Process and ProcessHint: with countVIP it counts the frame on its VIP's counter,
// otherwise it leaves the counter in the Result for Counters.
func (e *Engine) process(b []byte, vlanTagged bool, scratch []byte, hint *FlowHint, countVIP bool) Result {
	st := e.state.Load()
	if len(b) < ethHeaderLen {
		return Result{Verdict: VerdictDrop, Reason: ReasonRunt}
	}
	etherType := binary.BigEndian.Uint16(b[12:14])
	if [6]byte(b[0:6]) != st.vmac {
		switch {
		case isBroadcast(b[0:6]) && etherType == etherTypeARP:
			return e.processARP(st, b, scratch)
		case isIPv6Multicast(b[0:6]) && etherType == etherTypeIPv6:
			// Neighbour solicitations go to the target's solicited-node multicast address.
			return e.processNDPMulticast(st, b, scratch)
		}
		return Result{Verdict: VerdictIgnored}
	}
	if vlanTagged {
		return Result{Verdict: VerdictDrop, Reason: ReasonVLAN}
	}
	switch etherType {
	case etherTypeARP:
		return e.processARP(st, b, scratch)
	case etherTypeIPv6:
		return e.process6(st, b, scratch, countVIP)
	}
	var p Packet
	if r := ParseIPv4(b, &p); r != ReasonNone {
		return Result{Verdict: VerdictDrop, Reason: r}
	}
	vi := st.vips.IndexU32(p.Dst)
	if vi < 0 {
		if p.Dst == st.probe4 && p.Dst != 0 {
			return Result{Verdict: VerdictIgnored} // a health probe's reply (dsrprobe)
		}
		return Result{Verdict: VerdictDrop, Reason: ReasonNotVIP}
	}
	if !e.active.Load() {
		return Result{Verdict: VerdictDrop, Reason: ReasonInactive}
	}
	ctr := st.vipCounters[vi]
	now := e.clock.Load()
	var res Result
	switch {
	case p.Fragment && !p.FirstFragment:
		id, ok := e.frags.lookup(fragKey{src: p.Src, dst: p.Dst, id: p.FragID, proto: p.Proto}, now)
		if !ok {
			return Result{Verdict: VerdictDrop, Reason: ReasonFragmentUnknown}
		}
		res.Member = id
	case p.Proto == protoICMP && p.ICMPError:
		res.Member = e.icmpOwner(st, &p, now)
	case p.Proto == protoICMP:
		// Echo and other informational ICMP to a VIP are answered by the active node itself,
		// as IPVS does for traffic that belongs to no virtual service.
		res.Member = localOwner
	default:
		k := conntrack.Key{Src: p.Src, Dst: p.Dst, SPort: p.SPort, DPort: p.DPort, Proto: p.Proto}
		var id uint32
		dialog := false
		callIDPort := p.Proto == protoUDP && st.callID != nil && st.callID.has(p.DPort)
		if callIDPort {
			// SIP Call-ID affinity: the dialog, not the 5-tuple, decides (sip.go).
			var r Reason
			if id, r, dialog = e.sipOwner4(st, b, &p, k, now, &res); r != ReasonNone {
				return Result{Verdict: VerdictDrop, Reason: r, NoCallID: res.NoCallID}
			}
		}
		if !dialog {
			// The common case, a known flow on a usable member, stays in this function with
			// a direct table call; everything else goes through flowOwner (BenchmarkProcess).
			var hit bool
			if hint != nil && hint.ok && hint.key == k {
				id, hit = e.ct.TouchHash(k, hint.hash, p.TCPFlags, now)
			} else {
				id, hit = e.ct.Touch(k, p.TCPFlags, now)
			}
			if !hit || int(id) >= len(st.members) || !st.members[id].keeps(p.TCPFlags) {
				f := flowRef{flags: p.TCPFlags, k4: k}
				var r Reason
				if id, r = e.flowOwner(st, &f, id, hit, now, &res); r != ReasonNone {
					return Result{Verdict: VerdictDrop, Reason: r, NoCallID: res.NoCallID}
				}
			} else if !p.Fragment && (p.Proto == protoUDP && !callIDPort || p.Proto == protoTCP && cacheableTCP(p.TCPFlags)) {
				// A known UDP flow on a member that keeps it: every later datagram of the
				// flow gets the same answer until the configuration or the table entry
				// changes (flowcache.go). Not on a Call-ID port, where a datagram without
				// a Call-ID goes by its 5-tuple but the next one may carry one. For TCP,
				// the same holds for the flow's ACK-only segments.
				res.Cacheable = true
			}
		}
		res.Member = id
		if p.FirstFragment {
			e.frags.insert(fragKey{src: p.Src, dst: p.Dst, id: p.FragID, proto: p.Proto}, id, now)
		}
	}
	e.send(st, b, &res, ctr, countVIP)
	return res
}

// send rewrites b for its member (res.Member): re-injection on lo for this node's own share and
// for frames that belong to no member, the member's MAC otherwise. Only the Ethernet addresses
// change, whatever the address family. It sets res's verdict and counts the frame on its VIP's
// counter, or with countVIP false leaves that counter in res.vip for the caller's Counters.
func (e *Engine) send(st *state, b []byte, res *Result, ctr *vipCounter, countVIP bool) {
	if res.Member == localOwner {
		res.Member = 0
		e.deliverLocal(b, res)
	} else if m := &st.members[res.Member]; m.local {
		e.deliverLocal(b, res)
	} else if !m.hasMAC {
		// A fragment, ICMP error or port-range reply for a frontend whose MAC is not known (yet):
		// never send to a zero MAC.
		*res = Result{Verdict: VerdictDrop, Reason: ReasonMemberPending}
		return
	} else {
		copy(b[0:6], m.mac[:])
		copy(b[6:12], st.ourMAC[:])
		res.Verdict = VerdictForward
	}
	if countVIP {
		ctr.add(1, uint64(len(b)))
	} else {
		res.vip = ctr
	}
}

// localOwner marks a frame for the local stack that belongs to no member (an ICMP error about
// nothing we know).
const localOwner = ^uint32(0)

// deliverLocal prepares b for re-injection on lo: the destination MAC must be all zeros, or the
// loopback device classifies the frame as PACKET_OTHERHOST and the stack drops it (design notes).
func (e *Engine) deliverLocal(b []byte, res *Result) {
	clear(b[0:12])
	res.Verdict = VerdictLocal
	res.Cacheable = false // re-injection on lo is user space's
}

// flowOwner finds or schedules the member of a TCP, UDP or other-protocol flow of either address
// family whose table lookup (id, hit) did not give a usable member.
func (e *Engine) flowOwner(st *state, f *flowRef, id uint32, hit bool, now int64, res *Result) (uint32, Reason) {
	if hit {
		if int(id) < len(st.members) {
			if m := &st.members[id]; m.keeps(f.flags) {
				return id, ReasonNone
			} else if m.pending() {
				return 0, ReasonMemberPending
			} else if m.usable() {
				// A new connection on the 4-tuple of a leaving member's flow: schedule it.
				nid, ok := e.pick(st, f.hash(e.persist))
				if !ok {
					return 0, ReasonNoMember
				}
				f.setMember(e.ct, nid)
				res.NewFlow = true
				return nid, ReasonNone
			}
		}
		if st.nodest == NoDestExpire {
			f.remove(e.ct)
			return 0, ReasonMemberGone
		}
		nid, ok := e.pick(st, f.hash(e.persist))
		if !ok {
			return 0, ReasonNoMember
		}
		f.setMember(e.ct, nid)
		return nid, ReasonNone
	}
	// Replies to a frontend's own outgoing connections (seed step 7) go to the frontend that owns
	// the destination port, never through the scheduler. Linux's ip_local_port_range applies to
	// both address families, so one range per frontend serves both.
	if proto, dport := f.ports(); proto == protoTCP || proto == protoUDP {
		if id, ok := st.rangeOwner(dport); ok {
			if st.members[id].usable() {
				return id, ReasonNone
			}
			return 0, ReasonMemberPending
		}
	}
	found := false
	if e.persist {
		// IPVS keeps sending a persistent client to its frontend even when that frontend is
		// quiesced (weight 0), as long as it is present (expire_quiescent_template=0 default).
		// A leaving member's template does not take new connections (issue 13); but a TCP
		// segment other than a bare SYN belongs to a connection already open, one this table
		// has not learnt yet (a hand-over, the sync still on its way), which can only be on
		// the template's member.
		if tid, ok := f.template(e.ct, now); ok && int(tid) < len(st.members) &&
			(!st.members[tid].leaving || (f.isTCP() && f.flags&(conntrack.FlagSYN|conntrack.FlagACK) != conntrack.FlagSYN)) {
			if m := &st.members[tid]; m.usable() {
				id, found = tid, true
			} else if m.pending() {
				// Wait for the MAC rather than move a persistent client (its SYN is retried).
				return 0, ReasonMemberPending
			}
		}
	}
	if !found {
		var ok bool
		id, ok = e.pick(st, f.hash(e.persist))
		if !ok {
			return 0, ReasonNoMember
		}
	}
	res.NewFlow = true
	if err := f.insert(e.ct, id, now); err != nil {
		// At the table limit the flow is still forwarded: the consistent-hash scheduler maps it
		// to the same frontend on every frame. The worker counts TableFull.
		res.TableFull = true
	}
	return id, ReasonNone
}

// pick asks the scheduler for a member for a flow hash.
func (e *Engine) pick(st *state, h uint64) (uint32, bool) {
	if st.sched == nil {
		return 0, false
	}
	return st.sched.Pick(h)
}

// flowRef is one frame's flow, IPv4 or IPv6, and the TCP flags of the frame. Each table operation
// branches on the family (always the same way for one frame, so the branch predicts) and calls
// the family's table method directly: a generic function over the two key types would have called
// them through a dictionary, ~20 % slower per IPv4 frame (BenchmarkProcess).
type flowRef struct {
	v6    bool
	flags uint8
	k4    conntrack.Key
	k6    conntrack.Key6
}

func (f *flowRef) remove(ct *conntrack.Table) {
	if f.v6 {
		ct.Delete6(f.k6)
	} else {
		ct.Delete(f.k4)
	}
}

func (f *flowRef) setMember(ct *conntrack.Table, id uint32) {
	if f.v6 {
		ct.SetMember6(f.k6, id)
	} else {
		ct.SetMember(f.k4, id)
	}
}

func (f *flowRef) template(ct *conntrack.Table, now int64) (uint32, bool) {
	if f.v6 {
		return ct.Template6(f.k6.Src, f.k6.Dst, now)
	}
	return ct.Template(f.k4.Src, f.k4.Dst, now)
}

func (f *flowRef) insert(ct *conntrack.Table, id uint32, now int64) error {
	if f.v6 {
		return ct.Insert6(f.k6, id, f.flags, now)
	}
	return ct.Insert(f.k4, id, f.flags, now)
}

// isTCP reports a TCP flow.
func (f *flowRef) isTCP() bool {
	proto, _ := f.ports()
	return proto == protoTCP
}

func (f *flowRef) ports() (uint8, uint16) {
	if f.v6 {
		return f.k6.Proto, f.k6.DPort
	}
	return f.k4.Proto, f.k4.DPort
}

// hash is the scheduler's hash of the flow. With persistence it covers only the client and the
// VIP, so two balancers with the same members agree on a client's frontend without sharing state.
func (f *flowRef) hash(persist bool) uint64 {
	var buf [37]byte
	var n int
	var sport, dport uint16
	var proto uint8
	if f.v6 {
		k := &f.k6
		n = copy(buf[0:16], k.Src[:]) + copy(buf[16:32], k.Dst[:])
		sport, dport, proto = k.SPort, k.DPort, k.Proto
	} else {
		k := &f.k4
		binary.BigEndian.PutUint32(buf[0:4], k.Src)
		binary.BigEndian.PutUint32(buf[4:8], k.Dst)
		n = 8
		sport, dport, proto = k.SPort, k.DPort, k.Proto
	}
	if persist {
		return xxhash.Sum64(buf[:n])
	}
	binary.BigEndian.PutUint16(buf[n:n+2], sport)
	binary.BigEndian.PutUint16(buf[n+2:n+4], dport)
	buf[n+4] = proto
	return xxhash.Sum64(buf[:n+5])
}

// icmpOwner finds the member an ICMP error belongs to from the datagram it quotes: that datagram
// went from a frontend (source VIP) to a client, so the flow is its reverse. Errors about nothing
// we know go to the local stack, as IPVS leaves them to the kernel.
func (e *Engine) icmpOwner(st *state, p *Packet, now int64) uint32 {
	if p.InnerProto == protoTCP || p.InnerProto == protoUDP {
		k := conntrack.Key{Src: p.InnerDst, Dst: p.InnerSrc, SPort: p.InnerDPort, DPort: p.InnerSPort, Proto: p.InnerProto}
		if id, ok := e.ct.Touch(k, 0, now); ok && int(id) < len(st.members) && st.members[id].present {
			return id
		}
		if id, ok := st.rangeOwner(p.InnerSPort); ok {
			return id
		}
	}
	return localOwner
}

func isBroadcast(m []byte) bool {
	return m[0] == 0xff && m[1] == 0xff && m[2] == 0xff && m[3] == 0xff && m[4] == 0xff && m[5] == 0xff
}

// Expire forgets expired flows, templates and fragments; the node calls it periodically.
func (e *Engine) Expire() (flows, templates int) {
	now := e.Tick()
	e.frags.expire(now)
	e.frags6.expire(now)
	return e.ct.Expire(now)
}

// withDefaults fills zero timeouts with IPVS's defaults, as conntrack does.
func withDefaults(t conntrack.Timeouts) conntrack.Timeouts {
	d := conntrack.DefaultTimeouts()
	for _, p := range []struct{ v, d *time.Duration }{{&t.TCPSynRecv, &d.TCPSynRecv}, {&t.TCPEstablished, &d.TCPEstablished},
		{&t.TCPClosing, &d.TCPClosing}, {&t.TCPClose, &d.TCPClose}, {&t.UDP, &d.UDP}, {&t.ICMP, &d.ICMP}, {&t.Other, &d.Other}} {
		if *p.v <= 0 {
			*p.v = *p.d
		}
	}
	return t
}
