// Package e2e runs the real l2lb binary as the active balancer on a namespace
// testbed (internal/testbed) and checks the core acceptance criteria: weighted
// spreading, persistence, exactly-once answers, large transfers, UDP with
// fragments, outgoing connections through per-frontend port ranges, and
// survival of malformed floods.
package e2e

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/testbed"
	"github.com/mdlayher/packet"
)

// Shared state built by TestMain.
var (
	suite     e2e.Suite
	portRound atomic.Int32 // varies fixed source ports between -count runs
)

// Ports the frontends' name servers listen on, on the VIP.
const (
	tcpPort = 80
	udpPort = 5060 // SIP over UDP, seed step 6
)

func TestMain(m *testing.M) {
	os.Exit(suite.Run(m, e2e.SuiteOptions{Name: "e2e", Tools: []string{"ip"}, SharedBed: true,
		Setup: e2e.ServeNames([]uint16{tcpPort}, []uint16{udpPort})}))
}

// needBed fails (CI=true) or skips when the testbed is unavailable.
func needBed(t *testing.T) {
	t.Helper()
	suite.NeedBed(t, "the end-to-end tests")
}

func vip() netip.Addr { return suite.Bed.VIPs[0] }

func f1() *testbed.Host { return suite.Bed.Frontends[0] }

// source is one client address connections are made from.
type source = e2e.Source

// sources returns both addresses of every client.
func sources() []source { return e2e.Sources(suite.Bed) }

// stats is the status l2lb writes with --stats-file, the schema of `l2lb status --json`.
type stats = control.Status

// balancer is a running `l2lb run` on f1.
type balancer struct {
	*e2e.Balancer
	statsPath string
}

// readStats parses the current stats file.
func (b *balancer) readStats() (stats, error) {
	var s stats
	data, err := os.ReadFile(b.statsPath)
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(data, &s)
}

// startBalancer runs l2lb on f1 with every frontend as a member plus extra
// flags, waits until it is ready, knows every member's MAC and answers ARP
// for the VIP, and stops it with SIGTERM when the test ends.
func startBalancer(t *testing.T, extra ...string) *balancer {
	t.Helper()
	dir := t.TempDir()
	vipFile := filepath.Join(dir, "vipaddrs")
	if err := os.WriteFile(vipFile, []byte("# e2e VIPs (seed step 4 format)\n"+vip().String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Clients may still cache the VIP's MAC from an earlier balancer.
	for _, c := range suite.Bed.Clients {
		if err := c.FlushNeigh(); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"run", "-i", "eth0", "-f", vipFile, "--stats-file", filepath.Join(dir, "stats.json"), "--control", filepath.Join(dir, "control.sock")}
	for _, f := range suite.Bed.Frontends {
		args = append(args, "--member", f.Addr.String())
	}
	args = append(args, extra...)
	b := &balancer{statsPath: filepath.Join(dir, "stats.json")}
	b.Balancer = e2e.StartBalancer(t, f1(), suite.Bin, args)
	t.Cleanup(func() { stopBalancer(t, b) })
	b.WaitReady(t)
	// The stats file must appear and list every member as usable: a
	// resolved MAC, or local (f1 itself), or explicitly ready.
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := b.readStats()
		resolved := 0
		for _, m := range s.Members {
			if m.MAC != "" || m.Local || m.Ready {
				resolved++
			}
		}
		if err == nil && resolved == len(suite.Bed.Frontends) {
			break
		}
		if time.Now().After(deadline) || !b.Running() {
			t.Fatalf("stats file %s never listed %d usable members (last: %+v, err %v)\nlog:\n%s",
				b.statsPath, len(suite.Bed.Frontends), s, err, b.LogText())
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.ResolveVIP(t, suite.Bed.Clients[0], vip(), deadline)
	for _, f := range suite.Bed.Frontends {
		if b.VMAC.String() == f.MAC.String() {
			t.Logf("note: the VIP resolves to %s's own MAC %v, not a virtual MAC", f.Name, f.MAC)
		}
	}
	return b
}

// stopBalancer sends SIGTERM and expects a clean exit that leaves f1's
// interface as it found it.
func stopBalancer(t *testing.T, b *balancer) {
	b.Stop(t, append(slices.Clone(suite.Bed.Clients), suite.Bed.Frontends...)...)
	// The virtual MAC is accepted through a socket-scoped PACKET_MR_UNICAST
	// membership, which puts the veth in promiscuous mode; it must be gone.
	out, err := f1().RunIP("-d", "-j", "link", "show", "eth0")
	if err != nil {
		t.Errorf("inspecting f1 eth0 after l2lb exit: %v", err)
	} else {
		var links []struct {
			Promiscuity int `json:"promiscuity"`
		}
		if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
			t.Errorf("parsing `ip -d -j link show eth0` in f1: %v: %s", err, out)
		} else if links[0].Promiscuity != 0 {
			t.Errorf("f1 eth0 promiscuity is %d after l2lb exited, want 0", links[0].Promiscuity)
		}
	}
	if t.Failed() {
		t.Logf("l2lb log:\n%s", b.LogText())
	}
}

// conn is one finished AskName over the VIP.
type conn struct {
	src   source
	local netip.AddrPort
	name  string
}

// askMany makes n AskName connections to the VIP, cycling over srcs, with
// a few in parallel so the run stays short. Failures are reported with t.Errorf.
func askMany(t *testing.T, n int, srcs []source) []conn {
	t.Helper()
	const workers = 8
	var (
		mu   sync.Mutex
		out  []conn
		errs []string
		wg   sync.WaitGroup
		next atomic.Int64
	)
	raddr := netip.AddrPortFrom(vip(), tcpPort)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				s := srcs[i%len(srcs)]
				c, err := s.Host.DialTCP(netip.AddrPortFrom(s.Addr, 0), raddr, 5*time.Second)
				var name string
				if err == nil {
					name, err = testbed.AskNameOver(c, 5*time.Second)
					local := c.LocalAddr().(*net.TCPAddr).AddrPort()
					c.Close()
					if err == nil {
						mu.Lock()
						out = append(out, conn{s, local, name})
						mu.Unlock()
						continue
					}
					err = fmt.Errorf("%v -> %v: %w", local, raddr, err)
				}
				mu.Lock()
				errs = append(errs, fmt.Sprintf("%v: %v", s, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		if len(errs) > 10 {
			errs = append(errs[:10], fmt.Sprintf("... and %d more", len(errs)-10))
		}
		t.Errorf("%d of %d connections to the VIP failed:\n%s", len(errs), n, strings.Join(errs, "\n"))
	}
	return out
}

func countNames(cs []conn) map[string]int {
	m := map[string]int{}
	for _, c := range cs {
		m[c.name]++
	}
	return m
}

// spreadConns is the number of connections of the spreading test. The issue
// asks for 600 within +-15 % of the weighted share; at 600 the binomial
// noise alone breaks that bound about once in ten runs (f1's share at -r 50
// is 120 with a standard deviation of 9.8 against a tolerance of 18), so
// three times as many are made: the same bound then sits beyond 3 standard
// deviations, and a real weighting error still fails it.
const spreadConns = 1800

// Cases 1 and 3: weighted spreading without persistence, and every
// connection answered by exactly one SYN-ACK, with no reset anywhere.
func TestWeightedSpreadExactlyOnce(t *testing.T) {
	needBed(t)
	for _, self := range []int{100, 50} {
		t.Run(fmt.Sprintf("r=%d", self), func(t *testing.T) {
			startBalancer(t, "-p", "0", "-r", strconv.Itoa(self))
			caps := map[string]*testbed.Capture{}
			for _, c := range suite.Bed.Clients {
				cp, err := c.Capture("eth0")
				if err != nil {
					t.Fatal(err)
				}
				caps[c.Name] = cp
			}
			start := time.Now()
			conns := askMany(t, spreadConns, sources())
			t.Logf("%d connections in %v", len(conns), time.Since(start).Round(time.Millisecond))
			time.Sleep(300 * time.Millisecond) // let the last FIN/ACKs (or stray RSTs) arrive
			capStats := map[string]testbed.CaptureStats{}
			for name, cp := range caps {
				capStats[name] = cp.Stop()
				if err := cp.Err(); err != nil {
					t.Errorf("capture on %s: %v", name, err)
				}
				if d := capStats[name].Dropped; d != 0 {
					t.Errorf("capture on %s dropped %d frames: SYN-ACK/RST counts incomplete", name, d)
				}
			}

			// Case 1: shares proportional to the weights, +-15 %.
			weights := map[string]int{}
			sum := 0
			for i, f := range suite.Bed.Frontends {
				w := 100
				if i == 0 {
					w = self
				}
				weights[f.Name] = w
				sum += w
			}
			counts := countNames(conns)
			t.Logf("-r %d: connections per frontend %v", self, counts)
			for _, f := range suite.Bed.Frontends {
				want := float64(len(conns)) * float64(weights[f.Name]) / float64(sum)
				got := counts[f.Name]
				if d := float64(got) - want; d > 0.15*want || d < -0.15*want {
					t.Errorf("-r %d: %s answered %d of %d connections, want %.0f +-15%% (weight %d of %d)",
						self, f.Name, got, len(conns), want, weights[f.Name], sum)
				}
			}
			for name := range counts {
				if suite.Bed.Host(name) == nil || name[0] != 'f' {
					t.Errorf("unexpected answer %q: not a frontend", name)
				}
			}

			// Case 3: exactly one SYN-ACK per connection, from the MAC of
			// the frontend that answered, and no RST at all. A 4-tuple may
			// be reused by a later connection (the server closes first, so
			// the client keeps no TIME-WAIT), so connections are matched to
			// the capture's handshakes per flow.
			type key struct {
				client string
				flow   testbed.Flow
			}
			byFlow := map[key][]string{}
			for _, c := range conns {
				k := key{c.src.Host.Name, testbed.Flow{Local: c.local, Remote: netip.AddrPortFrom(vip(), tcpPort)}}
				byFlow[k] = append(byFlow[k], c.name)
			}
			perFrontend := map[string]int{}
			var bad []string
			for k, names := range byFlow {
				hss := capStats[k.client].HandshakesOf(k.flow)
				var macOwners []string
				ok := len(hss) == len(names)
				for _, hs := range hss {
					if hs.SYNACKs != 1 {
						ok = false
					}
					for _, m := range hs.SYNACKMACs {
						owner := "unknown MAC " + m.String()
						if h := suite.Bed.HostByMAC(m); h != nil {
							owner = h.Name
						}
						macOwners = append(macOwners, owner)
					}
				}
				sort.Strings(names)
				sort.Strings(macOwners)
				if !ok || !slices.Equal(names, macOwners) {
					var desc []string
					for _, hs := range hss {
						desc = append(desc, fmt.Sprintf("%d SYN, %d SYN-ACK from %v", hs.SYNs, hs.SYNACKs, hs.SYNACKMACs))
					}
					bad = append(bad, fmt.Sprintf("%s %v: %d connection(s) answered by %v; handshakes seen: %v",
						k.client, k.flow.Local, len(names), names, desc))
					continue
				}
				for _, n := range names {
					perFrontend[n]++
				}
			}
			if len(bad) > 0 {
				sort.Strings(bad)
				if len(bad) > 10 {
					bad = append(bad[:10], fmt.Sprintf("... and %d more", len(bad)-10))
				}
				t.Errorf("connections not answered by exactly one SYN-ACK from the answering frontend:\n%s", strings.Join(bad, "\n"))
			}
			for name, st := range capStats {
				for fl, fs := range st.Flows {
					if fs.RSTsSent+fs.RSTsReceived == 0 {
						continue
					}
					if _, ours := byFlow[key{name, fl}]; ours {
						var trace []string
						for _, s := range fs.Trace {
							trace = append(trace, s.String())
						}
						t.Errorf("%s saw resets on %v -> %v: %d sent, %d received; last segments:\n  %s", name, fl.Local, fl.Remote,
							fs.RSTsSent, fs.RSTsReceived, strings.Join(trace, "\n  "))
					} else {
						// Not a connection of this test (e.g. a late segment
						// of an earlier test's); shown for diagnosis.
						t.Logf("note: %s saw resets on unrelated flow %v -> %v", name, fl.Local, fl.Remote)
					}
				}
			}
			// The property must hold for flows the balancer keeps on f1
			// (re-injected locally) as well as for forwarded ones.
			for _, f := range suite.Bed.Frontends {
				if perFrontend[f.Name] == 0 {
					t.Errorf("no cleanly answered connection was handled by %s; exactly-once unproven there", f.Name)
				}
			}
		})
	}
}

// Case 2: with persistence, a client address sticks to one frontend.
func TestPersistence(t *testing.T) {
	needBed(t)
	startBalancer(t, "-p", "15")
	for _, s := range sources() {
		conns := askMany(t, 20, []source{s})
		counts := countNames(conns)
		if len(conns) != 20 || len(counts) != 1 {
			t.Errorf("-p 15: 20 connections from %v were answered by %v, want a single frontend", s, counts)
		} else {
			t.Logf("%v -> %v", s, counts)
		}
	}
}

// Case 4: 20 MB each way through the VIP with default offloads, on f1
// (local delivery) and elsewhere (forwarding), sha256-checked.
func TestLargeTransfers(t *testing.T) {
	needBed(t)
	startBalancer(t, "-p", "0")
	const size = 20 << 20
	const maxTries = 30 // each try lands on f1 with probability 1/3: (2/3)^30 < 1e-5
	srcs := sources()
	raddr := netip.AddrPortFrom(vip(), tcpPort)
	for _, kind := range []string{"download", "upload"} {
		onF1, elsewhere := 0, 0
		for try := 0; try < maxTries && (onF1 == 0 || elsewhere == 0); try++ {
			s := srcs[try%len(srcs)]
			start := time.Now()
			local, by, err := e2e.Transfer(suite.Bed, s, kind, raddr, size)
			if err != nil {
				t.Fatalf("20 MB %s from %v: %v", kind, s, err)
			}
			if len(by) != 1 {
				t.Fatalf("20 MB %s from %v: served by %v, want exactly one frontend", kind, local, by)
			}
			t.Logf("20 MB %s %v via %s: ok in %v", kind, local, by[0], time.Since(start).Round(time.Millisecond))
			if by[0] == f1().Name {
				onF1++
			} else {
				elsewhere++
			}
		}
		if onF1 == 0 || elsewhere == 0 {
			t.Errorf("%s: %d transfers on f1, %d elsewhere after %d tries; want both kinds", kind, onF1, elsewhere, maxTries)
		}
	}
}

// Case 5: UDP to the VIP is balanced and answered, and 3000-byte datagrams
// (fragmented by the client kernel at MTU 1500) arrive whole.
func TestUDP(t *testing.T) {
	needBed(t)
	startBalancer(t, "-p", "0")
	raddr := netip.AddrPortFrom(vip(), udpPort)
	srcs := sources()
	for _, size := range []int{200, 3000} {
		n := 100
		if size > 1500 {
			n = 50
		}
		counts := map[string]int{}
		failed := 0
		for i := 0; i < n; i++ {
			s := srcs[i%len(srcs)]
			name, err := s.Host.UDPAsk(s.Addr, raddr, size)
			if err != nil {
				failed++
				if failed <= 5 {
					t.Errorf("%d-byte datagram from %v: %v", size, s, err)
				}
				continue
			}
			counts[name]++
		}
		t.Logf("%d-byte datagrams: answers per frontend %v, %d failed", size, counts, failed)
		if failed > 0 {
			t.Errorf("%d of %d %d-byte datagrams were not answered correctly", failed, n, size)
		}
		if len(counts) < 2 {
			t.Errorf("%d %d-byte datagrams from varied ports were all answered by %v, want more than one frontend", n, size, counts)
		}
	}
}

// Case 6 (seed step 7): a frontend's outgoing connection from VIP:port in
// its own range; the replies reach it through the balancer.
func TestOutgoingConnections(t *testing.T) {
	needBed(t)
	var extra []string
	for _, f := range suite.Bed.Frontends {
		extra = append(extra, "--port-range", fmt.Sprintf("%v=%d-%d", f.Addr, f.PortRange[0], f.PortRange[1]))
	}
	startBalancer(t, append([]string{"-p", "0"}, extra...)...)
	c1 := suite.Bed.Clients[0]
	const srvPort = 7000
	stop, err := c1.ServeName(c1.Addr, []uint16{srvPort}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	server := netip.AddrPortFrom(c1.Addr, srvPort)
	round := uint16(portRound.Add(1))
	// f2 first (forwarded replies), then f1 (replies delivered locally).
	for _, f := range []*testbed.Host{suite.Bed.Frontends[1], suite.Bed.Frontends[0]} {
		base := f.PortRange[0] + 3*round - 2 // f2: 55001, 55002, 55003 on the first run
		local := netip.AddrPortFrom(vip(), base)
		c, err := f.DialTCP(local, server, 5*time.Second)
		if err != nil {
			t.Errorf("%s: connecting from %v to %v: %v", f.Name, local, server, err)
			continue
		}
		name, err := testbed.AskNameOver(c, 5*time.Second)
		c.Close()
		if err != nil || name != c1.Name {
			t.Errorf("%s: NAME from %v to %v = %q, %v; want %q", f.Name, local, server, name, err, c1.Name)
		}
		// Data both ways on further ports of the range.
		for i, kind := range []string{"download", "upload"} {
			local := netip.AddrPortFrom(vip(), base+uint16(i)+1)
			c, err := f.DialTCP(local, server, 5*time.Second)
			if err != nil {
				t.Errorf("%s: connecting from %v to %v: %v", f.Name, local, server, err)
				continue
			}
			if kind == "download" {
				err = testbed.DownloadOver(c, 2<<20, 5*time.Second)
			} else {
				err = testbed.UploadOver(c, 2<<20, 5*time.Second)
			}
			c.Close()
			if err != nil {
				t.Errorf("%s: 2 MB %s from %v to %v: %v", f.Name, kind, local, server, err)
			} else {
				t.Logf("%s: 2 MB %s %v -> %v ok", f.Name, kind, local, server)
			}
		}
		// An ephemeral port: the kernel picks it from f's range.
		c, err = f.DialTCP(netip.AddrPortFrom(vip(), 0), server, 5*time.Second)
		if err != nil {
			t.Errorf("%s: connecting from the VIP with an ephemeral port: %v", f.Name, err)
			continue
		}
		lp := c.LocalAddr().(*net.TCPAddr).AddrPort().Port()
		name, err = testbed.AskNameOver(c, 5*time.Second)
		c.Close()
		if err != nil || name != c1.Name || lp < f.PortRange[0] || lp > f.PortRange[1] {
			t.Errorf("%s: ephemeral VIP:%d -> %v: %q, %v (range %v)", f.Name, lp, server, name, err, f.PortRange)
		}
	}
	// c1 closes first, so each frontend sits in LAST-ACK until c1's final
	// ACK, sent to the VIP, reaches it through the balancer.
	if err := e2e.WaitClosed(suite.Bed.Frontends[0], suite.Bed.Frontends[1]); err != nil {
		t.Errorf("final ACKs of outgoing connections did not come through the balancer: %v", err)
	}
}

// Case 7: a malformed flood to the balancer's MAC is counted and dropped,
// valid-but-unusual frames (IPv4 options) are still handled, and the
// balancer keeps serving.
func TestMalformedFlood(t *testing.T) {
	needBed(t)
	b := startBalancer(t, "-p", "0")
	c1 := suite.Bed.Clients[0]
	raw, err := c1.RawConn()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	// A UDP socket on c1 receives the answers to the option-carrying
	// datagrams that are built by hand below.
	uc, err := c1.ListenUDP(netip.AddrPortFrom(c1.Addr, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	optSrc := uc.LocalAddr().(*net.UDPAddr).AddrPort()
	fb := frameBuilder{src: c1.MAC, dst: b.VMAC, from: c1.Addr, to: vip(), rng: rand.New(rand.NewPCG(1, 2))}
	optPayload := []byte("ipv4 options must still be handled")
	kinds := []struct {
		name  string
		build func() []byte
	}{
		{"truncated IPv4 header", fb.truncatedIPv4},
		{"IHL < 5", fb.shortIHL},
		{"total length > frame", fb.longTotalLen},
		{"bad IP version", fb.badVersion},
		{"bad IPv4 header checksum", fb.badChecksum},
		{"IPv4 with options (valid)", func() []byte { return fb.udpWithOptions(optSrc.Port(), udpPort, optPayload) }},
		{"TCP data offset < 5", fb.shortTCPOffset},
		{"VLAN-tagged", fb.vlanTagged},
		{"IPv6", fb.ipv6},
		{"20-byte runt", fb.runt},
		{"random garbage", fb.garbage},
	}
	const total = 50_000
	dst := &packet.Addr{HardwareAddr: b.VMAC}
	start := time.Now()
	sendErrs := 0
	for i := 0; i < total; i++ {
		k := kinds[i%len(kinds)]
		if _, err := raw.WriteTo(k.build(), dst); err != nil {
			sendErrs++
			if sendErrs == 1 {
				t.Errorf("sending a %q frame: %v", k.name, err)
			}
		}
	}
	t.Logf("sent %d malformed/unusual frames of %d kinds in %v (%d send errors)",
		total, len(kinds), time.Since(start).Round(time.Millisecond), sendErrs)

	// Now quiet: option-carrying datagrams must be answered.
	time.Sleep(500 * time.Millisecond)
	drain(uc)
	const optN = 20
	for i := 0; i < optN; i++ {
		raw.WriteTo(fb.udpWithOptions(optSrc.Port(), udpPort, optPayload), dst)
		time.Sleep(5 * time.Millisecond)
	}
	sum := sha256.Sum256(optPayload)
	wantSuffix := " " + hex.EncodeToString(sum[:])
	answers := map[string]int{}
	got := 0
	uc.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 512)
	for got < optN {
		n, _, err := uc.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if name, ok := strings.CutSuffix(string(buf[:n]), wantSuffix); ok {
			got++
			answers[name]++
		}
	}
	if got < optN*9/10 {
		t.Errorf("only %d of %d UDP datagrams carrying IPv4 options were answered (%v); options must be handled", got, optN, answers)
	} else {
		t.Logf("IPv4-options datagrams answered %d/%d by %v", got, optN, answers)
	}

	// Valid traffic still works and l2lb is alive.
	conns := askMany(t, 30, sources())
	if len(conns) != 30 {
		t.Errorf("after the flood only %d of 30 connections succeeded", len(conns))
	}
	if !b.Running() {
		t.Fatalf("l2lb exited during the flood: %v\nlog:\n%s", b.WaitErr(), b.LogText())
	}

	// Drops are counted by reason in the stats file (written every second).
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := b.readStats()
		nonzero := map[string]uint64{}
		for r, n := range s.Drops {
			if n > 0 {
				nonzero[r] = n
			}
		}
		if err == nil && len(nonzero) >= 4 {
			t.Logf("drops by reason: %v (verdicts %v)", nonzero, s.Verdicts)
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("stats file shows %d drop reasons with non-zero counts, want at least 4: drops %v (err %v)", len(nonzero), s.Drops, err)
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func drain(uc *net.UDPConn) {
	buf := make([]byte, 512)
	uc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	for {
		if _, _, err := uc.ReadFromUDPAddrPort(buf); err != nil {
			return
		}
	}
}

// frameBuilder makes the flood's frames, all from c1 to the balancer's MAC.
type frameBuilder struct {
	src, dst net.HardwareAddr
	from, to netip.Addr
	rng      *rand.Rand
	id       uint16
}

const (
	etherIPv4 = 0x0800
	etherVLAN = 0x8100 // IEEE 802.1Q
	etherIPv6 = 0x86dd
	protoTCP  = 6
	protoUDP  = 17
)

func (fb *frameBuilder) eth(etherType uint16, payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f[0:6], fb.dst)
	copy(f[6:12], fb.src)
	binary.BigEndian.PutUint16(f[12:14], etherType)
	return append(f, payload...)
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte, initial uint32) uint16 {
	s := initial
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// ipv4 returns a correct IPv4 header (RFC 791) with options (a multiple of
// 4 bytes) followed by payload.
func (fb *frameBuilder) ipv4(proto byte, options, payload []byte) []byte {
	hl := 20 + len(options)
	h := make([]byte, hl, hl+len(payload))
	h[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(h[2:], uint16(hl+len(payload)))
	fb.id++
	binary.BigEndian.PutUint16(h[4:], fb.id)
	h[8] = 64
	h[9] = proto
	from, to := fb.from.As4(), fb.to.As4()
	copy(h[12:16], from[:])
	copy(h[16:20], to[:])
	copy(h[20:], options)
	binary.BigEndian.PutUint16(h[10:], checksum(h, 0))
	return append(h, payload...)
}

// l4sum is the TCP/UDP checksum over the IPv4 pseudo-header (RFC 768, RFC 793).
func (fb *frameBuilder) l4sum(proto byte, seg []byte) uint16 {
	from, to := fb.from.As4(), fb.to.As4()
	var s uint32
	s += uint32(binary.BigEndian.Uint16(from[0:])) + uint32(binary.BigEndian.Uint16(from[2:]))
	s += uint32(binary.BigEndian.Uint16(to[0:])) + uint32(binary.BigEndian.Uint16(to[2:]))
	s += uint32(proto) + uint32(len(seg))
	return checksum(seg, s)
}

func (fb *frameBuilder) udp(sport, dport uint16, payload []byte) []byte {
	u := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	u = append(u, payload...)
	c := fb.l4sum(protoUDP, u)
	if c == 0 {
		c = 0xffff // RFC 768: a computed zero is sent as all ones
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return u
}

func (fb *frameBuilder) validUDP() []byte {
	return fb.ipv4(protoUDP, nil, fb.udp(40000+uint16(fb.rng.IntN(1000)), 9, []byte("flood")))
}

func (fb *frameBuilder) truncatedIPv4() []byte { return fb.eth(etherIPv4, fb.validUDP()[:12]) }

func (fb *frameBuilder) shortIHL() []byte {
	p := fb.validUDP()
	p[0] = 0x43 // IHL 3 words: less than the 5-word minimum of RFC 791
	return fb.eth(etherIPv4, p)
}

func (fb *frameBuilder) longTotalLen() []byte {
	p := fb.validUDP()
	binary.BigEndian.PutUint16(p[2:], 1400)
	binary.BigEndian.PutUint16(p[10:], 0)
	binary.BigEndian.PutUint16(p[10:], checksum(p[:20], 0))
	return fb.eth(etherIPv4, p)
}

func (fb *frameBuilder) badVersion() []byte {
	p := fb.validUDP()
	p[0] = 0x65 // version 6 under the IPv4 ethertype
	return fb.eth(etherIPv4, p)
}

func (fb *frameBuilder) badChecksum() []byte {
	p := fb.validUDP()
	p[10] ^= 0xff
	return fb.eth(etherIPv4, p)
}

// udpWithOptions is a valid datagram whose IPv4 header carries options:
// three NOPs and an End of Option List (RFC 791), making IHL 6.
func (fb *frameBuilder) udpWithOptions(sport, dport uint16, payload []byte) []byte {
	return fb.eth(etherIPv4, fb.ipv4(protoUDP, []byte{1, 1, 1, 0}, fb.udp(sport, dport, payload)))
}

func (fb *frameBuilder) shortTCPOffset() []byte {
	t := make([]byte, 20)
	binary.BigEndian.PutUint16(t[0:], 40000+uint16(fb.rng.IntN(1000)))
	binary.BigEndian.PutUint16(t[2:], tcpPort)
	binary.BigEndian.PutUint32(t[4:], fb.rng.Uint32())
	t[12] = 3 << 4 // data offset 3 words, below RFC 793's minimum of 5
	t[13] = 0x02   // SYN
	binary.BigEndian.PutUint16(t[14:], 1024)
	binary.BigEndian.PutUint16(t[16:], fb.l4sum(protoTCP, t))
	return fb.eth(etherIPv4, fb.ipv4(protoTCP, nil, t))
}

func (fb *frameBuilder) vlanTagged() []byte {
	tag := make([]byte, 4)
	binary.BigEndian.PutUint16(tag[0:], 100) // VID 100
	binary.BigEndian.PutUint16(tag[2:], etherIPv4)
	return fb.eth(etherVLAN, append(tag, fb.validUDP()...))
}

func (fb *frameBuilder) ipv6() []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], 8)
	h[6] = protoUDP
	h[7] = 64
	copy(h[8:], netip.MustParseAddr("2001:db8::1").AsSlice()) // RFC 3849 documentation prefix
	copy(h[24:], netip.MustParseAddr("2001:db8::2").AsSlice())
	return fb.eth(etherIPv6, append(h, 0x9c, 0x40, 0, 9, 0, 8, 0, 0))
}

// runt is 20 bytes: an Ethernet header and 6 bytes, the shortest frame the
// test sends (a frame under 14 bytes cannot be put on the wire at all).
func (fb *frameBuilder) runt() []byte { return fb.eth(etherIPv4, []byte{0x45, 0, 0, 20, 0, 0}) }

func (fb *frameBuilder) garbage() []byte {
	b := make([]byte, 6+fb.rng.IntN(200))
	for i := range b {
		b[i] = byte(fb.rng.Uint32())
	}
	return fb.eth(uint16(fb.rng.Uint32()), b)
}

// Guard against a frame builder bug making the "valid" kinds invalid.
func TestFrameBuilder(t *testing.T) {
	fb := frameBuilder{src: net.HardwareAddr{2, 0, 0, 0, 0, 1}, dst: net.HardwareAddr{2, 0, 0, 0, 0, 2},
		from: netip.MustParseAddr("192.0.2.1"), to: netip.MustParseAddr("192.0.2.200"), rng: rand.New(rand.NewPCG(3, 4))}
	f := fb.udpWithOptions(1234, udpPort, []byte("x"))
	ip := f[14:]
	if ip[0] != 0x46 || checksum(ip[:24], 0) != 0 {
		t.Errorf("options frame: first byte %#x, header checksum verifies to %#x; want 0x46 and 0", ip[0], checksum(ip[:24], 0))
	}
	if got := int(binary.BigEndian.Uint16(ip[2:])); got != len(ip) {
		t.Errorf("options frame total length %d, frame carries %d", got, len(ip))
	}
	udp := ip[24:]
	if fb.l4sum(protoUDP, udp) != 0 {
		t.Errorf("UDP checksum does not verify")
	}
	if len(fb.runt()) != 20 {
		t.Errorf("runt is %d bytes, want 20", len(fb.runt()))
	}
	if p := fb.longTotalLen()[14:]; checksum(p[:20], 0) != 0 || int(binary.BigEndian.Uint16(p[2:])) <= len(p) {
		t.Errorf("total-length frame: header checksum must verify and the total length must exceed the frame")
	}
	if got := fb.shortTCPOffset()[14+20+12] >> 4; got != 3 {
		t.Errorf("TCP data offset %d, want 3", got)
	}
}
