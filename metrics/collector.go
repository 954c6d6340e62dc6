// Package metrics exposes a running l2lb to Prometheus and to a browser: a collector that turns a
// control.Status into l2lb_* metrics at scrape time, and an HTTP handler serving /metrics,
// /status.json and a self-contained, live status page.
//
// Nothing here runs per packet: the fast path keeps plain counters, the provider copies them into
// a control.Status when asked, and the collector builds constant metrics from that snapshot.
package metrics

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l2lb/l2lb/control"
)

// desc builds an l2lb_ metric description.
func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("l2lb_"+name, help, labels, nil)
}

// The metrics, one description each. Counter names end in _total as the Prometheus naming
// conventions ask; counters reset when l2lb restarts, which rate() handles.
var (
	descInfo = desc("info",
		"Always 1; the labels name the mode, node, interface and virtual MAC of this balancer.",
		"mode", "node", "interface", "virtual_mac")
	descRole = desc("role",
		"1 for the role this node has now (active or standby), 0 for the other.", "role")
	descReadyNode = desc("ready",
		"1 while the fast path runs on open sockets (the node can take the active role), else 0.")
	descProblems = desc("problems",
		"Number of problems keeping the balancer from working as configured (l2lb status lists them).")
	descLeaving = desc("member_leaving",
		"1 for a member that left the list but keeps its established flows until they end.", "member")
	descRoleSince = desc("role_since_timestamp_seconds",
		"Unix time at which this node took its current role.")
	descTransitions = desc("role_transitions_total",
		"Role changes (standby to active and back) since the process started.")
	descVIPs = desc("vips",
		"Number of VIP entries (addresses or prefixes) being balanced.")
	descPackets = desc("packets_forwarded_total",
		"Frames forwarded to a member, by member address.", "member")
	descBytes = desc("bytes_forwarded_total",
		"Bytes forwarded to a member, by member address.", "member")
	descVIPPackets = desc("packets_total",
		"Frames received for a VIP, by VIP.", "vip")
	descVIPBytes = desc("bytes_total",
		"Bytes received for a VIP, by VIP.", "vip")
	descWeight = desc("member_weight",
		"Scheduling weight of a member; 0 means quiescent (draining).", "member")
	descReady = desc("member_ready",
		"1 if the member may receive new connections, else 0.", "member")
	descHealthy = desc("member_healthy",
		"1 if the member passed its latest health check, else 0.", "member")
	descMemberFlows = desc("member_flows",
		"Connection-table entries pointing at a member.", "member")
	descMemberTemplates = desc("member_templates",
		"Persistence templates pointing at a member.", "member")
	descDrops = desc("drops_total",
		"Frames dropped, by reason.", "reason")
	descVerdicts = desc("verdicts_total",
		"Frames handled by the fast path, by verdict.", "verdict")
	descTable = desc("table_entries",
		"Entries in the connection table, by kind (flows or templates).", "kind")
	descTableLimit = desc("table_limit",
		"Maximum number of connection-table entries; 0 means unlimited.")
	descRingDrops = desc("ring_drops_total",
		"Frames the kernel dropped because a fast-path socket's receive ring was full (the workers fell behind).")
	descRaised = desc("workers_raised",
		"Fast-path workers running at the raised priority of --overload-nice now.")
	descRaises = desc("worker_priority_raises_total",
		"Times a fast-path worker raised its priority because its ring overflowed.")
	descFlowCache = desc("flow_cache_flows",
		"Flows in the XDP flow cache at its last sweep (--xdp-flows).")
	descFlowCacheFwd = desc("flow_cache_forwarded_total",
		"Frames (UDP datagrams, TCP ACK-only segments) the XDP flow cache forwarded in the kernel; they are in the verdict, member and VIP counters too.")
	descFlowCacheInstalls = desc("flow_cache_installs_total",
		"Flows installed in the XDP flow cache, by result (ok or failed).", "result")
	descARPReplies = desc("arp_replies_total",
		"ARP requests for a VIP answered with the virtual MAC.")
	descNDPReplies = desc("ndp_replies_total",
		"IPv6 neighbour solicitations for a VIP answered with the virtual MAC.")
	descARPAnnounced = desc("arp_announced_total",
		"Announcements of the VIPs sent: gratuitous ARPs and unsolicited neighbour advertisements.")
	descARPConflicts = desc("arp_conflicts_total",
		"ARP or NDP frames from another host claiming a VIP or the virtual MAC.")
	descSyncPeers = desc("sync_peers",
		"Nodes this one exchanges connection-sync messages with.")
	descSync = desc("sync_messages_total",
		"Connection-sync messages, by direction (sent, received, rejected).", "direction")
	descSyncRejected = desc("sync_rejected_total",
		"Connection-sync messages rejected, by reason.", "reason")
	descEvicted = desc("table_evictions_total",
		"Flows evicted to make room in a full connection table, by kind (live or expired).", "kind")
	descCheckHealthy = desc("check_healthy",
		"1 while a member passes a service health check of the services file, else 0.", "member", "service")
	descSyncLast = desc("sync_last_received_timestamp_seconds",
		"Unix time of the latest accepted connection-sync message; now minus this is the sync lag.")
)

var allDescs = []*prometheus.Desc{
	descInfo, descRole, descReadyNode, descProblems, descLeaving, descRoleSince, descTransitions, descVIPs, descPackets, descBytes,
	descVIPPackets, descVIPBytes, descWeight, descReady, descHealthy, descMemberFlows,
	descMemberTemplates, descDrops, descVerdicts, descTable, descTableLimit, descARPReplies, descNDPReplies,
	descARPAnnounced, descARPConflicts, descRingDrops, descRaised, descRaises, descSyncPeers, descSync, descSyncRejected, descSyncLast,
	descCheckHealthy, descEvicted, descFlowCache, descFlowCacheFwd, descFlowCacheInstalls,
}

// collector implements prometheus.Collector over a Status source.
type collector struct {
	status func() control.Status
}

// NewCollector returns a Prometheus collector that calls status once per scrape and reports the
// snapshot as constant l2lb_* metrics.
func NewCollector(status func() control.Status) prometheus.Collector {
	return collector{status: status}
}

// Describe sends the description of every metric the collector can report.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// Collect takes one status snapshot and reports it.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.status()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- constMetric(d, prometheus.CounterValue, float64(v), labels)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- constMetric(d, prometheus.GaugeValue, v, labels)
	}

	gauge(descInfo, 1, s.Mode, s.Node, s.Interface, s.VirtualMAC)
	roles := []string{control.RoleActive, control.RoleStandby}
	if s.Role != "" && s.Role != control.RoleActive && s.Role != control.RoleStandby {
		roles = append(roles, s.Role)
	}
	for _, r := range roles {
		gauge(descRole, b2f(r == s.Role), r)
	}
	gauge(descReadyNode, b2f(s.Ready))
	gauge(descProblems, float64(len(s.Problems)))
	if !s.Since.IsZero() {
		gauge(descRoleSince, float64(s.Since.UnixNano())/1e9)
	}
	counter(descTransitions, s.Transitions)
	gauge(descVIPs, float64(len(s.VIPs)))

	// Two members with one address would make the whole scrape fail with a duplicate-series
	// error; report the first and keep the rest of the metrics flowing.
	seen := make(map[string]bool, len(s.Members))
	for _, m := range s.Members {
		if seen[m.Addr] {
			continue
		}
		seen[m.Addr] = true
		counter(descPackets, m.Packets, m.Addr)
		counter(descBytes, m.Bytes, m.Addr)
		gauge(descWeight, float64(m.Weight), m.Addr)
		gauge(descReady, b2f(m.Ready), m.Addr)
		gauge(descHealthy, b2f(m.Healthy), m.Addr)
		gauge(descLeaving, b2f(m.Leaving), m.Addr)
		gauge(descMemberFlows, float64(m.Flows), m.Addr)
		gauge(descMemberTemplates, float64(m.Templates), m.Addr)
		for _, c := range m.Checks {
			gauge(descCheckHealthy, b2f(c.Healthy), m.Addr, c.Service)
		}
	}
	for vip, t := range s.PerVIP {
		counter(descVIPPackets, t.Packets, vip)
		counter(descVIPBytes, t.Bytes, vip)
	}
	for reason, n := range s.Drops {
		counter(descDrops, n, reason)
	}
	for verdict, n := range s.Verdicts {
		counter(descVerdicts, n, verdict)
	}
	gauge(descTable, float64(s.Table.Flows), "flows")
	gauge(descTable, float64(s.Table.Templates), "templates")
	gauge(descTableLimit, float64(s.Table.Limit))
	counter(descEvicted, s.Table.Evicted, "live")
	counter(descEvicted, s.Table.EvictedExpired, "expired")
	if fp := s.FastPath; fp != nil {
		counter(descRingDrops, fp.RingDrops)
		gauge(descRaised, float64(fp.RaisedWorkers))
		counter(descRaises, fp.PriorityRaises)
		if fc := fp.FlowCache; fc != nil {
			gauge(descFlowCache, float64(fc.Flows))
			counter(descFlowCacheFwd, fc.Forwarded)
			counter(descFlowCacheInstalls, fc.Installs, "ok")
			counter(descFlowCacheInstalls, fc.InstallErrors, "failed")
		}
	}
	counter(descARPReplies, s.ARP.Replies)
	counter(descNDPReplies, s.ARP.NDPReplies)
	counter(descARPAnnounced, s.ARP.Announced)
	counter(descARPConflicts, s.ARP.Conflicts)
	gauge(descSyncPeers, float64(len(s.Sync.Peers)))
	counter(descSync, s.Sync.SentMessages, "sent")
	counter(descSync, s.Sync.ReceivedMessages, "received")
	counter(descSync, s.Sync.Rejected, "rejected")
	for reason, n := range s.Sync.RejectedByReason {
		counter(descSyncRejected, n, reason)
	}
	if !s.Sync.LastReceived.IsZero() {
		gauge(descSyncLast, float64(s.Sync.LastReceived.UnixNano())/1e9)
	}
}

// constMetric builds one metric. Label values must be UTF-8 (the exposition formats are), so
// invalid bytes are replaced rather than letting MustNewConstMetric panic inside a scrape, which
// would take the balancer down with it.
func constMetric(d *prometheus.Desc, t prometheus.ValueType, v float64, labels []string) prometheus.Metric {
	for i, l := range labels {
		labels[i] = strings.ToValidUTF8(l, "\uFFFD")
	}
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		return prometheus.NewInvalidMetric(d, err)
	}
	return m
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
