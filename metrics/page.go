package metrics

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"html/template"
	"io"
	"strings"
	"time"

	"github.com/l2lb/l2lb/control"
)

// pageScript refreshes the status every second without reloading the page: it fetches the page
// again and swaps in the new <main>. When the balancer stops answering the old figures stay, marked
// stale, so the operator notices rather than reading frozen numbers as live.
const pageScript = `
(function () {
  function tick() {
    fetch(location.pathname, {cache: "no-store"}).then(function (r) {
      if (!r.ok) { throw new Error(r.status); }
      return r.text();
    }).then(function (html) {
      var next = new DOMParser().parseFromString(html, "text/html").getElementById("status");
      if (next) { document.getElementById("status").replaceWith(next); }
      document.body.classList.remove("stale");
    }).catch(function () {
      document.body.classList.add("stale");
    }).finally(function () {
      setTimeout(tick, 1000);
    });
  }
  setTimeout(tick, 1000);
})();
`

// pageStyle is the page's only styling; no external assets, so the page works on an isolated
// management network.
const pageStyle = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .3em; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; }
th, td { padding: .2em .8em .2em 0; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
thead th { border-bottom: 1px solid #999; }
tbody tr:nth-child(even) { background: #f0f0f0; }
code, .mono { font-family: ui-monospace, monospace; }
.role { padding: 0 .4em; border-radius: 3px; color: #fff; background: #777; }
.role-active { background: #1a7f37; }
.role-standby { background: #9a6700; }
.yes { color: #1a7f37; } .no { color: #cf222e; }
.muted { color: #666; }
#stale { display: none; color: #cf222e; font-weight: bold; }
body.stale #stale { display: inline; }
`

// pageCSP allows exactly the inline script and style above and nothing else: no external
// resource, no other script, and fetches only back to this server (CSP Level 3 hash sources).
var pageCSP = fmt.Sprintf("default-src 'none'; script-src '%s'; style-src '%s'; connect-src 'self'; "+
	"img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
	cspHash(pageScript), cspHash(pageStyle))

func cspHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}

// pageData is what the template sees.
type pageData struct {
	S      control.Status
	Now    time.Time
	Script template.JS
	Style  template.CSS
}

var pageFuncs = template.FuncMap{
	"yesno": func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	},
	"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"ago": func(now, t time.Time) string {
		d := now.Sub(t).Truncate(time.Second)
		if d < 0 {
			return "clocks differ"
		}
		return d.String() + " ago"
	},
	"ports": func(m control.Member) string {
		if m.PortLo == 0 && m.PortHi == 0 {
			return "-"
		}
		return fmt.Sprintf("%d-%d", m.PortLo, m.PortHi)
	},
	"full": func(t control.Table) string {
		if t.Limit <= 0 {
			return ""
		}
		return fmt.Sprintf("%.1f%% full", 100*float64(t.Flows+t.Templates)/float64(t.Limit))
	},
	"join": func(ss []string) string { return strings.Join(ss, ", ") },
}

// The template gives every figure a data-field attribute whose text is the figure as in
// `l2lb status --json` (numbers in decimal, booleans as yes/no, times in RFC 3339), so a test can
// read the page and compare. Map ranges are sorted by key (text/template sorts map keys).
var pageTemplate = template.Must(template.New("page").Funcs(pageFuncs).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>l2lb {{.S.Node}} ({{.S.Role}})</title>
<noscript><meta http-equiv="refresh" content="2"></noscript>
<style>{{.Style}}</style>
</head>
<body>
<main id="status">
<h1>l2lb <span data-field="node">{{.S.Node}}</span>
<span class="role role-{{.S.Role}}" data-field="role">{{.S.Role}}</span></h1>
<p>Mode <span data-field="mode">{{.S.Mode}}</span>{{if not .S.Since.IsZero}},
{{.S.Role}} since <time data-field="since" datetime="{{rfc3339 .S.Since}}">{{rfc3339 .S.Since}}</time>
<span class="muted">({{ago .Now .S.Since}})</span>{{end}},
<span data-field="transitions">{{.S.Transitions}}</span> transitions.
<span class="muted">Updated <time data-field="updated" datetime="{{rfc3339 .Now}}">{{rfc3339 .Now}}</time></span>
<span id="stale">not answering: figures are stale</span></p>
<table>
<tr><th>Interface</th><td class="mono" data-field="interface">{{.S.Interface}}</td></tr>
<tr><th>Virtual MAC</th><td class="mono" data-field="virtual_mac">{{.S.VirtualMAC}}</td></tr>
<tr><th>VIPs</th><td class="mono" data-field="vips">{{join .S.VIPs}}</td></tr>
<tr><th>Fast path</th><td class="{{yesno .S.Ready}}" data-field="ready">{{if .S.Ready}}running{{else}}not running{{end}}</td></tr>
</table>
{{- if .S.Problems}}
<h2>Problems</h2>
<ul data-field="problems">
{{- range .S.Problems}}
<li class="no">{{.}}</li>
{{- end}}
</ul>
{{- end}}

<h2>Members</h2>
<table>
<thead><tr><th>Address</th><th>MAC</th><th class="n">Weight</th><th>Local</th><th>Ready</th><th>Healthy</th><th>Ports</th>
<th class="n">Flows</th><th class="n">Templates</th><th class="n">Packets</th><th class="n">Bytes</th></tr></thead>
<tbody>
{{- range .S.Members}}
<tr data-member="{{.Addr}}"><td class="mono" data-field="member.{{.Addr}}.addr">{{.Addr}}</td>
<td class="mono" data-field="member.{{.Addr}}.mac">{{.MAC}}</td>
<td class="n" data-field="member.{{.Addr}}.weight">{{.Weight}}</td>
<td class="{{yesno .Local}}" data-field="member.{{.Addr}}.local">{{yesno .Local}}</td>
<td class="{{yesno .Ready}}" data-field="member.{{.Addr}}.ready">{{yesno .Ready}}</td>
<td class="{{yesno .Healthy}}" data-field="member.{{.Addr}}.healthy" title="{{range .Checks}}{{.Service}} {{yesno .Healthy}}{{with .Error}}: {{.}}{{end}}&#10;{{end}}">{{yesno .Healthy}}{{range .Checks}}{{if not .Healthy}} ({{.Service}} failing){{end}}{{end}}{{if .Leaving}} (leaving){{end}}</td>
<td data-field="member.{{.Addr}}.ports">{{ports .}}</td>
<td class="n" data-field="member.{{.Addr}}.flows">{{.Flows}}</td>
<td class="n" data-field="member.{{.Addr}}.templates">{{.Templates}}</td>
<td class="n" data-field="member.{{.Addr}}.packets">{{.Packets}}</td>
<td class="n" data-field="member.{{.Addr}}.bytes">{{.Bytes}}</td></tr>
{{- else}}
<tr><td colspan="11" class="muted">no members</td></tr>
{{- end}}
</tbody>
</table>

<h2>Connection table</h2>
<p><span data-field="table.flows">{{.S.Table.Flows}}</span> flows,
<span data-field="table.templates">{{.S.Table.Templates}}</span> templates,
limit <span data-field="table.limit">{{.S.Table.Limit}}</span>
<span class="muted">{{full .S.Table}}</span></p>

<h2>Sync</h2>
<table>
<tr><th>Peers</th><td class="mono" data-field="sync.peers">{{join .S.Sync.Peers}}</td></tr>
<tr><th>Sent</th><td class="n" data-field="sync.sent">{{.S.Sync.SentMessages}}</td></tr>
<tr><th>Received</th><td class="n" data-field="sync.received">{{.S.Sync.ReceivedMessages}}</td></tr>
<tr><th>Rejected</th><td class="n" data-field="sync.rejected">{{.S.Sync.Rejected}}</td></tr>
{{- range $reason, $n := .S.Sync.RejectedByReason}}
<tr><th class="muted">rejected: {{$reason}}</th><td class="n" data-field="sync.rejected.{{$reason}}">{{$n}}</td></tr>
{{- end}}
<tr><th>Last received</th><td>{{if not .S.Sync.LastReceived.IsZero}}<time data-field="sync.last_received" datetime="{{rfc3339 .S.Sync.LastReceived}}">{{rfc3339 .S.Sync.LastReceived}}</time>
<span class="muted">({{ago .Now .S.Sync.LastReceived}})</span>{{else}}<span class="muted">never</span>{{end}}</td></tr>
</table>

<h2>ARP</h2>
<p><span data-field="arp.replies">{{.S.ARP.Replies}}</span> replies,
<span data-field="arp.announced">{{.S.ARP.Announced}}</span> announced,
<span data-field="arp.conflicts">{{.S.ARP.Conflicts}}</span> conflicts</p>
{{- if .S.PerVIP}}

<h2>Traffic per VIP</h2>
<table>
<thead><tr><th>VIP</th><th class="n">Packets</th><th class="n">Bytes</th></tr></thead>
<tbody>
{{- range $vip, $t := .S.PerVIP}}
<tr><td class="mono">{{$vip}}</td><td class="n" data-field="vip.{{$vip}}.packets">{{$t.Packets}}</td><td class="n" data-field="vip.{{$vip}}.bytes">{{$t.Bytes}}</td></tr>
{{- end}}
</tbody>
</table>
{{- end}}

<h2>Drops by reason</h2>
<table>
{{- range $reason, $n := .S.Drops}}
<tr><th>{{$reason}}</th><td class="n" data-field="drops.{{$reason}}">{{$n}}</td></tr>
{{- else}}
<tr><td class="muted">none</td></tr>
{{- end}}
</table>

<h2>Verdicts</h2>
<table>
{{- range $verdict, $n := .S.Verdicts}}
<tr><th>{{$verdict}}</th><td class="n" data-field="verdicts.{{$verdict}}">{{$n}}</td></tr>
{{- else}}
<tr><td class="muted">none</td></tr>
{{- end}}
</table>
</main>
<script>{{.Script}}</script>
</body>
</html>
`))

// renderPage writes the status page for s as of now.
func renderPage(w io.Writer, s control.Status, now time.Time) error {
	return pageTemplate.Execute(w, pageData{S: s, Now: now, Script: template.JS(pageScript), Style: template.CSS(pageStyle)})
}
