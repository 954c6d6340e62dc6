package ops

import (
	"bytes"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
)

// chromiumBin is Debian's chromium package; .ci/run installs it.
const chromiumBin = "chromium"

// needChromium returns the path of chromium, failing (CI=true) or skipping
// when it is not installed.
func needChromium(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath(chromiumBin)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but %s is not installed (Debian package chromium): the status page test needs it", chromiumBin)
		}
		t.Skipf("needs %s (Debian package chromium) for the status page test", chromiumBin)
	}
	return p
}

// dumpDOM loads url in headless Chromium inside f1's namespace and returns
// the DOM after 3 s of virtual time, during which the page's live refresh
// (every second) runs; virtual time waits for pending fetches.
func dumpDOM(t *testing.T, chromium, url string) string {
	t.Helper()
	dir := t.TempDir()
	cmd := f1().Command(chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+dir, "--virtual-time-budget=3000", "--dump-dom", url)
	// Chromium writes below $HOME (~/.pki); keep that in the temporary directory.
	cmd.Env = append(os.Environ(), "HOME="+dir)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	// The command leads its own process group (testbed's Command), so a hung
	// browser is killed with all its helper processes.
	timer := time.AfterFunc(60*time.Second, func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	err := cmd.Wait()
	timer.Stop()
	if err != nil {
		t.Fatalf("chromium --dump-dom %s: %v\nstderr (last 2000 bytes):\n%s", url, err, tail(errOut.String(), 2000))
	}
	if !strings.Contains(out.String(), `data-field="role"`) {
		t.Fatalf("chromium's DOM of %s has no status figures:\n%s\nstderr:\n%s", url, tail(out.String(), 2000), tail(errOut.String(), 2000))
	}
	return out.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// dataField matches an element carrying a figure: the page gives each one a
// data-field attribute and the figure as the element's only text.
var dataField = regexp.MustCompile(`data-field="([^"]+)"[^>]*>([^<]*)<`)

// pageFields returns the page's figures by data-field name.
func pageFields(t *testing.T, page string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, m := range dataField.FindAllStringSubmatch(page, -1) {
		name, value := html.UnescapeString(m[1]), strings.TrimSpace(html.UnescapeString(m[2]))
		if old, dup := out[name]; dup && old != value {
			t.Fatalf("the page shows data-field %q twice, as %q and %q", name, old, value)
		}
		out[name] = value
	}
	return out
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func ports(m control.Member) string {
	if m.PortLo == 0 && m.PortHi == 0 {
		return "-"
	}
	return fmt.Sprintf("%d-%d", m.PortLo, m.PortHi)
}

// compareWithStatus checks the page's figures against `l2lb status --json`
// taken right before (a) and right after (z) the page was loaded: fields
// that do not move must equal both, counters must lie between them.
func compareWithStatus(t *testing.T, fields map[string]string, a, z control.Status) {
	t.Helper()
	equal := func(field, want string) {
		t.Helper()
		if got, ok := fields[field]; !ok {
			t.Errorf("the page shows no %q", field)
		} else if got != want {
			t.Errorf("the page shows %s = %q, status --json says %q", field, got, want)
		}
	}
	between := func(field string, lo, hi uint64) {
		t.Helper()
		got, ok := fields[field]
		if !ok {
			t.Errorf("the page shows no %q", field)
			return
		}
		v, err := strconv.ParseUint(got, 10, 64)
		if err != nil {
			t.Errorf("the page shows %s = %q, not a number", field, got)
			return
		}
		if v < lo || v > hi {
			t.Errorf("the page shows %s = %d, status --json said %d before and %d after", field, v, lo, hi)
		}
	}
	if a.Role != z.Role || a.Since != z.Since || !slicesEqual(a.VIPs, z.VIPs) || a.Transitions != z.Transitions {
		t.Fatalf("the balancer's role or VIPs changed while the page loaded: %+v / %+v", a, z)
	}
	equal("node", z.Node)
	equal("role", z.Role)
	equal("mode", z.Mode)
	equal("since", z.Since.UTC().Format(time.RFC3339))
	equal("transitions", strconv.FormatUint(z.Transitions, 10))
	equal("interface", z.Interface)
	equal("virtual_mac", z.VirtualMAC)
	equal("vips", strings.Join(z.VIPs, ", "))
	equal("table.limit", strconv.Itoa(z.Table.Limit))
	between("table.flows", uint64(a.Table.Flows), uint64(z.Table.Flows))
	between("table.templates", uint64(a.Table.Templates), uint64(z.Table.Templates))
	between("arp.replies", a.ARP.Replies, z.ARP.Replies)
	between("arp.announced", a.ARP.Announced, z.ARP.Announced)
	between("arp.conflicts", a.ARP.Conflicts, z.ARP.Conflicts)
	between("sync.sent", a.Sync.SentMessages, z.Sync.SentMessages)
	between("sync.received", a.Sync.ReceivedMessages, z.Sync.ReceivedMessages)
	for v, n := range z.Verdicts {
		between("verdicts."+v, a.Verdicts[v], n)
	}
	for r, n := range z.Drops {
		between("drops."+r, a.Drops[r], n)
	}
	if len(z.Members) != len(suite.Bed.Frontends) {
		t.Fatalf("status lists %d members, want %d", len(z.Members), len(suite.Bed.Frontends))
	}
	for _, m := range z.Members {
		ma, ok := a.FindMember(netip.MustParseAddr(m.Addr))
		if !ok {
			t.Fatalf("member %s appeared while the page loaded", m.Addr)
		}
		p := "member." + m.Addr + "."
		equal(p+"addr", m.Addr)
		equal(p+"mac", m.MAC)
		equal(p+"weight", strconv.FormatUint(uint64(m.Weight), 10))
		equal(p+"local", yesNo(m.Local))
		equal(p+"ready", yesNo(m.Ready))
		equal(p+"healthy", yesNo(m.Healthy))
		equal(p+"ports", ports(m))
		between(p+"flows", uint64(ma.Flows), uint64(m.Flows))
		between(p+"templates", uint64(ma.Templates), uint64(m.Templates))
		between(p+"packets", ma.Packets, m.Packets)
		between(p+"bytes", ma.Bytes, m.Bytes)
	}
}

func slicesEqual(a, b []string) bool { return strings.Join(a, "\x00") == strings.Join(b, "\x00") }

// refreshProxy serves GET requests inside f1's namespace by fetching the
// same path from the balancer's metrics listener, and records every status
// page it passes on. Before passing on the first refresh (the second
// request for the page) it runs inject, so the refresh must show figures
// the first load could not have.
type refreshProxy struct {
	t      *testing.T
	inject func()
	srv    *http.Server
	url    string

	mu    sync.Mutex
	pages []string
}

func startRefreshProxy(t *testing.T, inject func()) *refreshProxy {
	t.Helper()
	p := &refreshProxy{t: t, inject: inject}
	var ln net.Listener
	if err := f1().Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	p.url = "http://" + ln.Addr().String() + "/"
	client := nsHTTPClient(f1())
	p.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "read-only", http.StatusMethodNotAllowed)
			return
		}
		if r.URL.Path == "/" {
			p.mu.Lock()
			n := len(p.pages)
			p.mu.Unlock()
			if n == 1 {
				p.inject()
			}
		}
		resp, err := client.Get("http://" + metricsAddr + r.URL.RequestURI())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		if r.URL.Path == "/" {
			p.mu.Lock()
			p.pages = append(p.pages, string(body))
			p.mu.Unlock()
		}
		// The balancer's headers, its Content-Security-Policy included, go
		// to the browser unchanged.
		for k, vs := range resp.Header {
			for _, v := range vs {
				w.Header().Add(k, v)
			}
		}
		w.WriteHeader(resp.StatusCode)
		w.Write(body)
	})}
	go p.srv.Serve(ln)
	t.Cleanup(func() { p.srv.Close() })
	return p
}

func (p *refreshProxy) served() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.pages...)
}

// Issue 6, acceptance 4: the status page, loaded from the running balancer
// in headless Chromium, shows the same figures as `l2lb status --json`, and
// its live refresh shows traffic sent after the page was loaded.
func TestStatusPageInChromium(t *testing.T) {
	needBed(t)
	chromium := needChromium(t)
	b := startBalancer(t, "-p", "0")
	udpAddr := netip.AddrPortFrom(vip(), udpPort)
	srcs := sources()
	for i := 0; i < 40; i++ {
		s := srcs[i%len(srcs)]
		if _, err := s.Host.UDPAsk(s.Addr, udpAddr, 200); err != nil {
			t.Fatal(err)
		}
	}

	// With traffic flowing: every figure lies between the status taken
	// before and after the page.
	l := startLoad(2, netip.AddrPortFrom(vip(), tcpPort))
	time.Sleep(300 * time.Millisecond)
	before := b.status(t)
	page := dumpDOM(t, chromium, "http://"+metricsAddr+"/")
	after := b.status(t)
	conns := l.stop()
	for _, c := range conns {
		if c.err != nil {
			t.Errorf("load connection: %v", c.err)
			break
		}
	}
	fields := pageFields(t, page)
	t.Logf("page loaded under load (%d connections): %d figures, %s packets %s -> %s", len(conns), len(fields),
		f1().Addr, fmt.Sprint(member(t, before, f1().Addr).Packets), fmt.Sprint(member(t, after, f1().Addr).Packets))
	compareWithStatus(t, fields, before, after)
	if !strings.Contains(page, "<script") || strings.Contains(page, "src=\"http") || strings.Contains(page, "href=\"http") {
		t.Errorf("the page must carry its own script and load no external asset")
	}
	if err := e2e.WaitClosed(append(append(suite.Bed.Clients[:0:0], suite.Bed.Clients...), suite.Bed.Frontends...)...); err != nil {
		t.Log(err)
	}
	time.Sleep(300 * time.Millisecond)

	// The live refresh: the page's own fetch, a second after loading, shows
	// datagrams sent after the first load, and the figures then match the
	// quiet balancer's status exactly.
	injected := map[string]uint64{} // member address -> datagrams
	proxy := startRefreshProxy(t, func() {
		for i := 0; i < 30; i++ {
			s := srcs[i%len(srcs)]
			name, err := s.Host.UDPAsk(s.Addr, udpAddr, 300)
			if err != nil {
				t.Errorf("datagram during the refresh: %v", err)
				continue
			}
			injected[frontendByName(name).Addr.String()]++
		}
	})
	page = dumpDOM(t, chromium, proxy.url)
	quiet := b.status(t)
	pages := proxy.served()
	if len(pages) < 2 {
		t.Fatalf("the browser fetched the page %d times in 3 s; the live refresh never ran", len(pages))
	}
	first, last := pageFields(t, pages[0]), pageFields(t, page)
	t.Logf("the browser fetched the page %d times; %v datagrams sent before the first refresh", len(pages), injected)
	// The balancer re-announces its VIPs on its own timers (0.5 s, 2 s, 5 s after it starts, then
	// every 30 s), so that one counter may move between the page's last fetch and the quiet status.
	if a, q := last["arp.announced"], strconv.FormatUint(quiet.ARP.Announced, 10); a != q {
		t.Logf("arp.announced moved on its own timer: page %s, status %s", a, q)
		last["arp.announced"] = q // compareWithStatus checks every field the page has
	}
	compareWithStatus(t, last, quiet, quiet)
	var total uint64
	for _, m := range quiet.Members {
		f := "member." + m.Addr + ".packets"
		a, err1 := strconv.ParseUint(first[f], 10, 64)
		z, err2 := strconv.ParseUint(last[f], 10, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: first load %q, after the refresh %q", f, first[f], last[f])
		}
		if z-a != injected[m.Addr] {
			t.Errorf("%s went from %d at the first load to %d after the live refresh; %d datagrams were sent to it in between",
				f, a, z, injected[m.Addr])
		}
		total += z - a
	}
	if total == 0 {
		t.Errorf("no counter changed between the first load and the refresh")
	}
}
