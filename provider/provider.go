// Package provider adapts a running balancer (its dataplane engine and node, and in cluster or
// helper mode its role and sync channel) to control.Provider, so that the control socket, the
// metrics and the status page all read one model.
package provider

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane"
)

// Role describes the node's role for the status.
type Role struct {
	Active      bool
	Since       time.Time
	Transitions uint64
}

// Source is what a running balancer exposes. Engine and Node are required; the functions are
// optional.
type Source struct {
	Mode      string // control.ModeRun, ModeCluster, ModeHelper
	NodeName  string
	Interface string
	Engine    *dataplane.Engine
	Node      *dataplane.Node
	Limit     int
	// Role returns the current role; nil means "always active since start".
	Role func() Role
	// Sync returns the sync channel's counters and peers, if there is one.
	Sync func() (connsync.Stats, []string, bool)
	// SyncLast returns when the last sync message from another node arrived.
	SyncLast func() time.Time
	// SetWeight overrides a member's weight; nil applies it to the engine directly.
	SetWeight func(member netip.Addr, weight uint32) error
	// Reload re-reads the configuration; nil means reload is not supported.
	Reload func() error
	// Health returns whether a member is healthy; nil means every member is.
	Health func(member netip.Addr) bool

	once  sync.Once
	start time.Time
}

var _ control.Provider = (*Provider)(nil)

// Provider implements control.Provider on a Source.
type Provider struct{ s *Source }

// New returns a Provider for s.
func New(s *Source) *Provider {
	s.once.Do(func() { s.start = time.Now() })
	return &Provider{s: s}
}

func addrOf(ip uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], ip)
	return netip.AddrFrom4(b)
}

// Status implements control.Provider.
func (p *Provider) Status() control.Status {
	s := p.s
	eng := s.Engine
	cfg := eng.Config()
	st := s.Node.Stats()
	role := Role{Active: eng.Active(), Since: s.start, Transitions: 0}
	if s.Role != nil {
		role = s.Role()
	}
	out := control.Status{Mode: s.Mode, Node: s.NodeName, Role: control.RoleStandby, Since: role.Since,
		Transitions: role.Transitions, Interface: s.Interface, Verdicts: st.Verdicts, Drops: st.Drops,
		ARP: control.ARP{Replies: st.Verdicts[dataplane.VerdictARPReply.String()], Announced: st.ARPAnnounced,
			Conflicts: st.ARPConflicts}}
	if role.Active {
		out.Role = control.RoleActive
	}
	if cfg.VirtualMAC != nil {
		out.VirtualMAC = cfg.VirtualMAC.String()
	}
	if cfg.VIPs != nil {
		for _, v := range cfg.VIPs.Addrs() {
			out.VIPs = append(out.VIPs, v.String())
		}
	}
	tmpls := map[uint32]int64{}
	eng.Table().RangeTemplates(func(_, _ uint32, e conntrack.Entry) bool {
		tmpls[e.Member]++
		return true
	})
	for _, m := range eng.Members() {
		cm := control.Member{Addr: m.Addr.String(), Weight: m.Weight, Local: m.Local, Ready: m.Ready, Healthy: true,
			PortLo: m.Ports.Lo, PortHi: m.Ports.Hi, Flows: m.Flows, Templates: tmpls[m.ID],
			Packets: st.MemberPackets[m.ID], Bytes: st.MemberBytes[m.ID]}
		if m.MAC != nil {
			cm.MAC = m.MAC.String()
		}
		if s.Health != nil {
			cm.Healthy = s.Health(m.Addr)
		}
		out.Members = append(out.Members, cm)
	}
	if vs := eng.VIPStats(); len(vs) > 0 {
		out.PerVIP = make(map[string]control.Traffic, len(vs))
		for a, v := range vs {
			out.PerVIP[a.String()] = control.Traffic{Packets: v.Packets, Bytes: v.Bytes}
		}
	}
	flows, templates := eng.Table().Len()
	out.Table = control.Table{Flows: flows, Templates: templates, Limit: s.Limit}
	if s.Sync != nil {
		if ss, peers, ok := s.Sync(); ok {
			out.Sync = control.Sync{Peers: peers, SentMessages: ss.SentMessages, ReceivedMessages: ss.ReceivedMessages,
				Rejected: ss.Rejected(), RejectedByReason: map[string]uint64{
					"short": ss.RejectedShort, "magic": ss.RejectedMagic, "version": ss.RejectedVersion,
					"header": ss.RejectedHeader, "count": ss.RejectedCount, "sync_id": ss.RejectedSyncID,
					"auth": ss.RejectedAuth, "record": ss.RejectedRecord, "peer": ss.RejectedPeer}}
			if s.SyncLast != nil {
				out.Sync.LastReceived = s.SyncLast()
			}
		}
	}
	return out
}

// Conns implements control.Provider: the connection table, like ipvsadm -Lnc.
func (p *Provider) Conns(vip, member netip.Addr) []control.Conn {
	eng := p.s.Engine
	now := eng.Tick()
	names := map[uint32]netip.Addr{}
	for _, m := range eng.Members() {
		names[m.ID] = m.Addr
	}
	var wantMember uint32
	filterMember := member.IsValid()
	if filterMember {
		id, ok := eng.MemberID(member)
		if !ok {
			return nil
		}
		wantMember = id
	}
	var out []control.Conn
	eng.Table().Range(func(k conntrack.Key, e conntrack.Entry) bool {
		if e.Expires <= now {
			return true
		}
		if filterMember && e.Member != wantMember {
			return true
		}
		if vip.IsValid() && addrOf(k.Dst) != vip {
			return true
		}
		proto := fmt.Sprintf("%d", k.Proto)
		switch k.Proto {
		case conntrack.ProtoTCP:
			proto = "TCP"
		case conntrack.ProtoUDP:
			proto = "UDP"
		case conntrack.ProtoICMP:
			proto = "ICMP"
		}
		m := names[e.Member]
		ms := m.String()
		if !m.IsValid() {
			ms = fmt.Sprintf("#%d", e.Member)
		}
		out = append(out, control.Conn{Proto: proto,
			Client: netip.AddrPortFrom(addrOf(k.Src), k.SPort).String(),
			VIP:    netip.AddrPortFrom(addrOf(k.Dst), k.DPort).String(),
			Member: ms, State: e.State.String(), ExpiresIn: time.Duration(e.Expires - now)})
		return true
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].VIP != out[j].VIP {
			return out[i].VIP < out[j].VIP
		}
		return out[i].Client < out[j].Client
	})
	return out
}

// SetWeight implements control.Provider. Weight 0 quiesces the member: no new flows, existing
// ones and persistent clients continue (IPVS semantics), which is what drain waits on.
func (p *Provider) SetWeight(member netip.Addr, weight uint32) error {
	if p.s.SetWeight != nil {
		return p.s.SetWeight(member, weight)
	}
	eng := p.s.Engine
	cfg := eng.Config()
	ms := append([]dataplane.Member(nil), cfg.Members...)
	found := false
	for i := range ms {
		if ms[i].Addr == member {
			ms[i].Weight, found = weight, true
		}
	}
	if !found {
		return fmt.Errorf("%w: %v", control.ErrUnknownMember, member)
	}
	cfg.Members = ms
	return eng.Configure(cfg)
}

// Reload implements control.Provider.
func (p *Provider) Reload() error {
	if p.s.Reload == nil {
		return fmt.Errorf("reload is not supported in %s mode", p.s.Mode)
	}
	return p.s.Reload()
}
