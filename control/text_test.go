package control

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

// lineFields returns the whitespace-separated fields of the first line of out that starts (after
// indentation) with prefix.
func lineFields(t *testing.T, out, prefix string) []string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), prefix) {
			return strings.Fields(l)
		}
	}
	t.Fatalf("no line starting with %q in:\n%s", prefix, out)
	return nil
}

// TestWriteStatusFastPath checks the fast-path line: the backend and sockets, and for AF_XDP the
// attach mode, copy mode, queues and where TCP goes.
func TestWriteStatusFastPath(t *testing.T) {
	for fp, want := range map[FastPath]string{
		{Backend: "afpacket", Sockets: 2, RingDrops: 1234, RaisedWorkers: 1, PriorityRaises: 3}:  "Fast path: afpacket, 2 receive sockets; 1234 frames dropped on full rings, 1 workers raised now (3 raises)\n",
		{Backend: "afxdp", Sockets: 3, Queues: 1, XDPMode: "generic", TCP: "kernel"}:             "Fast path: afxdp, 3 receive sockets (generic XDP, copy, 1 queues; TCP via kernel); 0 frames dropped on full rings, 0 workers raised now (0 raises)\n",
		{Backend: "afxdp", Sockets: 2, Queues: 2, XDPMode: "native", TCP: "xsk", ZeroCopy: true}: "Fast path: afxdp, 2 receive sockets (native XDP, zero-copy, 2 queues; TCP via xsk); 0 frames dropped on full rings, 0 workers raised now (0 raises)\n",
	} {
		s := sampleStatus()
		s.FastPath = &fp
		var buf bytes.Buffer
		if err := writeStatus(&buf, s, s.Since); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(buf.String(), want) {
			t.Errorf("missing %q in:\n%s", want, buf.String())
		}
	}
	var buf bytes.Buffer
	if err := writeStatus(&buf, sampleStatus(), time.Now()); err != nil || strings.Contains(buf.String(), "Fast path") {
		t.Errorf("a fast-path line without a fast path (%v):\n%s", err, buf.String())
	}
}

func TestWriteStatus(t *testing.T) {
	s := sampleStatus()
	now := s.Since.Add(time.Hour + 2*time.Minute + 3*time.Second + 400*time.Millisecond)
	var buf bytes.Buffer
	if err := writeStatus(&buf, s, now); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"l2lb cluster on fe1: active since 2024-05-06T07:08:09Z (1h2m3s ago), 4 transitions\n",
		"Interface eth0, virtual MAC 02:00:5e:00:01:01\n",
		"VIPs: 192.0.2.10, 192.0.2.48/29\n",
		"Table: 9 flows, 3 templates, limit 1000 (1.2% full)\n",
		"Sync: peers 192.0.2.2, 192.0.2.3; sent 100, received 50, rejected 2 (bad-mac 2); last received 3s ago\n",
		"ARP/NDP: 7 ARP replies, 0 NDP replies, 3 announced, 1 conflicts\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	checks := map[string][]string{
		"Member":        {"Member", "MAC", "Weight", "Local", "Ready", "Healthy", "Ports", "Flows", "Templates", "Packets", "Bytes"},
		"-> 192.0.2.11": {"->", "192.0.2.11", "02:00:00:00:00:0b", "100", "yes", "yes", "yes", "50000-54000", "6", "2", "345", "23456"},
		"-> 192.0.2.12": {"->", "192.0.2.12", "02:00:00:00:00:0c", "50", "no", "yes", "no", "55000-59000", "3", "1", "12", "3400"},
		"192.0.2.10 ":   {"192.0.2.10", "357", "26856"},
		"no-member":     {"no-member", "2"},
		"table-full":    {"table-full", "3"},
		"forward":       {"forward", "340"},
	}
	for prefix, want := range checks {
		if got := lineFields(t, out, prefix); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("line %q: fields %q, want %q", prefix, got, want)
		}
	}
	// Sorted by name, under their titles.
	if !inOrder(out, "Verdicts:", "drop", "forward", "local", "Drops by reason:", "no-member", "table-full") {
		t.Errorf("verdicts and drops not sorted under their titles:\n%s", out)
	}
	// The member table is aligned: every member's MAC starts in the column of the header's MAC.
	col := strings.Index(lineOf(out, "Member"), "MAC")
	for _, p := range []string{"-> 192.0.2.11", "-> 192.0.2.12"} {
		if i := strings.Index(lineOf(out, p), "02:00"); i != col {
			t.Errorf("member %s MAC at column %d, header at %d", p, i, col)
		}
	}
}

func TestWriteStatusEmptyAndHostile(t *testing.T) {
	var buf bytes.Buffer
	s := Status{Members: []Member{{Addr: "evil\x1b[2J\tname\n-> 6.6.6.6"}}}
	if err := writeStatus(&buf, s, time.Now()); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if strings.ContainsAny(out, "\x1b\t") || strings.Contains(out, "\n-> 6.6.6.6") {
		t.Errorf("control characters reached the output:\n%q", out)
	}
	for _, want := range []string{"l2lb l2lb on -: -, 0 transitions\n", "VIPs: -\n", "limit none\n", "peers -;",
		"-> evil?[2J?name?-> 6.6.6.6"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, "Drops") || strings.Contains(out, "VIP ") {
		t.Errorf("empty sections printed:\n%s", out)
	}
}

func TestWriteConns(t *testing.T) {
	var buf bytes.Buffer
	cs := []Conn{
		{Proto: "TCP", Client: "198.51.100.7:40000", VIP: "192.0.2.10:25", Member: "192.0.2.11:25", State: "ESTABLISHED", ExpiresIn: 899*time.Second + 900*time.Millisecond},
		{Proto: "UDP", Client: "198.51.100.9:5060", VIP: "192.0.2.49:5060", Member: "192.0.2.12:5060", State: "UDP", ExpiresIn: 2 * time.Hour},
		{Proto: "TCP", Client: "198.51.100.8:1", VIP: "192.0.2.10:110", Member: "192.0.2.12:110", ExpiresIn: -time.Second},
	}
	if err := WriteConns(&buf, cs); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	want := [][]string{
		{"pro", "expire", "state", "source", "virtual", "destination"},
		{"TCP", "14:59", "ESTABLISHED", "198.51.100.7:40000", "192.0.2.10:25", "192.0.2.11:25"},
		{"UDP", "120:00", "UDP", "198.51.100.9:5060", "192.0.2.49:5060", "192.0.2.12:5060"},
		{"TCP", "00:00", "-", "198.51.100.8:1", "192.0.2.10:110", "192.0.2.12:110"},
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), out)
	}
	for i, l := range lines {
		if got := strings.Fields(l); strings.Join(got, " ") != strings.Join(want[i], " ") {
			t.Errorf("line %d: %q, want %q", i, got, want[i])
		}
	}
	if a, b := strings.Index(lines[0], "source"), strings.Index(lines[1], "198.51"); a != b {
		t.Errorf("source column at %d in the header, %d in the rows", a, b)
	}
}

type failWriter struct{}

var errWrite = errors.New("disk full")

func (failWriter) Write([]byte) (int, error) { return 0, errWrite }

func TestWriteErrorsReported(t *testing.T) {
	if err := WriteStatus(failWriter{}, sampleStatus()); !errors.Is(err, errWrite) {
		t.Errorf("WriteStatus to a failing writer: %v", err)
	}
	if err := WriteConns(failWriter{}, nil); !errors.Is(err, errWrite) {
		t.Errorf("WriteConns to a failing writer: %v", err)
	}
}

func lineOf(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), prefix) {
			return l
		}
	}
	return ""
}

// inOrder reports whether the words appear in out in this order.
func inOrder(out string, words ...string) bool {
	pos := 0
	for _, w := range words {
		i := strings.Index(out[pos:], w)
		if i < 0 {
			return false
		}
		pos += i + len(w)
	}
	return true
}
