package ipv6

import (
	"bufio"
	"bytes"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// transferSize is the size of each download and upload.
const transferSize = 20 << 20

// maxTries bounds the transfers made to see both f1 (local delivery) and another frontend
// (forwarding): each lands on f1 with probability 1/3, (2/3)^30 < 1e-5.
const maxTries = 30

// 20 MB each way through the IPv6 VIP with default offloads, on f1 (re-injected on lo) and on a
// forwarded frontend, sha256-checked by the testbed.
func TestIPv6Transfers(t *testing.T) {
	bed := needBed(t)
	startBalancer(t, bed, options{extra: []string{"-p", "0"}})
	srcs := sources6(bed)
	raddr := netip.AddrPortFrom(vip6(bed), tcpPort)
	for _, kind := range []string{"download", "upload"} {
		onF1, elsewhere := 0, 0
		for try := 0; try < maxTries && (onF1 == 0 || elsewhere == 0); try++ {
			s := srcs[try%len(srcs)]
			start := time.Now()
			local, by, err := transfer(bed, s, kind, raddr)
			took := time.Since(start)
			if err != nil {
				t.Fatalf("20 MB %s from %v over [%v]:%d: %v", kind, s, raddr.Addr(), raddr.Port(), err)
			}
			if len(by) != 1 {
				t.Fatalf("20 MB %s from %v: served by %v, want exactly one frontend", kind, local, by)
			}
			t.Logf("20 MB %s %v -> %v via %s: verified in %v (%.0f MB/s)", kind, local, raddr, by[0],
				took.Round(time.Millisecond), float64(transferSize)/(1<<20)/took.Seconds())
			if by[0] == f1(bed).Name {
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

// transfer is e2e.Transfer of transferSize bytes.
func transfer(bed *testbed.Bed, s source, kind string, raddr netip.AddrPort) (netip.AddrPort, []string, error) {
	return e2e.Transfer(bed, s, kind, raddr, transferSize)
}

// snmp6 reads one counter of /proc/net/snmp6 in h's namespace.
func snmp6(t *testing.T, h *testbed.Host, name string) uint64 {
	t.Helper()
	out, err := h.Command("cat", "/proc/net/snmp6").Output()
	if err != nil {
		t.Fatalf("%s: reading /proc/net/snmp6: %v", h.Name, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == name {
			n, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatalf("%s: %s in /proc/net/snmp6: %v", h.Name, name, err)
			}
			return n
		}
	}
	t.Fatalf("%s: no %s in /proc/net/snmp6", h.Name, name)
	return 0
}

// UDP to [VIP6]:5060 with 3000-byte datagrams, which the clients' kernels fragment (MTU 1500),
// from several client addresses: every datagram is answered whole (the testbed checks the
// sha256 of the payload in the answer), non-first fragments follow their first, and the
// datagrams reach more than one frontend.
func TestIPv6UDPFragments(t *testing.T) {
	bed := needBed(t)
	startBalancer(t, bed, options{extra: []string{"-p", "0"}})
	raddr := netip.AddrPortFrom(vip6(bed), udpPort)
	srcs := sources6(bed)
	for _, size := range []int{200, 3000} {
		n := 60
		fragsBefore := map[string]uint64{}
		for _, c := range bed.Clients {
			fragsBefore[c.Name] = snmp6(t, c, "Ip6FragCreates")
		}
		before := servedNow(bed)
		counts := map[string]int{}
		fromAddrs := map[netip.Addr]bool{}
		failed := 0
		start := time.Now()
		for i := 0; i < n; i++ {
			s := srcs[i%len(srcs)]
			name, err := s.Host.UDPAsk(s.Addr, raddr, size)
			if err != nil {
				failed++
				if failed <= 5 {
					t.Errorf("%d-byte datagram from %v to %v: %v", size, s, raddr, err)
				}
				continue
			}
			counts[name]++
			fromAddrs[s.Addr] = true
		}
		frags := uint64(0)
		for _, c := range bed.Clients {
			frags += snmp6(t, c, "Ip6FragCreates") - fragsBefore[c.Name]
		}
		by := servedBy(bed, before, func(was, now testbed.Served) bool { return now.Datagrams > was.Datagrams })
		t.Logf("%d-byte datagrams from %d client addresses: answers per frontend %v, %d failed, %d fragments created by the clients, in %v",
			size, len(fromAddrs), counts, failed, frags, time.Since(start).Round(time.Millisecond))
		if failed > 0 {
			t.Errorf("%d of %d %d-byte datagrams were not answered correctly", failed, n, size)
		}
		if len(counts) < 2 || len(by) < 2 {
			t.Errorf("%d %d-byte datagrams from varied addresses and ports were answered by %v (served by %v), want more than one frontend", n, size, counts, by)
		}
		if len(fromAddrs) < 4 {
			t.Errorf("%d-byte datagrams answered for only %d client addresses", size, len(fromAddrs))
		}
		if size > 1500 && frags < uint64(2*n) {
			t.Errorf("%d %d-byte datagrams made only %d fragments on the clients (Ip6FragCreates); want at least 2 each", n, size, frags)
		}
		if size <= 1500 && frags != 0 {
			t.Logf("note: %d fragments created for %d-byte datagrams", frags, size)
		}
	}
}

// routeMTU returns the path MTU h's kernel holds for dst (the "mtu N" of `ip -6 route get dst`,
// a PMTU exception learnt from a Packet Too Big), 0 if none.
func routeMTU(t *testing.T, h *testbed.Host, dst, from netip.Addr) (int, string) {
	t.Helper()
	out, err := h.RunIP("-6", "route", "get", dst.String(), "from", from.String())
	if err != nil {
		t.Fatalf("%s: %v", h.Name, err)
	}
	f := strings.Fields(string(out))
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "mtu" {
			n, err := strconv.Atoi(f[i+1])
			if err == nil {
				return n, strings.TrimSpace(string(out))
			}
		}
	}
	return 0, strings.TrimSpace(string(out))
}

// pmtu is the MTU of the router's client side in TestIPv6PacketTooBig: the IPv6 minimum.
const pmtu = 1280

// A router between the clients and the switch with MTU 1280 towards the clients: the frontends'
// 1500-byte replies from the IPv6 VIP are too big there, and the router answers each with an
// ICMPv6 Packet Too Big to the VIP, which reaches the balancer (the router resolved the VIP to the
// virtual MAC). The balancer must hand it to the frontend that owns the quoted flow — forwarded
// to its MAC, or re-injected on lo for f1's own flows — or path MTU discovery fails and the
// download stalls. Each 20 MB download completes and verifies, the PTB is seen at the router and
// at the owning frontend only, and that frontend's kernel holds path MTU 1280 for the client.
func TestIPv6PacketTooBig(t *testing.T) {
	bed := suite.NewBed(t, "the IPv6 path MTU test", testbed.Options{Router: &testbed.RouterOptions{MTU: pmtu}})
	if err := serveBothVIPs(bed); err != nil {
		t.Fatal(err)
	}
	b := startBalancer(t, bed, options{extra: []string{"-p", "0"}})
	v6 := vip6(bed)
	raddr := netip.AddrPortFrom(v6, tcpPort)
	rt := bed.Router
	var srcs []source
	for _, c := range bed.Clients {
		for _, a := range append([]netip.Addr{c.Addr6}, c.Extra6...) {
			srcs = append(srcs, source{Host: c, Addr: a})
		}
	}
	onF1, elsewhere := 0, 0
	for try := 0; try < maxTries && (onF1 == 0 || elsewhere == 0); try++ {
		s := srcs[try%len(srcs)]
		// A path MTU learnt by an earlier try would spare this one its PTB.
		for _, f := range bed.Frontends {
			if _, err := f.RunIP("-6", "route", "flush", "cache"); err != nil {
				t.Fatal(err)
			}
		}
		// Where a PTB shows up: the router sends it (eth0), the balancer receives it (f1 eth0)
		// and forwards it to another frontend (its eth0) or re-injects it on f1's lo.
		caps := startCaptures(t, append([]*testbed.Host{rt}, bed.Frontends...)...)
		lo, err := f1(bed).Capture("lo")
		if err != nil {
			t.Fatal(err)
		}
		before := servedNow(bed)
		start := time.Now()
		local, err := s.Host.Download(s.Addr, raddr, transferSize)
		took := time.Since(start)
		if err != nil {
			stopCaptures(t, caps)
			lo.Stop()
			t.Fatalf("20 MB download from %v over [%v]:%d across MTU %d: %v\nl2lb log:\n%s", s, v6, tcpPort, pmtu, err, b.LogText())
		}
		time.Sleep(50 * time.Millisecond)
		st := stopCaptures(t, caps)
		st["f1/lo"] = lo.Stop()
		by := servedBy(bed, before, func(was, now testbed.Served) bool { return now.Downloads > was.Downloads })
		if len(by) != 1 {
			t.Fatalf("download from %v: served by %v, want exactly one frontend", local, by)
		}
		owner := bed.Host(by[0])
		// The PTBs of this flow, per capture point and link-layer path.
		quotes := func(tb testbed.TooBig) bool {
			return tb.To == v6 && tb.QuotedSrc == raddr && tb.QuotedDst == local
		}
		sent, toVMAC := 0, 0
		for _, tb := range st[rt.Name].TooBigs {
			if quotes(tb) && macEq(tb.EthSrc, rt.MAC) {
				sent++
				if tb.From != rt.Addr6 || tb.MTU != pmtu {
					t.Errorf("router's Packet Too Big %+v, want from %v with MTU %d", tb, rt.Addr6, pmtu)
				}
				if macEq(tb.EthDst, b.VMAC6) {
					toVMAC++
				}
			}
		}
		reached := map[string]int{}
		for _, f := range bed.Frontends {
			for _, tb := range st[f.Name].TooBigs {
				// Forwarded by the balancer: from f1's MAC to the frontend's.
				if quotes(tb) && macEq(tb.EthDst, f.MAC) {
					reached[f.Name]++
				}
			}
		}
		// A capture on lo sees each frame sent there twice, leaving and arriving.
		for _, tb := range st["f1/lo"].TooBigs {
			if quotes(tb) {
				reached["f1/lo"]++
			}
		}
		mtu, route := routeMTU(t, owner, local.Addr(), v6)
		t.Logf("20 MB download %v -> %v via %s across MTU %d: verified in %v; Packet Too Big: %d sent by the router (%d to the virtual MAC), delivered %v; %s: %s",
			local, raddr, owner.Name, pmtu, took.Round(time.Millisecond), sent, toVMAC, reached, owner.Name, route)
		if sent == 0 || toVMAC != sent {
			t.Errorf("the router sent %d Packet Too Big for %v->%v, %d of them to the virtual MAC %v; want some, all to it",
				sent, raddr, local, toVMAC, b.VMAC6)
		}
		want := owner.Name
		if owner == f1(bed) {
			want = "f1/lo"
		}
		if reached[want] == 0 {
			t.Errorf("no Packet Too Big for %v->%v reached the owning frontend %s (%s); delivered %v", raddr, local, owner.Name, want, reached)
		}
		for where, n := range reached {
			if where != want {
				t.Errorf("%d Packet Too Big for %v->%v went to %s, but %s owns the flow", n, raddr, local, where, owner.Name)
			}
		}
		if mtu != pmtu {
			t.Errorf("%s holds path MTU %d for %v (ip -6 route get: %s), want %d learnt from the Packet Too Big", owner.Name, mtu, local.Addr(), route, pmtu)
		}
		if owner == f1(bed) {
			onF1++
		} else {
			elsewhere++
		}
	}
	if onF1 == 0 || elsewhere == 0 {
		t.Errorf("%d downloads on f1, %d elsewhere after %d tries; want both kinds", onF1, elsewhere, maxTries)
	}
}
