package metrics

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/l2lb/l2lb/control"
)

func sampleStatus() control.Status {
	return control.Status{
		Mode: control.ModeCluster, Node: "fe1", Role: control.RoleActive,
		Since:       time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC),
		Transitions: 4, Interface: "eth0", VirtualMAC: "02:00:5e:00:01:01", Ready: true,
		Problems: []string{"connection sync unavailable: no IPv4 address on eth0"},
		VIPs:     []string{"192.0.2.10", "192.0.2.48/29"},
		Members: []control.Member{
			{Addr: "192.0.2.11", MAC: "02:00:00:00:00:0b", Weight: 100, Local: true, Ready: true, Healthy: true,
				PortLo: 50000, PortHi: 54000, Flows: 6, Templates: 2, Packets: 345, Bytes: 23456},
			{Addr: "192.0.2.12", MAC: "02:00:00:00:00:0c", Weight: 0, Ready: false, Healthy: false, Leaving: true,
				PortLo: 55000, PortHi: 59000, Flows: 3, Templates: 1, Packets: 12, Bytes: 3400},
		},
		Table: control.Table{Flows: 9, Templates: 3, Limit: 1000},
		Sync: control.Sync{Peers: []string{"192.0.2.2"}, SentMessages: 100, ReceivedMessages: 50, Rejected: 2,
			RejectedByReason: map[string]uint64{"bad-mac": 2},
			LastReceived:     time.Date(2024, 5, 6, 8, 10, 9, 500_000_000, time.UTC)},
		Verdicts: map[string]uint64{"forward": 340, "local": 17, "drop": 5},
		Drops:    map[string]uint64{"no-member": 2, "table-full": 3},
		ARP:      control.ARP{Replies: 7, Announced: 3, Conflicts: 1},
		PerVIP:   map[string]control.Traffic{"192.0.2.10": {Packets: 357, Bytes: 26856}},
		FastPath: &control.FastPath{Backend: "afxdp", Sockets: 2, RingDrops: 4321, RaisedWorkers: 1, PriorityRaises: 2},
	}
}

const wantMetrics = `
# HELP l2lb_arp_announced_total Announcements of the VIPs sent: gratuitous ARPs and unsolicited neighbour advertisements.
# TYPE l2lb_arp_announced_total counter
l2lb_arp_announced_total 3
# HELP l2lb_arp_conflicts_total ARP or NDP frames from another host claiming a VIP or the virtual MAC.
# TYPE l2lb_arp_conflicts_total counter
l2lb_arp_conflicts_total 1
# HELP l2lb_arp_replies_total ARP requests for a VIP answered with the virtual MAC.
# TYPE l2lb_arp_replies_total counter
l2lb_arp_replies_total 7
# HELP l2lb_bytes_forwarded_total Bytes forwarded to a member, by member address.
# TYPE l2lb_bytes_forwarded_total counter
l2lb_bytes_forwarded_total{member="192.0.2.11"} 23456
l2lb_bytes_forwarded_total{member="192.0.2.12"} 3400
# HELP l2lb_bytes_total Bytes received for a VIP, by VIP.
# TYPE l2lb_bytes_total counter
l2lb_bytes_total{vip="192.0.2.10"} 26856
# HELP l2lb_drops_total Frames dropped, by reason.
# TYPE l2lb_drops_total counter
l2lb_drops_total{reason="no-member"} 2
l2lb_drops_total{reason="table-full"} 3
# HELP l2lb_info Always 1; the labels name the mode, node, interface and virtual MAC of this balancer.
# TYPE l2lb_info gauge
l2lb_info{interface="eth0",mode="cluster",node="fe1",virtual_mac="02:00:5e:00:01:01"} 1
# HELP l2lb_member_flows Connection-table entries pointing at a member.
# TYPE l2lb_member_flows gauge
l2lb_member_flows{member="192.0.2.11"} 6
l2lb_member_flows{member="192.0.2.12"} 3
# HELP l2lb_member_healthy 1 if the member passed its latest health check, else 0.
# TYPE l2lb_member_healthy gauge
l2lb_member_healthy{member="192.0.2.11"} 1
l2lb_member_healthy{member="192.0.2.12"} 0
# HELP l2lb_member_leaving 1 for a member that left the list but keeps its established flows until they end.
# TYPE l2lb_member_leaving gauge
l2lb_member_leaving{member="192.0.2.11"} 0
l2lb_member_leaving{member="192.0.2.12"} 1
# HELP l2lb_member_ready 1 if the member may receive new connections, else 0.
# TYPE l2lb_member_ready gauge
l2lb_member_ready{member="192.0.2.11"} 1
l2lb_member_ready{member="192.0.2.12"} 0
# HELP l2lb_member_templates Persistence templates pointing at a member.
# TYPE l2lb_member_templates gauge
l2lb_member_templates{member="192.0.2.11"} 2
l2lb_member_templates{member="192.0.2.12"} 1
# HELP l2lb_member_weight Scheduling weight of a member; 0 means quiescent (draining).
# TYPE l2lb_member_weight gauge
l2lb_member_weight{member="192.0.2.11"} 100
l2lb_member_weight{member="192.0.2.12"} 0
# HELP l2lb_ndp_replies_total IPv6 neighbour solicitations for a VIP answered with the virtual MAC.
# TYPE l2lb_ndp_replies_total counter
l2lb_ndp_replies_total 0
# HELP l2lb_packets_forwarded_total Frames forwarded to a member, by member address.
# TYPE l2lb_packets_forwarded_total counter
l2lb_packets_forwarded_total{member="192.0.2.11"} 345
l2lb_packets_forwarded_total{member="192.0.2.12"} 12
# HELP l2lb_packets_total Frames received for a VIP, by VIP.
# TYPE l2lb_packets_total counter
l2lb_packets_total{vip="192.0.2.10"} 357
# HELP l2lb_problems Number of problems keeping the balancer from working as configured (l2lb status lists them).
# TYPE l2lb_problems gauge
l2lb_problems 1
# HELP l2lb_ready 1 while the fast path runs on open sockets (the node can take the active role), else 0.
# TYPE l2lb_ready gauge
l2lb_ready 1
# HELP l2lb_ring_drops_total Frames the kernel dropped because a fast-path socket's receive ring was full (the workers fell behind).
# TYPE l2lb_ring_drops_total counter
l2lb_ring_drops_total 4321
# HELP l2lb_role 1 for the role this node has now (active or standby), 0 for the other.
# TYPE l2lb_role gauge
l2lb_role{role="active"} 1
l2lb_role{role="standby"} 0
# HELP l2lb_role_since_timestamp_seconds Unix time at which this node took its current role.
# TYPE l2lb_role_since_timestamp_seconds gauge
l2lb_role_since_timestamp_seconds 1.714979289e+09
# HELP l2lb_role_transitions_total Role changes (standby to active and back) since the process started.
# TYPE l2lb_role_transitions_total counter
l2lb_role_transitions_total 4
# HELP l2lb_sync_last_received_timestamp_seconds Unix time of the latest accepted connection-sync message; now minus this is the sync lag.
# TYPE l2lb_sync_last_received_timestamp_seconds gauge
l2lb_sync_last_received_timestamp_seconds 1.7149830095e+09
# HELP l2lb_sync_messages_total Connection-sync messages, by direction (sent, received, rejected).
# TYPE l2lb_sync_messages_total counter
l2lb_sync_messages_total{direction="received"} 50
l2lb_sync_messages_total{direction="rejected"} 2
l2lb_sync_messages_total{direction="sent"} 100
# HELP l2lb_sync_peers Nodes this one exchanges connection-sync messages with.
# TYPE l2lb_sync_peers gauge
l2lb_sync_peers 1
# HELP l2lb_sync_rejected_total Connection-sync messages rejected, by reason.
# TYPE l2lb_sync_rejected_total counter
l2lb_sync_rejected_total{reason="bad-mac"} 2
# HELP l2lb_table_entries Entries in the connection table, by kind (flows or templates).
# TYPE l2lb_table_entries gauge
l2lb_table_entries{kind="flows"} 9
l2lb_table_entries{kind="templates"} 3
# HELP l2lb_table_evictions_total Flows evicted to make room in a full connection table, by kind (live or expired).
# TYPE l2lb_table_evictions_total counter
l2lb_table_evictions_total{kind="expired"} 0
l2lb_table_evictions_total{kind="live"} 0
# HELP l2lb_table_limit Maximum number of connection-table entries; 0 means unlimited.
# TYPE l2lb_table_limit gauge
l2lb_table_limit 1000
# HELP l2lb_verdicts_total Frames handled by the fast path, by verdict.
# TYPE l2lb_verdicts_total counter
l2lb_verdicts_total{verdict="drop"} 5
l2lb_verdicts_total{verdict="forward"} 340
l2lb_verdicts_total{verdict="local"} 17
# HELP l2lb_vips Number of VIP entries (addresses or prefixes) being balanced.
# TYPE l2lb_vips gauge
l2lb_vips 2
# HELP l2lb_worker_priority_raises_total Times a fast-path worker raised its priority because its ring overflowed.
# TYPE l2lb_worker_priority_raises_total counter
l2lb_worker_priority_raises_total 2
# HELP l2lb_workers_raised Fast-path workers running at the raised priority of --overload-nice now.
# TYPE l2lb_workers_raised gauge
l2lb_workers_raised 1
`

func TestCollector(t *testing.T) {
	s := sampleStatus()
	calls := 0
	c := NewCollector(func() control.Status { calls++; return s })
	if err := testutil.CollectAndCompare(c, strings.NewReader(wantMetrics)); err != nil {
		t.Error(err)
	}
	if calls != 1 {
		t.Errorf("one scrape called the status source %d times, want once", calls)
	}
	// Lint checks naming conventions (counters end in _total, units, help text present).
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestCollectorFollowsStatus(t *testing.T) {
	s := sampleStatus()
	c := NewCollector(func() control.Status { return s })
	if n := testutil.CollectAndCount(c, "l2lb_member_flows"); n != 2 {
		t.Errorf("%d member_flows series, want 2", n)
	}
	// A standby node, a member gone, no per-VIP counters, no sync yet.
	s.Role = control.RoleStandby
	s.Members = s.Members[:1]
	s.PerVIP = nil
	s.Sync.LastReceived = time.Time{}
	s.Since = time.Time{}
	want := `
# HELP l2lb_role 1 for the role this node has now (active or standby), 0 for the other.
# TYPE l2lb_role gauge
l2lb_role{role="active"} 0
l2lb_role{role="standby"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "l2lb_role"); err != nil {
		t.Error(err)
	}
	for name, n := range map[string]int{"l2lb_member_flows": 1, "l2lb_packets_total": 0,
		"l2lb_sync_last_received_timestamp_seconds": 0, "l2lb_role_since_timestamp_seconds": 0} {
		if got := testutil.CollectAndCount(c, name); got != n {
			t.Errorf("%s: %d series, want %d", name, got, n)
		}
	}
}

func TestCollectorSurvivesBadInput(t *testing.T) {
	s := sampleStatus()
	s.Role = "candidate"
	// Same address twice, and a label value that is not UTF-8: neither may break the scrape.
	s.Members = append(s.Members, s.Members[0])
	s.Drops = map[string]uint64{"bad\xffreason": 1}
	c := NewCollector(func() control.Status { return s })
	want := `
# HELP l2lb_drops_total Frames dropped, by reason.
# TYPE l2lb_drops_total counter
l2lb_drops_total{reason="bad` + "\uFFFD" + `reason"} 1
# HELP l2lb_role 1 for the role this node has now (active or standby), 0 for the other.
# TYPE l2lb_role gauge
l2lb_role{role="active"} 0
l2lb_role{role="candidate"} 1
l2lb_role{role="standby"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "l2lb_drops_total", "l2lb_role"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(c, "l2lb_member_weight"); n != 2 {
		t.Errorf("%d member_weight series with a duplicate member, want 2", n)
	}
}

func get(t *testing.T, h http.Handler, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec
}

func TestHandlerMetrics(t *testing.T) {
	h := Handler(func() control.Status { return sampleStatus() })
	rec := get(t, h, "/metrics")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", rec.Code)
	}
	body := rec.Body.String()
	for _, want := range []string{
		`l2lb_packets_forwarded_total{member="192.0.2.11"} 345`,
		`l2lb_drops_total{reason="table-full"} 3`,
		`l2lb_role{role="active"} 1`,
		`l2lb_sync_messages_total{direction="sent"} 100`,
		"go_goroutines ", "process_",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestHandlerStatusJSON(t *testing.T) {
	want := sampleStatus()
	h := Handler(func() control.Status { return want })
	rec := get(t, h, "/status.json")
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET /status.json: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	var got control.Status
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("/status.json decodes to\n%+v\nwant\n%+v", got, want)
	}
}

var fieldRE = regexp.MustCompile(`data-field="([^"]*)"[^>]*>([^<]*)<`)

// fields returns every data-field of the page with its text.
func fields(page string) map[string]string {
	out := map[string]string{}
	for _, m := range fieldRE.FindAllStringSubmatch(page, -1) {
		out[m[1]] = m[2]
	}
	return out
}

func TestHandlerPage(t *testing.T) {
	s := sampleStatus()
	h := Handler(func() control.Status { return s })
	rec := get(t, h, "/")
	if rec.Code != http.StatusOK || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	page := rec.Body.String()
	got := fields(page)
	want := map[string]string{
		"node": "fe1", "role": "active", "mode": "cluster", "since": "2024-05-06T07:08:09Z", "transitions": "4",
		"interface": "eth0", "virtual_mac": "02:00:5e:00:01:01", "vips": "192.0.2.10, 192.0.2.48/29",
		"member.192.0.2.11.addr": "192.0.2.11", "member.192.0.2.11.mac": "02:00:00:00:00:0b",
		"member.192.0.2.11.weight": "100", "member.192.0.2.11.local": "yes", "member.192.0.2.11.ready": "yes",
		"member.192.0.2.11.healthy": "yes", "member.192.0.2.11.ports": "50000-54000",
		"member.192.0.2.11.flows": "6", "member.192.0.2.11.templates": "2",
		"member.192.0.2.11.packets": "345", "member.192.0.2.11.bytes": "23456",
		"member.192.0.2.12.weight": "0", "member.192.0.2.12.ready": "no", "member.192.0.2.12.flows": "3",
		"table.flows": "9", "table.templates": "3", "table.limit": "1000",
		"sync.peers": "192.0.2.2", "sync.sent": "100", "sync.received": "50", "sync.rejected": "2",
		"sync.rejected.bad-mac": "2", "sync.last_received": "2024-05-06T08:10:09Z",
		"arp.replies": "7", "arp.announced": "3", "arp.conflicts": "1",
		"vip.192.0.2.10.packets": "357", "vip.192.0.2.10.bytes": "26856",
		"drops.no-member": "2", "drops.table-full": "3",
		"verdicts.forward": "340", "verdicts.local": "17", "verdicts.drop": "5",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("data-field %q = %q, want %q", k, got[k], v)
		}
	}
	for _, want := range []string{`<noscript><meta http-equiv="refresh" content="2"></noscript>`, `id="status"`,
		`class="role role-active"`} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
	// Self-contained: nothing is loaded from anywhere.
	for _, bad := range []string{"src=", "href=", "@import", "url(", "http://", "https://"} {
		if strings.Contains(page, bad) {
			t.Errorf("page refers to an external resource: %q", bad)
		}
	}
}

func TestPageCSPAllowsExactlyItsInlineCode(t *testing.T) {
	rec := get(t, Handler(sampleStatus), "/")
	page, csp := rec.Body.String(), rec.Header().Get("Content-Security-Policy")
	for _, tag := range []string{"script", "style"} {
		re := regexp.MustCompile(`(?s)<` + tag + `>(.*?)</` + tag + `>`)
		blocks := re.FindAllStringSubmatch(page, -1)
		if len(blocks) != 1 {
			t.Fatalf("%d <%s> blocks, want 1", len(blocks), tag)
		}
		sum := sha256.Sum256([]byte(blocks[0][1]))
		hash := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
		if !strings.Contains(csp, tag+"-src "+hash) {
			t.Errorf("CSP %q does not allow the page's <%s> (hash %s)", csp, tag, hash)
		}
	}
	if !strings.Contains(csp, "default-src 'none'") || strings.Contains(csp, "unsafe-inline") {
		t.Errorf("CSP %q is not strict", csp)
	}
}

func TestPageEscapesHostileValues(t *testing.T) {
	s := sampleStatus()
	evil := `"><script>alert(1)</script>`
	s.Members[0].Addr = evil
	s.Node = "<b>node</b>"
	s.Role = `active" onmouseover="x`
	s.Drops = map[string]uint64{`<img src=x onerror=alert(2)>`: 1}
	rec := get(t, Handler(func() control.Status { return s }), "/")
	page := rec.Body.String()
	for _, raw := range []string{"<script>alert", "<b>node", `" onmouseover="x`, "<img"} {
		if strings.Contains(page, raw) {
			t.Errorf("page contains unescaped %q", raw)
		}
	}
	if !strings.Contains(page, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Errorf("hostile member address not shown escaped")
	}
	// The escaped address is still the member's data-field key once the browser decodes it.
	if got := fields(page)["member.&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;.flows"]; got != "6" {
		t.Errorf("hostile member's flows field = %q, want 6; fields: %v", got, fields(page))
	}
}

func TestPageWithoutData(t *testing.T) {
	rec := get(t, Handler(func() control.Status { return control.Status{} }), "/")
	page := rec.Body.String()
	if rec.Code != http.StatusOK {
		t.Fatalf("GET / on an empty status: %d", rec.Code)
	}
	for _, want := range []string{"no members", "never"} {
		if !strings.Contains(page, want) {
			t.Errorf("empty page lacks %q", want)
		}
	}
	if strings.Contains(page, `data-field="since"`) || strings.Contains(page, "Traffic per VIP") {
		t.Errorf("empty page shows a role start or per-VIP table it does not have")
	}
}

func TestHandlerReadOnlyAndUnknownPaths(t *testing.T) {
	h := Handler(sampleStatus)
	if rec := get(t, h, "/nope"); rec.Code != http.StatusNotFound {
		t.Errorf("GET /nope: %d, want 404", rec.Code)
	}
	for _, path := range []string{"/", "/metrics", "/status.json"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader("x")))
		if rec.Code != http.StatusMethodNotAllowed {
			t.Errorf("POST %s: %d, want 405", path, rec.Code)
		}
	}
}

func TestServeAndShutdown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, sampleStatus) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"node": "fe1"`) {
		t.Errorf("status.json over TCP: %d %s", resp.StatusCode, b)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Errorf("listener still open after shutdown")
	}
}

func TestListenAndServeBadAddress(t *testing.T) {
	err := ListenAndServe(context.Background(), "127.0.0.1:notaport", sampleStatus)
	var ae *net.AddrError
	var oe *net.OpError
	if err == nil || !(errors.As(err, &ae) || errors.As(err, &oe)) {
		t.Errorf("ListenAndServe on a bad address: %v", err)
	}
}

func TestDefaultListenIsLoopback(t *testing.T) {
	host, _, err := net.SplitHostPort(DefaultListen)
	if err != nil {
		t.Fatal(err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		t.Errorf("DefaultListen %s is not a loopback address", DefaultListen)
	}
}

// TestPageShowsFailingChecks: the Healthy cell names the failing service checks and the collector
// exports each check.
func TestPageShowsFailingChecks(t *testing.T) {
	s := sampleStatus()
	s.Members[0].Healthy = false
	s.Members[0].Checks = []control.Check{{Service: "smtp", Port: 25, Proto: "tcp", Healthy: false, Error: "connect refused <x>"},
		{Service: "imap", Port: 143, Proto: "tcp", Healthy: true}}
	page := get(t, Handler(func() control.Status { return s }), "/").Body.String()
	if !strings.Contains(page, "(smtp failing)") || strings.Contains(page, "(imap failing)") {
		t.Errorf("the page does not name exactly the failing check")
	}
	if strings.Contains(page, "refused <x>") {
		t.Errorf("a check error is not escaped")
	}
	body := get(t, Handler(func() control.Status { return s }), "/metrics").Body.String()
	for _, want := range []string{`l2lb_check_healthy{member="` + s.Members[0].Addr + `",service="smtp"} 0`,
		`l2lb_check_healthy{member="` + s.Members[0].Addr + `",service="imap"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
