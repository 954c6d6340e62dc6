// Package cgp holds the acceptance tests of `l2lb helper`, CommuniGate Pro's
// External Load Balancer helper: the test plays CGP, starting one helper per
// frontend of a namespace testbed (internal/testbed) with pipes and talking
// the protocol of cgp-helper-protocol.md to it, while a client watches ARP and
// makes real connections to the VIP.
package cgp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/l2lb/l2lb/internal/e2e"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/testbed"
)

// suite is what TestMain prepared: the binary and the prerequisites.
var suite e2e.Suite

// tcpPort is where the frontends' name servers listen on the VIP.
const tcpPort = 80

// defaultVMAC is the virtual MAC of SyncID 0 (-s defaults to 0):
// 02:6c:32:62:SS:SS, locally administered (IEEE 802, bit 1 of the first
// octet). Every helper of the group answers with it, like VRRP.
var defaultVMAC = net.HardwareAddr{0x02, 0x6c, 0x32, 0x62, 0x00, 0x00}

func TestMain(m *testing.M) {
	os.Exit(suite.Run(m, e2e.SuiteOptions{Name: "e2e/cgp", Tools: []string{"ip", "tc"}}))
}

// newBed fails (CI=true) or skips when namespaces cannot be built, and
// otherwise returns a bed that is removed when the test ends.
func newBed(t *testing.T, opts testbed.Options) *testbed.Bed {
	t.Helper()
	return suite.NewBed(t, "the helper acceptance tests", opts)
}

// helperOpts are the options every test starts `l2lb helper` with, after
// "-i eth0 -f <vipfile>": exactly as the brief says CGP would, plus a trace
// and a control socket.
var helperOpts = e2e.HelperOptions{Args: []string{"-p", "15", "-t", "1"}, Control: true, Log: e2e.LogLines}

// snapshot records what the helper could change in a namespace: links,
// addresses, qdiscs and ingress filters on eth0, nftables rules (if nft is
// installed), and the ARP and reverse-path sysctls plus the local port
// range, read from inside the namespace.
// peerNetns matches how ip(8) names a veth peer's namespace. Another test creating or deleting
// namespaces at the same moment makes ip print the peer's id, its name or "Error: Peer netns
// reference is invalid." for the same unchanged link, so that part is not compared.
var peerNetns = regexp.MustCompile(`(?m)^Error: Peer netns reference is invalid\.\n|link-netns(id)? \S+ ?`)

// normalizeIP removes from ip(8) output what changes with other tests' namespaces.
func normalizeIP(s string) string { return peerNetns.ReplaceAllString(s, "") }

func snapshot(t *testing.T, h *testbed.Host) map[string]string {
	t.Helper()
	snap := map[string]string{}
	cmds := [][]string{
		{"ip", "-d", "link", "show"},
		{"ip", "-d", "addr", "show"},
		{"tc", "qdisc", "show", "dev", "eth0"},
		{"tc", "filter", "show", "dev", "eth0", "ingress"},
	}
	if _, err := exec.LookPath("nft"); err == nil {
		cmds = append(cmds, []string{"nft", "list", "ruleset"})
	}
	for _, c := range cmds {
		out, err := h.Command(c[0], c[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %s: %v\n%s", h.Name, strings.Join(c, " "), err, out)
		}
		snap[strings.Join(c, " ")] = normalizeIP(string(out))
	}
	err := h.Do(func() error {
		files, err := filepath.Glob("/proc/sys/net/ipv4/conf/*/*")
		if err != nil {
			return err
		}
		files = append(files, "/proc/sys/net/ipv4/ip_local_port_range")
		for _, f := range files {
			switch filepath.Base(f) {
			case "arp_ignore", "arp_announce", "rp_filter", "ip_local_port_range":
			default:
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			snap[f] = strings.TrimSpace(string(b))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: reading sysctls: %v", h.Name, err)
	}
	if len(snap) < len(cmds)+4 { // at least all, default, lo, eth0 for one sysctl
		t.Fatalf("%s: snapshot found only %d items", h.Name, len(snap))
	}
	return snap
}

// waitDAD waits (at most 5 s) until no IPv6 address of the hosts is still
// tentative. A fresh veth's link-local address runs duplicate address
// detection (RFC 4862 section 5.4) for about a second after the bed is built,
// and its "tentative" flag would otherwise show up as a change in a
// before/after comparison of `ip addr`.
func waitDAD(t *testing.T, hosts ...*testbed.Host) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, h := range hosts {
		for {
			out, err := h.RunIP("-6", "addr", "show", "tentative")
			if err != nil {
				t.Fatal(err)
			}
			if len(bytes.TrimSpace(out)) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: IPv6 addresses still tentative after 5 s:\n%s", h.Name, out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// diffSnapshots reports every item that differs.
func diffSnapshots(t *testing.T, who, when string, before, after map[string]string) {
	t.Helper()
	var keys []string
	for k := range before {
		keys = append(keys, k)
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if before[k] != after[k] {
			t.Errorf("%s: %s changed %s:\nbefore:\n%s\nafter:\n%s", who, k, when, before[k], after[k])
		}
	}
}

// promiscuity reads eth0's promiscuity count (ip -d -j link).
func promiscuity(t *testing.T, h *testbed.Host) int {
	t.Helper()
	out, err := h.RunIP("-d", "-j", "link", "show", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	var links []struct {
		Promiscuity *int `json:"promiscuity"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 || links[0].Promiscuity == nil {
		t.Fatalf("%s: cannot read promiscuity from %s (%v)", h.Name, out, err)
	}
	return *links[0].Promiscuity
}

// noHelperLeft checks that no l2lb process runs in the namespace.
func noHelperLeft(t *testing.T, h *testbed.Host, pids ...int) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "pids", h.NS).Output()
	if err != nil {
		t.Fatalf("ip netns pids %s: %v", h.NS, err)
	}
	for _, f := range strings.Fields(string(out)) {
		pid, _ := strconv.Atoi(f)
		comm, _ := os.ReadFile(filepath.Join("/proc", f, "comm"))
		for _, p := range pids {
			if pid == p {
				t.Errorf("%s: helper pid %d still in the namespace (%s)", h.Name, pid, strings.TrimSpace(string(comm)))
			}
		}
		if strings.TrimSpace(string(comm)) == "l2lb" {
			t.Errorf("%s: l2lb process %d left in the namespace", h.Name, pid)
		}
	}
}

func writeVIPFile(t *testing.T, vips []netip.Addr) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("# VIPs of the load balancer group (seed step 4 format)\n")
	for _, v := range vips {
		b.WriteString(v.String() + "\n")
	}
	p := filepath.Join(t.TempDir(), "vipaddrs")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// addAddrs puts further addresses of the testbed's subnet on a client's eth0
// (inside its namespace) and returns them.
func addAddrs(t *testing.T, h *testbed.Host, first, n int) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for i := 0; i < n; i++ {
		a := netip.AddrFrom4([4]byte{192, 0, 2, byte(first + i)})
		if _, err := h.RunIP("addr", "add", netip.PrefixFrom(a, testbed.Subnet.Bits()).String(), "dev", "eth0"); err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

// source is one client address connections are made from.
type source struct {
	h    *testbed.Host
	addr netip.Addr
}

// ask makes one NAME connection to raddr from src and returns the answering
// frontend's name.
func ask(src source, raddr netip.AddrPort, timeout time.Duration) (string, error) {
	c, err := src.h.DialTCP(netip.AddrPortFrom(src.addr, 0), raddr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return testbed.AskNameOver(c, timeout)
}

// askEach makes rounds NAME connections from every source, eight at a
// time, and returns the names answered per source; failures are test
// errors.
func askEach(t *testing.T, srcs []source, raddr netip.AddrPort, rounds int) map[netip.Addr][]string {
	t.Helper()
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		out  = map[netip.Addr][]string{}
		errs []string
	)
	work := make(chan source)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range work {
				name, err := ask(s, raddr, 3*time.Second)
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Sprintf("from %v: %v", s.addr, err))
				} else {
					out[s.addr] = append(out[s.addr], name)
				}
				mu.Unlock()
			}
		}()
	}
	for r := 0; r < rounds; r++ {
		for _, s := range srcs {
			work <- s
		}
	}
	close(work)
	wg.Wait()
	if len(errs) > 0 {
		if len(errs) > 10 {
			errs = append(errs[:10], fmt.Sprintf("... and %d more", len(errs)-10))
		}
		t.Errorf("%d of %d connections to the VIP failed:\n%s", len(errs), rounds*len(srcs), strings.Join(errs, "\n"))
	}
	return out
}

// perFrontend counts the names answered.
func perFrontend(names map[netip.Addr][]string) map[string]int {
	m := map[string]int{}
	for _, ns := range names {
		for _, n := range ns {
			m[n]++
		}
	}
	return m
}

// download is a DOWNLOAD over the VIP that the test reads in two parts, so
// the connection spans a change.
type download struct {
	src  source
	conn net.Conn
	n    int64
	want io.Reader // the expected stream
	got  int64
}

func startDownload(t *testing.T, src source, raddr netip.AddrPort, n int64) *download {
	t.Helper()
	c, err := src.h.DialTCP(netip.AddrPortFrom(src.addr, 0), raddr, 3*time.Second)
	if err != nil {
		t.Fatalf("download from %v: %v", src.addr, err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := fmt.Fprintf(c, "DOWNLOAD %d\n", n); err != nil {
		t.Fatalf("download from %v: %v", src.addr, err)
	}
	return &download{src: src, conn: c, n: n, want: testbed.Stream(n)}
}

// read reads up to n more bytes (to the end if n < 0) and compares them with
// the expected stream; every read is bounded by 5 s of inactivity.
func (d *download) read(n int64) error {
	if n < 0 {
		n = d.n - d.got + 1 // one more, to detect excess data
	}
	buf := make([]byte, 64<<10)
	exp := make([]byte, 64<<10)
	for n > 0 {
		if err := d.conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			return err
		}
		m, err := d.conn.Read(buf[:min(int64(len(buf)), n)])
		if m > 0 {
			if _, werr := io.ReadFull(d.want, exp[:m]); werr != nil {
				return fmt.Errorf("%d bytes beyond the %d asked for", m, d.n)
			}
			if !bytes.Equal(buf[:m], exp[:m]) {
				return fmt.Errorf("bytes %d-%d differ from the stream", d.got, d.got+int64(m))
			}
			d.got += int64(m)
			n -= int64(m)
		}
		if errors.Is(err, io.EOF) {
			if d.got != d.n {
				return fmt.Errorf("connection closed after %d of %d bytes", d.got, d.n)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", d.got, d.n, err)
		}
	}
	return nil
}
