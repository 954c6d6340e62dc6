package control

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
)

// WriteStatus writes the `l2lb status` view of s: a header with the role, interface, VIPs, table
// and sync state, then the members in the manner of `ipvsadm -Ln --stats`, then the counters.
func WriteStatus(w io.Writer, s Status) error {
	return writeStatus(w, s, time.Now())
}

// writeStatus is WriteStatus with the current time given, so relative times can be tested.
func writeStatus(w io.Writer, s Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }

	mode := s.Mode
	if mode == "" {
		mode = "l2lb"
	}
	p("l2lb %s on %s: %s", clean(mode), orDash(s.Node), orDash(s.Role))
	if !s.Since.IsZero() {
		p(" since %s (%s)", s.Since.UTC().Format(time.RFC3339), ago(now, s.Since))
	}
	p(", %d transitions\n", s.Transitions)
	for _, pr := range s.Problems {
		p("Problem: %s\n", clean(pr))
	}
	p("Interface %s, virtual MAC %s\n", orDash(s.Interface), orDash(s.VirtualMAC))
	if fp := s.FastPath; fp != nil {
		p("Fast path: %s, %d receive sockets", orDash(clean(fp.Backend)), fp.Sockets)
		if fp.Backend == "afxdp" {
			copyMode := "copy"
			if fp.ZeroCopy {
				copyMode = "zero-copy"
			}
			p(" (%s XDP, %s, %d queues; TCP via %s)", clean(fp.XDPMode), copyMode, fp.Queues, clean(fp.TCP))
			if fc := fp.FlowCache; fc != nil {
				p("; flow cache %d of %d flows, %d datagrams forwarded in the kernel, %d installs (%d failed)",
					fc.Flows, fc.Size, fc.Forwarded, fc.Installs, fc.InstallErrors)
			}
		}
		p("; %d frames dropped on full rings, %d workers raised now (%d raises)\n", fp.RingDrops,
			fp.RaisedWorkers, fp.PriorityRaises)
	}
	p("VIPs: %s\n", orDash(joinClean(s.VIPs)))
	p("Table: %d flows, %d templates, limit %s\n", s.Table.Flows, s.Table.Templates, limit(s.Table))
	p("Sync: peers %s; sent %d, received %d, rejected %d", orDash(joinClean(s.Sync.Peers)),
		s.Sync.SentMessages, s.Sync.ReceivedMessages, s.Sync.Rejected)
	if len(s.Sync.RejectedByReason) > 0 {
		p(" (%s)", inline(s.Sync.RejectedByReason))
	}
	if !s.Sync.LastReceived.IsZero() {
		p("; last received %s", ago(now, s.Sync.LastReceived))
	}
	p("\n")
	p("ARP/NDP: %d ARP replies, %d NDP replies, %d announced, %d conflicts\n", s.ARP.Replies, s.ARP.NDPReplies,
		s.ARP.Announced, s.ARP.Conflicts)

	p("\nMember\tMAC\tWeight\tLocal\tReady\tHealthy\tPorts\tFlows\tTemplates\tPackets\tBytes\n")
	for _, m := range s.Members {
		p("  -> %s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\n", clean(m.Addr), orDash(m.MAC), m.Weight,
			yesNo(m.Local), yesNo(m.Ready), healthy(m), ports(m), m.Flows, m.Templates, m.Packets, m.Bytes)
	}
	if len(s.PerVIP) > 0 {
		p("\nVIP\tPackets\tBytes\n")
		for _, v := range slices.Sorted(maps.Keys(s.PerVIP)) {
			t := s.PerVIP[v]
			p("  %s\t%d\t%d\n", clean(v), t.Packets, t.Bytes)
		}
	}
	section(p, "Verdicts", s.Verdicts)
	section(p, "Drops by reason", s.Drops)
	return tw.Flush()
}

// WriteConns writes the `l2lb conns` view of the connection table, in the columns of
// `ipvsadm -Lnc`: protocol, time to expiry as mm:ss, state, client, VIP and member.
func WriteConns(w io.Writer, cs []Conn) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "pro\texpire\tstate\tsource\tvirtual\tdestination\n")
	for _, c := range cs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", orDash(c.Proto), expire(c.ExpiresIn), orDash(c.State),
			orDash(c.Client), orDash(c.VIP), orDash(c.Member))
	}
	return tw.Flush()
}

// healthy is the Healthy column: yes or no, and "leaving" for a member that left the list but
// keeps its established flows.
func healthy(m Member) string {
	h := yesNo(m.Healthy)
	var failing []string
	for _, c := range m.Checks {
		if !c.Healthy {
			failing = append(failing, clean(c.Service))
		}
	}
	if len(failing) > 0 {
		h += " (" + strings.Join(failing, ",") + " failing)"
	} else if len(m.Checks) > 0 {
		h += fmt.Sprintf(" (%d checks)", len(m.Checks))
	}
	if m.Leaving {
		h += " (leaving)"
	}
	return h
}

// section writes a sorted name/count list under a title; nothing if the map is empty.
func section(p func(string, ...any), title string, m map[string]uint64) {
	if len(m) == 0 {
		return
	}
	p("\n%s:\n", title)
	for _, k := range slices.Sorted(maps.Keys(m)) {
		p("  %s\t%d\n", clean(k), m[k])
	}
}

// inline formats counters as "a 1, b 2", sorted by name.
func inline(m map[string]uint64) string {
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", clean(k), m[k]))
	}
	return strings.Join(parts, ", ")
}

// expire formats a time to expiry as ipvsadm does: minutes and seconds, minutes unbounded.
func expire(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	sec := int64(d / time.Second)
	return fmt.Sprintf("%02d:%02d", sec/60, sec%60)
}

// ago formats how long ago t was, to the second.
func ago(now, t time.Time) string {
	d := now.Sub(t).Truncate(time.Second)
	if d < 0 {
		return "in the future: clocks differ"
	}
	return d.String() + " ago"
}

// limit formats the table limit with how full the table is.
func limit(t Table) string {
	if t.Limit <= 0 {
		return "none"
	}
	return fmt.Sprintf("%d (%.1f%% full)", t.Limit, 100*float64(t.Flows+t.Templates)/float64(t.Limit))
}

// ports formats a member's source-port range.
func ports(m Member) string {
	if m.PortConflict {
		return "overlap"
	}
	if m.PortLo == 0 && m.PortHi == 0 {
		return "-"
	}
	return fmt.Sprintf("%d-%d", m.PortLo, m.PortHi)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// orDash returns a cleaned s, or "-" for an empty one, so columns never collapse.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return clean(s)
}

func joinClean(ss []string) string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = clean(s)
	}
	return strings.Join(out, ", ")
}

// clean replaces control characters and tabs, so a value can neither break the table layout nor
// send escape sequences to the operator's terminal.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s)
}
