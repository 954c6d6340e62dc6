package balancer

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane"
)

var _ control.Provider = (*Balancer)(nil)
var _ Control = (*Balancer)(nil)

// Status implements Control and control.Provider: one snapshot for `l2lb status`, the metrics,
// the status page, the stats file and CGP's STATUS line. It reads plain counters and walks the
// persistence templates; the fast path is not stopped.
func (b *Balancer) Status() control.Status {
	b.mu.Lock()
	out := control.Status{Mode: b.cfg.Mode, Node: b.cfg.Name, Role: control.RoleStandby, Since: b.since,
		Transitions: b.transitions, Interface: b.cfg.Interface, VirtualMAC: b.cfg.VirtualMAC.String(),
		Ready: b.running, Time: time.Now().UTC()}
	if b.fastPath != nil {
		fp := *b.fastPath
		fs := b.node.FastPathStats()
		fp.RingDrops, fp.RaisedWorkers, fp.PriorityRaises = fs.RingDrops, fs.RaisedWorkers, fs.PriorityRaises
		if fp.FlowCache != nil {
			fc, cs := *fp.FlowCache, b.node.FlowCacheStats()
			fc.Flows, fc.Installs, fc.InstallErrors, fc.Forwarded = cs.Entries, cs.Installs, cs.InstallErrors, cs.Forwarded
			fp.FlowCache = &fc
		}
		out.FastPath = &fp
	}
	if b.role == RoleActive && b.roleErrLocked() == nil {
		out.Role = control.RoleActive
	}
	if b.vipErr != nil {
		out.Problems = append(out.Problems, b.vipErr.Error())
	}
	if !b.running {
		p := ErrNotRunning.Error()
		if b.openErr != nil {
			p += ": " + b.openErr.Error()
		}
		out.Problems = append(out.Problems, p)
	}
	if b.syncErr != nil {
		out.Problems = append(out.Problems, "connection sync unavailable: "+b.syncErr.Error())
	}
	if b.conflicts != "" {
		out.Problems = append(out.Problems, "source-port ranges overlap and are not used: "+b.conflicts)
	}
	type plan struct {
		down, leaving bool
		ports         dataplane.PortRange
	}
	plans := make(map[netip.Addr]plan, len(b.members)+len(b.leaving))
	for _, m := range b.members {
		plans[m.Addr] = plan{down: m.Down, ports: m.Ports}
	}
	for a := range b.leaving {
		plans[a] = plan{leaving: true}
	}
	sync := b.sync
	unhealthy := maps.Clone(b.unhealthy)
	h := b.health
	if b.svcErr != nil {
		out.Problems = append(out.Problems, "services file unusable (fix it and reload): "+b.svcErr.Error())
	}
	b.mu.Unlock()
	var checks map[string][]control.Check
	if h != nil {
		checks = h.status()
		if ok, probs := h.problems(); !ok {
			out.Problems = append(out.Problems, probs...)
		}
	}

	st := b.node.Stats()
	out.Verdicts, out.Drops = st.Verdicts, st.Drops
	out.ARP = control.ARP{Replies: st.Verdicts[dataplane.VerdictARPReply.String()],
		NDPReplies: st.Verdicts[dataplane.VerdictNDPReply.String()], Announced: st.ARPAnnounced, Conflicts: st.ARPConflicts}
	cfg := b.eng.Config()
	for _, v := range cfg.VIPs.Addrs() {
		out.VIPs = append(out.VIPs, v.String())
	}
	for _, m := range b.eng.Members() {
		p := plans[m.Addr]
		cm := control.Member{Addr: m.Addr.String(), Weight: m.Weight, Local: m.Local, Ready: m.Ready,
			Healthy: !p.down && !unhealthy[m.Addr], Leaving: p.leaving, PortLo: m.Ports.Lo, PortHi: m.Ports.Hi,
			Checks:       checks[m.Addr.String()],
			PortConflict: m.Ports == (dataplane.PortRange{}) && p.ports != (dataplane.PortRange{}),
			Flows:        m.Flows, Templates: b.eng.Table().Templates(m.ID), Packets: st.MemberPackets[m.ID], Bytes: st.MemberBytes[m.ID]}
		if m.MAC != nil {
			cm.MAC = m.MAC.String()
		}
		out.Members = append(out.Members, cm)
	}
	if vs := b.eng.VIPStats(); len(vs) > 0 {
		out.PerVIP = make(map[string]control.Traffic, len(vs))
		for a, v := range vs {
			out.PerVIP[a.String()] = control.Traffic{Packets: v.Packets, Bytes: v.Bytes}
		}
	}
	flows, templates := b.eng.Table().Len()
	ev := b.eng.Table().Evictions()
	out.Table = control.Table{Flows: flows, Templates: templates, Limit: b.cfg.MaxConns,
		Evicted: ev.Live, EvictedExpired: ev.Expired}
	if sync != nil {
		out.Sync = sync.status()
	}
	return out
}

// Conns implements control.Provider: the connection table of both families, like ipvsadm -Lnc.
func (b *Balancer) Conns(vip, member netip.Addr) []control.Conn {
	eng := b.eng
	now := eng.Tick()
	names := map[uint32]netip.Addr{}
	for _, m := range eng.Members() {
		names[m.ID] = m.Addr
	}
	var wantMember uint32
	if member.IsValid() {
		id, ok := eng.MemberID(member)
		if !ok {
			return nil
		}
		wantMember = id
	}
	var out []control.Conn
	add := func(src, dst netip.Addr, sport, dport uint16, proto uint8, e conntrack.Entry) bool {
		if e.Expires <= now || (member.IsValid() && e.Member != wantMember) || (vip.IsValid() && dst != vip) {
			return true
		}
		ms := fmt.Sprintf("#%d", e.Member)
		if m, ok := names[e.Member]; ok {
			ms = m.String()
		}
		out = append(out, control.Conn{Proto: protoName(proto), Client: netip.AddrPortFrom(src, sport).String(),
			VIP: netip.AddrPortFrom(dst, dport).String(), Member: ms, State: e.State.String(),
			ExpiresIn: time.Duration(e.Expires - now)})
		return true
	}
	eng.Table().Range(func(k conntrack.Key, e conntrack.Entry) bool {
		return add(addrOf(k.Src), addrOf(k.Dst), k.SPort, k.DPort, k.Proto, e)
	})
	eng.Table().Range6(func(k conntrack.Key6, e conntrack.Entry) bool {
		return add(netip.AddrFrom16(k.Src), netip.AddrFrom16(k.Dst), k.SPort, k.DPort, k.Proto, e)
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].VIP != out[j].VIP {
			return out[i].VIP < out[j].VIP
		}
		return out[i].Client < out[j].Client
	})
	return out
}

func protoName(p uint8) string {
	switch p {
	case conntrack.ProtoTCP:
		return "TCP"
	case conntrack.ProtoUDP:
		return "UDP"
	case conntrack.ProtoICMP:
		return "ICMP"
	case 58:
		return "ICMPv6"
	}
	return fmt.Sprintf("%d", p)
}

func addrOf(ip uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], ip)
	return netip.AddrFrom4(b)
}

// writeStats writes the status as JSON to the stats file, if one is configured: the same schema
// as `l2lb status --json`. It writes a temporary file and renames it, so a reader never sees half
// a file.
func (b *Balancer) writeStats() {
	path := b.cfg.StatsFile
	if path == "" {
		return
	}
	data, err := json.MarshalIndent(b.Status(), "", "  ")
	if err != nil {
		b.log.Warn("stats file", "err", err)
		return
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		b.log.Warn("stats file", "err", err)
		return
	}
	if err := os.Rename(tmp, path); err != nil {
		b.log.Warn("stats file", "err", err)
	}
}
